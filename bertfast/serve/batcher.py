"""The queue and the one batcher: token-budget batches, sorted by length, one forward each.

Every input of every request is one queued item with its own future, so a request's results
are exactly its items' results, whatever batches they rode in. The forward runs on a single
worker thread, off the event loop; while it runs, new items gather for the next batch.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bertfast.serve import errors
from bertfast.serve.backend import ModelBackend, Sequence

# On the padded path a forward computes at most this many tokens per real one; one more
# forward costs far less than 30 % more tokens on a CPU.
PADDED_PER_REAL = 1.3


@dataclass
class Item:
    """One input waiting for the model; timings are filled in as it goes."""

    seq: Sequence
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    queue_time: float = 0.0
    inference_time: float = 0.0

    @property
    def length(self) -> int:
        return len(self.seq.ids)


class Batcher:
    """Bounded queue plus the batching loop; ``submit`` from the event loop only."""

    def __init__(
        self,
        backend: ModelBackend,
        max_batch_tokens: int,
        max_batch_requests: int | None,
        max_queue: int,
        metrics=None,
    ):
        self.backend = backend
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests or max_queue
        self.max_queue = max_queue
        self.metrics = metrics
        # Padded forwards cost (rows x longest) tokens; padding-free ones the real tokens.
        self.padded = not backend.padding_free
        self._queue: collections.deque[Item] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertfast-model")
        self._task: asyncio.Task | None = None
        self._busy = False

    # -- lifecycle

    async def start(self) -> None:
        """Warm the model up on its own thread (its compute thread pool is per calling
        thread), then start the loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.backend.warmup)
        self._task = loop.create_task(self._loop(), name="bertfast-batcher")

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Finish what is queued, then stop the loop and the model thread."""
        while self._queue or self._busy:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    # -- queue

    def submit(self, seqs: list[Sequence]) -> list[Item]:
        """Queue a request's inputs (all or none); their futures give the results."""
        if len(self._queue) + len(seqs) > self.max_queue:
            # Inputs of departed clients still wait in the queue: drop them before refusing.
            self._queue = type(self._queue)(i for i in self._queue if not i.future.done())
            self._set_queue_size()
        if len(self._queue) + len(seqs) > self.max_queue:
            raise errors.overloaded(
                f"the queue is full ({len(self._queue)} inputs waiting, at most {self.max_queue})"
            )
        loop = asyncio.get_running_loop()
        items = [Item(seq, loop.create_future()) for seq in seqs]
        self._queue.extend(items)
        self._set_queue_size()
        self._wakeup.set()
        return items

    def _set_queue_size(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_size.set(len(self._queue))

    def _cost(self, count: int, longest: int, total: int) -> int:
        return count * longest if self.padded else total

    def _take(self) -> list[Item]:
        """The oldest items that fit the token and request budgets (at least one)."""
        batch: list[Item] = []
        longest = total = 0
        while self._queue and len(batch) < self.max_batch_requests:
            item = self._queue[0]
            if item.future.done():  # cancelled: its client went away, nobody needs it
                self._queue.popleft()
                continue
            cost = self._cost(len(batch) + 1, max(longest, item.length), total + item.length)
            if batch and cost > self.max_batch_tokens:
                break
            batch.append(self._queue.popleft())
            longest, total = max(longest, item.length), total + item.length
        self._set_queue_size()
        return batch

    def _split(self, batch: list[Item]) -> list[list[Item]]:
        """Sorted by length; on the padded path cut where the padded tokens would pass
        ``PADDED_PER_REAL`` times the real ones, so a long input does not make every short one
        pay for its length (a padded token costs as much as a real one there)."""
        batch = sorted(batch, key=lambda it: it.length)
        if not self.padded:
            return [batch]
        chunks: list[list[Item]] = [[]]
        real = 0
        for item in batch:
            chunk = chunks[-1]
            if chunk and (len(chunk) + 1) * item.length > PADDED_PER_REAL * (real + item.length):
                chunks.append([])
                chunk, real = chunks[-1], 0
            chunk.append(item)
            real += item.length
        return chunks

    # -- the loop

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._busy = True
            try:
                batch = self._take()
                if not batch:  # every queued input had been cancelled
                    continue
                for chunk in self._split(batch):
                    await self._run(loop, chunk)
            finally:
                self._busy = False

    async def _run(self, loop: asyncio.AbstractEventLoop, chunk: list[Item]) -> None:
        # Inputs cancelled while an earlier chunk of their batch ran are dropped too.
        chunk = [item for item in chunk if not item.future.done()]
        if not chunk:
            return
        start = time.perf_counter()
        for item in chunk:
            item.queue_time = start - item.enqueued
        seqs = [item.seq for item in chunk]
        try:
            results: list[Any] = await loop.run_in_executor(self._executor, self.backend.run, seqs)
            failures: list[BaseException | None] = [None] * len(chunk)
        except Exception as exc:
            if self.metrics is not None:
                self.metrics.batch_failure.inc()
            # Rerun one by one: only the inputs that fail alone answer 424.
            results, failures = [None] * len(chunk), [exc] * len(chunk)
            if len(chunk) > 1:
                for i, seq in enumerate(seqs):
                    try:
                        (results[i],) = await loop.run_in_executor(
                            self._executor, self.backend.run, [seq]
                        )
                        failures[i] = None
                    except Exception as single_exc:
                        failures[i] = single_exc
        elapsed = time.perf_counter() - start
        if self.metrics is not None:
            lengths = [it.length for it in chunk]
            tokens = self._cost(len(chunk), max(lengths), sum(lengths))
            self.metrics.observe_batch(len(chunk), tokens, elapsed)
        for item, result, failure in zip(chunk, results, failures):
            item.inference_time = elapsed
            if item.future.done():  # the client went away
                continue
            if failure is None:
                item.future.set_result(result)
            else:
                item.future.set_exception(
                    errors.backend(f"the model failed: {type(failure).__name__}: {failure}")
                )
