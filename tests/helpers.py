"""Shared test helpers: comparisons that explain failures, and random HF checkpoints."""

from __future__ import annotations

import torch


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 0.0, what=""
):
    """Like torch.testing.assert_close, but reports the worst element and the failing fraction."""
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    a, e = actual.double(), expected.double()
    assert not torch.isnan(a).any(), (
        f"{what}: {int(torch.isnan(a).sum())} NaN elements in the output"
    )
    assert torch.isfinite(e).all(), f"{what}: the reference itself has non-finite elements"
    err = (a - e).abs()
    bad = err > atol + rtol * e.abs()
    if bad.any():
        worst = int(err.flatten().argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), err.shape))
        raise AssertionError(
            f"{what}: max abs error {err.max().item():.3e} at {index} "
            f"(got {a[index].item():.6g}, expected {e[index].item():.6g}); "
            f"{bad.float().mean().item():.2%} of elements exceed atol={atol} rtol={rtol}"
        )


def max_abs_error(
    actual: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor | None = None
) -> float:
    diff = (actual.double() - expected.double()).abs()
    if mask is not None:
        diff = diff[mask.bool()]
    return diff.max().item()


@torch.no_grad()
def randomize_biases_and_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial biases and LayerNorm parameters (HF starts them at 0 and 1), so that a
    dropped bias or norm term shows up in a comparison."""
    for name, p in model.named_parameters():
        if name.endswith("bias") or "LayerNorm" in name:
            p.normal_(0.0 if name.endswith("bias") else 1.0, 0.1)
    return model


def mixed_mask(batch: int, seq: int, seed: int = 0, generator=None) -> torch.Tensor:
    """(batch, seq) bool mask of random lengths, with one full row and one single-token row."""
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    lengths[0], lengths[-1] = seq, 1
    return torch.arange(seq)[None, :] < lengths[:, None]


def random_batch(vocab: int, batch: int = 3, seq: int = 13, type_vocab: int = 2, seed: int = 1):
    """(input_ids, token_type_ids, long attention mask) with mixed lengths (see mixed_mask)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)
    types = torch.randint(0, type_vocab, (batch, seq), generator=g)
    return ids, types, mixed_mask(batch, seq, generator=g).long()


def random_hf_bert(tmp_path, seed: int = 0, **config_kwargs):
    """A randomly initialised transformers.BertModel saved to tmp_path; returns (path, model)."""
    import transformers

    defaults = dict(
        vocab_size=99,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    defaults.update(config_kwargs)
    torch.manual_seed(seed)
    config = transformers.BertConfig(**defaults)
    model = transformers.BertModel(config, add_pooling_layer=True).eval()
    randomize_biases_and_norms(model)
    model.save_pretrained(tmp_path)
    return tmp_path, model
