"""The CUDA C++ kernels (csrc/, through bertfast.cuda) and the encoder on backend="cuda".

Judged by testing.md: against the reference computed in fp64 from the same fp32 inputs, each
op's fp16/bf16 error is at most 2x the error of the torch reference run in the same low
precision (3x for the whole model against transformers), plus a tiny atol; fp32 is tight.
Each kernel is also compared with its Triton twin. Needs the extension built
(scripts/gpu_check.sh does it).
"""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch

from bertfast import BertModel, ops
from bertfast.ops import (
    attention_reference,
    bias_gelu_reference,
    bias_residual_layer_norm_reference,
    embedding_layer_norm_reference,
)
from tests.helpers import assert_close, max_abs_error, random_batch, random_hf_bert

pytestmark = pytest.mark.gpu

DEVICE = "cuda"
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
LOW = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _extension_and_exact_fp32():
    reason = ops.cuda_extension_reason()
    if reason is not None:
        pytest.skip(reason)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def cuda_kernel(op):
    """The checked entry point of a CUDA kernel: the op with backend="cuda"."""
    return functools.partial(getattr(ops, op), backend="cuda")


def triton_out(op, *args, **kwargs):
    """The Triton twin's output, or None where it would not run compiled on this GPU (not
    installed, or TRITON_INTERPRET=1 left on by tests/conftest.py: run with TRITON_INTERPRET=0)."""
    if ops.triton_interpreter_enabled() or ops.backend_report(DEVICE)["triton"] is not None:
        return None
    try:
        return getattr(ops, op)(*args, **kwargs, backend="triton")
    except Exception as exc:  # the twin failing to compile is its own bug, reported elsewhere
        if not type(exc).__module__.startswith("triton"):
            raise
        warnings.warn(f"Triton {op} did not run ({type(exc).__name__}); not compared", stacklevel=2)
        return None


def check(ours, expected, low_ref, what, tri=None, fp32_atol=2e-5, factor=2.0):
    """ours (and the Triton twin's ``tri``) against the fp64 ``expected``; fp16/bf16 by the 2x
    rule, with ``low_ref`` the torch reference run in ours' dtype."""
    assert torch.isfinite(ours).all(), f"{what}: {int((~torch.isfinite(ours)).sum())} non-finite"
    if ours.dtype == torch.float32:
        assert_close(ours, expected, atol=fp32_atol, rtol=1e-5, what=what)
        if tri is not None:
            assert_close(ours, tri, atol=2 * fp32_atol, rtol=1e-5, what=f"{what} vs triton")
        return
    ref_err = (low_ref.double() - expected.double()).abs().max().item()
    our_err = (ours.double() - expected.double()).abs().max().item()
    assert our_err <= factor * ref_err + 1e-5, (
        f"{what}: error {our_err:.3e} > {factor} x the torch reference's {ref_err:.3e}"
    )
    if tri is not None:
        gap = (ours.double() - tri.double()).abs().max().item()
        assert gap <= 2 * ref_err + 1e-5, f"{what}: {gap:.3e} from triton (ref {ref_err:.3e})"


# Attention ---------------------------------------------------------------------------------


