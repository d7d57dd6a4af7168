"""Sentence embeddings against sentence-transformers on the real MiniLM checkpoint."""

import pytest
import torch

from bertfast.sentence import SentenceEncoder, pool, pooling_mode_of

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
    if not normalize:
        # The checkpoint's pipeline ends in a Normalize module: drop it for raw mean pooling.
        reference = st.SentenceTransformer(
            modules=[m for m in reference if "Normalize" not in type(m).__name__]
        )
    expected = torch.from_numpy(reference.encode(TEXTS, batch_size=4))
    ours = encoder.encode(TEXTS, batch_size=4, normalize_embeddings=normalize)
    cosine = torch.nn.functional.cosine_similarity(ours, expected, dim=1)
    assert cosine.min().item() >= 0.99999, cosine
    assert (ours.norm(dim=1) - expected.norm(dim=1)).abs().max().item() < 1e-4
    if not normalize:
        assert expected.norm(dim=1).min() > 1.5  # really unnormalised


def test_config_read_from_modules_json(encoder):
    assert (encoder.pooling, encoder.normalize, encoder.max_seq_length) == ("mean", True, 256)
    assert encoder.encode("one text").shape == (384,)


def test_pool_modes():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.allclose(pool(hidden, mask, "mean")[0], hidden[0, :2].mean(0))
    assert torch.allclose(pool(hidden, mask, "max")[0], hidden[0, :2].amax(0))
    assert torch.allclose(pool(hidden, mask, "cls"), hidden[:, 0])
    assert torch.allclose(pool(hidden, mask, "mean_sqrt_len")[1], hidden[1].sum(0) / 2)


def test_bad_input(encoder):
    with pytest.raises(ValueError, match="at least one sentence"):
        encoder.encode([])
    with pytest.raises(TypeError, match="sentences must be strings, got int"):
        encoder.encode(["ok", 3])


@pytest.mark.parametrize(
    "config, mode",
    [
        ({"pooling_mode": "cls"}, "cls"),
        ({"pooling_mode": "mean_sqrt_len_tokens"}, "mean_sqrt_len"),
        ({"pooling_mode": ["max"]}, "max"),
        ({"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}, "mean"),
        ({"embedding_dimension": 384}, "mean"),
    ],
)
def test_pooling_mode_read_from_config(config, mode):
    assert pooling_mode_of(config) == mode


@pytest.mark.parametrize(
    "config", [{"pooling_mode": "weightedmean"}, {"pooling_mode": ["cls", "mean"]}]
)
def test_unsupported_pooling_is_refused(config):
    with pytest.raises(ValueError, match="is not supported"):
        pooling_mode_of(config)


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
    cosine = torch.nn.functional.cosine_similarity(encoder.encode(texts), expected, dim=1)
    assert cosine.min().item() >= 0.99999
