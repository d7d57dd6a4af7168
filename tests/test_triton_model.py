"""The whole encoder on backend="triton" (CPU interpreter): parity with transformers, the
padding-free path, no silent fallback to torch, and tracing through the registered ops."""

import importlib

import pytest
import torch

from bertfast import BertModel
from bertfast.packing import PackedBatch
from tests.helpers import assert_close, max_abs_error, random_batch, random_hf_bert

transformers = pytest.importorskip("transformers")
pytest.importorskip("triton")


@pytest.mark.parametrize(
    "config",
    [
        dict(hidden_size=64, num_attention_heads=2),  # head dim 32
        dict(hidden_size=128, num_attention_heads=2, intermediate_size=256),  # head dim 64
        dict(hidden_size=64, num_attention_heads=1, hidden_act="gelu_new", type_vocab_size=3),
    ],
    ids=["d32", "d64", "one_head_gelu_new"],
)
def test_random_checkpoint_parity(tmp_path, config):
    path, hf = random_hf_bert(tmp_path, **config)
    model = BertModel.from_pretrained(path, backend="triton")
    ids, types, mask = random_batch(
        hf.config.vocab_size, seq=29, type_vocab=hf.config.type_vocab_size
    )
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
    out = model(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    assert max_abs_error(out.last_hidden_state, ref.last_hidden_state, mask) <= 1e-4
    with torch.no_grad():
        ref_states = hf(
            input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True
        ).hidden_states
    for a, b in zip(out.hidden_states, ref_states, strict=True):
        assert max_abs_error(a, b, mask) <= 1e-4
    assert max_abs_error(out.pooler_output, ref.pooler_output) <= 1e-4
    # Padding is removed after the embeddings and put back as zeros at the output.
    padded = out.last_hidden_state[~mask.bool()]
    assert torch.equal(padded, torch.zeros_like(padded))


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_fused_gemm_epilogues_match_transformers(tmp_path, act):
    """GEMM + bias + GELU and GEMM + bias + residual + LayerNorm fused, as one model."""
    path, hf = random_hf_bert(tmp_path, hidden_act=act)
    model = BertModel.from_pretrained(path, backend="triton", fused_epilogues=True).eval()
    ids, types, mask = random_batch(hf.config.vocab_size, seq=11)
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
        out = model(ids, attention_mask=mask, token_type_ids=types)
    assert max_abs_error(out.last_hidden_state, ref.last_hidden_state, mask) <= 1e-4
    assert max_abs_error(out.pooler_output, ref.pooler_output) <= 1e-4


def test_bf16_on_the_interpreter_is_refused(tmp_path):
    """The interpreter's tl.dot multiplies bf16 bit patterns: a refusal, never garbage."""
    path, _ = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path, backend="triton", dtype=torch.bfloat16)
    ids = torch.randint(1, 99, (2, 5))
    with pytest.raises(TypeError, match="interpreter's tl.dot does not support bf16"):
        with torch.no_grad():
            model(ids)


def test_minilm_parity_short_inputs(minilm_dir):
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    model = BertModel.from_pretrained("all-MiniLM-L6-v2", backend="triton")
    ids, types, mask = random_batch(hf.config.vocab_size, batch=2, seq=9)
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    out = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert max_abs_error(out, ref, mask) <= 1e-4


def test_padded_batch_equals_each_sequence_alone_and_torch_backend(tmp_path):
    path, _ = random_hf_bert(tmp_path)
    triton_model = BertModel.from_pretrained(path, backend="triton")
    torch_model = BertModel.from_pretrained(path, backend="torch")
    ids, types, mask = random_batch(99, batch=3, seq=17, seed=4)
    packed = triton_model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    padded = torch_model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert max_abs_error(packed, padded, mask) <= 1e-5
    for i in range(3):
        n = int(mask[i].sum())
        alone = triton_model(ids[i : i + 1, :n], token_type_ids=types[i : i + 1, :n])
        assert max_abs_error(packed[i, :n], alone.last_hidden_state[0]) <= 1e-5


