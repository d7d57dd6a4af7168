"""Embedding + LayerNorm backward on the Triton kernels: the three tables' grads (scatter-add by
id) and the LayerNorm weight and bias grads against autograd on the reference."""

import functools

import pytest
import torch

from bertfast import BertConfig, ops
from bertfast.model import BertEmbeddings
from bertfast.ops import embedding_layer_norm_reference as reference
from tests.ops.backward_checks import check_against_reference, check_finite_differences

pytest.importorskip("bertfast.triton.embedding_layer_norm")
kernel = functools.partial(ops.embedding_layer_norm, backend="triton")
NAMES = {3: "word", 4: "position", 5: "token_type", 6: "weight", 7: "bias"}
VOCAB, POSITIONS, TYPES = 11, 100, 2  # a small vocabulary: ids repeat, their grads add up


def make(shape, hidden, id_dtype=torch.int64, eps=1e-12):
    return [
        torch.randint(0, VOCAB, shape, dtype=id_dtype),
        torch.randint(0, TYPES, shape, dtype=id_dtype),
        torch.randint(0, POSITIONS, shape, dtype=id_dtype),
        torch.randn(VOCAB, hidden),
        torch.randn(POSITIONS, hidden),
        torch.randn(TYPES, hidden),
        torch.randn(hidden) + 1,
        torch.randn(hidden),
        eps,
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tokens", [1, 7, 97])
@pytest.mark.parametrize("hidden", [8, 40, 130])
def test_grads_against_autograd_on_reference(dtype, tokens, hidden):
    check_against_reference(
        kernel, reference, make((tokens,), hidden), NAMES, dtype, f"{dtype} {tokens}x{hidden}"
    )


def test_batched_int32_ids_and_eps():
    inputs = make((3, 5), 40, id_dtype=torch.int32, eps=1e-5)
    check_against_reference(kernel, reference, inputs, NAMES, torch.float32, "int32 (3, 5)")


def test_finite_differences():
    inputs = make((2, 7), 40, eps=1e-5)
    check_finite_differences(kernel, inputs, [3, 4, 5, 6, 7], "tables and LayerNorm")


def test_padding_id_gets_the_plain_scatter_add():
    """The op itself has no padding rule: id 0's row gets its tokens' gradients."""
    inputs = make((9,), 8)
    inputs[0][:4] = 0
    word = inputs[3].requires_grad_()
    kernel(*inputs).square().sum().backward()
    assert word.grad[0].abs().sum() > 0


@pytest.mark.parametrize("pad_token_id", [0, None])
def test_model_embeddings_match_the_torch_backend(pad_token_id):
    """BertEmbeddings on Triton and on torch: the padding row gets no gradient when
    pad_token_id is set (nn.Embedding's rule, applied by the model), every other grad agrees."""
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=40, num_attention_heads=2, max_position_embeddings=16,
        pad_token_id=pad_token_id,
        hidden_dropout_prob=0.0,
    )  # fmt: skip
    module = BertEmbeddings(config)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    ids = torch.randint(0, VOCAB, (2, 6))
    ids[:, -2:] = 0
    types = torch.randint(0, 2, (2, 6))
    positions = torch.arange(6).expand(2, 6)
    grads = {}
    for backend in ("torch", "triton"):
        module.zero_grad()
        module(ids, types, positions, backend).square().sum().backward()
        grads[backend] = {n: p.grad.clone() for n, p in module.named_parameters()}
    for name, expected in grads["torch"].items():
        torch.testing.assert_close(grads["triton"][name], expected, atol=1e-4, rtol=1e-5)
    padding_row = grads["triton"]["word_embeddings.weight"][0]
    assert (padding_row == 0).all() == (pad_token_id is not None)


def test_backward_custom_op_and_autograd_registration():
    inputs = make((5,), 8)
    args = [t.requires_grad_() if t.is_floating_point() else t for t in inputs[:8]]
    torch.library.opcheck(
        torch.ops.bertfast.embedding_layer_norm.default,
        (*args, inputs[8], "triton"),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    detached = [t.detach() for t in inputs[:7]]
    torch.library.opcheck(
        torch.ops.bertfast.embedding_layer_norm_backward.default,
        (torch.randn(5, 8), *detached, 1e-12, "triton"),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_compiled_backward_traces_without_graph_breaks():
    inputs = make((2, 7), 40)
    leaves = [t.requires_grad_() if t.is_floating_point() else t for t in inputs[:8]]

    def step(*args):
        out = ops.embedding_layer_norm(*args, inputs[8], backend="triton", validate=False)
        return out.square().sum()

    torch.compile(step, backend="aot_eager", fullgraph=True)(*leaves).backward()
    refs = [t.detach().clone().requires_grad_() if t.is_floating_point() else t for t in leaves]
    reference(*refs, inputs[8]).square().sum().backward()
    for ours, ref in zip(leaves[3:], refs[3:]):
        torch.testing.assert_close(ours.grad, ref.grad, atol=1e-4, rtol=1e-5)


def test_cuda_backend_has_no_backward():
    with pytest.raises(NotImplementedError, match="cuda kernel 'embedding_layer_norm' has no"):
        ops.get_backward("embedding_layer_norm", "cuda")
