"""Multi-head self-attention read straight from the fused QKV projection's output.

Two input forms:
- padded: ``qkv`` is (batch, seq, 3 * hidden) with an optional ``key_padding_mask`` (batch, seq),
  True for real tokens; the output is (batch, seq, hidden).
- packed: ``qkv`` is (total_tokens, 3 * hidden) holding the sequences back to back, described
  by ``cu_seqlens`` (int32, batch + 1 offsets starting at 0) and ``max_seqlen``; no padding.

Within the last dimension, qkv is [q | k | v], each (heads, head_dim), as a Linear with the
query, key and value weights concatenated produces it.

Semantics every backend shares: padded keys get zero weight and their K/V values never reach
an output (NaN there is harmless); a sequence with no real key at all returns zeros for every
query row; padded query rows are computed like real ones (they attend to the real keys) and are
otherwise unspecified.

The op's contract lives here once (signature, checks, reference, custom ops, fakes and the
autograd: a training forward that also returns the log-sum-exp, and a backward custom op giving
dqkv); the backend modules of the same name hold only kernels and their launch (the backward on
Triton only). Gradients: padded keys get none and pass none on; padded query rows are
differentiated like real ones, as the forward computes them (the reference's autograd agrees).
"""

from __future__ import annotations

import functools
import importlib
import itertools
from typing import Any

import torch
import torch.nn.functional as F

from bertfast.ops._checks import (
    check_dot_dtype,
    check_float,
    check_kernel_device,
    check_kernel_tensor,
)
from bertfast.ops._dropout import check_dropout_p, check_kernel_dropout, draw_seed, seed_value

# CPU inference on several threads runs short sequences' attention as matmul, softmax, matmul:
# SDPA's CPU flash kernel costs more there (measured on 2 threads: the 198 grids of 1,000 mixed
# texts at batch 32 in 0.37 s against 0.82 s; at 96 tokens the two are even, beyond it flash
# wins). On one thread flash is the faster of the two, and with grad, dropout or bf16 it is kept.
# The math path holds every score at once (flash works in blocks): bounded here.
MATH_ATTENTION_MAX_SEQ = 96
MATH_ATTENTION_MAX_SCORE_BYTES = 64 << 20


def _use_math_attention(q: torch.Tensor, dropout_p: float) -> bool:
    batch, heads, seq, _ = q.shape
    return (
        q.device.type == "cpu"
        and q.dtype == torch.float32
        and seq <= MATH_ATTENTION_MAX_SEQ
        and batch * heads * seq * seq * 4 <= MATH_ATTENTION_MAX_SCORE_BYTES
        and dropout_p == 0.0
        and not (torch.is_grad_enabled() and q.requires_grad)
        and not torch.compiler.is_compiling()
        and torch.get_num_threads() > 1
    )


def _math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None
) -> torch.Tensor:
    """SDPA's result (no dropout) the plain way: scaled scores, masked keys at -inf, softmax."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    if attn_mask is not None:
        scores.masked_fill_(~attn_mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)


def _padded_reference(
    qkv: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None,
    dropout_p: float,
    padding_is_zero: bool = False,
) -> torch.Tensor:
    batch, seq, three_hidden = qkv.shape
    hidden = three_hidden // 3
    q, k, v = qkv.view(batch, seq, 3, num_heads, hidden // num_heads).permute(2, 0, 3, 1, 4)
    attn_mask = None
    if key_padding_mask is not None:
        if not padding_is_zero:
            keep = key_padding_mask[:, None, :, None]
            # Zero padded K/V so that 0 * NaN cannot leak through the weighted sum.
            k = torch.where(keep, k, 0)
            v = torch.where(keep, v, 0)
        has_key = key_padding_mask.any(dim=-1)
        # A row with no real key would be all -inf (NaN softmax): unmask it, zero it after.
        attn_mask = (key_padding_mask | ~has_key[:, None])[:, None, None, :]
    if _use_math_attention(q, dropout_p):
        out = _math_attention(q, k, v, attn_mask)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    if key_padding_mask is not None:
        out = torch.where(has_key[:, None, None, None], out, 0)
    return out.transpose(1, 2).reshape(batch, seq, hidden)


def attention_reference(
    qkv: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Plain PyTorch (SDPA) attention with the semantics in the module docstring."""
    if cu_seqlens is None:
        return _padded_reference(qkv, num_heads, key_padding_mask, dropout_p)
    return _packed_reference(qkv, num_heads, cu_seqlens, dropout_p)


