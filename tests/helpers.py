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
    # Non-trivial LayerNorm and bias parameters, so a dropped term shows up.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.1)
    model.save_pretrained(tmp_path)
    return tmp_path, model
