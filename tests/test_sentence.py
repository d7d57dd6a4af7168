"""Sentence embeddings against sentence-transformers on the real MiniLM checkpoint."""

import numpy as np
import pytest
import torch

from bertfast.sentence import Pooling, SentenceEncoder, pool, pooling_mode_of, pooling_modes_of

TEXTS = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "Ein Mann isst.",
    "短い文",
    "x",
    "The quick brown fox jumps over the lazy dog " * 20,  # longer than max_seq_length 256
]


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder.from_pretrained("all-MiniLM-L6-v2", backend="torch")


@pytest.mark.parametrize("normalize", [True, False])
def test_equals_sentence_transformers(encoder, minilm_dir, normalize):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(minilm_dir), device="cpu")
    expected = reference.encode(TEXTS, batch_size=4, normalize_embeddings=normalize)
    ours = encoder.encode(TEXTS, batch_size=4, normalize_embeddings=normalize)
    assert isinstance(ours, np.ndarray) and ours.dtype == expected.dtype == np.float32
    ours, expected = torch.from_numpy(ours), torch.from_numpy(expected)
    cosine = torch.nn.functional.cosine_similarity(ours, expected, dim=1)
    assert cosine.min().item() >= 0.99999, cosine
    assert (ours.norm(dim=1) - expected.norm(dim=1)).abs().max().item() < 1e-4


def test_without_the_normalize_module(encoder, minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(minilm_dir), device="cpu")
    reference = st.SentenceTransformer(
        modules=[m for m in reference if "Normalize" not in type(m).__name__]
    )
    expected = torch.from_numpy(reference.encode(TEXTS, batch_size=4))
    raw = SentenceEncoder(encoder.model, encoder.tokenizer, modules=[Pooling()])
    ours = raw.encode(TEXTS, batch_size=4, convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(ours, expected).min().item() >= 0.99999
    assert expected.norm(dim=1).min() > 1.5  # really unnormalised
    assert (ours.norm(dim=1) - expected.norm(dim=1)).abs().max().item() < 1e-4


def test_config_read_from_modules_json(encoder):
    assert (encoder.pooling, encoder.normalize, encoder.max_seq_length) == ("mean", True, 256)
    assert encoder.encode("one text").shape == (384,)


def test_return_types_as_sentence_transformers(encoder, minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(minilm_dir), device="cpu")
    texts = ["a", "bb"]
    for kwargs in ({}, {"convert_to_tensor": True}, {"convert_to_numpy": False}):
        ours, theirs = encoder.encode(texts, **kwargs), reference.encode(texts, **kwargs)
        assert type(ours) is type(theirs), kwargs
        assert type(ours[0]) is type(theirs[0]) and ours[0].shape == theirs[0].shape, kwargs
    ours, theirs = encoder.encode("a"), reference.encode("a")
    assert type(ours) is type(theirs) and ours.shape == theirs.shape == (384,)
    for kwargs in ({}, {"convert_to_tensor": True}, {"convert_to_numpy": False}):
        ours, theirs = encoder.encode([], **kwargs), reference.encode([], **kwargs)
        assert type(ours) is type(theirs) and len(ours) == len(theirs) == 0, kwargs
    assert encoder.encode(texts, show_progress_bar=True).shape == (2, 384)


def test_length_sorted_batches_restore_the_order(encoder):
    one_by_one = np.stack([encoder.encode(t) for t in TEXTS])
    sorted_batches = encoder.encode(TEXTS, batch_size=4)
    assert np.abs(one_by_one - sorted_batches).max() < 1e-5


def test_pool_modes():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.allclose(pool(hidden, mask, "mean")[0], hidden[0, :2].mean(0))
    assert torch.allclose(pool(hidden, mask, "max")[0], hidden[0, :2].amax(0))
    assert torch.allclose(pool(hidden, mask, "cls"), hidden[:, 0])
    assert torch.allclose(pool(hidden, mask, "mean_sqrt_len_tokens")[1], hidden[1].sum(0) / 2)
    assert torch.allclose(pool(hidden, mask, "lasttoken")[0], hidden[0, 1])
    weighted = (hidden[1] * torch.arange(1.0, 5.0)[:, None]).sum(0) / 10
    assert torch.allclose(pool(hidden, mask, "weightedmean")[1], weighted)


def test_bad_input(encoder):
    with pytest.raises(TypeError, match="sentences must be strings, got int"):
        encoder.encode(["ok", 3])
    for batch_size in (True, 0, 2.0):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            encoder.encode(["ok"], batch_size=batch_size)


@pytest.mark.parametrize(
    "config, mode",
    [
        ({"pooling_mode": "cls"}, "cls"),
        ({"pooling_mode": "mean_sqrt_len_tokens"}, "mean_sqrt_len_tokens"),
        ({"pooling_mode": "weightedmean"}, "weightedmean"),
        ({"pooling_mode_lasttoken": True}, "lasttoken"),
        ({"pooling_mode": ["max"]}, "max"),
        ({"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}, "mean"),
        ({"embedding_dimension": 384}, "mean"),
    ],
)
def test_pooling_mode_read_from_config(config, mode):
    assert pooling_mode_of(config) == mode


@pytest.mark.parametrize(
    "config", [{"pooling_mode": "median"}, {"pooling_mode": ["cls", "nope"]}, {"pooling_mode": []}]
)
def test_unsupported_pooling_is_refused(config):
    with pytest.raises(ValueError, match="is not supported"):
        pooling_modes_of(config)


def test_sentence_transformers_6_pooling_config(tmp_path, minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(minilm_dir), device="cpu")
    modules = [m for m in reference if "Normalize" not in type(m).__name__]
    modules[1] = st.sentence_transformer.modules.Pooling(384, pooling_mode="cls")
    st.SentenceTransformer(modules=modules).save(str(tmp_path))
    encoder = SentenceEncoder.from_pretrained(tmp_path, backend="torch")
    assert (encoder.pooling, encoder.normalize) == ("cls", False)
    texts = ["A man is eating food.", "x"]
    expected = torch.from_numpy(st.SentenceTransformer(str(tmp_path), device="cpu").encode(texts))
    ours = encoder.encode(texts, convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(ours, expected, dim=1)
    assert cosine.min().item() >= 0.99999