# A packed batch's sequences, longest first, share one padded grid while each is at least this
# fraction of the grid's length (or the grid is short): mixed lengths (a server's batch) would
# otherwise make every sequence attend over the longest one's grid.
GRID_SHARE = 0.7
SHORT_GRID = 32


@functools.lru_cache(maxsize=16)
def _grids(offsets: tuple[int, ...], device: torch.device) -> list[tuple[int, int, Any, Any, Any]]:
    """(sequences, grid length, real mask, its flat real positions, packed rows) of each padded
    grid the packed batch's sequences are laid into, similar lengths sharing one; the mask and
    positions are None for a grid without padding. Cached: every layer asks again."""
    lengths = [end - start for start, end in itertools.pairwise(offsets)]
    order = sorted((i for i, n in enumerate(lengths) if n), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (
            lengths[i] >= GRID_SHARE * lengths[groups[-1][0]]
            or lengths[groups[-1][0]] <= SHORT_GRID
        ):
            groups[-1].append(i)
        else:
            groups.append([i])
    grids = []
    for group in groups:
        longest = lengths[group[0]]
        counts = torch.tensor([lengths[i] for i in group])
        real = torch.arange(longest) < counts[:, None]
        rows = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in group]).to(device)
        if real.all():
            grids.append((len(group), longest, None, None, rows))
        else:
            flat = real.reshape(-1).nonzero().squeeze(1).to(device)
            grids.append((len(group), longest, real.to(device), flat, rows))
    return grids


def _packed_reference(
    qkv: torch.Tensor, num_heads: int, cu_seqlens: torch.Tensor, dropout_p: float
) -> torch.Tensor:
    """The packed form through the padded one: sequences of similar length laid into one
    zero-filled grid, one masked SDPA a grid, the real rows read back; a handful of calls for
    a whole batch rather than one per sequence (the CPU path's packed encoder runs this every
    layer). Rows past the last offset belong to no sequence and come back as zeros."""
    hidden = qkv.shape[1] // 3
    grids = _grids(tuple(cu_seqlens.tolist()), qkv.device)
    if len(grids) == 1 and grids[0][2] is None and grids[0][4].numel() == qkv.shape[0]:
        count, longest = grids[0][:2]  # equal lengths covering every row: a reshape
        grid = qkv.view(count, longest, qkv.shape[1])
        return _padded_reference(grid, num_heads, None, dropout_p).reshape(-1, hidden)
    out = qkv.new_zeros(qkv.shape[0], hidden)
    for count, longest, real, flat, rows in grids:
        grid = qkv.index_select(0, rows)
        if flat is not None:  # zero-filled padding: no NaN can be there to mask out
            grid = qkv.new_zeros(count * longest, qkv.shape[1]).index_copy_(0, flat, grid)
        grid = _padded_reference(
            grid.view(count, longest, -1),
            num_heads,
            real,
            dropout_p,
            padding_is_zero=True,
        ).reshape(count * longest, hidden)
        out.index_copy_(0, rows, grid if flat is None else grid.index_select(0, flat))
    return out


