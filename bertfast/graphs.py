"""Low-latency inference: the whole encoder replayed from a CUDA graph.

A BERT-base forward is about a hundred kernel launches; at small batches the host spends more
time launching them than the GPU spends running them. ``CUDAGraphEncoder`` captures the forward
once per input shape and replays it with a single launch.

Inside a graph every shape is fixed, so there is no packing: padded batches run the padded
attention form with the mask as an input, and padded positions are computed (as Hugging Face
computes them) rather than skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bertfast.model import BertModel, BertModelOutput, prepare_inputs

# capture(fn) runs fn once while recording it and returns a replay function.
Capture = Callable[[Callable[[], None]], Callable[[], None]]


def cuda_graph_capture(fn: Callable[[], None], warmup: int = 2) -> Callable[[], None]:
    """Warm up on a side stream (kernels compile there), then capture ``fn`` into a graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


@dataclass
class _Captured:
    """One shape's static input and output buffers and its replay function."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor  # bool
    token_type_ids: torch.Tensor
    position_ids: torch.Tensor
    outputs: dict
    replay: Callable[[], None] | None = None


class CUDAGraphEncoder:
    """Calls like ``BertModel`` (inference only); each new (batch, seq) captures a graph.

    Inputs are validated before they are copied in (one host sync, as in ``BertModel``);
    outputs are fresh tensors, not views of the graph's buffers. ``max_graphs`` bounds how many
    shapes are kept (each holds its own memory pool); pad inputs to a few fixed lengths to
    reuse graphs.
    """

    def __init__(self, model: BertModel, max_graphs: int = 16, capture: Capture | None = None):
        if model.training:
            raise ValueError("CUDAGraphEncoder runs inference only: call model.eval() first")
        if capture is None and model.device.type != "cuda":
            raise RuntimeError(
                f"CUDA graphs need the model on a CUDA device; it is on {model.device}"
            )
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.model = model
        self.max_graphs = max_graphs
        self._capture = capture or cuda_graph_capture
        self._graphs: dict[tuple[int, int], _Captured] = {}

    @property
    def captured_shapes(self) -> list[tuple[int, int]]:
        return list(self._graphs)

    def _run_static(self, cap: _Captured) -> None:
        hidden = self.model.encode_padded(
            cap.input_ids, cap.token_type_ids, cap.position_ids, cap.attention_mask
        )
        cap.outputs["last_hidden_state"] = hidden
        cap.outputs["pooler_output"] = self.model.pool(hidden)

    def _graph_for(self, batch: int, seq: int) -> _Captured:
        key = (batch, seq)
        cap = self._graphs.get(key)
        if cap is not None:
            return cap
        if len(self._graphs) >= self.max_graphs:
            self._graphs.pop(next(iter(self._graphs)))  # the oldest shape goes
        device = self.model.device
        cap = _Captured(
            input_ids=torch.zeros(batch, seq, dtype=torch.long, device=device),
            attention_mask=torch.ones(batch, seq, dtype=torch.bool, device=device),
            token_type_ids=torch.zeros(batch, seq, dtype=torch.long, device=device),
            position_ids=torch.arange(seq, device=device).repeat(batch, 1),
            outputs={},
        )
        cap.replay = self._capture(lambda: self._run_static(cap))
        self._graphs[key] = cap
        return cap

    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> BertModelOutput:
        model = self.model
        ids, mask, types, positions, _, _ = prepare_inputs(
            model.config, input_ids, attention_mask, token_type_ids, position_ids, model.device
        )
        cap = self._graph_for(*ids.shape)
        cap.input_ids.copy_(ids)
        cap.token_type_ids.copy_(types)
        cap.position_ids.copy_(positions)
        if mask is None:
            cap.attention_mask.fill_(True)
        else:
            cap.attention_mask.copy_(mask)
        cap.replay()
        pooled = cap.outputs["pooler_output"]
        return BertModelOutput(
            cap.outputs["last_hidden_state"].clone(),
            None if pooled is None else pooled.clone(),
        )
