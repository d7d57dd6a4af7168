"""Low-latency inference: the padding-free encoder replayed from CUDA graphs.

A BERT-base forward is about a hundred kernel launches; at small batches the host spends more
time launching them than the GPU spends running them. ``PackedGraphs`` captures the packed
(padding-free) encoder once per *bucket* and replays it with a single launch.

A bucket is a (token count, sequence count, length) triple from a ladder (``GraphBuckets``).
A batch of ``n`` sequences holding ``t`` real tokens, the longest ``l``, runs in the smallest
bucket with at least ``t`` tokens, ``n`` sequences and length ``l``: its ids, positions, types
and ``cu_seqlens`` are copied into the bucket's static buffers; sequence slots past ``n`` have
length 0 and token slots past ``t`` belong to no sequence. The attention grid is sized for the
bucket's sequences and length, its programs exit at once past their sequence's end, so one
graph serves every batch that fits; the length also picks ``auto``'s attention kernel.

Inputs outside the ladder (more tokens, sequences or length than its top rungs, a sequence
longer than ``max_position_embeddings``) run eagerly; so do ``output_hidden_states``,
left-padded batches with a pooler, training and anything with grad enabled.

All graphs share one memory pool (``torch.cuda.graph_pool_handle``); at most ``max_graphs``
are kept, the least recently used goes first. Concurrent callers are safe: one lock per
runner serialises copy-in, replay and copy-out (the static buffers are shared), so threads
calling one model take turns on the GPU, as they would on one stream.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from bertfast.packing import PackedBatch, real_token_indices

if TYPE_CHECKING:  # the model owns its runner and imports this module; no import back
    from bertfast.model import BertModel, BertModelOutput

# capture(fn) runs fn once while recording it and returns a replay function.
Capture = Callable[[Callable[[], None]], Callable[[], None]]

DEFAULT_TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
DEFAULT_SEQUENCE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_LENGTH_BUCKETS = (32, 64, 128, 256, 384, 512)


@dataclass(frozen=True)
class GraphBuckets:
    """The ladder a graph is captured for, each ascending: total tokens, sequences, and the
    longest sequence (the attention grid's bound, and what ``auto`` picks the attention by)."""

    tokens: tuple[int, ...] = DEFAULT_TOKEN_BUCKETS
    sequences: tuple[int, ...] = DEFAULT_SEQUENCE_BUCKETS
    lengths: tuple[int, ...] = DEFAULT_LENGTH_BUCKETS

    def __post_init__(self):
        ladders = (("tokens", self.tokens), ("sequences", self.sequences))
        for name, ladder in (*ladders, ("lengths", self.lengths)):
            if not ladder or any(not isinstance(v, int) or v < 1 for v in ladder):
                raise ValueError(f"GraphBuckets.{name} must be positive ints, got {ladder!r}")
            if list(ladder) != sorted(set(ladder)):
                raise ValueError(f"GraphBuckets.{name} must be strictly ascending, got {ladder!r}")

    def select(
        self, total_tokens: int, num_sequences: int, longest: int | None = None
    ) -> tuple[int, int, int] | None:
        """The smallest (tokens, sequences, length) bucket that holds the batch, or None.

        ``longest`` defaults to the most a sequence can hold in the token bucket.
        """
        i = bisect.bisect_left(self.tokens, total_tokens)
        j = bisect.bisect_left(self.sequences, num_sequences)
        if i == len(self.tokens) or j == len(self.sequences):
            return None
        tokens = self.tokens[i]
        longest = min(tokens, self.lengths[-1]) if longest is None else longest
        k = bisect.bisect_left(self.lengths, longest)
        if k == len(self.lengths):
            return None
        return tokens, self.sequences[j], min(tokens, self.lengths[k])


def cuda_graph_capture(fn: Callable[[], None], pool=None, warmup: int = 2) -> Callable[[], None]:
    """Warm up on a side stream (kernels compile there), then capture ``fn`` into a graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        fn()
    return graph.replay


@dataclass
class _Captured:
    """One bucket's static buffers and its replay function."""

    input_ids: torch.Tensor  # (tokens,)
    token_type_ids: torch.Tensor  # (tokens,)
    position_ids: torch.Tensor  # (tokens,)
    cu_seqlens: torch.Tensor  # (sequences + 1,) int32
    first_tokens: torch.Tensor  # (sequences,) each sequence's first token, for the pooler
    outputs: dict
    replay: Callable[[], None] | None = None


class PackedGraphs:
    """The graph runner of one ``BertModel`` (made by the model on its first graph forward).

    ``capture`` replaces the CUDA capture (tests record instead); with it the runner works on
    any device.
    """

    def __init__(
        self,
        model: BertModel,
        buckets: GraphBuckets | None = None,
        max_graphs: int = 32,
        capture: Capture | None = None,
    ):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.model = model
        self.buckets = buckets or GraphBuckets()
        self.max_graphs = max_graphs
        self.capture_is_custom = capture is not None
        self._capture = capture
        self._pool = None
        self._graphs: OrderedDict[tuple[int, int], _Captured] = OrderedDict()
        self._lock = threading.Lock()
        self.replays = 0  # forwards served from a graph
        self.eager_fallbacks = 0  # forwards that did not fit the ladder

    @property
    def captured(self) -> list[tuple[int, int, int]]:
        """The buckets held now, (tokens, sequences, length), least recently used first."""
        return list(self._graphs)

    def warmup(self, shapes: Iterable[tuple[int, ...]]) -> list[tuple[int, int, int]]:
        """Capture ahead of traffic: each (total_tokens, num_sequences[, longest]) picks its
        bucket (without ``longest``: the longest the token bucket allows)."""
        captured = []
        with self._lock:
            for shape in shapes:
                key = self._select(*shape)
                if key is None:
                    raise ValueError(
                        f"{shape} (tokens, sequences[, longest]) is beyond the bucket ladder "
                        f"(tokens up to {self.buckets.tokens[-1]}, sequences up to "
                        f"{self.buckets.sequences[-1]}, lengths up to {self._length_cap()})"
                    )
                self._graph_for(key)
                captured.append(key)
        return captured

    def _length_cap(self) -> int:
        return min(self.buckets.lengths[-1], self.model.config.max_position_embeddings)

    def _select(
        self, tokens: int, sequences: int, longest: int | None = None
    ) -> tuple[int, int, int] | None:
        """The ladder's bucket, its length bound no more than the model's positions."""
        key = self.buckets.select(tokens, sequences, longest)
        if key is None:
            return None
        return key[0], key[1], min(key[2], self.model.config.max_position_embeddings)

    def _capture_fn(self, fn: Callable[[], None]) -> Callable[[], None]:
        if self._capture is not None:
            return self._capture(fn)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return cuda_graph_capture(fn, self._pool)

    def _run_static(self, cap: _Captured, length: int) -> None:
        model = self.model
        hidden = model.encode_packed(
            cap.input_ids,
            cap.token_type_ids,
            cap.position_ids,
            cap.cu_seqlens,
            length,
            # Layouts are checked on a model's first forward (here: its first capture).
            validate=model._first_forward_on(model.backend),
        )
        cap.outputs["hidden"] = hidden
        if model.pooler is not None:
            cap.outputs["pooled"] = model.pool(hidden.index_select(0, cap.first_tokens)[:, None])

    def _graph_for(self, key: tuple[int, int, int]) -> _Captured:
        cap = self._graphs.get(key)
        if cap is not None:
            self._graphs.move_to_end(key)
            return cap
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)  # the least recently used bucket goes
        tokens, sequences, length = key
        device = self.model.device
        zeros = lambda n, dtype=torch.long: torch.zeros(n, dtype=dtype, device=device)
        # Normal tensors even under inference_mode: later calls without it copy into them.
        with torch.inference_mode(False):
            cap = _Captured(
                input_ids=zeros(tokens),
                token_type_ids=zeros(tokens),
                position_ids=zeros(tokens),
                cu_seqlens=zeros(sequences + 1, torch.int32),
                first_tokens=zeros(sequences),
                outputs={},
            )
        with torch.no_grad():
            cap.replay = self._capture_fn(lambda: self._run_static(cap, length))
        model = self.model
        model._validated.add((model.device, model.dtype, model.backend))
        self._graphs[key] = cap
        return cap

    def run(self, prepared) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(last_hidden_state, pooler_output) from a graph, or None when the batch does not
        fit the ladder (the caller runs it eagerly)."""
        ids = prepared.input_ids
        batch, seq = ids.shape
        lengths = prepared.lengths if prepared.has_padding else [seq] * batch
        total = sum(lengths)
        longest = max(lengths)
        key = self._select(total, batch, longest)
        if key is None or longest > key[2]:
            self.eager_fallbacks += 1
            return None
        offsets = [0]
        for length in lengths:
            offsets.append(offsets[-1] + length)
        tokens, sequences, _ = key
        # Empty slots: length 0 at the end; their pooler row reads token 0 and is dropped.
        cu_host = offsets + [total] * (sequences - batch)
        first_host = [min(o, tokens - 1) for o in cu_host[:-1]]
        host = torch.tensor(cu_host + first_host, dtype=torch.long)
        # The real tokens' positions; the offsets are the host ones above (no second copy).
        indices = real_token_indices(prepared.mask, total) if prepared.has_padding else None
        with self._lock:
            cap = self._graph_for(key)
            for static, source in (
                (cap.input_ids, prepared.input_ids),
                (cap.token_type_ids, prepared.token_type_ids),
                (cap.position_ids, prepared.position_ids),
            ):
                flat = source.reshape(-1)
                if indices is None:
                    static[:total].copy_(flat)
                else:
                    torch.index_select(flat, 0, indices, out=static[:total])
            device_host = host.to(ids.device, non_blocking=True)
            cap.cu_seqlens.copy_(device_host[: sequences + 1])
            cap.first_tokens.copy_(device_host[sequences + 1 :])
            cap.replay()
            self.replays += 1
            packing = PackedBatch(indices, cap.cu_seqlens[: batch + 1], longest, batch, seq)
            out = packing.unpack(cap.outputs["hidden"][:total])
            if indices is None:
                out = out.clone()  # else a view of the graph's buffer, which the next replay writes
            pooled = cap.outputs.get("pooled")
            pooled = None if pooled is None else pooled[:batch].clone()
        return out, pooled


class CUDAGraphEncoder:
    """Calls like ``BertModel`` (inference only) and always tries the graph path.

    Kept for callers of the earlier API: ``BertModel`` replays graphs by itself on CUDA now.
    """

    def __init__(self, model: BertModel, max_graphs: int = 32, capture: Capture | None = None):
        if model.training:
            raise ValueError("CUDAGraphEncoder runs inference only: call model.eval() first")
        if capture is None and model.device.type != "cuda":
            raise RuntimeError(
                f"CUDA graphs need the model on a CUDA device; it is on {model.device}"
            )
        model.enable_cuda_graphs(max_graphs=max_graphs, capture=capture)
        self.model = model

    @property
    def captured_shapes(self) -> list[tuple[int, int]]:
        return self.model.graphs.captured

    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> BertModelOutput:
        return self.model(input_ids, attention_mask, token_type_ids, position_ids)


__all__ = ["CUDAGraphEncoder", "GraphBuckets", "PackedGraphs", "cuda_graph_capture"]
