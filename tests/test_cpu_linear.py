"""The CPU path's oneDNN GEMMs with packed weights: equal to F.linear (+ GELU) to fp32
rounding, repacked when a weight changes in place, F.linear wherever they do not apply."""

import pytest
import torch
import torch.nn.functional as F

from bertfast import BertModel, cpu_linear
from tests.helpers import max_abs_error, random_batch, random_hf_bert

needs_onednn = pytest.mark.skipif(
    not cpu_linear.onednn_available(), reason="this torch has no oneDNN packed linear"
)


@needs_onednn
@pytest.mark.parametrize("shape", [(1, 8), (7, 40), (3, 5, 384)])
@pytest.mark.parametrize("gelu", [None, "none", "tanh"])
def test_equals_linear_and_gelu(shape, gelu):
    x = torch.randn(*shape)
    weight, bias = torch.randn(130, shape[-1]), torch.randn(130)

    def expected(dtype):
        y = F.linear(x.to(dtype), weight.to(dtype), bias.to(dtype))
        return y if gelu is None else F.gelu(y, approximate=gelu)

    exact = expected(torch.float64)
    with torch.no_grad():
        assert cpu_linear.applies(x)
        out = cpu_linear.linear(x, weight, bias, gelu=gelu)
    assert out.shape == exact.shape
    # fp32 rounding of another summation order: within a few times F.linear's own error.
    ours = (out.double() - exact).abs().max().item()
    theirs = (expected(torch.float32).double() - exact).abs().max().item()
    assert ours <= 4 * theirs + 1e-6, (ours, theirs)


@needs_onednn
def test_repacked_when_the_weight_changes_in_place():
    x, weight, bias = torch.randn(4, 16), torch.randn(8, 16), torch.randn(8)
    with torch.no_grad():
        first = cpu_linear.linear(x, weight, bias)
        weight.mul_(2)
        second = cpu_linear.linear(x, weight, bias)
    assert torch.allclose(second, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    assert torch.allclose(second - bias, 2 * (first - bias), rtol=1e-5, atol=1e-5)


def test_falls_back_where_it_does_not_apply():
    x = torch.randn(3, 8, requires_grad=True)
    weight, bias = torch.randn(4, 8), torch.randn(4)
    assert not cpu_linear.applies(x)  # grad enabled: autograd needs F.linear
    out = cpu_linear.linear(x, weight, bias, gelu="none")
    out.sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        assert not cpu_linear.applies(x.double())  # fp32 only


@needs_onednn
def test_model_on_the_cpu_path_matches_transformers(tmp_path):
    path, hf = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path).eval()
    ids, types, mask = random_batch(hf.config.vocab_size, seq=17)
    with torch.inference_mode():
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
        out = model(ids, attention_mask=mask, token_type_ids=types)
    assert max_abs_error(out.last_hidden_state, ref.last_hidden_state, mask) <= 1e-5
    assert max_abs_error(out.pooler_output, ref.pooler_output) <= 1e-5
    # The forward took the oneDNN path: every layer GEMM's weight has its packed copy.
    layer = model.layers[0]
    dense = (layer.qkv, layer.attention_output, layer.intermediate, layer.output)
    assert all(id(d.weight) in cpu_linear._packed for d in dense)


@needs_onednn
def test_packed_copies_do_not_travel_with_the_model(tmp_path):
    import copy

    path, _ = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path).eval()
    ids = torch.randint(1, 99, (2, 5))
    with torch.inference_mode():
        expected = model(ids).last_hidden_state
    clone = copy.deepcopy(model)  # deepcopy and save see plain tensors only
    torch.save(clone.state_dict(), tmp_path / "state.pt")
    with torch.inference_mode():
        assert torch.equal(clone(ids).last_hidden_state, expected)


@needs_onednn
def test_a_model_made_under_inference_mode(tmp_path):
    """Its weights are inference tensors, which keep no version counter."""
    path, hf = random_hf_bert(tmp_path)
    ids = torch.randint(1, 99, (2, 5))
    with torch.inference_mode():
        model = BertModel.from_pretrained(path).eval()
        out = model(ids).last_hidden_state
        ref = hf(input_ids=ids).last_hidden_state
    assert max_abs_error(out, ref) <= 1e-5
