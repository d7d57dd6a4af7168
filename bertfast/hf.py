"""Drop-in acceleration of Hugging Face and sentence-transformers BERT models.

Three ways in:
- ``accelerate(model)``: a module that answers the same calls as the given ``transformers``
  model (same keywords, same output classes), running on bertfast's kernels;
- ``from_hf(model)``: the native bertfast model built from the Hugging Face model's weights;
- ``attn_implementation="bertfast"``: only the attention of a ``transformers`` model runs on
  bertfast's kernel, registered with Hugging Face's attention interface (``register_attention``).

Everything that cannot be accelerated faithfully is refused with an error naming it.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from bertfast import heads, ops
from bertfast.config import BertConfig
from bertfast.model import BertModel

# transformers class name -> (bertfast class, transformers output class "module:Name")
SUPPORTED = {
    "BertModel": (
        BertModel,
        "transformers.modeling_outputs:BaseModelOutputWithPoolingAndCrossAttentions",
    ),
    "BertForMaskedLM": (heads.BertForMaskedLM, "transformers.modeling_outputs:MaskedLMOutput"),
    "BertForNextSentencePrediction": (
        heads.BertForNextSentencePrediction,
        "transformers.modeling_outputs:NextSentencePredictorOutput",
    ),
    "BertForPreTraining": (
        heads.BertForPreTraining,
        "transformers.models.bert.modeling_bert:BertForPreTrainingOutput",
    ),
    "BertForSequenceClassification": (
        heads.BertForSequenceClassification,
        "transformers.modeling_outputs:SequenceClassifierOutput",
    ),
    "BertForTokenClassification": (
        heads.BertForTokenClassification,
        "transformers.modeling_outputs:TokenClassifierOutput",
    ),
    "BertForQuestionAnswering": (
        heads.BertForQuestionAnswering,
        "transformers.modeling_outputs:QuestionAnsweringModelOutput",
    ),
}

# Keywords each class's forward takes beyond the encoder's own.
LABEL_KEYWORDS = {
    "BertModel": (),
    "BertForMaskedLM": ("labels",),
    "BertForNextSentencePrediction": ("labels",),
    "BertForPreTraining": ("labels", "next_sentence_label"),
    "BertForSequenceClassification": ("labels",),
    "BertForTokenClassification": ("labels",),
    "BertForQuestionAnswering": ("start_positions", "end_positions"),
}

# Keywords of transformers' BERT forward that bertfast refuses, with what each asks for.
REFUSED = {
    "head_mask": "head_mask (masking attention heads)",
    "inputs_embeds": "inputs_embeds (precomputed embeddings instead of input_ids)",
    "encoder_hidden_states": "encoder_hidden_states (cross-attention)",
    "encoder_attention_mask": "encoder_attention_mask (cross-attention)",
    "past_key_values": "past_key_values (decoder cache)",
    "cache": "cache (decoder cache)",
}


def _output_class(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _hf_class_name(model: nn.Module) -> str:
    name = type(model).__name__
    if name not in SUPPORTED or not type(model).__module__.startswith("transformers."):
        raise TypeError(
            f"cannot accelerate {type(model).__module__}.{name}: supported are transformers' "
            f"{', '.join(SUPPORTED)} and sentence-transformers models holding one of them"
        )
    return name


def _config_of(model: nn.Module) -> BertConfig:
    """bertfast's config for a transformers model, refusing what bertfast cannot run."""
    data = model.config.to_dict()
    if data.get("model_type", "bert") != "bert":
        raise ValueError(f"model_type {data.get('model_type')!r} is not BERT")
    return BertConfig.from_dict(data)


def _first_parameter(model: nn.Module) -> torch.Tensor:
    return next(model.parameters())


