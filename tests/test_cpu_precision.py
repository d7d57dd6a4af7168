"""CPU inference in bf16 and int8: the accuracy contracts against sentence-transformers in fp32
(min cosine >= 0.999 for bf16, >= 0.99 for int8; top-3 retrieval unchanged), the int8 GEMM's
per-token and outlier-channel arithmetic, and the refusals (bf16 without native bf16, int8
off the CPU, in training or beside bf16)."""

import copy

import numpy as np
import pytest
import torch

from bertfast import BertModel, cpu_linear, cpu_quantize
from tests.helpers import max_abs_error, random_hf_bert

BF16_REASON = cpu_linear.bf16_unsupported_reason()
INT8_REASON = cpu_quantize.int8_unsupported_reason()
needs_bf16 = pytest.mark.skipif(BF16_REASON is not None, reason=f"no native bf16: {BF16_REASON}")
needs_int8 = pytest.mark.skipif(INT8_REASON is not None, reason=f"no int8 path: {INT8_REASON}")

# A fixed text set with what breaks low precision first: one- and two-token texts (a mean over
# few tokens averages no error away), punctuation, digits, long and mixed-case texts.
TEXTS = [
    "?",
    "a",
    "ok",
    "!!!",
    "1234",
    "Hello world",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "Paris is the capital and most populous city of France.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from afar.",
    "Quantum computers use qubits, which can be in superpositions of 0 and 1.",
    "How do I bake sourdough bread at home without a proofing basket?",
    "In 1969, Apollo 11 landed the first humans on the Moon; Neil Armstrong stepped out first.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates again.",
    "The mitochondria is the powerhouse of the cell, producing ATP through respiration. " * 3,
]
QUERIES = [
    "Which city is the capital of France?",
    "How do vaccines protect against disease?",
    "What do pandas eat?",
    "Who landed on the Moon first?",
]
DOCUMENTS = [
    "Paris is the capital of France and its largest city.",
    "Lyon is a large city in France known for its food.",
    "Berlin is the capital of Germany.",
    "Vaccines train the immune system to recognise a pathogen before infection.",
    "Antibiotics kill bacteria but do not work against viruses.",
    "The immune system has innate and adaptive parts.",
    "Giant pandas eat almost only bamboo, up to 38 kg a day.",
    "Red pandas eat bamboo, fruit and insects.",
    "Koalas feed on eucalyptus leaves.",
    "Neil Armstrong was the first person to walk on the Moon in 1969.",
    "Yuri Gagarin was the first human in space in 1961.",
    "The Moon is about 384,000 km from the Earth.",
]


@pytest.fixture(scope="module")
def reference(minilm_dir):
    """sentence-transformers' fp32 vectors of TEXTS, QUERIES and DOCUMENTS."""
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_dir), device="cpu")
    return {name: model.encode(texts) for name, texts in _sets().items()}


def _sets() -> dict[str, list[str]]:
    return {"texts": TEXTS, "queries": QUERIES, "documents": DOCUMENTS}


def _top3(queries: np.ndarray, documents: np.ndarray) -> list[list[int]]:
    scores = queries @ documents.T  # unit vectors: cosine
    return np.argsort(-scores, axis=1, kind="stable")[:, :3].tolist()


def _check_contract(encoder, reference, min_cosine: float) -> None:
    ours = {name: encoder.encode(texts) for name, texts in _sets().items()}
    cosine = (ours["texts"] * reference["texts"]).sum(axis=1)
    worst = int(cosine.argmin())
    assert cosine.min() >= min_cosine, f"cosine {cosine.min():.5f} at {TEXTS[worst]!r}"
    # The reference ranks each query's three documents (written 3 to a topic) first, with
    # gaps of at least 0.02 between the first four: a real order, not a tie, is checked.
    ref_scores = reference["queries"] @ reference["documents"].T
    ref_top3 = _top3(reference["queries"], reference["documents"])
    for i, top in enumerate(ref_top3):
        assert sorted(top) == [3 * i, 3 * i + 1, 3 * i + 2]
        first4 = np.sort(ref_scores[i])[::-1][:4]
        assert (-np.diff(first4)).min() >= 0.02
    assert _top3(ours["queries"], ours["documents"]) == ref_top3