def mixed_mask(batch, seq, seed=0):
    """Random lengths with one full row, one single-token row and one fully padded row."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    lengths[0], lengths[-1] = seq, 1
    if batch >= 3:
        lengths[1] = 0
    return (torch.arange(seq)[None, :] < lengths[:, None]).to(DEVICE)


def poison_padding(qkv, mask):
    """NaN in every padded token's q, k and v: none of it may reach a real row's output."""
    qkv = qkv.clone()
    qkv[~mask] = float("nan")
    return qkv


def run_padded(qkv32, heads, mask, dtype, compare_triton, qkv=None):
    """Poisoned padded run; ``qkv`` (the low-precision input) defaults to qkv32 cast."""
    if qkv is None:
        qkv32 = poison_padding(qkv32, mask)
        qkv = qkv32.to(dtype)
    ours = cuda_kernel("attention")(qkv, heads, mask)
    # The references read contiguous copies: SDPA rejects rows that are not 16-byte aligned
    # (fp32) or reads the gap between them (fp16 gave NaN from it, seen on torch 2.11).
    expected = attention_reference(qkv32.double().contiguous(), heads, key_padding_mask=mask)
    low = attention_reference(qkv.contiguous(), heads, key_padding_mask=mask)
    tri = triton_out("attention", qkv, heads, mask) if compare_triton else None
    real = mask
    # A sequence with no real key outputs exact zeros.
    empty = ~mask.any(dim=1)
    if empty.any():
        assert torch.equal(ours[empty], torch.zeros_like(ours[empty]))
    return ours[real], expected[real], low[real], None if tri is None else tri[real]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
@pytest.mark.parametrize("seq", [1, 7, 97, 129, 384, 512])
def test_attention_padded(dtype, head_dim, seq):
    heads = 2
    qkv32 = torch.randn(4, seq, 3 * heads * head_dim, device=DEVICE)
    mask = mixed_mask(4, seq, seed=seq + head_dim)
    compare_triton = dtype != torch.float32 and head_dim >= 32 and seq in (97, 512)
    ours, expected, low, tri = run_padded(qkv32, heads, mask, dtype, compare_triton)
    check(ours, expected, low, f"padded {dtype} d{head_dim} s{seq}", tri)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [32, 64])
def test_attention_padded_without_mask(dtype, head_dim):
    qkv32 = torch.randn(3, 77, 3 * 4 * head_dim, device=DEVICE)
    qkv = qkv32.to(dtype)
    ours = cuda_kernel("attention")(qkv, 4)
    expected = attention_reference(qkv32.double(), 4)
    check(ours, expected, attention_reference(qkv, 4), f"unmasked {dtype} d{head_dim}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
def test_attention_packed(dtype, head_dim):
    heads = 3
    lengths = [97, 1, 7, 0, 129, 512, 384]  # a single token and an empty sequence among them
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    cu = cu.to(DEVICE)
    qkv32 = torch.randn(sum(lengths), 3 * heads * head_dim, device=DEVICE)
    qkv = qkv32.to(dtype)
    form = dict(cu_seqlens=cu, max_seqlen=max(lengths))
    ours = cuda_kernel("attention")(qkv, heads, **form)
    expected = attention_reference(qkv32.double(), heads, **form)
    low = attention_reference(qkv, heads, **form)
    tri = None
    if dtype != torch.float32 and head_dim == 64:
        tri = triton_out("attention", qkv, heads, **form)
    check(ours, expected, low, f"packed {dtype} d{head_dim}", tri)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra", [8, 5])
def test_attention_reads_strided_rows(dtype, extra):
    """qkv as a view with wider rows, NaN in the gap and in padded tokens; 5 extra columns
    misalign fp16 rows (the launcher copies them), 8 keep them aligned (read in place)."""
    heads, d = 2, 64
    width = 3 * heads * d
    mask = mixed_mask(2, 33, seed=5)
    big = torch.full((2, 33, width + extra), float("nan"), device=DEVICE)
    big[..., :width] = torch.randn(2, 33, width, device=DEVICE)
    big[~mask] = float("nan")
    big_low = big.to(dtype)
    qkv32, qkv = big[..., :width], big_low[..., :width]
    assert qkv.stride(1) == width + extra
    ours, expected, low, _ = run_padded(qkv32, heads, mask, dtype, False, qkv=qkv)
    check(ours, expected, low, f"strided {dtype} +{extra}")
    cu = torch.tensor([0, 20, 33], dtype=torch.int32, device=DEVICE)
    form = dict(cu_seqlens=cu, max_seqlen=20)
    packed32, packed = big[0, :, :width], big_low[0, :, :width]
    ours = cuda_kernel("attention")(packed, heads, **form)
    expected = attention_reference(packed32.double().contiguous(), heads, **form)
    low = attention_reference(packed.contiguous(), heads, **form)
    check(ours, expected, low, f"packed {dtype} +{extra}")


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize(
    "batch, seq, heads", [(8, 512, 12), (4, 384, 16)], ids=["bert-base", "bert-large"]
)
def test_attention_bert_shapes(dtype, batch, seq, heads):
    head_dim = 64
    qkv32 = torch.randn(batch, seq, 3 * heads * head_dim, device=DEVICE)
    mask = mixed_mask(batch, seq, seed=batch)
    ours, expected, low, tri = run_padded(qkv32, heads, mask, dtype, compare_triton=True)
    check(ours, expected, low, f"{dtype} {batch}x{seq}x{heads}", tri)
    # Packed form of the same batch: the padding-free path the encoder takes.
    lengths = mask.sum(1)
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    packed32 = qkv32[mask]
    form = dict(cu_seqlens=cu, max_seqlen=int(lengths.max()))
    ours_packed = cuda_kernel("attention")(packed32.to(dtype), heads, **form)
    tri_packed = triton_out("attention", packed32.to(dtype), heads, **form)
    check(ours_packed, expected, low, f"packed {dtype} {batch}x{seq}x{heads}", tri_packed)


def test_attention_on_a_side_stream_and_int64_offsets():
    """The kernel runs on the caller's current stream; token offsets past 2^31 elements."""
    heads, d = 16, 64
    row = 3 * heads * d
    tokens = 2**31 // row + 600  # the last 600 tokens lie beyond 2^31 elements
    lengths = [512] * (tokens // 512) + ([tokens % 512] if tokens % 512 else [])
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    cu = cu.to(DEVICE)
    qkv = torch.empty(tokens, row, dtype=torch.float16, device=DEVICE).normal_()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ours = cuda_kernel("attention")(qkv, heads, cu_seqlens=cu, max_seqlen=512)
    torch.cuda.current_stream().wait_stream(side)
    start = int(cu[-3])  # the last two sequences
    tail = qkv[start:]
    form = dict(cu_seqlens=cu[-3:] - start, max_seqlen=512)
    expected = attention_reference(tail.double(), heads, **form)
    low = attention_reference(tail, heads, **form)
    check(ours[start:], expected, low, "beyond 2^31 elements")
    del qkv, ours
    torch.cuda.empty_cache()


# LayerNorm and GELU -------------------------------------------------------------------------


SHAPES = [(1, 1), (7, 97), (2, 3, 129), (5, 384), (33, 768), (4, 1024), (3, 3001), (2, 8192)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_residual_layer_norm(dtype, shape, with_bias):
    h = shape[-1]
    x = torch.randn(shape, device=DEVICE) * 2 + 1
    res = torch.randn(shape, device=DEVICE)
    bias = torch.randn(h, device=DEVICE) if with_bias else None
    w, b = torch.randn(h, device=DEVICE) + 1, torch.randn(h, device=DEVICE)
    eps = 1e-12
    expected = bias_residual_layer_norm_reference(
        x.double(), None if bias is None else bias.double(), res.double(), w.double(),
        b.double(), eps,
    )  # fmt: skip
    cast = [None if t is None else t.to(dtype) for t in (x, bias, res, w, b)]
    ours = cuda_kernel("bias_residual_layer_norm")(*cast, eps)
    assert ours.shape == x.shape and ours.dtype == dtype
    low = bias_residual_layer_norm_reference(*cast, eps)
    tri = None
    if dtype != torch.float32 and shape == (33, 768) and with_bias:
        tri = triton_out("bias_residual_layer_norm", *cast, eps)
    check(ours, expected, low, f"ln {dtype} {shape} bias={with_bias}", tri, fp32_atol=5e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [776, 771])  # rows 16-byte aligned (vector path) or not
def test_bias_residual_layer_norm_strided_rows_and_runtime_eps(dtype, width):
    h = 768
    big_x = torch.randn(6, width, device=DEVICE)
    big_r = torch.randn(6, width, device=DEVICE)
    x, res = big_x.to(dtype)[:, :h], big_r.to(dtype)[:, :h]
    assert x.stride(0) == width
    w, b, bias = (torch.randn(h, device=DEVICE).to(dtype) for _ in range(3))
    for eps in (1e-12, 1e-5, 0.5):
        ours = cuda_kernel("bias_residual_layer_norm")(x, bias, res, w, b, eps)
        expected = bias_residual_layer_norm_reference(
            x.double(), bias.double(), res.double(), w.double(), b.double(), eps
        )
        low = bias_residual_layer_norm_reference(x, bias, res, w, b, eps)
        check(ours, expected, low, f"strided ln {dtype} w{width} eps{eps}", fp32_atol=5e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 97), (3, 5, 3072), (2, 4096), (9, 1000)])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_gelu(dtype, shape, approximate, with_bias):
    x = torch.randn(shape, device=DEVICE) * 3
    bias = torch.randn(shape[-1], device=DEVICE) if with_bias else None
    expected = bias_gelu_reference(x.double(), None if bias is None else bias.double(), approximate)
    cast = [None if t is None else t.to(dtype) for t in (x, bias)]
    ours = cuda_kernel("bias_gelu")(*cast, approximate)
    assert ours.shape == x.shape and ours.dtype == dtype
    low = bias_gelu_reference(*cast, approximate)
    tri = None
    if dtype != torch.float32 and shape == (3, 5, 3072) and with_bias:
        tri = triton_out("bias_gelu", *cast, approximate)
    check(ours, expected, low, f"gelu {approximate} {dtype} {shape}", tri, fp32_atol=1e-5)


