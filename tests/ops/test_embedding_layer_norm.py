"""Embedding gather + sum + LayerNorm: reference against naive math, kernel against reference."""

import functools

import pytest
import torch

from bertfast import ops
from bertfast.ops import embedding_layer_norm_reference as reference
from tests.helpers import assert_close

pytest.importorskip("bertfast.triton.embedding_layer_norm")
kernel = functools.partial(ops.embedding_layer_norm, backend="triton")


def tables(vocab, positions, types, hidden):
    return [
        torch.randn(vocab, hidden),
        torch.randn(positions, hidden),
        torch.randn(types, hidden),
        torch.randn(hidden) + 1,
        torch.randn(hidden),
    ]


def ids(shape, vocab, positions, types, id_dtype=torch.long):
    return [
        torch.randint(0, vocab, shape, dtype=id_dtype),
        torch.randint(0, types, shape, dtype=id_dtype),
        torch.randint(0, positions, shape, dtype=id_dtype),
    ]


def test_reference_matches_naive_math():
    word, pos, typ, w, b = tables(50, 16, 3, 24)
    i, t, p = ids((2, 7), 50, 16, 3)
    s = word[i].double() + pos[p].double() + typ[t].double()
    mean, var = s.mean(-1, keepdim=True), s.var(-1, unbiased=False, keepdim=True)
    expected = (s - mean) / torch.sqrt(var + 1e-12) * w.double() + b.double()
    assert_close(reference(i, t, p, word, pos, typ, w, b, 1e-12), expected, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "shape, hidden", [((1, 1), 32), ((3, 7), 97), ((129,), 384), ((2, 5), 768)]
)
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
def test_kernel_against_reference(dtype, shape, hidden, id_dtype):
    word, pos, typ, w, b = tables(1000, 512, 3, hidden)
    i, t, p = ids(shape, 1000, 512, 3, id_dtype)
    i.view(-1)[0] = 999  # the last rows of each table
    p.view(-1)[0] = 511
    t.view(-1)[0] = 2
    expected = reference(i, t, p, word, pos, typ, w, b, 1e-12).double()
    cast = [x.to(dtype) for x in (word, pos, typ, w, b)]
    ours = kernel(i, t, p, *cast, 1e-12)
    assert ours.shape == (*shape, hidden) and ours.dtype == dtype
    if dtype == torch.float32:
        assert_close(ours, expected, atol=2e-5, rtol=1e-5)
        return
    ref_err = (reference(i, t, p, *cast, 1e-12).double() - expected).abs().max().item()
    our_err = (ours.double() - expected).abs().max().item()
    assert our_err <= 2 * ref_err + 1e-6, (our_err, ref_err)


def test_bad_inputs():
    word, pos, typ, w, b = tables(10, 8, 2, 16)
    i, t, p = ids((2, 3), 10, 8, 2)
    with pytest.raises(TypeError, match="input_ids must be int32 or int64, got torch.float32"):
        ops.embedding_layer_norm(i.float(), t, p, word, pos, typ, w, b, 1e-5, backend="triton")
    with pytest.raises(
        ValueError, match=r"token_type_ids has shape \(2, 2\) but input_ids has \(2, 3\)"
    ):
        ops.embedding_layer_norm(i, t[:, :2], p, word, pos, typ, w, b, 1e-5, backend="triton")
    with pytest.raises(ValueError, match=r"position_embeddings must be \(rows, 16\)"):
        ops.embedding_layer_norm(i, t, p, word, pos[:, :4], typ, w, b, 1e-5, backend="triton")


def test_custom_op():
    word, pos, typ, w, b = tables(10, 8, 2, 16)
    args = (*ids((2, 3), 10, 8, 2), word, pos, typ, w, b, 1e-5)
    op = torch.ops.bertfast.embedding_layer_norm
    assert_close(op(*args, "triton"), kernel(*args), atol=0)
    torch.library.opcheck(
        op.default, (*args, "triton"), test_utils=("test_schema", "test_faketensor")
    )
