"""Dropout on the attention probabilities inside the Triton attention (forward and backward,
padded and packed), under the interpreter. The mask comes from Philox numbers of a seed and
each (sequence, head, query, key) position, so it does not depend on the values: a run whose
V rows are one-hot vectors reads the mask off the output, and every other run at the same
seed and layout is checked against the reference with that mask."""

import math

import pytest
import torch

from bertfast import ops
from tests.helpers import assert_close

pytest.importorskip("bertfast.triton.attention")
D = 16  # head dim; sequences are at most D long so one-hot V rows can number the keys


def probabilities(qkv, heads, lengths):
    """softmax(q k^T / sqrt(d)) per sequence: (batch, heads, seq, seq), 0 past each length."""
    batch, seq = qkv.shape[:2]
    q, k, _ = qkv.view(batch, seq, 3, heads, D).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    real = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
    scores = scores.masked_fill(~real[:, None, None, :], float("-inf"))
    return torch.softmax(scores, -1) * real[:, None, :, None]


def run(qkv, heads, lengths, packed, p, seed, dtype=torch.float32):
    """ops.attention (Triton) with dropout from ``seed``, padded with a key mask or packed."""
    torch.manual_seed(seed)
    batch, seq = qkv.shape[:2]
    real = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
    if not packed:
        return ops.attention(qkv.to(dtype), heads, real, dropout_p=p, backend="triton")
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    out = ops.attention(
        qkv[real].to(dtype), heads, cu_seqlens=cu, max_seqlen=seq, dropout_p=p, backend="triton"
    )
    full = out.new_zeros(batch, seq, out.shape[-1])
    full[real] = out
    return full


def mask_of(heads, lengths, seq, packed, p, seed):
    """The dropout mask (batch, heads, seq, seq) at ``seed``, read off one-hot V rows."""
    batch = len(lengths)
    qkv = torch.randn(batch, seq, 3 * heads * D)
    v = qkv.view(batch, seq, 3, heads, D)[:, :, 2]
    v.zero_()
    v[:, torch.arange(seq), :, torch.arange(seq)] = 1.0
    out = run(qkv, heads, lengths, packed, p, seed).view(batch, seq, heads, D)[..., :seq]
    dropped = out.permute(0, 2, 1, 3)  # (batch, heads, query, key) = P * Z / (1 - p)
    # Real query rows only: padded ones are computed like real ones and unspecified.
    real = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None])[:, None, :, None]
    dropped = dropped * real
    expected = probabilities(qkv, heads, lengths) / (1 - p)
    kept = dropped > 0
    assert_close(dropped[kept], expected[kept], atol=1e-6, what="kept probabilities")
    return kept


def reference(qkv, heads, lengths, kept, p):
    batch, seq = qkv.shape[:2]
    _, _, v = qkv.view(batch, seq, 3, heads, D).permute(2, 0, 3, 1, 4)
    probs = probabilities(qkv, heads, lengths) * kept / (1 - p)
    return (probs @ v).transpose(1, 2).reshape(batch, seq, heads * D)


@pytest.mark.parametrize("packed", [False, True])
def test_forward_equals_the_reference_with_the_same_mask(packed):
    heads, lengths, seq, p = 2, [7, 3, 16], 16, 0.3
    kept = mask_of(heads, lengths, seq, packed, p, seed=11)
    qkv = torch.randn(3, seq, 3 * heads * D)
    out = run(qkv, heads, lengths, packed, p, seed=11)
    real = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
    expected = reference(qkv, heads, lengths, kept, p)
    assert_close(out[real], expected[real], atol=2e-6, what="dropped attention")
    # Padded keys are never kept (nothing to keep), whatever the draw.
    assert not kept[~real[:, None, None, :].expand_as(kept)].any()


def test_keep_rate_and_seeds():
    heads, lengths, seq, p = 4, [16] * 4, 16, 0.3
    kept = mask_of(heads, lengths, seq, False, p, seed=3)
    rate = kept.float().mean().item()
    assert abs(rate - (1 - p)) < 0.04, rate  # 4096 draws: 4 standard deviations is 0.03
    assert torch.equal(kept, mask_of(heads, lengths, seq, False, p, seed=3))
    other = mask_of(heads, lengths, seq, False, p, seed=4)
    assert 0.3 < (other != kept).float().mean().item() < 0.55  # independent masks differ ~42%


@pytest.mark.parametrize("packed", [False, True])
def test_backward_equals_autograd_on_the_reference(packed):
    heads, lengths, seq, p = 2, [9, 4], 12, 0.25
    kept = mask_of(heads, lengths, seq, packed, p, seed=21)
    real = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
    weights = torch.randn(2, seq, heads * D) * real[..., None]
    qkv = torch.randn(2, seq, 3 * heads * D, requires_grad=True)
    (run(qkv, heads, lengths, packed, p, seed=21) * weights).sum().backward()
    ours = qkv.grad.clone()
    qkv.grad = None
    (reference(qkv, heads, lengths, kept, p) * weights).sum().backward()
    assert_close(ours[real], qkv.grad[real], atol=1e-5, rtol=1e-4, what="dqkv")


def test_refusals():
    qkv = torch.randn(1, 4, 3 * D)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        ops.attention(qkv, 1, dropout_p=1.0, backend="triton")
    with pytest.raises(NotImplementedError, match="the cuda kernels are for inference"):
        ops.attention(qkv, 1, dropout_p=0.1, backend="cuda", validate=False)
