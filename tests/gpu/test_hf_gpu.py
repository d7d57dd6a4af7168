"""Drop-in paths on a real GPU in bf16, judged by the testing.md rule (3x HF's own error)."""

import pytest
import torch

import bertfast
from tests.helpers import max_abs_error

pytestmark = pytest.mark.gpu
transformers = pytest.importorskip("transformers")


def models(name, **overrides):
    import bertfast.hf  # noqa: F401  (registers attn_implementation="bertfast")

    config = transformers.BertConfig(
        hidden_size=768, num_hidden_layers=4, num_attention_heads=12, intermediate_size=3072,
        **overrides,
    )  # fmt: skip
    torch.manual_seed(0)
    cls = getattr(transformers, name)
    ref = cls._from_config(config, attn_implementation="eager").cuda().eval()
    low = cls._from_config(config, attn_implementation="sdpa").cuda().eval()
    low.load_state_dict(ref.state_dict())
    return ref, low.to(torch.bfloat16)


def inputs():
    ids = torch.randint(0, 30522, (8, 96), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    mask[5, 3:] = 0
    return dict(input_ids=ids, attention_mask=mask)


def within_rule(ours, low, ref, mask):
    ref_err = max_abs_error(low, ref, mask)
    our_err = max_abs_error(ours, ref, mask)
    assert our_err <= 3 * ref_err + 1e-5, (our_err, ref_err)


@pytest.mark.parametrize(
    "name, field", [("BertModel", "last_hidden_state"), ("BertForMaskedLM", "logits")]
)
def test_accelerate_bf16(name, field):
    ref, low = models(name)
    batch = inputs()
    fast = bertfast.accelerate(low)
    assert fast.backend in ("triton", "cuda")
    with torch.inference_mode():
        expected = getattr(ref(**batch), field)
        theirs = getattr(low(**batch), field)
        ours = getattr(fast(**batch), field)
    within_rule(ours, theirs, expected, batch["attention_mask"].bool())


def test_attention_interface_bf16():
    ref, low = models("BertModel")
    batch = inputs()
    with torch.inference_mode():
        expected = ref(**batch).last_hidden_state
        theirs = low(**batch).last_hidden_state
        low.set_attn_implementation("bertfast")
        ours = low(**batch).last_hidden_state
    within_rule(ours, theirs, expected, batch["attention_mask"].bool())