def test_padded_positions_computed_on_request(tmp_path):
    path, hf = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path, backend="triton")
    ids, types, mask = random_batch(99, seq=10, seed=2)
    out = model(ids, attention_mask=mask, token_type_ids=types, compute_padded_positions=True)
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    everywhere = torch.ones_like(mask)
    assert (mask == 0).any()
    assert max_abs_error(out.last_hidden_state, ref, everywhere) <= 1e-4


def test_left_padding_packs_any_mask_pattern(tmp_path):
    path, _ = random_hf_bert(tmp_path)
    triton_model = BertModel.from_pretrained(path, backend="triton")
    torch_model = BertModel.from_pretrained(path, backend="torch")
    ids = torch.randint(1, 99, (2, 8))
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1, 1, 1]])
    a = triton_model(ids, attention_mask=mask)
    b = torch_model(ids, attention_mask=mask)
    assert max_abs_error(a.last_hidden_state, b.last_hidden_state, mask) <= 1e-5
    # Row 0's first position is padding: the pooler still reads it as transformers does.
    assert max_abs_error(a.pooler_output, b.pooler_output) <= 1e-5


def test_backward_through_kernels_is_refused_not_dropped(tmp_path, monkeypatch):
    from bertfast import ops

    path, _ = random_hf_bert(tmp_path)
    # eval mode, grad enabled, through a kernel without a backward (the fused GEMM epilogue
    # made to lack one): the backward is refused, not silently cut off before the kernel
    backwards = tuple(o for o in ops.KERNEL_BACKWARD_OPS["triton"] if o != "linear_epilogue")
    monkeypatch.setitem(ops.KERNEL_BACKWARD_OPS, "triton", backwards)
    model = BertModel.from_pretrained(path, backend="triton", fused_epilogues=True)
    out = model(torch.randint(1, 99, (2, 5))).pooler_output
    assert out.requires_grad
    with pytest.raises(
        NotImplementedError,
        match="'linear_epilogue' has no backward pass; train with backend='torch'",
    ):
        out.sum().backward()
    with torch.no_grad():
        assert not model(torch.randint(1, 99, (2, 5))).pooler_output.requires_grad


def test_head_dim_the_kernels_lack_is_refused_at_construction(tmp_path):
    path, _ = random_hf_bert(tmp_path, hidden_size=52, num_attention_heads=2)  # head dim 26
    with pytest.raises(RuntimeError, match=r"supports head dims \(16, 32, 64, 128\), not 26"):
        BertModel.from_pretrained(path, backend="triton")
    assert BertModel.from_pretrained(path, backend="auto").backend == "torch"


def test_explicit_triton_never_falls_back_to_torch(tmp_path, monkeypatch):
    path, hf = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path, backend="triton")

    def refuse(*args, **kwargs):
        raise AssertionError("the torch reference ran on backend='triton'")

    for op in ("attention", "bias_gelu", "bias_residual_layer_norm", "embedding_layer_norm"):
        # The op modules' names are shadowed by the functions in bertfast.ops: import by path.
        module = importlib.import_module(f"bertfast.ops.{op}")
        monkeypatch.setattr(module, f"{op}_reference", refuse)
    ids, types, mask = random_batch(99)
    out = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    assert max_abs_error(out, ref, mask) <= 1e-4


def test_layer_traces_through_registered_ops(tmp_path):
    """torch.compile sees the custom ops (fake implementations, no graph break)."""
    path, _ = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path, backend="triton")
    layer = model.layers[0]
    packed = PackedBatch.dense(2, 6, torch.device("cpu"))
    hidden = torch.randn(12, 64)

    def run(h):
        return layer(h, "triton", cu_seqlens=packed.cu_seqlens, max_seqlen=packed.max_seqlen)

    compiled = torch.compile(run, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert_close(compiled(hidden), run(hidden), atol=1e-6)
