"""Task heads on the encoder, with Hugging Face's class names, weight names and outputs.

Every head holds ``self.bert`` (a :class:`bertfast.BertModel`) and only calls it, so a head runs
on any backend the encoder runs on. The head layers keep Hugging Face's module names
(``cls.predictions.transform.dense``, ``classifier``, ``qa_outputs`` ...), so their state-dict
keys are the checkpoint's keys; the encoder's keys are renamed by ``bertfast.weights``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from bertfast.config import BertConfig
from bertfast.model import BertModel
from bertfast.weights import (
    CheckpointError,
    check_state_dict,
    finish_loading,
    hf_to_bertfast,
    load_state_dict,
    resolve_model_dir,
    save_pretrained,
    split_encoder_keys,
)

__all__ = [
    "BertForMaskedLM",
    "BertForNextSentencePrediction",
    "BertForPreTraining",
    "BertForPreTrainingOutput",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "MaskedLMOutput",
    "NextSentencePredictorOutput",
    "QuestionAnsweringModelOutput",
    "SequenceClassifierOutput",
    "TokenClassifierOutput",
]

# Index tensors that select where the masked-LM head computes vocabulary logits.
LogitsPositions = torch.Tensor | None


# Outputs -------------------------------------------------------------------------------------


class HeadOutput:
    """Base of the output dataclasses: attribute, ``out["name"]`` and ``out[0]`` access.

    As in Hugging Face, the tuple form and indexing skip fields that are None (``loss``
    without labels).
    """

    def to_tuple(self) -> tuple:
        return tuple(
            getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        )

    def __getitem__(self, key: int | str):
        if isinstance(key, str):
            value = getattr(self, key, None)
            if value is None:
                raise KeyError(key)
            return value
        return self.to_tuple()[key]


@dataclass
class MaskedLMOutput(HeadOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    # With output_hidden_states=True: the encoder's embeddings output, then each layer's.
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class NextSentencePredictorOutput(HeadOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    # With output_hidden_states=True: the encoder's embeddings output, then each layer's.
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class BertForPreTrainingOutput(HeadOutput):
    loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None
    # With output_hidden_states=True: the encoder's embeddings output, then each layer's.
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class SequenceClassifierOutput(HeadOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    # With output_hidden_states=True: the encoder's embeddings output, then each layer's.
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class TokenClassifierOutput(HeadOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    # With output_hidden_states=True: the encoder's embeddings output, then each layer's.
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class QuestionAnsweringModelOutput(HeadOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    # With output_hidden_states=True: the encoder's embeddings output, then each layer's.
    hidden_states: tuple[torch.Tensor, ...] | None = None


# Head layers (Hugging Face module names) -----------------------------------------------------


class BertPredictionHeadTransform(nn.Module):
    """dense -> hidden_act -> LayerNorm, before the vocabulary projection."""

    def __init__(self, config: BertConfig, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, **kw)
        self.gelu_approximate = config.gelu_approximate
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, **kw)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.dense(hidden), approximate=self.gelu_approximate)
        return self.LayerNorm(hidden)


class BertLMPredictionHead(nn.Module):
    """Transform, then logits over the vocabulary with the (tied) decoder and its own bias."""

    def __init__(self, config: BertConfig, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.transform = BertPredictionHeadTransform(config, **kw)
        # The weight is replaced by the word embeddings when tied (see tie_weights).
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False, **kw)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size, **kw))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), self.decoder.weight, self.bias)


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig, device=None, dtype=None):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, device, dtype)


class BertOnlyNSPHead(nn.Module):
    def __init__(self, config: BertConfig, device=None, dtype=None):
        super().__init__()
        self.seq_relationship = nn.Linear(config.hidden_size, 2, device=device, dtype=dtype)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig, device=None, dtype=None):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, device, dtype)
        self.seq_relationship = nn.Linear(config.hidden_size, 2, device=device, dtype=dtype)


def _classifier_dropout(config: BertConfig) -> nn.Dropout:
    p = config.classifier_dropout
    return nn.Dropout(config.hidden_dropout_prob if p is None else p)


def select_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows of ``hidden`` (batch, seq, h) chosen by a bool (batch, seq) mask or (n, 2) indices.

    Returns (n, h) in row-major order of the selection (``torch.nonzero`` order for a mask).
    """
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"logits_positions must be a torch.Tensor, got {type(positions).__name__}")
    batch, seq = hidden.shape[:2]
    positions = positions.to(hidden.device)
    if positions.dtype == torch.bool:
        if positions.shape != (batch, seq):
            raise ValueError(
                f"a bool logits_positions mask must have the shape of input_ids {(batch, seq)}, "
                f"got {tuple(positions.shape)}"
            )
        return hidden[positions]
    if positions.dtype.is_floating_point or positions.dim() != 2 or positions.shape[1] != 2:
        raise ValueError(
            "logits_positions must be a bool (batch, seq) mask or an integer (n, 2) tensor of "
            f"(batch, position) pairs, got dtype {positions.dtype} shape {tuple(positions.shape)}"
        )
    if positions.numel():
        low, high = positions.min(0).values.tolist(), positions.max(0).values.tolist()
        if min(low) < 0 or high[0] >= batch or high[1] >= seq:
            raise ValueError(
                f"logits_positions holds pairs outside the batch (batch {batch}, seq {seq})"
            )
    return hidden[positions[:, 0], positions[:, 1]]


