"""Attention: the torch reference against naive math, the Triton kernel against the reference."""

import functools
import json
import math

import pytest
import torch

from bertfast import ops
from bertfast.ops import attention_reference
from tests.helpers import assert_close, mixed_mask

pytest.importorskip("bertfast.triton.attention")
attention = functools.partial(ops.attention, backend="triton")


def naive_attention(qkv, num_heads, mask):
    """softmax(QK^T/sqrt(d)) V in fp64, written out by hand; rows with no real key are 0."""
    batch, seq, three_hidden = qkv.shape
    d = three_hidden // 3 // num_heads
    q, k, v = qkv.double().view(batch, seq, 3, num_heads, d).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    v = v.masked_fill(~mask[:, None, :, None], 0.0)
    return (probs @ v).transpose(1, 2).reshape(batch, seq, three_hidden // 3)


def packed_from_padded(qkv, mask):
    lengths = mask.sum(1)
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    return qkv[mask], cu, int(lengths.max())


def check_rows(ours, qkv32, heads, rows, what, **form):
    """Compare real rows. fp32: tight. fp16: error <= 2x the reference's own fp16 error."""
    expected = attention_reference(qkv32, heads, **form)[rows].double()
    got = ours[rows].double()
    if ours.dtype == torch.float32:
        assert_close(got, expected, atol=2e-5, rtol=1e-5, what=what)
        return
    low = attention_reference(qkv32.to(ours.dtype), heads, **form)[rows].double()
    ref_err = (low - expected).abs().max().item()
    our_err = (got - expected).abs().max().item()
    assert not torch.isnan(got).any(), f"{what}: NaN in output"
    assert our_err <= 2 * ref_err + 1e-4, f"{what}: error {our_err:.3e} > 2 x ref {ref_err:.3e}"


def test_reference_matches_naive_math():
    qkv = torch.randn(3, 11, 3 * 2 * 8, dtype=torch.float64)
    mask = mixed_mask(3, 11)
    mask[1] = False  # a sequence with no real token
    expected = naive_attention(qkv, 2, mask)
    assert_close(attention_reference(qkv, 2, key_padding_mask=mask), expected, atol=1e-12)
    packed, cu, longest = packed_from_padded(qkv, mask)
    got = attention_reference(packed, 2, cu_seqlens=cu, max_seqlen=longest)
    assert_close(got, expected[mask], atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("seq", [1, 7, 97, 129])
def test_padded_form(dtype, head_dim, seq):
    heads = 2
    qkv32 = torch.randn(3, seq, 3 * heads * head_dim)
    mask = mixed_mask(3, seq, seed=seq)
    ours = attention(qkv32.to(dtype), heads, key_padding_mask=mask)
    # Padded query rows are unspecified: compare real rows only.
    check_rows(ours, qkv32, heads, mask, f"{dtype} d{head_dim} s{seq}", key_padding_mask=mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_packed_form(dtype, head_dim):
    heads = 3
    lengths = [97, 1, 7, 0, 129]  # includes a single token and an empty sequence
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    qkv32 = torch.randn(sum(lengths), 3 * heads * head_dim)
    ours = attention(qkv32.to(dtype), heads, cu_seqlens=cu, max_seqlen=max(lengths))
    rows = torch.ones(sum(lengths), dtype=torch.bool)
    check_rows(
        ours, qkv32, heads, rows, f"packed {dtype} d{head_dim}", cu_seqlens=cu, max_seqlen=129
    )


def test_padded_and_packed_forms_agree():
    qkv = torch.randn(4, 33, 3 * 2 * 32)
    mask = mixed_mask(4, 33, seed=3)
    padded = attention(qkv, 2, key_padding_mask=mask)
    packed_qkv, cu, longest = packed_from_padded(qkv, mask)
    packed = attention(packed_qkv, 2, cu_seqlens=cu, max_seqlen=longest)
    assert_close(packed, padded[mask], atol=1e-6)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("poison", [float("nan"), 1e30, -float("inf")])
def test_padding_never_leaks(poison):
    heads, d = 2, 32
    qkv = torch.randn(3, 40, 3 * heads * d)
    mask = mixed_mask(3, 40, seed=7)
    clean = attention(qkv, heads, key_padding_mask=mask)
    dirty_qkv = qkv.clone()
    dirty_qkv[~mask] = poison  # padded Q, K and V positions
    dirty = attention(dirty_qkv, heads, key_padding_mask=mask)
    assert torch.isfinite(dirty[mask]).all()
    assert torch.equal(dirty[mask], clean[mask])


def test_fully_padded_sequence_returns_zeros():
    qkv = torch.randn(2, 9, 3 * 2 * 16)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1] = False
    qkv[1] = float("nan")
    out = attention(qkv, 2, key_padding_mask=mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert_close(out[0], attention_reference(qkv[:1], 2)[0], atol=2e-5)


def test_reads_strided_qkv_without_copy():
    """A qkv view with padded rows (row stride > 3*hidden) is read in place."""
    big = torch.randn(2, 17, 3 * 64 + 8)
    qkv = big[..., : 3 * 64]
    assert not qkv.is_contiguous()
    mask = mixed_mask(2, 17)
    out = attention(qkv, 2, key_padding_mask=mask)
    expected = attention_reference(qkv.contiguous(), 2, key_padding_mask=mask)
    assert_close(out[mask], expected[mask], atol=2e-5)


def test_unsupported_inputs_are_named(monkeypatch):
    with pytest.raises(ValueError, match=r"head_dim 48 .* supported: \(16, 32, 64, 128\)"):
        attention(torch.randn(1, 4, 3 * 96), 2)
    with pytest.raises(TypeError, match="qkv has dtype torch.int32"):
        attention(torch.zeros(1, 4, 3 * 64, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="last-dimension stride 2"):
        attention(torch.randn(1, 4, 3 * 64 * 2)[..., ::2], 2)
    with pytest.raises(TypeError, match="interpreter's tl.dot does not support bf16"):
        attention(torch.randn(1, 4, 3 * 64, dtype=torch.bfloat16), 2)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="qkv is a CPU tensor"):
        attention(torch.randn(1, 4, 3 * 64), 2)


def test_packed_offsets_are_checked():
    qkv = torch.randn(10, 3 * 64)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    with pytest.raises(
        ValueError, match=r"max_seqlen 4 is less than the longest sequence \(6 tokens\)"
    ):
        ops.attention(qkv, 2, cu_seqlens=cu, max_seqlen=4, backend="triton")
    with pytest.raises(
        ValueError, match=r"from 0 to at most the number of tokens \(10\); got 0 .. 12"
    ):
        ops.attention(qkv, 2, cu_seqlens=torch.tensor([0, 4, 12], dtype=torch.int32), max_seqlen=8)
    with pytest.raises(ValueError, match="must not decrease"):
        ops.attention(
            qkv, 2, cu_seqlens=torch.tensor([0, 6, 4, 10], dtype=torch.int32), max_seqlen=8
        )


def test_launcher_checks_the_mask_layout():
    with pytest.raises(TypeError, match="key_padding_mask must be bool, got torch.int64"):
        attention(torch.randn(1, 4, 3 * 64), 2, key_padding_mask=torch.ones(1, 4, dtype=torch.long))


def test_dispatch_and_custom_op():
    qkv = torch.randn(2, 5, 3 * 64)
    via_ops = ops.attention(qkv, 2, backend="triton")
    via_library = torch.ops.bertfast.attention(qkv, 2, None, None, None, "triton")
    assert_close(via_ops, via_library, atol=0)
    torch.library.opcheck(
        torch.ops.bertfast.attention.default,
        (qkv, 2, torch.ones(2, 5, dtype=torch.bool), None, None, "triton"),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_tuned_block_sizes_are_used(tmp_path, monkeypatch):
    """A sweep's table (scripts/tune_attention.py) overrides the heuristic where it has entries."""
    launch_module = pytest.importorskip("bertfast.triton.attention")
    table = tmp_path / "attention_blocks.json"
    entries = [
        {"head_dim": 64, "seq": 128, "config": [64, 32, 4, 2]},
        {"head_dim": 64, "seq": 512, "config": [128, 64, 8, 3]},
    ]
    table.write_text(json.dumps({"device": "test", "entries": entries}))
    monkeypatch.setattr(launch_module, "TUNED_BLOCKS_PATH", table)
    monkeypatch.setattr(launch_module, "_tuned", None)
    assert launch_module.block_sizes(64, 100, (9, 0)) == (64, 32, 4, 2)
    assert launch_module.block_sizes(64, 384, (9, 0)) == (128, 64, 8, 3)
    assert launch_module.block_sizes(64, 1024, (9, 0)) == (128, 64, 8, 3)
    heuristic = launch_module.block_sizes(32, 128, (9, 0))
    monkeypatch.setattr(launch_module, "_tuned", {})
    assert launch_module.block_sizes(32, 128, (9, 0)) == heuristic
    untuned = launch_module.block_sizes(64, 100, (8, 0))
    # A table that names the card it was measured on applies to that card's major version.
    table.write_text(json.dumps({"device": "H100", "capability": [9, 0], "entries": entries}))
    monkeypatch.setattr(launch_module, "_tuned", None)
    assert launch_module.block_sizes(64, 100, (9, 0)) == (64, 32, 4, 2)
    assert launch_module.block_sizes(64, 100, (8, 0)) == untuned != (64, 32, 4, 2)
    # A packed call still equals the reference with a tuned config.
    monkeypatch.setattr(launch_module, "_tuned", None)
    qkv = torch.randn(9, 3 * 64 * 2)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    out = attention(qkv, 2, cu_seqlens=cu, max_seqlen=5)
    assert_close(out, attention_reference(qkv, 2, cu_seqlens=cu, max_seqlen=5), atol=2e-5)


def test_packed_reference_one_grid_equals_each_sequence_alone():
    """The packed reference runs the batch as one zero-padded grid: each sequence's rows equal
    that sequence attended alone; rows past the last offset and empty batches give zeros."""
    heads, d = 2, 8
    lengths = [5, 0, 1, 9]
    total = sum(lengths)
    qkv = torch.randn(total + 3, 3 * heads * d, dtype=torch.float64)  # 3 rows in no sequence
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    got = attention_reference(qkv, heads, cu_seqlens=cu, max_seqlen=9)
    start = 0
    for n in lengths:
        alone = naive_attention(
            qkv[None, start : start + n], heads, torch.ones(1, n, dtype=torch.bool)
        )[0]
        assert_close(got[start : start + n], alone, atol=1e-12)
        start += n
    assert got[total:].abs().max() == 0
    no_tokens = torch.zeros(3, dtype=torch.int32)
    empty = attention_reference(qkv[:4], heads, cu_seqlens=no_tokens, max_seqlen=0)
    assert empty.shape == (4, heads * d) and empty.abs().max() == 0


@pytest.mark.parametrize("torch_threads", [2], indirect=True)
def test_cpu_inference_on_several_threads_takes_the_math_path_with_the_same_result(
    monkeypatch, torch_threads
):
    """Short sequences in CPU inference on more than one thread run matmul, softmax, matmul
    instead of SDPA's flash kernel: the same attention (padding poisoned with NaN, a sequence
    with no real token, the packed form), and only where it applies."""
    import importlib

    module = importlib.import_module("bertfast.ops.attention")
    calls = []
    math_attention = module._math_attention
    monkeypatch.setattr(module, "_math_attention", lambda *a: calls.append(1) or math_attention(*a))
    heads = 2
    qkv = torch.randn(3, 13, 3 * heads * 16)
    mask = mixed_mask(3, 13, seed=3)
    mask[1] = False
    expected = naive_attention(qkv, heads, mask).float()
    qkv[~mask] = float("nan")
    with torch.inference_mode():
        padded = attention_reference(qkv, heads, key_padding_mask=mask)
        packed, cu, longest = packed_from_padded(qkv, mask)
        packed_out = attention_reference(packed, heads, cu_seqlens=cu, max_seqlen=longest)
    assert len(calls) == 2
    assert_close(padded[mask], expected[mask], atol=2e-6, what="padded")
    assert torch.equal(padded[1], torch.zeros_like(padded[1]))
    assert_close(packed_out, expected[mask], atol=2e-6, what="packed")
    q = torch.randn(1, 2, 13, 16)
    with torch.inference_mode():
        assert module._use_math_attention(q, 0.0)
        assert not module._use_math_attention(q, 0.1)  # dropout: SDPA draws it
        assert not module._use_math_attention(q.bfloat16(), 0.0)  # flash keeps fp32 sums
        too_long = torch.randn(1, 2, module.MATH_ATTENTION_MAX_SEQ + 1, 16)
        assert not module._use_math_attention(too_long, 0.0)
        # Scores over the memory bound: flash, which works in blocks.
        seq = module.MATH_ATTENTION_MAX_SEQ
        many = module.MATH_ATTENTION_MAX_SCORE_BYTES // (4 * seq * seq) + 1
        assert not module._use_math_attention(torch.empty(many, 1, seq, 16), 0.0)
        assert module._use_math_attention(torch.empty(many - 1, 1, seq, 16), 0.0)
    assert not module._use_math_attention(q.requires_grad_(), 0.0)  # training: SDPA
    torch.set_num_threads(1)  # the fixture restores the count
    with torch.inference_mode():
        assert not module._use_math_attention(q.detach(), 0.0)  # one thread: flash
