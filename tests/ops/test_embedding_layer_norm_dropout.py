"""BERT's embedding dropout inside the embedding + LayerNorm kernel (Triton, interpreter): the
output's mask drawn from a seed and each element's index, again in the backward. The forward's
zeros are the generator's mask; forward and every table and LayerNorm gradient equal the
reference followed by that mask; the torch backend uses torch's dropout; compile traces it."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from bertfast import ops
from bertfast.ops import embedding_layer_norm_reference as reference
from tests.helpers import assert_close
from tests.ops.backward_checks import check_compiled_matches_eager

hidden_dropout = pytest.importorskip("bertfast.triton.hidden_dropout")
op_module = importlib.import_module("bertfast.ops.embedding_layer_norm")
VOCAB, POSITIONS, TYPES = 11, 50, 2


def make(shape, hidden, dtype=torch.float32):
    ids = [
        torch.randint(0, VOCAB, shape),
        torch.randint(0, TYPES, shape),
        torch.randint(0, POSITIONS, shape),
    ]
    tables = [
        torch.randn(VOCAB, hidden),
        torch.randn(POSITIONS, hidden),
        torch.randn(TYPES, hidden),
        torch.randn(hidden) + 1,
        torch.randn(hidden),
    ]
    return ids, [t.to(dtype).requires_grad_() for t in tables]


def run(ids, tables, p, seed, monkeypatch):
    """The Triton op with dropout ``p`` after ``torch.manual_seed(seed)``; (out, drawn seed)."""
    drawn = []
    real_draw = op_module.draw_seed
    monkeypatch.setattr(op_module, "draw_seed", lambda: drawn.append(real_draw()) or drawn[-1])
    torch.manual_seed(seed)
    out = ops.embedding_layer_norm(*ids, *tables, 1e-12, backend="triton", dropout_p=p)
    monkeypatch.setattr(op_module, "draw_seed", real_draw)
    assert len(drawn) == 1
    return out, int(drawn[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape, hidden", [((1,), 8), ((3, 7), 40), ((13,), 130)])
def test_forward_and_grads_equal_the_reference_then_the_mask(shape, hidden, dtype, monkeypatch):
    p = 0.3
    ids, tables = make(shape, hidden, dtype)
    out, seed = run(ids, tables, p, seed=hidden, monkeypatch=monkeypatch)
    kept = hidden_dropout.dropout_mask((*shape, hidden), p, seed, torch.device("cpu"))
    assert 0 < kept.float().mean() < 1 or kept.numel() < 20
    assert torch.equal(out == 0, ~kept)  # a LayerNorm output is never exactly 0 here
    grad = torch.randn(*shape, hidden).to(dtype)
    ours = torch.autograd.grad(out, tables, grad)
    refs = [t.detach().float().requires_grad_() for t in tables]
    expected = torch.where(kept, reference(*ids, *refs, 1e-12) / (1 - p), 0.0)
    expected_grads = torch.autograd.grad(expected, refs, grad.float())
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    assert_close(out, expected, atol=tol, rtol=tol, what="forward")
    for name, g, e in zip(("word", "position", "token_type", "weight", "bias"), ours,
                          expected_grads):  # fmt: skip
        assert g.dtype == dtype
        assert_close(g, e, atol=tol * (1 + e.abs().max().item()), rtol=tol, what=f"d{name}")


def test_seeds_and_no_dropout(monkeypatch):
    ids, tables = make((4, 9), 24)
    first, _ = run(ids, tables, 0.2, 1, monkeypatch)
    again, _ = run(ids, tables, 0.2, 1, monkeypatch)
    other, _ = run(ids, tables, 0.2, 2, monkeypatch)
    assert torch.equal(first, again) and not torch.equal(first, other)
    with torch.no_grad():
        plain = ops.embedding_layer_norm(*ids, *tables, 1e-12, backend="triton")
        zero = ops.embedding_layer_norm(*ids, *tables, 1e-12, backend="triton", dropout_p=0.0)
    assert torch.equal(plain, zero)
    kept = first != 0
    assert_close(first[kept], plain[kept] / 0.8, atol=1e-5, rtol=1e-5, what="kept scaled")


def test_torch_backend_and_refusals():
    ids, tables = make((6,), 16)
    tables = [t.detach() for t in tables]
    torch.manual_seed(3)
    out = ops.embedding_layer_norm(*ids, *tables, 1e-12, dropout_p=0.5)
    torch.manual_seed(3)
    assert torch.equal(out, F.dropout(reference(*ids, *tables, 1e-12), 0.5))
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\), got 1.0"):
        ops.embedding_layer_norm(*ids, *tables, 1e-12, dropout_p=1.0)
    with pytest.raises(NotImplementedError, match="embedding dropout .* the cuda kernels are"):
        ops.embedding_layer_norm(
            *ids, *tables, 1e-12, backend="cuda", validate=False, dropout_p=0.1
        )


def test_compiled_with_dropout_traces_without_graph_breaks():
    ids, tables = make((5, 3), 40)

    def step(*tables):
        out = ops.embedding_layer_norm(
            *ids, *tables, 1e-12, backend="triton", validate=False, dropout_p=0.2
        )
        return out.square().sum()

    check_compiled_matches_eager(step, tables, seed=4)