def _mlm_loss(logits: torch.Tensor, labels: torch.Tensor, positions: LogitsPositions):
    labels = labels.to(logits.device)
    if positions is not None:
        labels = select_positions(labels.unsqueeze(-1), positions).squeeze(-1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


# Base class: construction, loading and saving ------------------------------------------------


class BertPreTrainedHead(nn.Module):
    """What every head shares: the encoder, checkpoint loading and saving."""

    add_pooling_layer = True
    # Key prefixes of the head's own weights in a Hugging Face checkpoint.
    head_prefixes: tuple[str, ...] = ()
    # Key prefixes of sibling heads that a checkpoint may carry and this head does not use
    # (a BertForPreTraining checkpoint loads into BertForMaskedLM, as in Hugging Face).
    ignored_prefixes: tuple[str, ...] = ()

    def __init__(
        self,
        config: BertConfig,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.config = config
        self.bert = BertModel(
            config,
            backend=backend,
            add_pooling_layer=self.add_pooling_layer,
            device=device,
            dtype=dtype,
        )

    @property
    def device(self) -> torch.device:
        return self.bert.device

    @property
    def dtype(self) -> torch.dtype:
        return self.bert.dtype

    @property
    def backend(self) -> str:
        return self.bert.backend

    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    @torch.no_grad()
    def _init_head_weights(self) -> None:
        """Hugging Face's initialisation for the head layers: N(0, initializer_range), zeros."""
        std = self.config.initializer_range
        for name, module in self.named_modules():
            if name.startswith("bert"):
                continue
            if isinstance(module, nn.Linear):
                if module.weight is not self.bert.embeddings.word_embeddings.weight:
                    module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, BertLMPredictionHead):
                module.bias.zero_()

    def tie_weights(self) -> None:
        """Heads with a vocabulary decoder share it with the word embeddings; others: nothing."""

    # Checkpoints

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        backend: str = "auto",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> BertPreTrainedHead:
        """Load a local Hugging Face checkpoint of this head (``bert.*`` plus head keys).

        Raises ``CheckpointError`` (a ValueError) naming missing, unexpected or mis-shaped keys.
        """
        from bertfast.ops import resolve_backend

        resolve_backend(backend, device)  # fail before reading weights if it cannot run
        model_dir = resolve_model_dir(name_or_path)
        config = BertConfig.from_pretrained(model_dir)
        return cls.from_hf_state_dict(
            config, load_state_dict(model_dir), backend, dtype, device, source=str(model_dir)
        )

    @classmethod
    def from_hf_state_dict(
        cls,
        config: BertConfig,
        hf_state: dict[str, torch.Tensor],
        backend: str = "auto",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        source: str = "the state dict",
    ) -> BertPreTrainedHead:
        """Build from Hugging Face-named weights held in memory (``bert.*`` plus head keys)."""
        from bertfast.ops import load_kernels, resolve_backend

        load_kernels(resolve_backend(backend, device, config.head_dim))  # before copying weights
        encoder_state, head_state = split_encoder_keys(hf_state)
        cls._check_head_present(source, config, head_state)
        renamed, unexpected = hf_to_bertfast(encoder_state)
        if not cls.add_pooling_layer:
            renamed = {k: v for k, v in renamed.items() if not k.startswith("pooler.")}
        state = {"bert." + k: v for k, v in renamed.items()}
        unexpected = ["bert." + k for k in unexpected]
        for key, value in head_state.items():
            if not key.startswith(cls.ignored_prefixes):
                state[key] = value
        model = cls(config, backend=backend, device="meta")
        state = model._adapt_checkpoint(state)
        check_state_dict(model, state, unexpected, cls.__name__)
        model = finish_loading(model, state, dtype, device)
        model.tie_weights()
        return model

    @classmethod
    def _check_head_present(cls, source: str, config: BertConfig, head_state: dict) -> None:
        """A clear error when the checkpoint has none of this head's weights (a bare encoder)."""
        if any(k.startswith(cls.head_prefixes) for k in head_state):
            return
        kind = config.extra.get("architectures") or ["an encoder without this head"]
        raise CheckpointError(
            f"the checkpoint at {source!r} has no {cls.__name__} head weights (no key "
            f"starting with {' or '.join(cls.head_prefixes)}); it was saved as {kind}. "
            f"Pass a checkpoint saved from transformers.{cls.__name__}."
        )

    def _adapt_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook for heads whose checkpoints store some weights under other names."""
        return state

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """All weights under Hugging Face's names (``bert.`` prefix, head keys as they are)."""
        out = self.bert.hf_state_dict(prefix="bert.")
        for key, value in self.state_dict().items():
            if not key.startswith("bert."):
                out[key] = value
        return out

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json and model.safetensors that ``transformers.<ThisClass>`` loads."""
        save_pretrained(path, self.config, self.hf_state_dict(), [type(self).__name__])


class _TiedDecoderMixin:
    """Vocabulary decoder tied to the word embeddings unless ``tie_word_embeddings`` is false."""

    @property
    def _tied(self) -> bool:
        return bool(self.config.extra.get("tie_word_embeddings", True))

    def tie_weights(self) -> None:
        if self._tied:
            self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def _adapt_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = dict(state)
        # Old checkpoints store the output bias (also) as the decoder's bias.
        decoder_bias = state.pop("cls.predictions.decoder.bias", None)
        if decoder_bias is not None and "cls.predictions.bias" not in state:
            state["cls.predictions.bias"] = decoder_bias
        if self._tied:
            # transformers 5 omits the tied copy; older checkpoints carry it.
            state.pop("cls.predictions.decoder.weight", None)
            embeddings = state.get("bert.embeddings.word_embeddings.weight")
            if embeddings is not None:
                state["cls.predictions.decoder.weight"] = embeddings
        return state

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        out = super().hf_state_dict()
        if self._tied:
            # One tensor under two names cannot be written to safetensors; transformers drops it.
            del out["cls.predictions.decoder.weight"]
        return out


# The heads -----------------------------------------------------------------------------------


class BertForMaskedLM(_TiedDecoderMixin, BertPreTrainedHead):
    """Masked-LM head; ``logits_positions`` limits the vocabulary projection to chosen tokens."""

    add_pooling_layer = False
    head_prefixes = ("cls.predictions.",)
    ignored_prefixes = ("cls.seq_relationship.",)

    def __init__(
        self,
        config: BertConfig,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(config, backend, device, dtype)
        self.cls = BertOnlyMLMHead(config, device, dtype)
        self.tie_weights()
        if device is None or torch.device(device).type != "meta":
            self._init_head_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool = True,
        output_hidden_states: bool = False,
        logits_positions: LogitsPositions = None,
    ) -> MaskedLMOutput | tuple:
        """Logits (batch, seq, vocab), or (n, vocab) at ``logits_positions`` when given.

        ``logits_positions`` is a bool (batch, seq) mask or an (n, 2) tensor of (batch, position)
        pairs. With labels, the loss is over the selected positions only: equal to Hugging Face's
        loss whenever every labelled position (label != -100) is selected.
        """
        encoded = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_hidden_states=output_hidden_states,
        )
        hidden = encoded.last_hidden_state
        if logits_positions is not None:
            hidden = select_positions(hidden, logits_positions)
        logits = self.cls.predictions(hidden)
        loss = None if labels is None else _mlm_loss(logits, labels, logits_positions)
        out = MaskedLMOutput(loss, logits, encoded.hidden_states)
        return out if return_dict else out.to_tuple()


class BertForNextSentencePrediction(BertPreTrainedHead):
    """Next-sentence head on the pooled output: label 0 = B follows A, 1 = B is random."""

    head_prefixes = ("cls.seq_relationship.",)
    ignored_prefixes = ("cls.predictions.",)

    def __init__(
        self,
        config: BertConfig,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(config, backend, device, dtype)
        self.cls = BertOnlyNSPHead(config, device, dtype)
        if device is None or torch.device(device).type != "meta":
            self._init_head_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool = True,
        output_hidden_states: bool = False,
    ) -> NextSentencePredictorOutput | tuple:
        encoded = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_hidden_states=output_hidden_states,
        )
        pooled = encoded.pooler_output
        logits = self.cls.seq_relationship(pooled)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, 2), labels.to(logits.device).view(-1))
        out = NextSentencePredictorOutput(loss, logits, encoded.hidden_states)
        return out if return_dict else out.to_tuple()


class BertForPreTraining(_TiedDecoderMixin, BertPreTrainedHead):
    """Masked-LM and next-sentence heads together; the loss is their sum, as in Hugging Face."""

    head_prefixes = ("cls.predictions.", "cls.seq_relationship.")

    def __init__(
        self,
        config: BertConfig,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(config, backend, device, dtype)
        self.cls = BertPreTrainingHeads(config, device, dtype)
        self.tie_weights()
        if device is None or torch.device(device).type != "meta":
            self._init_head_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        return_dict: bool = True,
        output_hidden_states: bool = False,
        logits_positions: LogitsPositions = None,
    ) -> BertForPreTrainingOutput | tuple:
        """As ``BertForMaskedLM.forward`` for ``logits_positions``; loss needs both labels."""
        encoded = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_hidden_states=output_hidden_states,
        )
        hidden = encoded.last_hidden_state
        if logits_positions is not None:
            hidden = select_positions(hidden, logits_positions)
        prediction_logits = self.cls.predictions(hidden)
        seq_relationship_logits = self.cls.seq_relationship(encoded.pooler_output)
        loss = None
        if labels is not None and next_sentence_label is not None:
            nsp_labels = next_sentence_label.to(seq_relationship_logits.device).view(-1)
            loss = _mlm_loss(prediction_logits, labels, logits_positions) + F.cross_entropy(
                seq_relationship_logits.view(-1, 2), nsp_labels
            )
        result = BertForPreTrainingOutput(
            loss, prediction_logits, seq_relationship_logits, encoded.hidden_states
        )
        return result if return_dict else result.to_tuple()


class BertForSequenceClassification(BertPreTrainedHead):
    """Classifier (or regressor) on the pooled output; ``config.id2label`` names the labels."""

    head_prefixes = ("classifier.",)

    def __init__(
        self,
        config: BertConfig,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(config, backend, device, dtype)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(
            config.hidden_size, config.num_labels, device=device, dtype=dtype
        )
        if device is None or torch.device(device).type != "meta":
            self._init_head_weights()

    @property
    def problem_type(self) -> str | None:
        return self.config.extra.get("problem_type")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool = True,
        output_hidden_states: bool = False,
    ) -> SequenceClassifierOutput | tuple:
        """With labels, the loss follows ``config.problem_type``; when it is unset it is chosen
        (and stored in the config) as Hugging Face does: one label -> regression, integer labels
        -> single-label classification, otherwise multi-label."""
        encoded = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_hidden_states=output_hidden_states,
        )
        pooled = encoded.pooler_output
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            num_labels = self.num_labels
            if self.problem_type is None:
                if num_labels == 1:
                    self.config.extra["problem_type"] = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    self.config.extra["problem_type"] = "single_label_classification"
                else:
                    self.config.extra["problem_type"] = "multi_label_classification"
            if self.problem_type == "regression":
                if num_labels == 1:
                    loss = F.mse_loss(logits.squeeze(), labels.squeeze())
                else:
                    loss = F.mse_loss(logits, labels)
            elif self.problem_type == "single_label_classification":
                loss = F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
            elif self.problem_type == "multi_label_classification":
                loss = F.binary_cross_entropy_with_logits(logits, labels)
            else:
                raise ValueError(
                    f"config problem_type {self.problem_type!r} is not one of 'regression', "
                    "'single_label_classification', 'multi_label_classification'"
                )
        out = SequenceClassifierOutput(loss, logits, encoded.hidden_states)
        return out if return_dict else out.to_tuple()


class BertForTokenClassification(BertPreTrainedHead):
    """A label per token (NER, POS) from the last hidden states."""

    add_pooling_layer = False
    head_prefixes = ("classifier.",)

    def __init__(
        self,
        config: BertConfig,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(config, backend, device, dtype)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(
            config.hidden_size, config.num_labels, device=device, dtype=dtype
        )
        if device is None or torch.device(device).type != "meta":
            self._init_head_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool = True,
        output_hidden_states: bool = False,
    ) -> TokenClassifierOutput | tuple:
        encoded = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_hidden_states=output_hidden_states,
        )
        hidden = encoded.last_hidden_state
        logits = self.classifier(self.dropout(hidden))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.view(-1, self.num_labels), labels.to(logits.device).view(-1)
            )
        out = TokenClassifierOutput(loss, logits, encoded.hidden_states)
        return out if return_dict else out.to_tuple()


class BertForQuestionAnswering(BertPreTrainedHead):
    """Extractive QA: a start and an end logit per token."""

    add_pooling_layer = False
    head_prefixes = ("qa_outputs.",)

    def __init__(
        self,
        config: BertConfig,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        if config.num_labels != 2:
            raise ValueError(
                f"question answering needs num_labels == 2 (start, end), config has "
                f"{config.num_labels} (id2label {config.id2label})"
            )
        super().__init__(config, backend, device, dtype)
        self.qa_outputs = nn.Linear(config.hidden_size, 2, device=device, dtype=dtype)
        if device is None or torch.device(device).type != "meta":
            self._init_head_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        return_dict: bool = True,
        output_hidden_states: bool = False,
    ) -> QuestionAnsweringModelOutput | tuple:
        """With both positions, the loss is the mean of the start and end cross-entropies;
        positions outside the sequence are clamped to its length and ignored, as in HF."""
        encoded = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_hidden_states=output_hidden_states,
            # transformers' loss takes the softmax over every position, padding included.
            compute_padded_positions=start_positions is not None,
        )
        hidden = encoded.last_hidden_state
        start_logits, end_logits = self.qa_outputs(hidden).unbind(-1)
        start_logits, end_logits = start_logits.contiguous(), end_logits.contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored_index = start_logits.size(1)
            device = start_logits.device
            starts = start_positions.to(device)
            ends = end_positions.to(device)
            starts = (starts.squeeze(-1) if starts.dim() > 1 else starts).clamp(0, ignored_index)
            ends = (ends.squeeze(-1) if ends.dim() > 1 else ends).clamp(0, ignored_index)
            loss = (
                F.cross_entropy(start_logits, starts, ignore_index=ignored_index)
                + F.cross_entropy(end_logits, ends, ignore_index=ignored_index)
            ) / 2
        out = QuestionAnsweringModelOutput(loss, start_logits, end_logits, encoded.hidden_states)
        return out if return_dict else out.to_tuple()