def from_hf(
    model: nn.Module,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """The native bertfast model (``BertModel`` or ``BertFor…``) with the same weights."""
    name = _hf_class_name(model)
    config = _config_of(model)
    first = _first_parameter(model)
    native_cls = SUPPORTED[name][0]
    native = native_cls.from_hf_state_dict(
        config,
        model.state_dict(),
        backend=backend,
        dtype=dtype or first.dtype,
        device=device or first.device,
    )
    return native.train(model.training)


class AcceleratedModel(nn.Module):
    """A transformers BERT model's stand-in: same forward keywords, same output classes."""

    main_input_name = "input_ids"

    def __init__(self, native: nn.Module, hf_config, hf_class: str):
        super().__init__()
        self.model = native
        self.config = hf_config
        self.hf_class = hf_class
        self._output_class = _output_class(SUPPORTED[hf_class][1])

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def backend(self) -> str:
        return self.model.backend

    def get_input_embeddings(self) -> nn.Embedding:
        encoder = self.model if isinstance(self.model, BertModel) else self.model.bert
        return encoder.embeddings.word_embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ):
        labels = {k: kwargs.pop(k) for k in LABEL_KEYWORDS[self.hf_class] if k in kwargs}
        for key, what in REFUSED.items():
            if kwargs.pop(key, None) is not None:
                raise NotImplementedError(f"bertfast does not support {what}")
        if kwargs:
            raise TypeError(
                f"{self.hf_class}.forward() got unexpected keyword arguments {sorted(kwargs)}"
            )
        if output_attentions or (
            output_attentions is None and getattr(self.config, "output_attentions", False)
        ):
            raise NotImplementedError(
                "bertfast does not support output_attentions=True: its fused attention never "
                "materialises the attention probabilities"
            )
        if use_cache:
            raise NotImplementedError("bertfast does not support use_cache (decoder cache)")
        if input_ids is None:
            raise ValueError("input_ids is required")
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(self.config, "output_hidden_states", False))
        out = self.model(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_hidden_states=output_hidden_states,
            **labels,
        )
        fields = {
            name: value
            for name, value in vars(out).items()
            if value is not None and name in self._output_class.__dataclass_fields__
        }
        result = self._output_class(**fields)
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        return result if return_dict else result.to_tuple()


def _accelerate_sentence_transformer(model, backend: str, dtype: torch.dtype | None):
    replaced = 0
    for module in model.modules():
        inner = getattr(module, "model", None)
        if (
            module is not model
            and hasattr(module, "auto_model")
            and isinstance(inner, nn.Module)
            and type(inner).__name__ in SUPPORTED
        ):
            module.model = accelerate(inner, backend=backend, dtype=dtype)
            replaced += 1
    if not replaced:
        raise TypeError(
            "this SentenceTransformer holds no transformers BERT model to accelerate "
            f"(modules: {[type(m).__name__ for m in model.children()]})"
        )
    return model


def accelerate(model: nn.Module, backend: str = "auto", dtype: torch.dtype | None = None):
    """Run a transformers BERT (or a SentenceTransformer built on one) on bertfast's kernels.

    A transformers model gives a new module answering the same calls (the original is left as
    it was). A SentenceTransformer is changed in place, its BERT swapped for the accelerated
    one, and returned: ``.encode(...)`` works as before, with every option it had.
    """
    if any(c.__name__ == "SentenceTransformer" for c in type(model).__mro__):
        return _accelerate_sentence_transformer(model, backend, dtype)
    name = _hf_class_name(model)
    native = from_hf(model, backend=backend, dtype=dtype)
    return AcceleratedModel(native, model.config, name)


# The attention-interface path ----------------------------------------------------------------


def bertfast_attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """Mask function for transformers: the 2D key-padding mask (None when nothing is padded)."""
    from transformers.masking_utils import bidirectional_mask_function

    if mask_function is not None and mask_function is not bidirectional_mask_function:
        raise NotImplementedError(
            "the bertfast attention supports bidirectional (encoder) masks with padding only; "
            "causal, sliding or custom mask patterns are not supported"
        )
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:].bool()
    return None if bool(attention_mask.all()) else attention_mask


def bertfast_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: (batch, heads, seq, dim) -> (batch, seq, heads, dim)."""
    batch, heads_, seq, dim = query.shape
    if key.shape[2] != seq or getattr(module, "is_causal", False):
        raise NotImplementedError(
            "the bertfast attention runs bidirectional self-attention only (no cross-attention, "
            "decoder cache or causal mask)"
        )
    if scaling is not None and abs(scaling - dim**-0.5) > 1e-9 * dim**-0.5:
        raise NotImplementedError(f"attention scaling {scaling} != 1/sqrt({dim}) is not supported")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise NotImplementedError(
            f"the bertfast attention takes the 2D padding mask its mask function builds; got a "
            f"{attention_mask.dim()}D mask (custom 4D masks are not supported)"
        )
    qkv = torch.cat(
        [t.transpose(1, 2).reshape(batch, seq, heads_ * dim) for t in (query, key, value)], -1
    )
    backend = ops.resolve_backend("auto", query.device, dim)
    mask = None if attention_mask is None else attention_mask.bool()
    out = ops.attention(qkv, heads_, key_padding_mask=mask, dropout_p=dropout, backend=backend)
    return out.view(batch, seq, heads_, dim), None


def register_attention(name: str = "bertfast") -> None:
    """Register the attention and its mask function with transformers under ``name``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, bertfast_attention_forward)
    AttentionMaskInterface.register(name, bertfast_attention_mask)


try:  # importing this module makes attn_implementation="bertfast" available
    register_attention()
except ImportError:  # transformers is an extra; accelerate/from_hf then fail on their input
    pass
