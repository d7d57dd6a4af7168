"""Triton kernels and the Triton encoder on a real GPU, fp16 and bf16 at BERT shapes.

Judged by testing.md: each op's error against the fp32 reference at most 2x the error of the
torch reference run in the same low precision (3x for the whole model), plus a tiny atol.
"""

import pytest
import torch

from bertfast import BertConfig, BertModel, ops
from tests import helpers
from tests.helpers import max_abs_error

pytestmark = pytest.mark.gpu

LOW = [torch.float16, torch.bfloat16]
DEVICE = "cuda"


@pytest.fixture(autouse=True)
def _exact_fp32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def rule(ours, low_ref, ref32, factor, what, rows=None):
    """ours and low_ref in low precision, ref32 in fp32; compare on rows (bool mask) if given."""
    if rows is not None:
        ours, low_ref, ref32 = ours[rows], low_ref[rows], ref32[rows]
    assert torch.isfinite(ours).all(), f"{what}: non-finite output"
    ref_err = (low_ref.double() - ref32.double()).abs().max().item()
    our_err = (ours.double() - ref32.double()).abs().max().item()
    assert our_err <= factor * ref_err + 1e-5, f"{what}: {our_err:.3e} > {factor} x {ref_err:.3e}"


def mixed_mask(batch, seq, seed=0):
    return helpers.mixed_mask(batch, seq, seed).to(DEVICE)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize(
    "batch, seq, heads, head_dim",
    [
        (32, 128, 12, 64),
        (8, 384, 16, 64),
        (4, 512, 12, 64),
        (3, 97, 12, 32),
        (2, 129, 8, 128),
        (2, 1, 4, 64),
    ],
)
def test_attention_padded_and_packed(dtype, batch, seq, heads, head_dim):
    qkv32 = torch.randn(batch, seq, 3 * heads * head_dim, device=DEVICE)
    mask = mixed_mask(batch, seq, seed=seq)
    ref32 = ops.attention_reference(qkv32, heads, key_padding_mask=mask)
    low_ref = ops.attention_reference(qkv32.to(dtype), heads, key_padding_mask=mask)
    qkv = qkv32.to(dtype)
    ours = ops.attention(qkv, heads, key_padding_mask=mask, backend="triton")
    rule(ours, low_ref, ref32, 2, f"padded {dtype} {batch}x{seq} d{head_dim}", rows=mask)
    lengths = mask.sum(1)
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    packed = ops.attention(
        qkv[mask], heads, cu_seqlens=cu, max_seqlen=int(lengths.max()), backend="triton"
    )
    rule(packed, low_ref[mask], ref32[mask], 2, f"packed {dtype} {batch}x{seq} d{head_dim}")


@pytest.mark.parametrize("dtype", [torch.float32, *LOW])
def test_attention_padding_never_leaks(dtype):
    qkv = torch.randn(4, 200, 3 * 12 * 64, device=DEVICE, dtype=dtype)
    mask = mixed_mask(4, 200, seed=5)
    mask[2] = False  # a sequence with no real token
    clean = ops.attention(qkv, 12, key_padding_mask=mask, backend="triton")
    dirty = qkv.clone()
    dirty[~mask] = float("nan")
    out = ops.attention(dirty, 12, key_padding_mask=mask, backend="triton")
    assert torch.equal(out[mask], clean[mask])
    assert torch.equal(out[2], torch.zeros_like(out[2]))


