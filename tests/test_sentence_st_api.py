"""SentenceEncoder's sentence-transformers surface (similarity, encode_query / encode_document,
output_value, precision, truncate_dim, device, the SentenceTransformer alias), each compared
with sentence-transformers itself on the real all-MiniLM-L6-v2 checkpoint."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch

import bertfast
from bertfast.sentence import SIMILARITY_FN_NAMES, SentenceEncoder, quantize_embeddings

st = pytest.importorskip("sentence_transformers")
st_quantize = pytest.importorskip("sentence_transformers.util").quantize_embeddings

TEXTS = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "Ein Mann isst.",
    "x",
    "The quick brown fox jumps over the lazy dog " * 3,
]
PROMPTS = {"query": "query: ", "document": "passage: ", "classification": "classify: "}
QUANTIZED = ("int8", "uint8", "binary", "ubinary")


def minilm_copy(path, minilm_dir, **st_config):
    """The MiniLM directory (files linked, module folders copied: a module may not point outside
    the directory) with its own config_sentence_transformers.json."""
    path.mkdir()
    for name in os.listdir(minilm_dir):
        source = os.path.join(minilm_dir, name)
        if os.path.isdir(source):
            shutil.copytree(source, path / name)
        elif name != "config_sentence_transformers.json":
            os.symlink(source, path / name)
    (path / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    return path


@pytest.fixture(scope="module")
def prompted_dir(tmp_path_factory, minilm_dir):
    """MiniLM with query / document prompts, a default prompt and manhattan similarity."""
    return minilm_copy(
        tmp_path_factory.mktemp("st") / "minilm",
        minilm_dir,
        prompts=PROMPTS,
        default_prompt_name="classification",
        similarity_fn_name="manhattan",
    )


@pytest.fixture(scope="module")
def ours(prompted_dir):
    return SentenceEncoder.from_pretrained(prompted_dir, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def theirs(prompted_dir):
    return st.SentenceTransformer(str(prompted_dir), device="cpu")


@pytest.fixture(scope="module")
def vectors(ours):
    """Our float32 embeddings of TEXTS, computed once."""
    return ours.encode(TEXTS)


@pytest.fixture
def both(ours, theirs):
    """The two models, with the similarity function each had restored afterwards."""
    names = ours.similarity_fn_name, theirs.similarity_fn_name
    yield ours, theirs
    ours.similarity_fn_name, theirs.similarity_fn_name = names


def assert_close_to(ours, theirs, atol=2e-6):
    ours, theirs = torch.as_tensor(ours), torch.as_tensor(theirs)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=1e-5)


# ----------------------------------------------------------------------------- similarity


def test_similarity_fn_name_read_from_the_directory(ours, theirs, vectors):
    assert ours.similarity_fn_name == theirs.similarity_fn_name == "manhattan"
    # No name saved: cosine for both.
    plain = SentenceEncoder(ours.model, ours.tokenizer)
    reference = st.SentenceTransformer(modules=list(theirs), device="cpu")
    assert plain.similarity_fn_name == reference.similarity_fn_name == "cosine"
    assert_close_to(plain.similarity(vectors, vectors), reference.similarity(vectors, vectors))


@pytest.mark.parametrize("name", SIMILARITY_FN_NAMES)
def test_similarity_equals_sentence_transformers(both, vectors, name):
    ours, theirs = both
    ours.similarity_fn_name = theirs.similarity_fn_name = name
    a = vectors[:3] * np.arange(1, 4, dtype=np.float32)[:, None]  # not all unit vectors
    b = torch.from_numpy(vectors[2:])
    inputs = [
        (a, b),  # numpy against a tensor
        (a[0], b),  # one vector against many: (1, m)
        (list(b), b[:2]),  # a list of tensors
        (torch.from_numpy(a).half(), b),  # half precision is scored in float32
    ]
    for x, y in inputs:
        assert_close_to(ours.similarity(x, y), theirs.similarity(x, y))
    expected = theirs.similarity_pairwise(a, b)
    assert expected.shape == (3,)
    assert_close_to(ours.similarity_pairwise(a, b), expected)
    # The scores are what the name says, not cosine every time.
    if name != "cosine":
        cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(a), b)
        assert not torch.allclose(ours.similarity_pairwise(a, b), cosine, atol=1e-3)


def test_unknown_similarity_fn_name_is_refused(ours):
    with pytest.raises(ValueError, match=r"'cos' is not supported; use one of \('cosine'"):
        SentenceEncoder(ours.model, ours.tokenizer, similarity_fn_name="cos")
    from sentence_transformers import SimilarityFunction

    encoder = SentenceEncoder(ours.model, ours.tokenizer, similarity_fn_name=SimilarityFunction.DOT)
    assert encoder.similarity_fn_name == "dot"


# ----------------------------------------------------------------------------- prompts


def test_encode_query_and_document_use_the_directory_prompts(ours, theirs):
    texts = TEXTS[:2]
    results = {}
    for method in ("encode", "encode_query", "encode_document"):
        expected = getattr(theirs, method)(texts)
        results[method] = getattr(ours, method)(texts)
        assert_close_to(results[method], expected, atol=1e-5)
    # Three different prompts, three different embeddings (the default prompt for encode).
    assert np.abs(results["encode_query"] - results["encode_document"]).max() > 1e-2
    assert np.abs(results["encode"] - results["encode_query"]).max() > 1e-2
    kwargs = {"prompt": "search: "}  # an explicit prompt wins
    assert_close_to(
        ours.encode_query(texts, **kwargs), theirs.encode_query(texts, **kwargs), atol=1e-5
    )


def test_without_query_prompt_the_default_prompt_does_not_apply(ours, theirs):
    """sentence-transformers: encode_query on a model without a "query" prompt uses none."""
    saved = dict(ours.prompts), dict(theirs.prompts)
    try:
        del ours.prompts["query"]
        theirs.prompts["query"] = ""  # what sentence-transformers holds when none is saved
        texts = TEXTS[:2]
        expected = theirs.encode_query(texts)
        assert_close_to(ours.encode_query(texts), expected, atol=1e-5)
        assert_close_to(ours.encode(texts, prompt=""), expected, atol=1e-5)
    finally:
        ours.prompts, theirs.prompts = saved


# ----------------------------------------------------------------------------- output_value


def test_token_embeddings_equal_sentence_transformers(ours, theirs):
    expected = theirs.encode(TEXTS, output_value="token_embeddings", batch_size=2)
    got = ours.encode(TEXTS, output_value="token_embeddings", batch_size=2)
    assert isinstance(got, list) and len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert isinstance(g, torch.Tensor)
        assert_close_to(g, e, atol=2e-5)
    one = ours.encode("x y z", output_value="token_embeddings")
    assert_close_to(one, theirs.encode("x y z", output_value="token_embeddings"), atol=2e-5)


def test_output_value_none_gives_every_output(ours, theirs):
    texts = TEXTS[:3]  # one batch, so the padding is the same as theirs
    got = ours.encode(texts, output_value=None, truncate_dim=64)
    expected = theirs.encode(texts, output_value=None, truncate_dim=64)
    assert len(got) == len(expected) == 3
    for g, e in zip(got, expected, strict=True):
        # sentence-transformers 6 adds its multimodal tag, "modality": "text".
        assert set(g) == set(e) - {"modality"}
        assert g["prompt_length"] == e["prompt_length"] == 3  # [CLS] classify : (the default)
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert torch.equal(g[key], e[key]), key
        assert_close_to(g["token_embeddings"], e["token_embeddings"], atol=2e-5)
        assert_close_to(g["sentence_embedding"], e["sentence_embedding"], atol=1e-5)
        assert g["sentence_embedding"].shape == (64,)


def test_bad_output_value_and_precision_are_refused(ours):
    with pytest.raises(ValueError, match=r"output_value 'tokens' is not one of"):
        ours.encode(TEXTS, output_value="tokens")
    with pytest.raises(ValueError, match=r"precision 'int4' is not supported; use one of"):
        ours.encode(TEXTS, precision="int4")
    with pytest.raises(ValueError, match="output_value=None returns every output"):
        ours.encode(TEXTS, output_value=None, precision="int8")


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize("precision", QUANTIZED)
def test_quantize_embeddings_equals_sentence_transformers(vectors, precision):
    floats = np.concatenate([vectors, -vectors[:2], vectors[3:] * 0.5])
    calibration = vectors[::-1] * 1.5
    ranges = np.vstack([floats.min(0) - 0.01, floats.max(0) + 0.02])
    for kwargs in ({}, {"calibration_embeddings": calibration}, {"ranges": ranges}):
        expected = st_quantize(floats, precision, **kwargs)
        got = quantize_embeddings(floats, precision, **kwargs)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), kwargs
    # Token embeddings: one set of ranges for every text.
    tokens = [torch.from_numpy(floats[:3]), torch.from_numpy(floats[3:])]
    expected = st_quantize(tokens, precision)
    got = quantize_embeddings(tokens, precision)
    assert all(np.array_equal(g, e) for g, e in zip(got, expected, strict=True))


def test_encode_precision_is_quantize_embeddings_of_the_call(ours, vectors):
    tokens = ours.encode(TEXTS[:2], output_value="token_embeddings")
    for precision in QUANTIZED:
        got = ours.encode(TEXTS, precision=precision)
        assert np.array_equal(got, quantize_embeddings(vectors, precision)), precision
        quantized = ours.encode(TEXTS[:2], output_value="token_embeddings", precision=precision)
        expected = quantize_embeddings(tokens, precision)  # one set of ranges for both texts
        assert all(np.array_equal(g, e) for g, e in zip(quantized, expected, strict=True))


@pytest.mark.parametrize("precision", ["int8", "ubinary"])
def test_encode_precision_equals_sentence_transformers(ours, theirs, precision):
    got = ours.encode(TEXTS, precision=precision)
    expected = theirs.encode(TEXTS, precision=precision)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    # Our floats differ from theirs by ~1e-7, which may move a value across a bucket edge, and
    # only such a value: each differing entry sits within 1e-5 of an edge of theirs (int8: the
    # ranges come from these 5 embeddings, so each dimension's extremes sit on edges; ubinary:
    # the edge is 0).
    floats = theirs.encode(TEXTS)
    if precision == "int8":
        diff = np.abs(got.astype(np.int32) - expected.astype(np.int32))
        assert diff.max() <= 1
        starts = floats.min(axis=0)
        steps = (floats.max(axis=0) - starts) / 255
        position = (floats - starts) / steps  # bucket edges at whole numbers
        edge_distance = np.abs(position - np.round(position)) * steps
    else:
        diff = np.unpackbits(got, axis=1) != np.unpackbits(expected, axis=1)
        edge_distance = np.abs(floats)
    differing = diff != 0
    assert differing.mean() < 0.05
    assert (edge_distance[differing] < 1e-5).all(), edge_distance[differing].max()
    # Return types and dtypes for every conversion, as theirs.
    short = ["a", "b c"]
    for kwargs in (
        {"convert_to_tensor": True},
        {"convert_to_numpy": False},
        {"output_value": "token_embeddings"},
    ):
        g = ours.encode(short, precision=precision, **kwargs)
        e = theirs.encode(short, precision=precision, **kwargs)
        assert type(g) is type(e) and type(g[0]) is type(e[0]) and g[0].dtype == e[0].dtype


def test_int8_of_one_text_cannot_be_calibrated(ours, theirs, caplog):
    with pytest.raises(ValueError, match="from a single embedding"):
        theirs.encode("one text", precision="int8")
    with pytest.raises(ValueError, match="from a single embedding; pass ranges="):
        ours.encode("one text", precision="int8")
    with caplog.at_level(logging.WARNING, logger="bertfast.sentence"):
        ours.encode(TEXTS[:2], precision="uint8")
    assert "from 2 embeddings" in caplog.text
    binary = ours.encode("one text", precision="ubinary")  # bits need no calibration
    assert binary.shape == (48,) and binary.dtype == np.uint8


# ----------------------------------------------------------------------------- truncate_dim


def test_truncate_dim_equals_sentence_transformers(ours, theirs):
    for kwargs in ({}, {"normalize_embeddings": True}):
        expected = theirs.encode(TEXTS, truncate_dim=128, **kwargs)
        got = ours.encode(TEXTS, truncate_dim=128, **kwargs)
        assert_close_to(got, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)  # normalised after the cut
    # Set on the model: every encode cuts, and the dimension says so.
    truncated = SentenceEncoder(
        ours.model, ours.tokenizer, modules=ours.modules, prompts=PROMPTS, truncate_dim=32
    )
    theirs.truncate_dim = 32
    try:
        assert truncated.get_sentence_embedding_dimension() == 32
        assert truncated.get_embedding_dimension() == 32
        assert theirs.get_embedding_dimension() == 32
        expected = theirs.encode(TEXTS, prompt="", convert_to_tensor=True)
        got = truncated.encode(TEXTS, convert_to_tensor=True)
        assert_close_to(got, expected, atol=1e-5)
    finally:
        theirs.truncate_dim = None
    assert truncated.encode(TEXTS, truncate_dim=16).shape == (len(TEXTS), 16)


@pytest.mark.parametrize("bad", [0, -1, 385, 2.5, True])
def test_truncate_dim_outside_the_width_is_refused(ours, bad):
    with pytest.raises(ValueError, match="truncate_dim"):
        ours.encode(TEXTS, truncate_dim=bad)


# ----------------------------------------------------------------------------- device


def test_device_argument(ours, theirs):
    texts = TEXTS[:2]
    assert_close_to(ours.encode(texts, device="cpu"), theirs.encode(texts, device="cpu"), 1e-5)
    assert ours.device == torch.device("cpu")
    with pytest.raises(ValueError, match="device= takes one device, got"):
        ours.encode(texts, device=["cpu", "cpu"])
    with pytest.raises(ValueError, match=r"device 'graphics' cannot be used here .*available: cpu"):
        ours.encode(texts, device="graphics")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda' cannot be used here"):
            ours.encode(texts, device="cuda")
        assert ours.device == torch.device("cpu")  # refused before anything moved


@pytest.mark.gpu
def test_device_argument_moves_the_encoder(prompted_dir):
    encoder = SentenceEncoder.from_pretrained(prompted_dir, backend="torch", device="cpu")
    on_cpu = encoder.encode(TEXTS)
    on_gpu = encoder.encode(TEXTS, device="cuda", convert_to_tensor=True)
    assert encoder.device == on_gpu.device == torch.device("cuda:0")
    assert np.abs(on_gpu.cpu().numpy() - on_cpu).max() < 1e-4


# ----------------------------------------------------------------------------- the alias


def test_sentence_transformer_alias(theirs, prompted_dir):
    # Settings given to the constructor win over the directory's, as there.
    model = bertfast.SentenceTransformer(
        str(prompted_dir),
        backend="torch",
        truncate_dim=64,
        prompts={"query": "q: "},
        similarity_fn_name="dot",
    )
    assert isinstance(model, SentenceEncoder) and model.device == torch.device("cpu")
    assert model.prompts == {**PROMPTS, "query": "q: "} and model.similarity_fn_name == "dot"
    expected = theirs.encode_query(TEXTS, prompt="q: ", truncate_dim=64)
    assert_close_to(model.encode_query(TEXTS), expected, atol=1e-5)
    # The real package is untouched.
    assert st.SentenceTransformer is not bertfast.SentenceTransformer
    assert st.SentenceTransformer.__module__.startswith("sentence_transformers")
