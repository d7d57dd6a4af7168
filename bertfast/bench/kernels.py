"""Micro-benchmarks of the fused ops at BERT-base shapes (H 768, 12 heads of 64, I 3072).

Each op runs on the torch reference op (``torch-ref``, the bertfast torch backend), on plain
eager torch in the working dtype as Hugging Face writes it (``torch-native``), on each SDPA
backend for attention (``sdpa-*``, fed the same packed qkv and returning the same layout), and
on every bertfast kernel backend that can run. Work counted, with T = batch·seq tokens and e
bytes per element:

- attention: 4·T·S·H FLOP (QKᵀ and PV); bytes 4·T·H·e (qkv read, context written)
- embedding_layer_norm: 3·T·8 (int64 ids) + (T + S + 2)·H·e (word rows, distinct position and
  type rows) + 2·H·e (LayerNorm) + T·H·e (output) bytes
- bias_residual_layer_norm: (3·T·H + 3·H)·e bytes (x, residual, output; bias, weight, bias)
- bias_gelu: (2·T·I + I)·e bytes (x, output; bias)
- linear_gelu (H→I) and linear_residual_layer_norm (I→H): 2·T·K·N FLOP; each GEMM with its
  epilogue fused (``bertfast-triton`` variant ``fused``, ``ops.linear_epilogue``) against the
  unfused path of each kernel backend (F.linear, then the fused elementwise op) and torch

Attention and the GEMMs are judged in TFLOP/s against the matmul ceiling, the others in GB/s
against the copy ceiling. The candidates of one op, shape and dtype that pass their first call
are timed together, one call each per rotating round (``timing.benchmark_interleaved``), so a
burst of load hits them alike and each speedup carries the interval of its per-round ratios.

Forward + backward rows (``run_kernel_backwards``): each op that has a backward on some kernel
backend (``ops.KERNEL_BACKWARD_OPS``) runs its forward and ``torch.autograd.grad`` on the same
inputs and output gradient: the torch reference op's autograd (``torch-ref``), plain torch in
the working dtype (``torch-native``; SDPA's kernels for attention) and each kernel backend whose
op has a backward. The error is the largest max abs difference of any input gradient from the
fp32 reference's autograd. Work counted, forward and backward together:

- attention: 14·T·S·H FLOP (forward 4·T·S·H; backward 10·T·S·H: QKᵀ recomputed, dV, dP, dQ,
  dK); bytes 12·T·H·e (forward 4·T·H·e; qkv, output and its gradient read, dqkv written)
- embedding_layer_norm: the forward's bytes, plus the output gradient and the gathered rows
  read again ((2·T + S + 2)·H·e), every table's gradient written whole ((V + P + 2)·H·e: autograd
  materialises dense table gradients) and the LayerNorm's parameters and gradients (4·H·e)
- bias_residual_layer_norm: (3·T·H + 3·H)·e forward, plus (4·T·H + 6·H)·e: dy, x and residual
  read, one gradient written (x's and the residual's are equal without dropout), the three
  parameter gradients
- bias_gelu: (2·T·I + I)·e forward, plus (3·T·I + 2·I)·e: dy and x read, dx written, the bias
  read and its gradient written
- linear_gelu and linear_residual_layer_norm: 6·T·K·N FLOP (forward 2·T·K·N; dX and dW); the
  fused op (``ops.linear_epilogue``) where its kernel has a backward, against the unfused path
  (F.linear, then the elementwise op) and torch
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bertfast import ops
from bertfast.bench.e2e import describe_error, max_abs_err, speedup_interval
from bertfast.bench.runners import RUNNERS, fp32_reference_precision
from bertfast.bench.settings import DTYPES, BenchSettings
from bertfast.bench.stats import fraction_of_ceiling
from bertfast.bench.timing import Timing, benchmark_interleaved, empty_cache, synchronize
from bertfast.config import BertConfig

KERNEL_OPS = (
    "attention",
    "embedding_layer_norm",
    "bias_residual_layer_norm",
    "bias_gelu",
    "linear_gelu",
    "linear_residual_layer_norm",
)
# SDPA kernels torch has for CUDA only: on another device they are left out of the grid (and
# listed as skipped once), not tried and refused with torch's dispatcher text.
SDPA_CUDA_ONLY = ("efficient", "cudnn")


def _sdpa_backends(device: torch.device | None = None) -> list[tuple[str, object]]:
    """SDPA's kernels as (label, SDPBackend) that can exist on ``device`` (None: every one)."""
    from torch.nn.attention import SDPBackend

    names = [
        ("math", "MATH"),
        ("efficient", "EFFICIENT_ATTENTION"),
        ("flash", "FLASH_ATTENTION"),
        ("cudnn", "CUDNN_ATTENTION"),
    ]
    return [
        (label, getattr(SDPBackend, attr))
        for label, attr in names
        if hasattr(SDPBackend, attr)
        # meta: the candidates of a CUDA run listed without a GPU (benchmarks/conftest.py)
        and (device is None or device.type in ("cuda", "meta") or label not in SDPA_CUDA_ONLY)
    ]


@dataclass
class Candidate:
    backend: str
    variant: str
    fn: Callable[[dict], torch.Tensor]
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


@dataclass
class OpCase:
    """One op at one shape and dtype: rotated inputs, its work, and who runs it."""

    op: str
    inputs: list[dict[str, torch.Tensor]]
    reference: Callable[[dict], torch.Tensor]  # fp32 output of an input set
    bytes: int
    flops: float | None
    candidates: list[Candidate] = field(default_factory=list)