def check_attention_inputs(
    qkv: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    backend: str = "torch",
) -> None:
    check_float("qkv", qkv)
    if backend != "torch":
        check_kernel_tensor("qkv", qkv, backend)
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if qkv.shape[-1] % (3 * num_heads):
        raise ValueError(
            f"qkv's last dimension ({qkv.shape[-1]}) must be 3 * num_heads * head_dim "
            f"with num_heads={num_heads}"
        )
    if cu_seqlens is None:
        if qkv.dim() != 3:
            raise ValueError(f"padded qkv must be (batch, seq, 3*hidden), got {tuple(qkv.shape)}")
        if key_padding_mask is not None:
            if key_padding_mask.dtype != torch.bool:
                raise TypeError(f"key_padding_mask must be bool, got {key_padding_mask.dtype}")
            if key_padding_mask.shape != qkv.shape[:2]:
                raise ValueError(
                    f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, expected "
                    f"(batch, seq) = {tuple(qkv.shape[:2])}"
                )
            if key_padding_mask.device != qkv.device:
                raise ValueError(
                    f"key_padding_mask is on {key_padding_mask.device}, qkv on {qkv.device}"
                )
        _check_kernel_support(qkv, num_heads, backend)
        return
    if key_padding_mask is not None:
        raise ValueError(
            "pass either key_padding_mask (padded form) or cu_seqlens (packed), not both"
        )
    if qkv.dim() != 2:
        raise ValueError(f"packed qkv must be (total_tokens, 3*hidden), got {tuple(qkv.shape)}")
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(
            f"cu_seqlens must be a 1-D int32 tensor of batch + 1 offsets, got dtype "
            f"{cu_seqlens.dtype} shape {tuple(cu_seqlens.shape)}"
        )
    if cu_seqlens.device != qkv.device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device}, qkv on {qkv.device}")
    if max_seqlen is None or max_seqlen < 0:
        raise ValueError(f"packed attention needs max_seqlen >= 0, got {max_seqlen!r}")
    if backend != "torch" and not cu_seqlens.is_contiguous():
        raise ValueError("cu_seqlens must be contiguous")
    _check_kernel_support(qkv, num_heads, backend)


def _check_kernel_support(qkv: torch.Tensor, num_heads: int, backend: str) -> None:
    """Head dims the kernels are built for; the device last (errors show without a GPU)."""
    if backend == "torch":
        return
    from bertfast.ops.registry import KERNEL_HEAD_DIMS

    head_dim = qkv.shape[-1] // 3 // num_heads
    if head_dim not in KERNEL_HEAD_DIMS:
        raise ValueError(
            f"head_dim {head_dim} (hidden {qkv.shape[-1] // 3} / {num_heads} heads) is not "
            f"supported by the {backend} attention kernel; supported: {KERNEL_HEAD_DIMS}"
        )
    check_dot_dtype("qkv", qkv, backend)
    check_kernel_device("qkv", qkv, backend)


def check_cu_seqlens_values(cu_seqlens: torch.Tensor, total_tokens: int, max_seqlen: int) -> None:
    """Offsets from 0 to at most the token count, never decreasing, none over ``max_seqlen``.

    Tokens past the last offset belong to no sequence (a CUDA graph's bucket is larger than
    its batch); their output rows are unspecified.
    """
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0 or offsets[-1] > total_tokens:
        raise ValueError(
            f"cu_seqlens must run from 0 to at most the number of tokens ({total_tokens}); "
            f"got {offsets[0]} .. {offsets[-1]}"
        )
    lengths = [end - start for start, end in itertools.pairwise(offsets)]
    if min(lengths) < 0:
        raise ValueError(f"cu_seqlens must not decrease; got {offsets}")
    if max(lengths) > max_seqlen:
        raise ValueError(
            f"max_seqlen {max_seqlen} is less than the longest sequence ({max(lengths)} tokens)"
        )


@torch.library.custom_op("bertfast::attention", mutates_args=())
def _attention_op(
    qkv: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    backend: str,
) -> torch.Tensor:
    from bertfast.ops.registry import get_kernel

    return get_kernel("attention", backend)(
        qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen
    )