@needs_int8
def test_int8_contract_against_sentence_transformers(minilm_dir, reference):
    from bertfast.sentence import SentenceEncoder

    encoder = SentenceEncoder.from_pretrained(minilm_dir, quantize="int8")
    assert cpu_quantize.quantized(encoder.model) == "int8"
    _check_contract(encoder, reference, 0.99)


@needs_bf16
def test_bf16_contract_against_sentence_transformers(minilm_dir, reference):
    from bertfast.sentence import SentenceEncoder

    encoder = SentenceEncoder.from_pretrained(minilm_dir, dtype=torch.bfloat16)
    assert encoder.model.dtype == torch.bfloat16
    hidden = torch.zeros(2, 4, encoder.model.config.hidden_size, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert cpu_linear.applies(hidden)  # the packed bf16 GEMMs, not an emulation
    _check_contract(encoder, reference, 0.999)


def test_bf16_refused_without_native_bf16(minilm_dir):
    if BF16_REASON is None:
        pytest.skip("this CPU has native bf16: nothing to refuse")
    from bertfast.pipelines import pipeline
    from bertfast.sentence import SentenceEncoder

    with pytest.raises(ValueError, match="AVX-512 BF16 nor AMX") as info:
        SentenceEncoder.from_pretrained(minilm_dir, dtype=torch.bfloat16)
    assert "int8" in str(info.value)  # says what to use instead
    with pytest.raises(ValueError, match="AVX-512 BF16 nor AMX"):
        pipeline("fill-mask", minilm_dir, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert not cpu_linear.applies(torch.zeros(2, 8, dtype=torch.bfloat16))


def _int8_reference(x, weight, bias, outliers):
    """The int8 GEMM's arithmetic in float64: per-output-channel symmetric int8 weights (outlier
    input columns exact), each token's other channels on 7-bit [0, 1] by its min and range."""
    w = weight.double().clone()
    exact = w[:, outliers].clone()
    w[:, outliers] = 0
    scale_w = w.abs().amax(dim=1, keepdim=True) / 127
    wq = torch.round(w / scale_w).clamp(-127, 127) * scale_w
    x = x.double()
    inner = x.clone()
    inner[:, outliers] = 0
    low, high = inner.amin(dim=1, keepdim=True), inner.amax(dim=1, keepdim=True)
    unit = (inner - low) / (high - low)
    levels = 127 if cpu_quantize.REDUCE_RANGE else 255
    xq = torch.round(unit * levels) / levels * (high - low) + low
    return xq @ wq.T + x[:, outliers] @ exact.T + bias.double()


@needs_int8
def test_int8_linear_is_per_token_with_exact_outlier_channels():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(6, 64), torch.randn(48, 64) * 0.1, torch.randn(48)
    x[:, [5, 40]] *= 30.0  # two outlier channels, as BERT's LayerNorm outputs have
    x[3] *= 50.0  # one token far larger than the others
    peaks = x.abs().amax(dim=0)
    int8 = cpu_quantize.quantize_weight(weight, peaks)
    assert int8.outliers.tolist()[:2] == [5, 40] or {5, 40} <= set(int8.outliers.tolist())
    with torch.inference_mode():
        out = cpu_quantize.linear_int8(x, int8, bias)
    expected = _int8_reference(x, weight, bias, int8.outliers)
    exact = x.double() @ weight.double().T + bias.double()
    # fbgemm's rounding may differ from ours by one step on a few elements, no more.
    step = (exact - expected).abs().max().item()
    assert (out.double() - expected).abs().max().item() <= max(step, 1e-4)
    # Per token: the large row 3 does not coarsen the grid of the others.
    for rows in ([0, 1, 2, 4, 5], [3]):
        err = (out.double() - exact)[rows].abs().max() / exact[rows].abs().max()
        assert err < 0.02, (rows, err.item())
    # Without the outlier channels kept exact, the error is several times larger.
    plain = cpu_quantize.quantize_weight(weight, None)
    with torch.inference_mode():
        plain_err = (cpu_quantize.linear_int8(x, plain, bias).double() - exact).abs().max()
    assert plain_err > 3 * (out.double() - exact).abs().max()


@needs_int8
def test_int8_model_matches_fp32_and_keeps_fp32_weights(tmp_path):
    path, _ = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(1, 99, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.inference_mode():
        fp32 = model(ids, attention_mask=mask).last_hidden_state
        cpu_quantize.quantize_(model, "int8")
        int8 = model(ids, attention_mask=mask).last_hidden_state
    assert cpu_quantize.quantized(model) == "int8"
    err = max_abs_error(int8, fp32, mask)
    assert 0 < err < 0.05 * fp32.abs().max().item()  # it ran in int8, and close
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    clone = copy.deepcopy(model)  # new weights: fp32 until quantized, and says so
    assert cpu_quantize.quantized(clone) is None
    with torch.inference_mode():
        assert max_abs_error(clone(ids, attention_mask=mask).last_hidden_state, fp32, mask) < 1e-5
    cpu_quantize.quantize_(model, None)
    assert cpu_quantize.quantized(model) is None
    with torch.inference_mode():
        assert max_abs_error(model(ids, attention_mask=mask).last_hidden_state, fp32, mask) < 1e-5


@needs_int8
def test_int8_refusals(tmp_path):
    path, _ = random_hf_bert(tmp_path)
    with pytest.raises(ValueError, match="unknown quantize mode"):
        BertModel.from_pretrained(path, quantize="int4")
    with pytest.raises(ValueError, match="fp32 activations"):
        BertModel.from_pretrained(path, dtype=torch.float16, quantize="int8")
    with pytest.raises(ValueError, match="CPU only"):
        cpu_quantize.check_quantize("int8", None, "cuda")
    with pytest.raises(ValueError, match="torch backend"):
        BertModel.from_pretrained(path, backend="triton", quantize="int8")
    model = BertModel.from_pretrained(path, quantize="int8")
    with pytest.raises(RuntimeError, match="inference"):
        model(torch.randint(1, 99, (1, 5)))  # grad enabled: training is not quantized


@needs_int8
def test_int8_weight_changed_in_place_is_quantized_again(tmp_path):
    path, _ = random_hf_bert(tmp_path)
    model = BertModel.from_pretrained(path, quantize="int8").eval()
    ids = torch.randint(1, 99, (2, 9))
    weight = model.layers[0].intermediate.weight
    before = cpu_quantize.int8_weight(weight)
    with torch.no_grad():
        weight.mul_(0.5)
        after = cpu_quantize.int8_weight(weight)
        assert after is not before and torch.equal(after.outliers, before.outliers)
        out = model(ids).last_hidden_state
    reference = BertModel.from_pretrained(path).eval()
    reference.load_state_dict(model.state_dict())
    with torch.inference_mode():
        expected = reference(ids).last_hidden_state
    assert max_abs_error(out, expected) < 0.05 * expected.abs().max().item()


def test_cli_offers_both_and_says_what_ran(minilm_dir, capsys):
    from bertfast.cli import main

    args = ["embed", "hello", "--device", "cpu", "--show", "vectors"]
    status = main([*args, "--dtype", "bf16"])
    out, err = capsys.readouterr()
    if BF16_REASON is None:
        assert status == 0 and "(torch backend, bf16, cpu)" in out
    else:  # refused before loading, with the reason, exit status 2
        assert status == 2 and "AVX-512 BF16 nor AMX" in err
    if INT8_REASON is None:
        assert main([*args, "--quantize", "int8"]) == 0
        assert "(torch backend, int8 GEMMs, fp32 elsewhere, cpu)" in capsys.readouterr().out


@needs_int8
def test_entry_points_pass_quantize_through(tmp_path, minilm_dir):
    import transformers

    from bertfast.pipelines import pipeline
    from bertfast.serve.backend import load_backend
    from tests.sentence_fixtures import TOKENIZER_FILES

    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
    )
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path)
    for name in TOKENIZER_FILES:
        (tmp_path / name).write_bytes((minilm_dir / name).read_bytes())
    fill = pipeline("fill-mask", tmp_path, quantize="int8")
    assert cpu_quantize.quantized(fill.model) == "int8"
    assert len(fill("Paris is the [MASK] of France.")) == 5
    served = load_backend(str(minilm_dir), quantize="int8")
    assert cpu_quantize.quantized(served.encoder) == "int8"
