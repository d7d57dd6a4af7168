"""Sentence embeddings against sentence-transformers on the real MiniLM checkpoint."""

import pytest
import torch

from bertfast.sentence import SentenceEncoder, pool

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
