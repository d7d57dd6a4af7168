"""Attention backward on the Triton kernels: dqkv against autograd on the SDPA reference, padded
(mixed lengths, a row with no real key, NaN in padded K/V) and packed (cu_seqlens)."""

import pytest
import torch

from bertfast import ops
from bertfast.ops import attention_reference
from tests.helpers import mixed_mask
from tests.ops.backward_checks import check_against_reference, check_finite_differences

pytest.importorskip("bertfast.triton.attention")


def triton_attention(qkv, heads, mask=None, cu_seqlens=None, max_seqlen=None):
    return ops.attention(qkv, heads, mask, cu_seqlens, max_seqlen, backend="triton")


def reference(qkv, heads, mask=None, cu_seqlens=None, max_seqlen=None):
    return attention_reference(qkv, heads, mask, cu_seqlens, max_seqlen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("seq", [1, 7, 37])
@pytest.mark.parametrize("head_dim", [16, 32])
def test_padded_grads_against_autograd_on_reference(dtype, seq, head_dim):
    heads = 2
    qkv = torch.randn(3, seq, 3 * heads * head_dim)
    mask = mixed_mask(3, seq, seed=seq)
    check_against_reference(
        triton_attention, reference, [qkv, heads, mask], {0: "qkv"}, dtype,
        f"{dtype} padded seq {seq} d {head_dim}", atol32=2e-5, rtol32=1e-4,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_no_mask_and_a_row_without_keys(dtype):
    qkv = torch.randn(2, 19, 3 * 2 * 16)
    check_against_reference(triton_attention, reference, [qkv, 2], {0: "qkv"}, dtype,
                            "no mask", atol32=2e-5, rtol32=1e-4)  # fmt: skip
    mask = mixed_mask(3, 19)
    mask[1] = False  # no real key: zeros out, zero grads
    qkv = torch.randn(3, 19, 3 * 2 * 16)
    check_against_reference(triton_attention, reference, [qkv, 2, mask], {0: "qkv"}, dtype,
                            "empty row", atol32=2e-5, rtol32=1e-4)  # fmt: skip


def test_nan_in_padded_keys_and_values_never_reaches_a_gradient():
    heads, head_dim, seq = 2, 16, 21
    hidden = heads * head_dim
    mask = mixed_mask(3, seq, seed=3)
    qkv = torch.randn(3, seq, 3 * hidden)
    qkv[..., hidden:][~mask] = float("nan")
    leaf = qkv.clone().requires_grad_()
    out = triton_attention(leaf, heads, mask)
    out.backward(torch.randn(out.shape))
    assert torch.isfinite(leaf.grad).all()
    assert (leaf.grad[..., hidden:][~mask] == 0).all()  # padded keys get no gradient
    check_against_reference(triton_attention, reference, [qkv, heads, mask], {0: "qkv"},
                            torch.float32, "NaN padding", atol32=2e-5, rtol32=1e-4)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [16, 32])
def test_packed_grads_against_autograd_on_reference(dtype, head_dim):
    heads = 2
    lengths = [7, 1, 0, 37, 20]
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    total = int(offsets[-1]) + 3  # three tokens past the last sequence: zero gradient
    qkv = torch.randn(total, 3 * heads * head_dim)
    inputs = [qkv, heads, None, offsets, max(lengths)]
    errors = check_against_reference(
        triton_attention, reference, inputs, {0: "qkv"}, dtype,
        f"{dtype} packed d {head_dim}", atol32=2e-5, rtol32=1e-4,
    )  # fmt: skip
    assert errors["qkv"] < 1  # sanity: the tail rows compared too (zeros on both sides)


def test_finite_differences():
    mask = mixed_mask(2, 9, seed=5)
    inputs = [torch.randn(2, 9, 3 * 2 * 16), 2, mask]
    check_finite_differences(triton_attention, inputs, [0], "padded attention")


def test_custom_ops_and_autograd_registration():
    qkv = torch.randn(2, 5, 3 * 2 * 16)
    mask = mixed_mask(2, 5)
    torch.library.opcheck(
        torch.ops.bertfast.attention_with_lse.default,
        (qkv.clone().requires_grad_(), 2, mask, None, None, "triton"),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    out, lse = torch.ops.bertfast.attention_with_lse(qkv, 2, mask, None, None, "triton")
    torch.library.opcheck(
        torch.ops.bertfast.attention_backward.default,
        (torch.randn(out.shape), qkv, out, lse, 2, mask, None, None, "triton"),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_compiled_backward_traces_without_graph_breaks():
    qkv = torch.randn(2, 9, 3 * 2 * 16, requires_grad=True)
    mask = mixed_mask(2, 9)

    def step(qkv):
        out = ops.attention(qkv, 2, mask, backend="triton", validate=False)
        return out.square().sum()

    torch.compile(step, backend="aot_eager", fullgraph=True)(qkv).backward()
    ref = qkv.detach().clone().requires_grad_()
    attention_reference(ref, 2, mask).square().sum().backward()
    torch.testing.assert_close(qkv.grad, ref.grad, atol=1e-4, rtol=1e-4)


def test_cuda_backend_has_no_backward():
    with pytest.raises(NotImplementedError, match="the cuda kernel 'attention' has no backward"):
        ops.get_backward("attention", "cuda")
