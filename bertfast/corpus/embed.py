"""Embed a corpus: records in, shards of vectors out, in input order.

The work is cut into shards of ``shard_size`` records by input position, and each shard is
embedded on its own (length-sorted windows, token-budget batches), so its vectors do not
depend on how many processes share the work: under torchrun rank r takes shards r, r + N, ...
and the result equals a single process's, vector for vector. A background thread reads,
tokenizes (the ``tokenizers`` batch API, which runs outside the GIL) and pads the next
batches while the model runs; on CUDA each batch's copy to the host waits until the next
batch is queued.

Work is kept as it is done: the finished texts of the shard under way are saved every
``save_every`` seconds (and on Ctrl-C), and a rerun takes them up, replanning the shard's
batches as before and embedding only the batches not saved, so the shard's files come out
byte for byte as an uninterrupted run writes them.
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import pre_tokenizers

from bertfast.corpus.readers import (
    BadLines,
    Record,
    check_input_file,
    input_format,
    read_records,
)
from bertfast.corpus.writer import (
    OUTPUT_DTYPES,
    RUN_SETTINGS,
    OutputLock,
    check_run_settings,
    finished_shard,
    read_parts,
    remove_parts,
    remove_temporaries,
    shard_stem,
    write_json_atomic,
    write_manifest,
    write_part,
    write_shard,
)
from bertfast.model_dirs import DEFAULT_MODEL, resolve_model_dir
from bertfast.sentence import Normalize, SentenceEncoder

# Texts sorted by length together: enough that batches carry almost no padding, small enough
# that the first batch of a shard is ready soon.
SORT_WINDOW = 8192
DEFAULT_BATCH_TOKENS = 16384
DEFAULT_SHARD_SIZE = 50_000
# Seconds between saves of the finished texts of the shard under way: what an interruption
# (a kill, a lost machine) can cost at most.
DEFAULT_SAVE_EVERY = 60.0
# A text longer than this many characters a token is cut before tokenizing, where the cut
# provably keeps every token that truncation keeps (see _cut_long_texts).
CUT_CHARS_PER_TOKEN = 16
# Where the model pads (the torch backend computes the whole batch x longest grid), a batch
# holds no text shorter than this fraction below its longest; the padding-free kernel path
# is not charged for padding, so there batches fill the token budget.
MAX_PADDING = 0.1
# Batches tokenized ahead of the model.
QUEUE_DEPTH = 8
# How often plain (non-terminal) progress lines are written, in seconds.
LOG_EVERY_S = 10.0
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass
class EmbedOptions:
    """What ``bertfast embed --input`` takes; see the command's help for each."""

    inputs: Sequence[str]
    output: str
    model: str = DEFAULT_MODEL
    text_field: str = "text"
    id_field: str | None = None
    input_format: str = "auto"
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    max_length: int | None = None
    normalize: bool | None = None  # None: as the model directory says
    dtype: torch.dtype | None = None  # the model's compute dtype (None: fp32)
    quantize: str | None = None  # "int8": the encoder's GEMMs in int8 (CPU)
    output_dtype: str = "float32"
    device: str | None = None
    backend: str = "auto"
    skip_bad_lines: bool = False
    shard_size: int = DEFAULT_SHARD_SIZE
    save_every: float = DEFAULT_SAVE_EVERY
    parquet: bool = False
    progress: bool | None = None  # None: a bar on a terminal, log lines otherwise
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse bad option values and unreadable inputs before any model is loaded."""
        if not self.inputs:
            raise ValueError("give at least one --input file")
        for path in self.inputs:
            check_input_file(path)
        for name in ("batch_tokens", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be a positive int, got {value!r}")
        if (
            isinstance(self.save_every, bool)
            or not isinstance(self.save_every, (int, float))
            or not self.save_every > 0
        ):
            raise ValueError(
                f"--save-every must be a positive number of seconds, got {self.save_every!r}"
            )
        check_output_dir(self.output)
        if self.max_length is not None and (
            isinstance(self.max_length, bool)
            or not isinstance(self.max_length, int)
            or self.max_length < 2
        ):
            raise ValueError(f"--max-length must be an int of at least 2, got {self.max_length!r}")
        if self.output_dtype not in OUTPUT_DTYPES:
            raise ValueError(
                f"output dtype {self.output_dtype!r} is not supported; choose one of "
                f"{OUTPUT_DTYPES}"
            )
        if self.id_field is not None:
            plain = [p for p in self.inputs if input_format(p, self.input_format) == "text"]
            if plain:
                raise ValueError(
                    f"--id-field {self.id_field!r} needs JSON Lines or CSV/TSV input; "
                    f"{plain[0]!r} is read as plain text (its ids are file:line)"
                )
        if self.parquet:
            try:
                import pyarrow  # noqa: F401
            except ImportError as exc:
                raise ImportError("--parquet needs pyarrow: pip install pyarrow") from exc


def check_output_dir(output: str | os.PathLike) -> None:
    """Refuse an --output that is a file or lies under one, before any model is loaded."""
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"--output {str(output)!r} is a file; give a directory (a new one, or an earlier "
            "run's to resume it)"
        )
    above = path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if above.exists() and not above.is_dir():
        raise ValueError(f"--output {str(output)!r} cannot be created: {str(above)!r} is a file")


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @classmethod
    def from_env(cls) -> Distributed:
        """Join the torchrun job the environment describes (gloo: only barriers are needed,
        and gloo runs wherever the model does)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owns = False
        if not dist.is_initialized():
            # Ranks finish their slices at different times; the barrier waits for the slowest.
            dist.init_process_group("gloo", timeout=timedelta(hours=48))
            owns = True
        return cls(
            dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns
        )

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def share(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        if self.world <= 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


@dataclass
class _Batch:
    shard: int
    positions: np.ndarray  # rows of the shard these vectors go to
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: int  # real tokens (no padding)


@dataclass
class _ShardStart:
    shard: int
    count: int
    vectors: np.ndarray  # what saved parts hold (rows not yet done are zeros)
    done: np.ndarray  # rows the saved parts hold
    next_part: int


@dataclass
class _ShardEnd:
    shard: int
    ids: list[str | int]
    tokens: int


@dataclass
class _ShardDone:  # finished by an earlier run
    shard: int
    count: int


@dataclass
class _InputEnd:
    shard_counts: list[int]


def plan_batches(lengths: np.ndarray, budget: int, max_padding: float = 1.0) -> list[np.ndarray]:
    """Batches of text indices, longest first: each holds at most ``budget`` tokens counted
    with padding (rows x longest row), and none shorter than ``1 - max_padding`` of its
    longest, so a batch's padding stays under that fraction. Deterministic in ``lengths``."""
    order = np.argsort(-lengths, kind="stable")
    descending = lengths[order]
    batches = []
    i = 0
    while i < len(order):
        longest = int(descending[i])
        end = min(len(order), i + max(1, budget // max(longest, 1)))
        if max_padding < 1.0:
            # The first text shorter than the floor ends the batch (descending order).
            floor = longest * (1.0 - max_padding)
            end = min(end, int(np.searchsorted(-descending, -floor, side="right")))
        end = max(end, i + 1)
        batches.append(order[i:end])
        i = end
    return batches


def model_fingerprint(model_dir: Path) -> str:
    """A cheap identity of a model directory: its small JSON files' bytes and its weight
    files' names and sizes (hashing gigabytes of weights on every run would cost minutes)."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*")):
        if not path.is_file():
            continue
        relative = str(path.relative_to(model_dir)).encode()
        if path.suffix == ".json" and path.stat().st_size < 1 << 20:
            digest.update(relative + b"\0" + path.read_bytes() + b"\0")
        elif path.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            digest.update(relative + b"\0" + str(path.stat().st_size).encode() + b"\0")
    return digest.hexdigest()


def scan_inputs(paths: Sequence[str]) -> tuple[int, list[str]]:
    """One pass over ``paths``: their lines (the progress estimate of how many texts there
    are) and each file's SHA-256 (a resumed run must read the very same texts)."""
    total, digests = 0, []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            last = b"\n"
            for block in iter(lambda: f.read(1 << 22), b""):  # noqa: B023
                digest.update(block)
                total += block.count(b"\n")
                last = block[-1:]
            total += last != b"\n"
        digests.append(digest.hexdigest())
    return total, digests


class Progress:
    """texts/s, tokens/s and ETA: a bar redrawn in place on a terminal, else log lines."""

    def __init__(self, total: int, tty: bool, prefix: str = "bertfast embed"):
        self.total = max(total, 1)
        self.tty = tty
        self.prefix = prefix
        self.start = time.perf_counter()
        self.done = 0  # texts, resumed shards included
        self.embedded = 0  # texts embedded by this run
        self.tokens = 0
        self.last_draw = 0.0

    def advance(self, texts: int, tokens: int, embedded: bool = True) -> None:
        self.done += texts
        if embedded:
            self.embedded += texts
            self.tokens += tokens
        now = time.perf_counter()
        if now - self.last_draw >= (0.2 if self.tty else LOG_EVERY_S):
            self.last_draw = now
            self.draw()

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.embedded / elapsed
        left = max(self.total - self.done, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        pct = min(100.0, 100.0 * self.done / self.total)
        return (
            f"{self.prefix}: {self.done}/~{self.total} texts ({pct:.0f}%), {rate:.0f} texts/s, "
            f"{self.tokens / elapsed:.0f} tokens/s, ETA {eta}"
        )

    def draw(self) -> None:
        if self.tty:
            print("\r" + self.line(), end="", file=sys.stderr, flush=True)
        else:
            print(self.line(), file=sys.stderr, flush=True)

    def log(self, message: str) -> None:
        if self.tty:
            print("\r\x1b[K", end="", file=sys.stderr)
        print(f"{self.prefix}: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.last_draw = 0.0
        self.draw()
        if self.tty:
            print(file=sys.stderr, flush=True)


class CorpusEmbedder:
    """The pipeline of one process: its shards of the corpus, embedded and written."""

    def __init__(self, options: EmbedOptions, encoder: SentenceEncoder | None = None):
        options.check()
        self.options = options
        self.out_dir = Path(options.output)
        try:  # before the model loads: a location that cannot be written fails at once
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(
                f"--output {options.output!r} cannot be created: {exc.strerror}"
            ) from None
        if not os.access(self.out_dir, os.W_OK | os.X_OK):
            raise ValueError(f"--output {options.output!r} is not writable")
        self.dist = Distributed.from_env()
        device = options.device
        if self.dist.world > 1 and device in (None, "cuda") and torch.cuda.is_available():
            device = f"cuda:{self.dist.local_rank}"  # one GPU a rank
        self.encoder = encoder or SentenceEncoder.from_pretrained(
            options.model,
            backend=options.backend,
            device=device,
            dtype=options.dtype,
            quantize=options.quantize,
        )
        limit = self.encoder.model.config.max_position_embeddings
        if options.max_length is not None and options.max_length > limit:
            raise ValueError(
                f"--max-length {options.max_length} exceeds the model's "
                f"{limit} positions; give at most {limit}"
            )
        self.max_length = options.max_length or self.encoder.max_seq_length
        # --normalize / --no-normalize change only the end of the module pipeline.
        modules = list(self.encoder.modules)
        if options.normalize is False:
            modules = [m for m in modules if not isinstance(m, Normalize)]
        elif options.normalize and not isinstance(modules[-1], Normalize):
            modules.append(Normalize())
        self.modules = modules
        name = self.encoder.default_prompt_name
        self.prompt = self.encoder.prompts[name] if name is not None else None
        # Pooling may leave the prompt out: its length, as SentenceEncoder.encode counts it.
        self.prompt_length = self.encoder.prompt_length(self.prompt) if self.prompt else None
        self.pin = self.encoder.device.type == "cuda"
        self.max_padding = MAX_PADDING if self.encoder.model.backend == "torch" else 1.0
        self.run_id = ""  # names this run's temporary files; rank 0's, shared
        self._scan: tuple[int, list[str]] | None = None
        self._dim = 0

    # ------------------------------------------------------------------ settings

    def settings(self) -> dict[str, Any]:
        """What shapes the vectors; a resumed run must match it. Batch size, device and backend
        are left out: they change speed, not what a vector means (moving a resumed run to a
        GPU is allowed)."""
        opts = self.options
        model_dir = resolve_model_dir(opts.model)
        if self._scan is None:
            self._scan = scan_inputs(opts.inputs)
        inputs = []
        for path, digest in zip(opts.inputs, self._scan[1], strict=True):
            resolved = str(Path(path).resolve())
            inputs.append({"path": resolved, "size": os.stat(path).st_size, "sha256": digest})
        model = self.encoder.model
        return {
            "model": str(model_dir.resolve()),
            "model_fingerprint": model_fingerprint(model_dir),
            "compute_dtype": DTYPE_NAMES.get(model.dtype, str(model.dtype)),
            "quantize": opts.quantize,  # an int8 model still reports float32
            "dtype": opts.output_dtype,
            "max_length": self.max_length,
            "pooling": self.encoder.pooling,
            "modules": [type(m).__name__ for m in self.modules],
            "normalize": isinstance(self.modules[-1], Normalize),
            "prompt": self.prompt,
            "field": opts.text_field,
            "id_field": opts.id_field,
            "format": opts.input_format,
            "inputs": inputs,
            "shard_size": opts.shard_size,
            "skip_bad_lines": opts.skip_bad_lines,
        }

    def dimension(self) -> int:
        width = self.encoder.get_sentence_embedding_dimension()
        return width

    # ------------------------------------------------------------------ producer

    def _shards(self, bad: BadLines | None) -> Iterator[tuple[int, list[Record]]]:
        records = read_records(
            self.options.inputs,
            self.options.text_field,
            self.options.id_field,
            self.options.input_format,
            bad,
        )
        size = self.options.shard_size
        chunk: list[Record] = []
        index = 0
        for record in records:
            chunk.append(record)
            if len(chunk) == size:
                yield index, chunk
                chunk, index = [], index + 1
        if chunk:
            yield index, chunk

    def _batches(self, shard: int, texts: list[str], done: np.ndarray) -> Iterator[_Batch]:
        """Token-budget batches of one shard, longest first within each sorted window; a batch
        whose rows are all ``done`` (saved by an earlier run) is planned but not embedded."""
        tokenizer = self.encoder.tokenizer
        pad_id = tokenizer.pad_token_id or 0
        if self.prompt:
            texts = [self.prompt + t for t in texts]
        for start in range(0, len(texts), SORT_WINDOW):
            window = self._cut_long_texts(texts[start : start + SORT_WINDOW])
            ids = tokenizer(window, truncation="longest_first", max_length=self.max_length)
            ids = ids["input_ids"]
            lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
            for picked in plan_batches(lengths, self.options.batch_tokens, self.max_padding):
                if done[picked + start].all():
                    continue
                longest = int(lengths[picked[0]])
                input_ids = np.full((len(picked), longest), pad_id, dtype=np.int64)
                mask = np.zeros((len(picked), longest), dtype=np.int64)
                for row, j in enumerate(picked):
                    n = lengths[j]
                    input_ids[row, :n] = ids[j]
                    mask[row, :n] = 1
                input_ids_t, mask_t = torch.from_numpy(input_ids), torch.from_numpy(mask)
                if self.pin:
                    input_ids_t, mask_t = input_ids_t.pin_memory(), mask_t.pin_memory()
                yield _Batch(shard, picked + start, input_ids_t, mask_t, int(lengths[picked].sum()))

    def _cut_long_texts(self, texts: list[str]) -> list[str]:
        """``texts`` with each very long one cut where the cut cannot change its tokens after
        truncation (a 10 MB line would otherwise be tokenized whole, taking gigabytes).

        BERT's pre-tokenizer splits at white space and its normaliser works a character at a
        time, so the tokens of a prefix ending before a white-space character are the first
        tokens of the whole text; once they number ``max_length``, truncation keeps only
        them. Other tokenizers are left alone."""
        limit = CUT_CHARS_PER_TOKEN * self.max_length
        if all(len(t) <= limit for t in texts):
            return texts
        backend = getattr(self.encoder.tokenizer, "_tokenizer", None)
        if not isinstance(getattr(backend, "pre_tokenizer", None), pre_tokenizers.BertPreTokenizer):
            return texts
        return [self._cut(t, limit) if len(t) > limit else t for t in texts]

    def _cut(self, text: str, limit: int) -> str:
        tokenizer = self.encoder.tokenizer
        end = limit
        while end < len(text):
            space = max(text.rfind(c, 0, end) for c in " \t\n\r")
            if space > 0:
                prefix = text[:space]
                ids = tokenizer(
                    [prefix],
                    add_special_tokens=False,
                    truncation="longest_first",
                    max_length=self.max_length,
                )["input_ids"][0]
                if len(ids) >= self.max_length:
                    return prefix
            end *= 4  # mostly white space or one long word so far: look further
        return text

    def _produce(self, out: queue.Queue, stop: threading.Event, bad: BadLines | None) -> None:
        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        dim, dtype = self._dim, np.dtype(self.options.output_dtype)
        try:
            counts: list[int] = []
            for index, records in self._shards(bad):
                counts.append(len(records))
                if index % self.dist.world != self.dist.rank:
                    continue
                if finished_shard(self.out_dir, index, len(records)) is not None:
                    remove_parts(self.out_dir, index)  # a kill may have come before the cleanup
                    if not put(_ShardDone(index, len(records))):
                        return
                    continue
                vectors, done, next_part = read_parts(self.out_dir, index, len(records), dim, dtype)
                if not put(_ShardStart(index, len(records), vectors, done, next_part)):
                    return
                tokens = 0
                for batch in self._batches(index, [r.text for r in records], done):
                    tokens += batch.tokens
                    if not put(batch):
                        return
                if not put(_ShardEnd(index, [r.id for r in records], tokens)):
                    return
            put(_InputEnd(counts))
        except BaseException as exc:  # handed to the main thread, which raises it
            put(exc)

    # ------------------------------------------------------------------ consumer

    @torch.inference_mode()
    def _forward(self, batch: _Batch) -> torch.Tensor:
        # The ids go in on the host: the model checks them there, so the device never waits.
        hidden = self.encoder.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).last_hidden_state
        mask = batch.attention_mask.to(hidden.device, non_blocking=True)
        vectors = self.modules[0](hidden, mask, self.prompt_length)
        for module in self.modules[1:]:
            vectors = module(vectors)
        half = self.options.output_dtype == "float16"
        return vectors.to(torch.float16 if half else torch.float32)

    def run(self) -> dict[str, Any] | None:
        """Embed this process's shards; rank 0 then writes and returns the manifest."""
        try:
            return self._run()
        finally:
            self.dist.close()

    def _run(self) -> dict[str, Any] | None:
        rank = self.dist.rank
        settings = self.settings()
        check_run_settings(self.out_dir, settings)  # every rank refuses alike, before waiting
        lock, outcome, previous = None, "", None
        if rank == 0:
            run_id = uuid.uuid4().hex[:12]
            lock = OutputLock(self.out_dir, run_id)
            try:
                previous = lock.acquire()
                outcome = run_id
            except ValueError as exc:
                lock, outcome = None, f"error: {exc}"
        outcome = self.dist.share(outcome)  # every rank stops alike when the lock is held
        if outcome.startswith("error: "):
            raise ValueError(outcome.removeprefix("error: "))
        self.run_id = outcome
        try:
            if rank == 0:
                if previous is not None:  # a killed run's half-written files
                    remove_temporaries(self.out_dir, previous)
                write_json_atomic(self.out_dir / RUN_SETTINGS, settings, self.run_id)
            self.dist.barrier()
            return self._embed(settings)
        finally:
            if lock is not None:
                lock.release()

    def _embed(self, settings: dict[str, Any]) -> dict[str, Any] | None:
        opts, rank, world = self.options, self.dist.rank, self.dist.world
        tty = sys.stderr.isatty() if opts.progress is None else opts.progress
        prefix = "bertfast embed" + (f" [rank {rank}/{world}]" if world > 1 else "")
        assert self._scan is not None
        progress = Progress(self._scan[0] // world, tty and rank == 0, prefix)
        bad = BadLines() if opts.skip_bad_lines else None
        items: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        stop = threading.Event()
        dim = self._dim = self.dimension()
        worker = threading.Thread(
            target=self._produce, args=(items, stop, bad), name="bertfast-tokenize", daemon=True
        )
        worker.start()
        shard: _ShardStart | None = None  # the shard under way
        shard_out: np.ndarray | None = None
        filled: np.ndarray | None = None  # rows of the shard done so far
        unsaved: list[np.ndarray] = []  # rows done since the last saved part
        last_save = time.monotonic()
        pending: tuple[torch.Tensor, _Batch] | None = None  # on CUDA: copied after the next launch
        written = resumed = finished_texts = 0

        def save_part() -> None:
            nonlocal unsaved, last_save
            assert shard is not None and shard_out is not None
            if unsaved:
                rows = np.concatenate(unsaved)
                write_part(
                    self.out_dir, shard.shard, shard.next_part, rows, shard_out[rows], self.run_id
                )
                shard.next_part += 1
                unsaved = []
            last_save = time.monotonic()

        def land(vectors: torch.Tensor, batch: _Batch) -> None:
            assert shard_out is not None and filled is not None
            shard_out[batch.positions] = vectors.cpu().numpy()
            filled[batch.positions] = True
            unsaved.append(batch.positions)
            progress.advance(len(batch.positions), batch.tokens)
            if time.monotonic() - last_save >= opts.save_every:
                save_part()

        try:
            while True:
                item = items.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, _Batch):
                    vectors = self._forward(item)
                    if pending is not None:
                        land(*pending)
                    pending = (vectors, item)
                elif isinstance(item, _ShardStart):
                    shard, shard_out, filled = item, item.vectors, item.done
                    unsaved, last_save = [], time.monotonic()
                    progress.advance(int(filled.sum()), 0, embedded=False)
                elif isinstance(item, _ShardEnd):
                    if pending is not None:
                        land(*pending)
                        pending = None
                    assert shard_out is not None and filled is not None and filled.all()
                    non_finite = int((~np.isfinite(shard_out).all(axis=1)).sum())
                    if non_finite:
                        progress.log(
                            f"warning: {shard_stem(item.shard)} has {non_finite} vector(s) with "
                            "NaN or infinity (try --dtype fp32)"
                        )
                    write_shard(
                        self.out_dir, item.shard, shard_out, item.ids, opts.parquet, self.run_id
                    )
                    remove_parts(self.out_dir, item.shard)
                    written += 1
                    finished_texts += len(item.ids)
                    if not tty:
                        progress.log(f"wrote {shard_stem(item.shard)} ({len(item.ids)} texts)")
                    shard = shard_out = filled = None
                elif isinstance(item, _ShardDone):
                    resumed += 1
                    finished_texts += item.count
                    progress.advance(item.count, 0, embedded=False)
                elif isinstance(item, _InputEnd):
                    shard_counts = item.shard_counts
                    break
        except KeyboardInterrupt:
            stop.set()
            kept = f"{written + resumed} finished shard(s)"
            if shard is not None and filled is not None:
                if pending is not None:
                    land(*pending)
                save_part()
                kept += f" and {int(filled.sum())} text(s) of {shard_stem(shard.shard)}"
            progress.log(
                f"interrupted: {kept} kept in {self.out_dir}; run the same command again to "
                "resume from there"
            )
            raise
        finally:
            stop.set()
            worker.join(timeout=5)
        progress.close()
        progress.log(
            f"{written} shard(s) written, {resumed} already finished"
            + (f", {bad.count} bad line(s) skipped" if bad is not None else "")
        )
        self.dist.barrier()  # every rank's shards are on disk
        if rank != 0:
            return None
        shards = []
        for index, count in enumerate(shard_counts):
            record = finished_shard(self.out_dir, index, count)
            if record is None:
                raise RuntimeError(f"{shard_stem(index)} is missing or damaged in {self.out_dir}")
            shards.append(record)
        skipped = (
            {"count": 0, "lines": []}
            if bad is None
            else {
                "count": bad.count,
                "lines": bad.examples,
            }
        )
        from bertfast._version import __version__

        extra = {
            "bertfast": __version__,
            "model": opts.model,
            "dimension": dim,
            "dtype": opts.output_dtype,
            "pooling": self.encoder.pooling,
            "normalized": settings["normalize"],
            "max_length": self.max_length,
            "compute_dtype": settings["compute_dtype"],
            "world_size": world,
            **opts.extra,
        }
        manifest = write_manifest(self.out_dir, settings, shards, skipped, extra, self.run_id)
        progress.log(f"{manifest['count']} vectors of dimension {dim} in {self.out_dir}")
        return manifest


def embed_corpus(options: EmbedOptions, encoder: SentenceEncoder | None = None) -> dict | None:
    """Embed ``options.inputs`` into ``options.output``; the manifest on rank 0, else None."""
    return CorpusEmbedder(options, encoder).run()