@pytest.mark.parametrize("dtype", LOW)
def test_bias_gelu_strided_rows(dtype):
    big = torch.randn(10, 3072 + 3, device=DEVICE).to(dtype)
    x = big[:, :3072]
    bias = torch.randn(3072, device=DEVICE).to(dtype)
    ours = cuda_kernel("bias_gelu")(x, bias, "none")
    expected = bias_gelu_reference(x.double(), bias.double(), "none")
    check(ours, expected, bias_gelu_reference(x, bias, "none"), f"strided gelu {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [32, 100, 384, 768, 1024])
@pytest.mark.parametrize("ids_shape", [(1, 1), (3, 17), (45,)])
def test_embedding_layer_norm(dtype, hidden, ids_shape):
    vocab, positions, types = 1000, 512, 3
    word = torch.randn(vocab, hidden, device=DEVICE)
    position = torch.randn(positions, hidden, device=DEVICE)
    token_type = torch.randn(types, hidden, device=DEVICE)
    w, b = torch.randn(hidden, device=DEVICE) + 1, torch.randn(hidden, device=DEVICE)
    ids = torch.randint(0, vocab, ids_shape, device=DEVICE)
    tts = torch.randint(0, types, ids_shape, device=DEVICE, dtype=torch.int32)  # mixed int types
    pos = torch.randint(0, positions, ids_shape, device=DEVICE)
    tables = (word, position, token_type, w, b)
    expected = embedding_layer_norm_reference(ids, tts, pos, *(t.double() for t in tables), 1e-12)
    cast = [t.to(dtype) for t in tables]
    for id_dtype in (torch.int64, torch.int32):
        ours = cuda_kernel("embedding_layer_norm")(ids.to(id_dtype), tts, pos, *cast, 1e-12)
        assert ours.shape == (*ids_shape, hidden) and ours.dtype == dtype
        low = embedding_layer_norm_reference(ids, tts, pos, *cast, 1e-12)
        tri = None
        if dtype != torch.float32 and hidden == 768 and ids_shape == (3, 17):
            tri = triton_out("embedding_layer_norm", ids, tts, pos, *cast, 1e-12)
        what = f"embedding {dtype} h{hidden} {ids_shape} {id_dtype}"
        check(ours, expected, low, what, tri, fp32_atol=5e-5)


def test_bias_gelu_large_rows_int64_offsets():
    rows, cols = 2**31 // 3072 + 8, 3072  # the last rows lie beyond 2^31 elements
    x = torch.empty(rows, cols, dtype=torch.bfloat16, device=DEVICE).normal_()
    bias = torch.randn(cols, device=DEVICE).to(torch.bfloat16)
    ours = cuda_kernel("bias_gelu")(x, bias, "none")
    tail = x[-16:]
    expected = bias_gelu_reference(tail.double(), bias.double(), "none")
    check(ours[-16:], expected, bias_gelu_reference(tail, bias, "none"), "gelu beyond 2^31")
    del x, ours
    torch.cuda.empty_cache()


def test_custom_ops_pass_opcheck():
    qkv = torch.randn(2, 9, 3 * 64, device=DEVICE, dtype=torch.float16)
    mask = mixed_mask(2, 9)
    x = torch.randn(4, 64, device=DEVICE, dtype=torch.bfloat16)
    w = torch.randn(64, device=DEVICE, dtype=torch.bfloat16)
    ids = torch.randint(0, 10, (5,), device=DEVICE)
    table = torch.randn(10, 64, device=DEVICE, dtype=torch.bfloat16)
    cases = [
        (torch.ops.bertfast.cuda_attention.default, (qkv, 2, mask, None, None)),
        (torch.ops.bertfast.cuda_bias_gelu.default, (x, w, "tanh")),
        (torch.ops.bertfast.cuda_bias_residual_layer_norm.default, (x, w, x, w, w, 1e-5)),
        (
            torch.ops.bertfast.cuda_embedding_layer_norm.default,
            (ids, ids, ids, table, table, table, w, w, 1e-12),
        ),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
    # Eager dispatch and the registered op run the same kernel.
    via_ops = ops.attention(qkv, 2, key_padding_mask=mask, backend="cuda")
    via_library = torch.ops.bertfast.cuda_attention(qkv, 2, mask, None, None)
    assert torch.equal(via_ops[mask], via_library[mask])


# The whole encoder -------------------------------------------------------------------------


def _batch(vocab, batch, seq, type_vocab, seed=1):
    return tuple(t.to(DEVICE) for t in random_batch(vocab, batch, seq, type_vocab, seed))


ENCODERS = {
    "d64": dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "d32_gelu_new": dict(
        hidden_size=384, num_attention_heads=12, intermediate_size=1536, hidden_act="gelu_new"
    ),
    "d128": dict(hidden_size=256, num_attention_heads=2, intermediate_size=512, type_vocab_size=3),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("config", list(ENCODERS))
def test_encoder_matches_transformers(tmp_path, config, dtype):
    path, hf = random_hf_bert(
        tmp_path, num_hidden_layers=2, vocab_size=1000, max_position_embeddings=128,
        **ENCODERS[config],
    )  # fmt: skip
    hf = hf.to(DEVICE)
    ids, types, mask = _batch(1000, 4, 97, hf.config.type_vocab_size)
    inputs = dict(input_ids=ids, token_type_ids=types, attention_mask=mask)
    with torch.no_grad():
        ref = hf(**inputs)
        low = copy.deepcopy(hf).to(dtype)(**inputs) if dtype != torch.float32 else None
    model = BertModel.from_pretrained(path, backend="cuda", dtype=dtype, device=DEVICE)
    assert model.backend == "cuda"
    with torch.no_grad():
        out = model(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    for name in ("last_hidden_state", "pooler_output"):
        rows = real if name == "last_hidden_state" else None
        our_err = max_abs_error(getattr(out, name), getattr(ref, name), rows)
        if dtype == torch.float32:
            assert our_err <= 1e-4, f"{config} fp32 {name}: {our_err:.3e}"
            continue
        hf_err = max_abs_error(getattr(low, name), getattr(ref, name), rows)
        assert our_err <= 3 * hf_err + 1e-4, (
            f"{config} {dtype} {name}: error {our_err:.3e} > 3 x transformers' {hf_err:.3e}"
        )
    # Padding is put back as zeros.
    padded = out.last_hidden_state[~real]
    assert torch.equal(padded, torch.zeros_like(padded))