@_attention_op.register_fake
def _(qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen, backend):
    return qkv.new_empty(*qkv.shape[:-1], qkv.shape[-1] // 3)


@torch.library.custom_op("bertfast::attention_with_lse", mutates_args=())
def _attention_with_lse_op(
    qkv: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    backend: str,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward of training: (out, lse), lse the (heads, rows) fp32 log-sum-exp the backward
    recomputes the probabilities from (rows: tokens packed, batch * seq padded); with
    ``dropout_p`` the probabilities are dropped by a mask drawn from ``seed``."""
    from bertfast.ops.registry import get_backward

    get_backward("attention", backend)  # a backend without a backward says so here
    module = importlib.import_module(f"bertfast.{backend}.attention")
    return module.launch_with_lse(
        qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen, dropout_p, seed_value(seed)
    )


@_attention_with_lse_op.register_fake
def _(qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen, backend, dropout_p=0.0, seed=None):
    rows = qkv.shape[0] if cu_seqlens is not None else qkv.shape[0] * qkv.shape[1]
    out = qkv.new_empty(*qkv.shape[:-1], qkv.shape[-1] // 3)
    return out, qkv.new_empty(num_heads, rows, dtype=torch.float32)


@torch.library.custom_op("bertfast::attention_backward", mutates_args=())
def _attention_backward_op(
    grad: torch.Tensor,
    qkv: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    backend: str,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> torch.Tensor:
    """dqkv, laid out as qkv (contiguous)."""
    from bertfast.ops.registry import get_backward

    return get_backward("attention", backend)(
        grad, qkv, out, lse, num_heads, key_padding_mask, cu_seqlens, max_seqlen, dropout_p,
        seed_value(seed),
    )  # fmt: skip


@_attention_backward_op.register_fake
def _(grad, qkv, out, lse, num_heads, mask, cu_seqlens, max_seqlen, backend, p=0.0, seed=None):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_attention_context(ctx, inputs, output):
    qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen, backend, dropout_p, seed = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    # No score, probability or dropout matrix is kept: q, k, v, the output, one float per
    # row and head, and the seed the backward draws the dropout mask from again.
    ctx.save_for_backward(qkv, out, lse, key_padding_mask, cu_seqlens, seed)
    ctx.num_heads, ctx.max_seqlen, ctx.backend = num_heads, max_seqlen, backend
    ctx.dropout_p = dropout_p


def _attention_backward(ctx, grad, grad_lse):
    qkv, out, lse, key_padding_mask, cu_seqlens, seed = ctx.saved_tensors
    dqkv = _attention_backward_op(
        grad, qkv, out, lse, ctx.num_heads, key_padding_mask, cu_seqlens, ctx.max_seqlen,
        ctx.backend, ctx.dropout_p, seed,
    )  # fmt: skip
    return dqkv, None, None, None, None, None, None, None


_attention_with_lse_op.register_autograd(
    _attention_backward, setup_context=_setup_attention_context
)


def _attention_custom_op(qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen, backend):
    """The custom op to run: the training forward (with the log-sum-exp its backward needs)
    when qkv needs a gradient, the plain one otherwise; traceable by torch.compile."""
    if torch.is_grad_enabled() and qkv.requires_grad:
        args = (qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen, backend)
        return _attention_with_lse_op(*args)[0]
    return _attention_op(qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen, backend)


def attention(
    qkv: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    dropout_p: float = 0.0,
    backend: str = "torch",
    check_cu_seqlens: bool = True,
    validate: bool = True,
) -> torch.Tensor:
    """Scaled dot-product self-attention over heads; see the module docstring for the forms.

    ``check_cu_seqlens`` reads the offsets back to the host to check them against the tokens
    and ``max_seqlen`` (kernels trust them); callers that built them themselves skip it.
    In the packed form ``max_seqlen`` may exceed the longest sequence (a CUDA graph sizes the
    grid for a bound; programs past a sequence's end exit at once). ``validate=False`` skips
    the layout checks for callers that made them already.
    """
    if validate:
        check_attention_inputs(qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen, backend)
        if cu_seqlens is not None and check_cu_seqlens:
            check_cu_seqlens_values(cu_seqlens, qkv.shape[0], max_seqlen)
    if backend == "torch":
        return attention_reference(
            qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen, dropout_p
        )
    if dropout_p:
        check_kernel_dropout("attention", "attention", backend, dropout_p)
        # The mask's seed comes from torch's CPU generator (torch.manual_seed governs it; no
        # device sync); the backward draws the same mask from it again.
        args = (qkv, num_heads, key_padding_mask, cu_seqlens, max_seqlen, backend)
        return _attention_with_lse_op(*args, check_dropout_p(dropout_p), draw_seed())[0]
    from bertfast.ops.registry import run_kernel

    return run_kernel(
        "attention",
        backend,
        _attention_custom_op,
        qkv,
        num_heads,
        key_padding_mask,
        cu_seqlens,
        max_seqlen,
    )