def test_attention_fp32_is_ieee():
    qkv = torch.randn(2, 77, 3 * 4 * 64, device=DEVICE)
    mask = mixed_mask(2, 77)
    ours = ops.attention(qkv, 4, key_padding_mask=mask, backend="triton")
    ref = ops.attention_reference(qkv.double(), 4, key_padding_mask=mask)
    assert max_abs_error(ours, ref, mask) <= 1e-5


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("rows, hidden", [(4096, 768), (3072, 1024), (97, 384), (7, 129)])
def test_row_ops(dtype, rows, hidden):
    x32 = torch.randn(rows, hidden, device=DEVICE) * 2
    res32 = torch.randn(rows, hidden, device=DEVICE)
    bias32, w32, b32 = (torch.randn(hidden, device=DEVICE) for _ in range(3))
    args32 = (x32, bias32, res32, w32, b32, 1e-12)
    args = tuple(a.to(dtype) if torch.is_tensor(a) else a for a in args32)
    ref32 = ops.bias_residual_layer_norm_reference(*args32)
    low_ref = ops.bias_residual_layer_norm_reference(*args)
    ours = ops.bias_residual_layer_norm(*args, backend="triton")
    rule(ours, low_ref, ref32, 2, f"bias_residual_layer_norm {dtype} {rows}x{hidden}")
    for approximate in ("none", "tanh"):
        wide32 = torch.randn(rows, 4 * hidden, device=DEVICE) * 3
        wb32 = torch.randn(4 * hidden, device=DEVICE)
        ref32 = ops.bias_gelu_reference(wide32, wb32, approximate)
        low_ref = ops.bias_gelu_reference(wide32.to(dtype), wb32.to(dtype), approximate)
        ours = ops.bias_gelu(wide32.to(dtype), wb32.to(dtype), approximate, backend="triton")
        rule(ours, low_ref, ref32, 2, f"bias_gelu {approximate} {dtype} {rows}x{hidden}")


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("tokens, hidden", [(4096, 768), (3072, 1024), (5, 384)])
def test_embedding_layer_norm(dtype, tokens, hidden):
    tables32 = [torch.randn(n, hidden, device=DEVICE) for n in (30522, 512, 2)]
    w32, b32 = torch.randn(hidden, device=DEVICE) + 1, torch.randn(hidden, device=DEVICE)
    ids = torch.randint(0, 30522, (tokens,), device=DEVICE)
    types = torch.randint(0, 2, (tokens,), device=DEVICE)
    pos = torch.randint(0, 512, (tokens,), device=DEVICE)
    ref32 = ops.embedding_layer_norm_reference(ids, types, pos, *tables32, w32, b32, 1e-12)
    low = [t.to(dtype) for t in (*tables32, w32, b32)]
    low_ref = ops.embedding_layer_norm_reference(ids, types, pos, *low, 1e-12)
    ours = ops.embedding_layer_norm(ids, types, pos, *low, 1e-12, backend="triton")
    rule(ours, low_ref, ref32, 2, f"embedding_layer_norm {dtype} {tokens}x{hidden}")


def _hf_pair(config: BertConfig, dtype):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.BertConfig(**config.to_dict())
    torch.manual_seed(0)
    hf32 = transformers.BertModel._from_config(hf_config, attn_implementation="eager")
    hf32 = hf32.to(DEVICE).eval()
    helpers.randomize_biases_and_norms(hf32)
    hf_low = transformers.BertModel._from_config(hf_config, attn_implementation="sdpa")
    hf_low = hf_low.to(DEVICE).eval()
    hf_low.load_state_dict(hf32.state_dict())
    hf_low.to(dtype)
    ours = BertModel(config, backend="triton", device=DEVICE)
    from bertfast.weights import hf_to_bertfast, split_encoder_keys

    encoder, _ = split_encoder_keys(hf32.state_dict())
    state, unexpected = hf_to_bertfast(encoder)
    assert not unexpected
    ours.load_state_dict(state)
    return hf32, hf_low, ours.to(dtype).eval()


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("preset, batch, seq", [("bert-base", 32, 128), ("bert-large", 8, 384)])
def test_encoder_against_transformers(dtype, preset, batch, seq):
    config = BertConfig.preset(preset)
    hf32, hf_low, ours = _hf_pair(config, dtype)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=DEVICE)
    mask = mixed_mask(batch, seq, seed=batch).long()
    with torch.inference_mode():
        ref32 = hf32(input_ids=ids, attention_mask=mask).last_hidden_state
        low_ref = hf_low(input_ids=ids, attention_mask=mask).last_hidden_state
        out = ours(ids, attention_mask=mask).last_hidden_state
    rule(out, low_ref, ref32, 3, f"encoder {preset} {dtype}", rows=mask.bool())


def test_layer_captures_in_a_cuda_graph():
    from bertfast.packing import PackedBatch

    config = BertConfig.preset("bert-base", num_hidden_layers=2)
    model = BertModel(config, backend="triton", device=DEVICE, dtype=torch.bfloat16).eval()
    packed = PackedBatch.dense(4, 128, torch.device(DEVICE))
    hidden = torch.randn(512, 768, device=DEVICE, dtype=torch.bfloat16)

    def run(h):
        for layer in model.layers:
            h = layer(h, "triton", cu_seqlens=packed.cu_seqlens, max_seqlen=packed.max_seqlen)
        return h

    with torch.inference_mode():
        eager = run(hidden)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            run(hidden)  # warm-up outside capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = run(hidden)
        graph.replay()
        torch.cuda.synchronize()
    # Same kernels, same inputs: replay reproduces eager up to cuBLAS algorithm choice.
    assert max_abs_error(captured, eager) <= 2e-2