def _sdpa(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """SDPA on views of the packed qkv, context back in (batch, seq, hidden) like our op."""
    batch, seq, three_hidden = qkv.shape
    hidden = three_hidden // 3
    q, k, v = qkv.view(batch, seq, 3, num_heads, hidden // num_heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(batch, seq, hidden)


def _attention_candidates(heads, h, batch, seq, device, kernel_backends) -> list[Candidate]:
    """Who runs attention on a (batch, seq, 3h) qkv, forward or forward + backward: the torch
    reference, each SDPA backend, and each kernel backend padded and packed."""
    from torch.nn.attention import sdpa_kernel

    tokens = batch * seq
    cu_seqlens = torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32, device=device)
    candidates = [Candidate("torch-ref", "padded", lambda x: ops.attention(x["qkv"], heads))]
    for label, backend in _sdpa_backends(torch.device(device)):
        candidates.append(
            Candidate(
                f"sdpa-{label}",
                "padded",
                lambda x: _sdpa(x["qkv"], heads),
                lambda backend=backend: sdpa_kernel([backend]),
            )
        )
    for kb in kernel_backends:
        candidates.append(
            Candidate(
                f"bertfast-{kb}",
                "padded",
                lambda x, kb=kb: ops.attention(x["qkv"], heads, backend=kb),
            )
        )
        candidates.append(
            Candidate(
                f"bertfast-{kb}",
                "packed",
                lambda x, kb=kb: ops.attention(
                    x["qkv"].view(tokens, 3 * h),
                    heads,
                    cu_seqlens=cu_seqlens,
                    max_seqlen=seq,
                    backend=kb,
                ).view(batch, seq, h),
            )
        )
    return candidates


def _attention_case(cfg, batch, seq, dtype, device, n, kernel_backends) -> OpCase:
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    tokens = batch * seq
    sets = [{"qkv": torch.randn(batch, seq, 3 * h, device=device, dtype=dtype)} for _ in range(n)]
    case = OpCase(
        "attention",
        sets,
        lambda x: ops.attention_reference(x["qkv"].float(), heads),
        4 * tokens * h * dtype.itemsize,
        4.0 * tokens * seq * h,
    )
    case.candidates += _attention_candidates(heads, h, batch, seq, device, kernel_backends)
    return case


def _embedding_case(cfg, batch, seq, dtype, device, n, kernel_backends) -> OpCase:
    h, eps = cfg.hidden_size, cfg.layer_norm_eps
    tokens = batch * seq

    def table(rows: int) -> torch.Tensor:
        return torch.randn(rows, h, device=device, dtype=dtype) * 0.02

    word, pos, typ = table(cfg.vocab_size), table(cfg.max_position_embeddings), table(2)
    weight = 1 + torch.randn(h, device=device, dtype=dtype) * 0.1
    bias = torch.randn(h, device=device, dtype=dtype) * 0.1
    positions = torch.arange(seq, device=device).repeat(batch)
    sets = [
        {
            "ids": torch.randint(0, cfg.vocab_size, (tokens,), device=device),
            "types": torch.randint(0, 2, (tokens,), device=device),
        }
        for _ in range(n)
    ]

    def run(backend: str) -> Callable[[dict], torch.Tensor]:
        return lambda x: ops.embedding_layer_norm(
            x["ids"], x["types"], positions, word, pos, typ, weight, bias, eps, backend=backend
        )

    def native(x: dict) -> torch.Tensor:
        summed = word[x["ids"]] + pos[positions] + typ[x["types"]]
        return F.layer_norm(summed, (h,), weight, bias, eps)

    def reference(x: dict) -> torch.Tensor:
        tables = [t.float() for t in (word, pos, typ, weight, bias)]
        return ops.embedding_layer_norm_reference(x["ids"], x["types"], positions, *tables, eps)

    e = dtype.itemsize
    moved = 3 * tokens * 8 + (tokens + seq + 2) * h * e + 2 * h * e + tokens * h * e
    case = OpCase("embedding_layer_norm", sets, reference, moved, None)
    case.candidates += [
        Candidate("torch-ref", "", run("torch")),
        Candidate("torch-native", "", native),
    ]
    case.candidates += [Candidate(f"bertfast-{kb}", "", run(kb)) for kb in kernel_backends]
    return case


def _residual_norm_case(cfg, batch, seq, dtype, device, n, kernel_backends) -> OpCase:
    h, eps = cfg.hidden_size, cfg.layer_norm_eps
    tokens = batch * seq
    bias = torch.randn(h, device=device, dtype=dtype) * 0.1
    weight = 1 + torch.randn(h, device=device, dtype=dtype) * 0.1
    ln_bias = torch.randn(h, device=device, dtype=dtype) * 0.1
    sets = [
        {
            "x": torch.randn(tokens, h, device=device, dtype=dtype),
            "residual": torch.randn(tokens, h, device=device, dtype=dtype),
        }
        for _ in range(n)
    ]

    def run(backend: str) -> Callable[[dict], torch.Tensor]:
        return lambda x: ops.bias_residual_layer_norm(
            x["x"], bias, x["residual"], weight, ln_bias, eps, backend=backend
        )

    def native(x: dict) -> torch.Tensor:
        return F.layer_norm(x["x"] + bias + x["residual"], (h,), weight, ln_bias, eps)

    def reference(x: dict) -> torch.Tensor:
        return ops.bias_residual_layer_norm_reference(
            x["x"].float(),
            bias.float(),
            x["residual"].float(),
            weight.float(),
            ln_bias.float(),
            eps,
        )

    moved = (3 * tokens * h + 3 * h) * dtype.itemsize
    case = OpCase("bias_residual_layer_norm", sets, reference, moved, None)
    case.candidates += [
        Candidate("torch-ref", "", run("torch")),
        Candidate("torch-native", "", native),
    ]
    case.candidates += [Candidate(f"bertfast-{kb}", "", run(kb)) for kb in kernel_backends]
    return case


def _bias_gelu_case(cfg, batch, seq, dtype, device, n, kernel_backends) -> OpCase:
    inter, approximate = cfg.intermediate_size, cfg.gelu_approximate
    tokens = batch * seq
    bias = torch.randn(inter, device=device, dtype=dtype) * 0.1
    sets = [{"x": torch.randn(tokens, inter, device=device, dtype=dtype)} for _ in range(n)]

    def run(backend: str) -> Callable[[dict], torch.Tensor]:
        return lambda x: ops.bias_gelu(x["x"], bias, approximate, backend=backend)

    case = OpCase(
        "bias_gelu",
        sets,
        lambda x: ops.bias_gelu_reference(x["x"].float(), bias.float(), approximate),
        (2 * tokens * inter + inter) * dtype.itemsize,
        None,
    )
    case.candidates += [
        Candidate("torch-ref", "", run("torch")),
        Candidate("torch-native", "", lambda x: F.gelu(x["x"] + bias, approximate=approximate)),
    ]
    case.candidates += [Candidate(f"bertfast-{kb}", "", run(kb)) for kb in kernel_backends]
    return case


def _gemm_epilogue_case(cfg, batch, seq, dtype, device, n, kernel_backends, which: str):
    """A GEMM with its epilogue: fused (``ops.linear_epilogue``, Triton) against today's
    unfused path on each kernel backend (F.linear, then the fused elementwise op) and torch."""
    h, inter, eps = cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps
    tokens = batch * seq
    k, out = (h, inter) if which == "ffn_up" else (inter, h)
    weight = torch.randn(out, k, device=device, dtype=dtype) / k**0.5
    bias = torch.randn(out, device=device, dtype=dtype) * 0.1
    ln_weight = 1 + torch.randn(out, device=device, dtype=dtype) * 0.1
    ln_bias = torch.randn(out, device=device, dtype=dtype) * 0.1
    approximate = cfg.gelu_approximate
    if which == "ffn_up":
        epilogue = "bias_gelu_tanh" if approximate == "tanh" else "bias_gelu"
    else:
        epilogue = "bias_residual_layer_norm"
    sets = []
    for _ in range(n):
        x = {"x": torch.randn(tokens, k, device=device, dtype=dtype)}
        if which != "ffn_up":
            x["residual"] = torch.randn(tokens, out, device=device, dtype=dtype)
        sets.append(x)

    def norm_args(x: dict) -> tuple:
        if which == "ffn_up":
            return (None, None, None)
        return (x["residual"], ln_weight, ln_bias)

    def fused(backend: str) -> Callable[[dict], torch.Tensor]:
        return lambda x: ops.linear_epilogue(
            x["x"], weight, bias, epilogue, *norm_args(x), eps, backend=backend
        )

    def unfused(backend: str) -> Callable[[dict], torch.Tensor]:
        def run(x: dict) -> torch.Tensor:
            y = F.linear(x["x"], weight)
            if which == "ffn_up":
                return ops.bias_gelu(y, bias, approximate, backend=backend)
            residual = x["residual"]
            return ops.bias_residual_layer_norm(
                y, bias, residual, ln_weight, ln_bias, eps, backend=backend
            )

        return run

    def native(x: dict) -> torch.Tensor:
        y = F.linear(x["x"], weight, bias)
        if which == "ffn_up":
            return F.gelu(y, approximate=approximate)
        return F.layer_norm(y + x["residual"], (out,), ln_weight, ln_bias, eps)

    def reference(x: dict) -> torch.Tensor:
        norm = [None if t is None else t.float() for t in norm_args(x)]
        return ops.linear_epilogue_reference(
            x["x"].float(), weight.float(), bias.float(), epilogue, *norm, eps
        )

    moved = (tokens * k + out * k + tokens * out * (1 if which == "ffn_up" else 2)) * dtype.itemsize
    case = OpCase(f"linear_{epilogue}", sets, reference, moved, 2.0 * tokens * k * out)
    case.candidates.append(Candidate("torch-native", "", native))
    for kb in kernel_backends:
        case.candidates.append(Candidate(f"bertfast-{kb}", "unfused", unfused(kb)))
    if "triton" in kernel_backends:
        case.candidates.append(Candidate("bertfast-triton", "fused", fused("triton")))
    return case


OP_CASES = {
    "attention": _attention_case,
    "embedding_layer_norm": _embedding_case,
    "bias_residual_layer_norm": _residual_norm_case,
    "bias_gelu": _bias_gelu_case,
    "linear_gelu": lambda *a: _gemm_epilogue_case(*a, which="ffn_up"),
    "linear_residual_layer_norm": lambda *a: _gemm_epilogue_case(*a, which="ffn_down"),
}


@dataclass
class BackwardCase:
    """One op's forward + backward at one shape and dtype: rotated inputs (those named in
    ``grad_keys`` require grad), an output gradient per input set, and who runs it."""

    op: str
    inputs: list[dict[str, torch.Tensor]]
    grad_keys: tuple[str, ...]
    grad_outputs: list[torch.Tensor]
    reference: Callable[[dict], torch.Tensor]  # the fp32 reference's forward of fp32 leaves
    bytes: int
    flops: float | None
    candidates: list[Candidate] = field(default_factory=list)

    def reference_grads(self) -> dict[str, torch.Tensor]:
        """Input gradients of the first input set by the fp32 reference's autograd."""
        x = {
            k: v.detach().float().requires_grad_() if k in self.grad_keys else v
            for k, v in self.inputs[0].items()
        }
        with fp32_reference_precision(), torch.enable_grad():
            out = self.reference(x)
            grads = torch.autograd.grad(
                out, [x[k] for k in self.grad_keys], self.grad_outputs[0].float()
            )
        return dict(zip(self.grad_keys, grads, strict=True))


def forward_backward(case: BackwardCase, cand: Candidate, i: int) -> tuple[torch.Tensor, ...]:
    """The candidate's forward on input set ``i`` and its input gradients (no accumulation)."""
    x = case.inputs[i]
    with torch.enable_grad():
        out = cand.fn(x)
        return torch.autograd.grad(
            out.reshape(case.grad_outputs[i].shape),
            [x[k] for k in case.grad_keys],
            case.grad_outputs[i],
        )


def backward_first_call(
    case: BackwardCase, cand: Candidate, device: torch.device
) -> dict[str, torch.Tensor] | str:
    """The first forward + backward's input gradients, or why it failed."""
    with warnings.catch_warnings(record=True) as caught, cand.context():
        warnings.simplefilter("always")
        try:
            grads = forward_backward(case, cand, 0)
            synchronize(device)
            return dict(zip(case.grad_keys, grads, strict=True))
        except Exception as exc:
            reason = describe_error(exc)
            why = "; ".join(str(w.message).strip().splitlines()[0] for w in caught[:2])
            return f"{reason} ({why})" if why else reason


def grad_error(
    grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> tuple[float | None, str | None]:
    """The largest max abs error of any input gradient, and that input (None: NaN or inf)."""
    worst, worst_key = 0.0, None
    for key, ref in reference.items():
        err = max_abs_err(grads[key].reshape(ref.shape), ref, None)
        if err is None:
            return None, key
        if worst_key is None or err > worst:
            worst, worst_key = err, key
    return worst, worst_key


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_()


def _has_backward(kernel_backends: list[str], op: str) -> list[str]:
    return [kb for kb in kernel_backends if op in ops.KERNEL_BACKWARD_OPS.get(kb, ())]


def _attention_backward_case(cfg, batch, seq, dtype, device, n, kernel_backends) -> BackwardCase:
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    tokens = batch * seq
    sets = [
        {"qkv": _leaf(torch.randn(batch, seq, 3 * h, device=device, dtype=dtype))} for _ in range(n)
    ]
    grad_outputs = [torch.randn(batch, seq, h, device=device, dtype=dtype) for _ in range(n)]
    case = BackwardCase(
        "attention",
        sets,
        ("qkv",),
        grad_outputs,
        lambda x: ops.attention_reference(x["qkv"], heads),
        12 * tokens * h * dtype.itemsize,
        14.0 * tokens * seq * h,
    )
    backends = _has_backward(kernel_backends, "attention")
    case.candidates += _attention_candidates(heads, h, batch, seq, device, backends)
    return case


def _embedding_backward_case(cfg, batch, seq, dtype, device, n, kernel_backends) -> BackwardCase:
    h, eps = cfg.hidden_size, cfg.layer_norm_eps
    vocab, max_pos = cfg.vocab_size, cfg.max_position_embeddings
    tokens = batch * seq

    def table(rows: int) -> torch.Tensor:
        return _leaf(torch.randn(rows, h, device=device, dtype=dtype) * 0.02)

    params = {
        "word": table(vocab),
        "pos": table(max_pos),
        "typ": table(2),
        "weight": _leaf(1 + torch.randn(h, device=device, dtype=dtype) * 0.1),
        "bias": _leaf(torch.randn(h, device=device, dtype=dtype) * 0.1),
    }
    positions = torch.arange(seq, device=device).repeat(batch)
    sets = [
        {
            "ids": torch.randint(0, vocab, (tokens,), device=device),
            "types": torch.randint(0, 2, (tokens,), device=device),
            **params,
        }
        for _ in range(n)
    ]
    grad_outputs = [torch.randn(tokens, h, device=device, dtype=dtype) for _ in range(n)]

    def run(backend: str) -> Callable[[dict], torch.Tensor]:
        return lambda x: ops.embedding_layer_norm(
            x["ids"], x["types"], positions, x["word"], x["pos"], x["typ"], x["weight"],
            x["bias"], eps, backend=backend,
        )  # fmt: skip

    def native(x: dict) -> torch.Tensor:
        summed = x["word"][x["ids"]] + x["pos"][positions] + x["typ"][x["types"]]
        return F.layer_norm(summed, (h,), x["weight"], x["bias"], eps)

    def reference(x: dict) -> torch.Tensor:
        return ops.embedding_layer_norm_reference(
            x["ids"], x["types"], positions, x["word"], x["pos"], x["typ"], x["weight"],
            x["bias"], eps,
        )  # fmt: skip

    e = dtype.itemsize
    forward = 3 * tokens * 8 + (tokens + seq + 2) * h * e + 2 * h * e + tokens * h * e
    backward = (2 * tokens + seq + 2) * h * e + (vocab + max_pos + 2) * h * e + 4 * h * e
    case = BackwardCase(
        "embedding_layer_norm",
        sets,
        ("word", "pos", "typ", "weight", "bias"),
        grad_outputs,
        reference,
        forward + backward,
        None,
    )
    case.candidates += [
        Candidate("torch-ref", "", run("torch")),
        Candidate("torch-native", "", native),
    ]
    kbs = _has_backward(kernel_backends, "embedding_layer_norm")
    case.candidates += [Candidate(f"bertfast-{kb}", "", run(kb)) for kb in kbs]
    return case


def _residual_norm_backward_case(
    cfg, batch, seq, dtype, device, n, kernel_backends
) -> BackwardCase:
    h, eps = cfg.hidden_size, cfg.layer_norm_eps
    tokens = batch * seq
    params = {
        "bias": _leaf(torch.randn(h, device=device, dtype=dtype) * 0.1),
        "weight": _leaf(1 + torch.randn(h, device=device, dtype=dtype) * 0.1),
        "ln_bias": _leaf(torch.randn(h, device=device, dtype=dtype) * 0.1),
    }
    sets = [
        {
            "x": _leaf(torch.randn(tokens, h, device=device, dtype=dtype)),
            "residual": _leaf(torch.randn(tokens, h, device=device, dtype=dtype)),
            **params,
        }
        for _ in range(n)
    ]
    grad_outputs = [torch.randn(tokens, h, device=device, dtype=dtype) for _ in range(n)]

    def run(backend: str) -> Callable[[dict], torch.Tensor]:
        return lambda x: ops.bias_residual_layer_norm(
            x["x"], x["bias"], x["residual"], x["weight"], x["ln_bias"], eps, backend=backend
        )

    def native(x: dict) -> torch.Tensor:
        summed = x["x"] + x["bias"] + x["residual"]
        return F.layer_norm(summed, (h,), x["weight"], x["ln_bias"], eps)

    def reference(x: dict) -> torch.Tensor:
        return ops.bias_residual_layer_norm_reference(
            x["x"], x["bias"], x["residual"], x["weight"], x["ln_bias"], eps
        )

    e = dtype.itemsize
    case = BackwardCase(
        "bias_residual_layer_norm",
        sets,
        ("x", "residual", "bias", "weight", "ln_bias"),
        grad_outputs,
        reference,
        (3 * tokens * h + 3 * h) * e + (4 * tokens * h + 6 * h) * e,
        None,
    )
    case.candidates += [
        Candidate("torch-ref", "", run("torch")),
        Candidate("torch-native", "", native),
    ]
    kbs = _has_backward(kernel_backends, "bias_residual_layer_norm")
    case.candidates += [Candidate(f"bertfast-{kb}", "", run(kb)) for kb in kbs]
    return case


def _bias_gelu_backward_case(cfg, batch, seq, dtype, device, n, kernel_backends) -> BackwardCase:
    inter, approximate = cfg.intermediate_size, cfg.gelu_approximate
    tokens = batch * seq
    bias = _leaf(torch.randn(inter, device=device, dtype=dtype) * 0.1)
    sets = [
        {"x": _leaf(torch.randn(tokens, inter, device=device, dtype=dtype)), "bias": bias}
        for _ in range(n)
    ]
    grad_outputs = [torch.randn(tokens, inter, device=device, dtype=dtype) for _ in range(n)]

    def run(backend: str) -> Callable[[dict], torch.Tensor]:
        return lambda x: ops.bias_gelu(x["x"], x["bias"], approximate, backend=backend)

    e = dtype.itemsize
    case = BackwardCase(
        "bias_gelu",
        sets,
        ("x", "bias"),
        grad_outputs,
        lambda x: ops.bias_gelu_reference(x["x"], x["bias"], approximate),
        (2 * tokens * inter + inter) * e + (3 * tokens * inter + 2 * inter) * e,
        None,
    )
    case.candidates += [
        Candidate("torch-ref", "", run("torch")),
        Candidate(
            "torch-native", "", lambda x: F.gelu(x["x"] + x["bias"], approximate=approximate)
        ),
    ]
    kbs = _has_backward(kernel_backends, "bias_gelu")
    case.candidates += [Candidate(f"bertfast-{kb}", "", run(kb)) for kb in kbs]
    return case


def _gemm_epilogue_backward_case(
    cfg, batch, seq, dtype, device, n, kernel_backends, which: str
) -> BackwardCase:
    """A GEMM with its epilogue, forward + backward: fused (``ops.linear_epilogue``) where a
    backend's fused op has a backward, against the unfused path of each kernel backend whose
    elementwise op has one (F.linear, then the op) and plain torch."""
    h, inter, eps = cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps
    tokens = batch * seq
    k, out = (h, inter) if which == "ffn_up" else (inter, h)
    approximate = cfg.gelu_approximate
    if which == "ffn_up":
        epilogue = "bias_gelu_tanh" if approximate == "tanh" else "bias_gelu"
        elementwise = "bias_gelu"
    else:
        epilogue = elementwise = "bias_residual_layer_norm"
    params = {
        "weight": _leaf(torch.randn(out, k, device=device, dtype=dtype) / k**0.5),
        "bias": _leaf(torch.randn(out, device=device, dtype=dtype) * 0.1),
    }
    if which != "ffn_up":
        params["ln_weight"] = _leaf(1 + torch.randn(out, device=device, dtype=dtype) * 0.1)
        params["ln_bias"] = _leaf(torch.randn(out, device=device, dtype=dtype) * 0.1)
    sets = []
    for _ in range(n):
        x = {"x": _leaf(torch.randn(tokens, k, device=device, dtype=dtype)), **params}
        if which != "ffn_up":
            x["residual"] = _leaf(torch.randn(tokens, out, device=device, dtype=dtype))
        sets.append(x)
    grad_outputs = [torch.randn(tokens, out, device=device, dtype=dtype) for _ in range(n)]

    def norm_args(x: dict) -> tuple:
        if which == "ffn_up":
            return (None, None, None)
        return (x["residual"], x["ln_weight"], x["ln_bias"])

    def fused(backend: str) -> Callable[[dict], torch.Tensor]:
        return lambda x: ops.linear_epilogue(
            x["x"], x["weight"], x["bias"], epilogue, *norm_args(x), eps, backend=backend
        )

    def unfused(backend: str) -> Callable[[dict], torch.Tensor]:
        def run(x: dict) -> torch.Tensor:
            y = F.linear(x["x"], x["weight"])
            if which == "ffn_up":
                return ops.bias_gelu(y, x["bias"], approximate, backend=backend)
            return ops.bias_residual_layer_norm(
                y, x["bias"], x["residual"], x["ln_weight"], x["ln_bias"], eps, backend=backend
            )

        return run

    def native(x: dict) -> torch.Tensor:
        y = F.linear(x["x"], x["weight"], x["bias"])
        if which == "ffn_up":
            return F.gelu(y, approximate=approximate)
        return F.layer_norm(y + x["residual"], (out,), x["ln_weight"], x["ln_bias"], eps)

    def reference(x: dict) -> torch.Tensor:
        return ops.linear_epilogue_reference(
            x["x"], x["weight"], x["bias"], epilogue, *norm_args(x), eps
        )

    e = dtype.itemsize
    residual = 0 if which == "ffn_up" else 1
    forward = tokens * k + out * k + tokens * out * (1 + residual)
    # dy, x and W read; dx and dW written; the epilogue's input read again (its pre-activation,
    # or the residual, whose gradient is written too)
    backward = tokens * out + 2 * tokens * k + 2 * out * k + tokens * out * (1 + residual)
    keys = ("x", "weight", "bias") + (
        () if which == "ffn_up" else ("residual", "ln_weight", "ln_bias")
    )
    case = BackwardCase(
        f"linear_{epilogue}",
        sets,
        keys,
        grad_outputs,
        reference,
        (forward + backward) * e,
        6.0 * tokens * k * out,  # forward 2·T·K·N, backward dX and dW 4·T·K·N
    )
    case.candidates.append(Candidate("torch-native", "", native))
    for kb in _has_backward(kernel_backends, elementwise):
        case.candidates.append(Candidate(f"bertfast-{kb}", "unfused", unfused(kb)))
    for kb in _has_backward(kernel_backends, "linear_epilogue"):
        if "linear_epilogue" in ops.KERNEL_OPS.get(kb, ()):
            case.candidates.append(Candidate(f"bertfast-{kb}", "fused", fused(kb)))
    return case


# The ops of KERNEL_OPS with a forward + backward case; ops.KERNEL_BACKWARD_OPS says which
# kernel backend has a backward for each (BACKWARD_OPS: the op a case's fused kernel is).
BACKWARD_CASES = {
    "attention": _attention_backward_case,
    "embedding_layer_norm": _embedding_backward_case,
    "bias_residual_layer_norm": _residual_norm_backward_case,
    "bias_gelu": _bias_gelu_backward_case,
    "linear_gelu": lambda *a: _gemm_epilogue_backward_case(*a, which="ffn_up"),
    "linear_residual_layer_norm": lambda *a: _gemm_epilogue_backward_case(*a, which="ffn_down"),
}
BACKWARD_OPS = {
    **{op: op for op in BACKWARD_CASES},
    "linear_gelu": "linear_epilogue",
    "linear_residual_layer_norm": "linear_epilogue",
}
BACKWARD_PASS = "fwd+bwd"


def _backend_skip(backend: str, reason: str) -> dict:
    """A kernel candidate left out of every op and shape, and why."""
    return {"kind": "kernel", "op": None, "backend": backend, "variant": None, "reason": reason}


def _skip(op: str, cand: Candidate, batch: int, seq: int, dtype: str, reason: str) -> dict:
    return {
        "kind": "kernel",
        "op": op,
        "backend": cand.backend,
        "variant": cand.variant,
        "batch": batch,
        "seq": seq,
        "dtype": dtype,
        "reason": reason,
    }


def _first_call(cand: Candidate, x: dict, device: torch.device) -> torch.Tensor | str:
    """The first call's output, or why it failed (SDPA explains a refusal in its warnings)."""
    with warnings.catch_warnings(record=True) as caught, cand.context():
        warnings.simplefilter("always")
        try:
            out = cand.fn(x)
            synchronize(device)
            return out
        except Exception as exc:
            reason = describe_error(exc)
            why = "; ".join(str(w.message).strip().splitlines()[0] for w in caught[:2])
            return f"{reason} ({why})" if why else reason


def finish_kernel_rows(rows: list[dict]) -> None:
    """Speedup over the fastest non-bertfast candidate of the same op, shape and dtype, with
    its 95 % interval (from the per-round ratios: the candidates of a case run interleaved)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["batch"], r["seq"], r["dtype"]), []).append(r)
    for group in groups.values():
        baselines = [r for r in group if not r["backend"].startswith("bertfast-")]
        if not baselines:
            continue
        best = min(baselines, key=lambda r: r["median_ms"])
        for r in group:
            r["baseline"] = best["backend"]
            r["speedup_vs_baseline"] = best["median_ms"] / r["median_ms"]
            r["speedup_ci_low"], r["speedup_ci_high"] = speedup_interval(best, r)


def _kernel_backends(
    settings: BenchSettings, device: torch.device, skipped: list[dict], **where
) -> list[str]:
    """The kernel backends the settings ask for that run here; the others (and SDPA's CUDA-only
    kernels off CUDA) are added to ``skipped`` once, so the report can say why they are absent."""
    kernel_backends = []
    for kb in ("triton", "cuda"):
        if f"bertfast-{kb}" not in settings.backends:
            continue
        reason = RUNNERS[f"bertfast-{kb}"].unavailable_reason(device)
        if reason is None:
            kernel_backends.append(kb)
        else:
            skipped.append({**_backend_skip(f"bertfast-{kb}", reason), **where})
    if device.type != "cuda":
        for label in SDPA_CUDA_ONLY:
            skipped.append(
                {
                    **_backend_skip(f"sdpa-{label}", f"not available on {device.type}"),
                    "op": "attention",
                    **where,
                }
            )
    return kernel_backends


def run_kernels(
    settings: BenchSettings, ceilings: dict, log: Callable[[str], None]
) -> tuple[list[dict], list[dict]]:
    """Time every op at the settings' kernel shapes; returns (kernel_rows, skipped)."""
    device = torch.device(settings.device)
    cfg = BertConfig.preset("bert-base")
    rows: list[dict] = []
    skipped: list[dict] = []
    if not settings.kernel_shapes or "forward" not in settings.kernel_passes:
        return rows, skipped
    kernel_backends = _kernel_backends(settings, device, skipped)
    torch.manual_seed(settings.seed)
    for batch, seq in settings.kernel_shapes:
        for dtype_name in settings.dtypes:
            dtype = DTYPES[dtype_name]
            for op in KERNEL_OPS:
                case = OP_CASES[op](
                    cfg, batch, seq, dtype, device, settings.timer.n_inputs, kernel_backends
                )
                with fp32_reference_precision(), torch.inference_mode():
                    reference = case.reference(case.inputs[0])
                measured = _measure(case, reference, batch, seq, dtype_name, settings, ceilings)
                for cand, row in measured:
                    if isinstance(row, str):
                        entry = _skip(op, cand, batch, seq, dtype_name, row)
                        skipped.append(entry)
                        log(f"skip {op} {cand.backend} {cand.variant} b{batch}×s{seq}: {row}")
                    else:
                        rows.append(row)
                        log(_progress(row))
                del case, reference
                empty_cache(device)
    finish_kernel_rows(rows)
    return rows, skipped


def run_kernel_backwards(
    settings: BenchSettings, ceilings: dict, log: Callable[[str], None]
) -> tuple[list[dict], list[dict]]:
    """Time forward + backward of every op with a backward at the settings' kernel shapes;
    returns (rows, skipped). Rows carry ``pass`` "fwd+bwd" and the input gradients' error."""
    device = torch.device(settings.device)
    cfg = BertConfig.preset("bert-base")
    rows: list[dict] = []
    skipped: list[dict] = []
    if not settings.kernel_shapes or "backward" not in settings.kernel_passes:
        return rows, skipped
    where = {"pass": BACKWARD_PASS}
    kernel_backends = _kernel_backends(settings, device, skipped, **where)
    for kb in kernel_backends:
        for op in dict.fromkeys(BACKWARD_OPS.values()):
            if op in ops.KERNEL_OPS.get(kb, ()) and op not in ops.KERNEL_BACKWARD_OPS.get(kb, ()):
                reason = ops.no_backward_message(op, kb)
                skipped.append({**_backend_skip(f"bertfast-{kb}", reason), "op": op, **where})
    torch.manual_seed(settings.seed)
    for batch, seq in settings.kernel_shapes:
        for dtype_name in settings.dtypes:
            dtype = DTYPES[dtype_name]
            for op, make_case in BACKWARD_CASES.items():
                case = make_case(
                    cfg, batch, seq, dtype, device, settings.timer.n_inputs, kernel_backends
                )
                reference = case.reference_grads()
                measured = _measure_backward(
                    case, reference, batch, seq, dtype_name, settings, ceilings
                )
                for cand, row in measured:
                    if isinstance(row, str):
                        skipped.append({**_skip(op, cand, batch, seq, dtype_name, row), **where})
                        what = f"{op} fwd+bwd {cand.backend} {cand.variant}"
                        log(f"skip {what} b{batch}×s{seq}: {row}")
                    else:
                        rows.append(row)
                        log(_progress(row))
                del case, reference
                empty_cache(device)
    finish_kernel_rows(rows)
    return rows, skipped


def _in_context(cand: Candidate, fn: Callable[[int], object]) -> Callable[[int], object]:
    """``fn`` run inside the candidate's context (an SDPA backend forced), entered per call:
    interleaved candidates cannot share one context."""
    if cand.context is contextlib.nullcontext:
        return fn

    def run(i: int) -> object:
        with cand.context():
            return fn(i)

    return run


def _measure_interleaved(
    candidates: list[Candidate],
    first: Callable[[Candidate], object],
    call: Callable[[Candidate], Callable[[int], object]],
    make_row: Callable[[Candidate, Timing, object, bool], dict],
    device: torch.device,
    settings: BenchSettings,
) -> list[tuple[Candidate, dict | str]]:
    """Each candidate's row, or the reason it could not run. ``first(cand)`` makes its first
    call and returns what the row needs of it (its error), or a string saying why it failed;
    the candidates that ran are then timed together in rotating rounds (``call(cand)(i)``: one
    call on input set ``i``), so one burst of load hits them alike and their ratios come from
    the same rounds; ``make_row(cand, timing, first's answer, interleaved)`` writes a row."""
    outcome: dict[int, dict | str] = {}
    checked: dict[int, object] = {}
    for k, cand in enumerate(candidates):
        answer = first(cand)
        if isinstance(answer, str):
            empty_cache(device)
            outcome[k] = answer
        else:
            checked[k] = answer
    labels = {k: f"{k} {candidates[k].backend} {candidates[k].variant}".strip() for k in checked}
    fns = {labels[k]: _in_context(candidates[k], call(candidates[k])) for k in checked}
    timings, failed = benchmark_interleaved(fns, device, settings.timer)
    for k, answer in checked.items():
        label = labels[k]
        if label in failed:
            empty_cache(device)
            outcome[k] = describe_error(failed[label])
        else:
            outcome[k] = make_row(candidates[k], timings[label], answer, len(timings) > 1)
    return [(cand, outcome[k]) for k, cand in enumerate(candidates)]


def _measure_backward(
    case: BackwardCase, reference, batch, seq, dtype_name, settings, ceilings
) -> list[tuple[Candidate, dict | str]]:
    """Each candidate's forward + backward row, or the reason it could not run."""
    device = torch.device(settings.device)
    n = len(case.inputs)

    def first(cand: Candidate) -> tuple[float | None, str | None] | str:
        grads = backward_first_call(case, cand, device)
        return grads if isinstance(grads, str) else grad_error(grads, reference)

    def make_row(cand: Candidate, timing: Timing, error, interleaved: bool) -> dict:
        err, worst = error
        row = kernel_row(case, cand, timing, err, batch, seq, dtype_name, ceilings, interleaved)
        row.update({"pass": BACKWARD_PASS, "worst_grad": worst})
        return row

    return _measure_interleaved(
        case.candidates,
        first,
        lambda cand: lambda i: forward_backward(case, cand, i % n),
        make_row,
        device,
        settings,
    )


def _measure(
    case: OpCase, reference, batch, seq, dtype_name, settings, ceilings
) -> list[tuple[Candidate, dict | str]]:
    """Each candidate's row, or the reason it could not run."""
    device = torch.device(settings.device)
    n = len(case.inputs)

    def first(cand: Candidate) -> float | None | str:
        out = _first_call(cand, case.inputs[0], device)
        if isinstance(out, str):
            return out
        return max_abs_err(out.reshape(reference.shape), reference, None)

    def make_row(cand: Candidate, timing: Timing, err, interleaved: bool) -> dict:
        return kernel_row(case, cand, timing, err, batch, seq, dtype_name, ceilings, interleaved)

    with torch.inference_mode():
        return _measure_interleaved(
            case.candidates,
            first,
            lambda cand: lambda i: cand.fn(case.inputs[i % n]),
            make_row,
            device,
            settings,
        )


def kernel_row(
    case: OpCase | BackwardCase,
    cand: Candidate,
    timing: Timing,
    err: float | None,
    batch: int,
    seq: int,
    dtype_name: str,
    ceilings: dict,
    interleaved: bool = False,
) -> dict:
    """A measured candidate's row: its rates and their fraction of the device's ceiling;
    ``interleaved``: timed in rounds with the other candidates of its case."""
    seconds = timing.median_ms * 1e-3
    gbps = case.bytes / seconds / 1e9
    tflops = case.flops / seconds / 1e12 if case.flops is not None else None
    if tflops is not None:
        frac, ceiling_note = fraction_of_ceiling(tflops, ceilings["matmul_tflops"].get(dtype_name))
    else:
        frac, ceiling_note = fraction_of_ceiling(gbps, ceilings["copy_gbps"])
    return {
        "op": case.op,
        "backend": cand.backend,
        "variant": cand.variant,
        "batch": batch,
        "seq": seq,
        "dtype": dtype_name,
        "tokens": batch * seq,
        "median_ms": timing.median_ms,
        "p10_ms": timing.p10_ms,
        "p90_ms": timing.p90_ms,
        "repeats": timing.repeats,
        **timing.row_fields(),
        "interleaved": interleaved,
        "samples_ms": [float(f"{t:.4g}") for t in timing.samples_ms],
        "bytes": case.bytes,
        "flops": case.flops,
        "gbps": gbps,
        "tflops": tflops,
        "metric": "TFLOP/s" if tflops is not None else "GB/s",
        "frac_ceiling": frac,
        "ceiling_note": ceiling_note,
        "baseline": None,
        "speedup_vs_baseline": None,
        "speedup_ci_low": None,
        "speedup_ci_high": None,
        "max_abs_err": err,
    }


def _progress(row: dict) -> str:
    value = (
        f"{row['tflops']:.2f} TFLOP/s" if row["tflops"] is not None else f"{row['gbps']:.1f} GB/s"
    )
    err = "nan/inf" if row["max_abs_err"] is None else f"{row['max_abs_err']:.1e}"
    op = row["op"] + (" fwd+bwd" if row.get("pass") == BACKWARD_PASS else "")
    return (
        f"kernel {op} b{row['batch']}×s{row['seq']} {row['dtype']} {row['backend']}"
        f"{' ' + row['variant'] if row['variant'] else ''}: {row['median_ms']:.4f} ms "
        f"(95 % CI [{row['ci_low_ms']:.4f}, {row['ci_high_ms']:.4f}], n={row['repeats']}"
        f"{', NOISY' if row['noisy'] else ''}), {value}, err {err}"
    )
