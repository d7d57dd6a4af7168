"""Triton backward kernels on a real GPU at BERT shapes, fp16 and bf16: each gradient's error
against autograd on the fp32 reference at most 3x that of the reference run in the same low
precision (testing.md), and a small model's gradients on the Triton backend against the torch
backend."""

import functools

import pytest
import torch

from bertfast import BertConfig, BertModel, ops
from tests.helpers import mixed_mask
from tests.ops.backward_checks import check_against_reference

pytestmark = pytest.mark.gpu

LOW = [torch.float16, torch.bfloat16]
DEVICE = "cuda"


@pytest.fixture(autouse=True)
def _exact_fp32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu_backward(dtype, approximate):
    inputs = [torch.randn(4096, 3072, device=DEVICE) * 3, torch.randn(3072, device=DEVICE)]
    check_against_reference(
        functools.partial(ops.bias_gelu, backend="triton"), ops.bias_gelu_reference,
        [*inputs, approximate], {0: "x", 1: "bias"}, dtype, f"{dtype} {approximate}", factor=3,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("hidden", [384, 768, 1024])
def test_bias_residual_layer_norm_backward(dtype, hidden):
    def r(*shape):
        return torch.randn(*shape, device=DEVICE)

    inputs = [r(4096, hidden) * 2 + 1, r(hidden), r(4096, hidden), r(hidden) + 1, r(hidden), 1e-12]
    names = {0: "x", 1: "bias", 2: "residual", 3: "weight", 4: "ln_bias"}
    check_against_reference(
        functools.partial(ops.bias_residual_layer_norm, backend="triton"),
        ops.bias_residual_layer_norm_reference, inputs, names, dtype, f"{dtype} {hidden}",
        factor=3,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", LOW)
def test_embedding_layer_norm_backward(dtype):
    shape, hidden = (32, 128), 768
    inputs = [
        torch.randint(0, 30522, shape, device=DEVICE),
        torch.randint(0, 2, shape, device=DEVICE),
        torch.arange(128, device=DEVICE).expand(shape),
        torch.randn(30522, hidden, device=DEVICE),
        torch.randn(512, hidden, device=DEVICE),
        torch.randn(2, hidden, device=DEVICE),
        torch.randn(hidden, device=DEVICE) + 1,
        torch.randn(hidden, device=DEVICE),
        1e-12,
    ]
    names = {3: "word", 4: "position", 5: "token_type", 6: "weight", 7: "bias"}
    check_against_reference(
        functools.partial(ops.embedding_layer_norm, backend="triton"),
        ops.embedding_layer_norm_reference, inputs, names, dtype, f"{dtype}", factor=3,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("packed", [False, True])
def test_attention_backward(dtype, head_dim, packed):
    heads, batch, seq = 12 if head_dim == 64 else 4, 8, 384
    mask = mixed_mask(batch, seq, seed=head_dim).to(DEVICE)

    def kernel(qkv, *args):
        return ops.attention(qkv, heads, *args, backend="triton")

    def reference(qkv, *args):
        return ops.attention_reference(qkv, heads, *args)

    if packed:
        lengths = mask.sum(1)
        offsets = torch.zeros(batch + 1, dtype=torch.int32, device=DEVICE)
        offsets[1:] = lengths.cumsum(0)
        qkv = torch.randn(int(offsets[-1]), 3 * heads * head_dim, device=DEVICE)
        inputs = [qkv, None, offsets, int(lengths.max())]
    else:
        inputs = [torch.randn(batch, seq, 3 * heads * head_dim, device=DEVICE), mask]
    check_against_reference(
        kernel, reference, inputs, {0: "qkv"}, dtype, f"{dtype} d{head_dim} packed={packed}",
        factor=3,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", LOW)
def test_model_gradients_against_the_torch_backend(dtype):
    config = BertConfig(
        vocab_size=1000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=1024, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    ref32 = BertModel(config, backend="torch", device=DEVICE).train()
    models = {}
    for name, backend, model_dtype in (
        ("ours", "triton", dtype),
        ("low_ref", "torch", dtype),
        ("ref32", "torch", torch.float32),
    ):
        model = BertModel(config, backend=backend, device=DEVICE, dtype=model_dtype).train()
        model.load_state_dict(ref32.state_dict())
        models[name] = model
    ids = torch.randint(1, 1000, (8, 128), device=DEVICE)
    mask = mixed_mask(8, 128).to(DEVICE)
    grads = {}
    for name, model in models.items():
        out = model(ids, attention_mask=mask.long())
        loss = out.last_hidden_state[mask].float().square().mean()
        loss = loss + out.pooler_output.float().square().mean()
        loss.backward()
        grads[name] = {n: p.grad.double() for n, p in model.named_parameters()}
    for n, expected in grads["ref32"].items():
        ref_err = (grads["low_ref"][n] - expected).abs().max().item()
        our_err = (grads["ours"][n] - expected).abs().max().item()
        assert our_err <= 3 * ref_err + 1e-5, f"{dtype} {n}: {our_err:.3e} > 3 x {ref_err:.3e}"


@pytest.mark.parametrize("dtype", LOW)
def test_bias_residual_layer_norm_dropout(dtype):
    """Hidden dropout inside the kernel, compiled: forward and grads equal the reference with
    the kernel's mask by the 3x rule; the keep rate is 1 - p."""
    from bertfast.triton.hidden_dropout import dropout_mask

    rows, hidden, p = 4096, 768, 0.1
    seed = torch.tensor([1234])
    kept = dropout_mask((rows, hidden), p, 1234, torch.device(DEVICE))
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    inputs = [torch.randn(rows, hidden, device=DEVICE) * 2 + 1, torch.randn(hidden, device=DEVICE),
              torch.randn(rows, hidden, device=DEVICE), torch.randn(hidden, device=DEVICE) + 1,
              torch.randn(hidden, device=DEVICE), 1e-12]  # fmt: skip
    op = torch.ops.bertfast.bias_residual_layer_norm

    def kernel(x, bias, residual, weight, ln_bias, eps):
        return op(x, bias, residual, weight, ln_bias, eps, "triton", p, seed)

    def reference(x, bias, residual, weight, ln_bias, eps):
        return ops.bias_residual_layer_norm_reference(
            x, bias, residual, weight, ln_bias, eps, kept, p
        )

    names = {0: "x", 1: "bias", 2: "residual", 3: "weight", 4: "ln_bias"}
    check_against_reference(kernel, reference, inputs, names, dtype, f"{dtype}", factor=3)


def test_compiled_training_step_bf16_autocast():
    """torch.compile (inductor) of a training forward with dropout on the Triton kernels under
    bf16 autocast: one graph, and its loss and gradients equal the eager padded forward with
    the same seeds (fp32 master weights)."""
    config = BertConfig(
        vocab_size=1000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=1024,
    )  # fmt: skip
    torch.manual_seed(0)
    model = BertModel(config, backend="triton", device=DEVICE).train()
    ids = torch.randint(1, 1000, (8, 128), device=DEVICE)
    mask = mixed_mask(8, 128).to(DEVICE).long()

    def loss_of(ids):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, attention_mask=mask, compute_padded_positions=True)
        real = mask[..., None].float()
        return (out.last_hidden_state.float() * real).square().mean()

    compiled = torch.compile(loss_of, fullgraph=True)
    results = []
    # Inductor draws torch's random ops (the embedding dropout, the kernels' seeds) with its
    # own generator unless told to fall back to eager's: then both runs draw the same masks.
    with torch._inductor.config.patch(fallback_random=True):
        for fn in (compiled, loss_of):
            torch.manual_seed(3)
            model.zero_grad()
            loss = fn(ids)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            results.append((loss.detach(), grads))
    (loss, grads), (eager_loss, eager) = results
    torch.testing.assert_close(loss, eager_loss, atol=2e-2, rtol=2e-2)
    for n, expected in eager.items():
        scale = expected.abs().max().item()
        err = (grads[n] - expected).abs().max().item()
        assert err <= 5e-2 * (scale + 1e-3), f"{n}: {err:.3e} (largest {scale:.3e})"


@pytest.mark.parametrize("dtype", LOW)
def test_fused_epilogue_training_with_dropout(dtype):
    """A training step with BERT's dropout on fused GEMM epilogues: with the same seeds (the
    same masks), every gradient within 3x the separate kernels' error in the same dtype,
    both against the separate kernels in fp32."""
    config = BertConfig(
        vocab_size=1000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=1024,
    )  # fmt: skip
    torch.manual_seed(0)
    ref32 = BertModel(config, backend="triton", device=DEVICE).train()
    ids = torch.randint(1, 1000, (8, 128), device=DEVICE)
    mask = mixed_mask(8, 128).to(DEVICE)
    grads = {}
    for name, fused, model_dtype in (("fused", True, dtype), ("plain", False, dtype),
                                     ("ref32", False, torch.float32)):  # fmt: skip
        model = BertModel(config, backend="triton", device=DEVICE, dtype=model_dtype,
                          fused_epilogues=fused).train()  # fmt: skip
        model.load_state_dict(ref32.state_dict())
        torch.manual_seed(1)
        out = model(ids, attention_mask=mask.long())
        loss = out.last_hidden_state[mask].float().square().mean()
        loss.backward()
        grads[name] = {n: p.grad.double() for n, p in model.named_parameters()}
    for n, expected in grads["ref32"].items():
        plain_err = (grads["plain"][n] - expected).abs().max().item()
        fused_err = (grads["fused"][n] - expected).abs().max().item()
        assert fused_err <= 3 * plain_err + 1e-5, (
            f"{dtype} {n}: {fused_err:.3e} > 3 x {plain_err:.3e}"
        )


@pytest.mark.parametrize("fused", [False, True])
def test_bf16_autocast_training_follows_transformers(fused, tmp_path):
    """A training step under bf16 autocast (fp32 master weights) on the Triton kernels: the
    outputs have transformers' dtypes and every gradient is within 3x transformers' own
    autocast error of the fp32 gradients (dropout off)."""
    transformers = pytest.importorskip("transformers")
    from bertfast.weights import bertfast_to_hf

    config = transformers.BertConfig(
        vocab_size=1000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=1024, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.BertModel(config).to(DEVICE).train()
    hf.save_pretrained(tmp_path)
    ours_model = BertModel.from_pretrained(
        tmp_path, backend="triton", device=DEVICE, fused_epilogues=fused
    ).train()
    ids = torch.randint(1, 1000, (8, 128), device=DEVICE)
    mask = mixed_mask(8, 128).to(DEVICE)

    def run(model, autocast, is_hf):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            kwargs = dict(attention_mask=mask.long())
            out = model(input_ids=ids, **kwargs) if is_hf else model(ids, **kwargs)
        loss = out.last_hidden_state[mask].float().square().mean()
        loss = loss + out.pooler_output.float().square().mean()
        loss.backward()
        grads = {n: p.grad.double() for n, p in model.named_parameters()}
        dtypes = (out.last_hidden_state.dtype, out.pooler_output.dtype)
        return dtypes, grads if is_hf else bertfast_to_hf(grads)

    _, ref = run(hf, False, True)
    hf_dtypes, theirs = run(hf, True, True)
    dtypes, ours = run(ours_model, True, False)
    assert dtypes == hf_dtypes
    for n, expected in ref.items():
        hf_err = (theirs[n] - expected).abs().max().item()
        err = (ours[n] - expected).abs().max().item()
        assert err <= 3 * hf_err + 1e-5, f"fused={fused} {n}: {err:.3e} > 3 x {hf_err:.3e}"
