"""The model side of the server: token ids in, vectors or logits out, one padded forward a call.

Nothing here knows about HTTP. ``load_backend`` picks the backend from the checkpoint:
a ``BertForSequenceClassification`` checkpoint (by its ``architectures``) serves /predict and
/rerank (a cross-encoder when it has one label); anything else is an embedding model,
pooled as its sentence-transformers config says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bertfast.weights import resolve_model_dir

EMBED = "embed"  # pooled vector, normalised on request
EMBED_ALL = "embed_all"  # one vector per token
CLASSIFY = "classify"  # the head's logits


@dataclass
class Sequence:
    """One tokenized input: what the backend needs of a queued item."""

    task: str
    ids: list[int]
    type_ids: list[int]
    normalize: bool = True
    prompt_length: int | None = None  # tokens of a prepended prompt, [CLS] included


def finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """``t``, or an error naming ``what`` when it holds NaN or inf: a broken model's output is
    refused, never sent (as null or a non-JSON NaN)."""
    if not bool(torch.isfinite(t).all()):
        raise RuntimeError(f"the model's {what} hold non-finite values (NaN or inf)")
    return t


def _architectures(model_dir: Path) -> list[str]:
    config = model_dir / "config.json"
    if not config.is_file():
        return []
    return list(json.loads(config.read_text(encoding="utf-8")).get("architectures") or [])


class ModelBackend:
    """What every backend shares: the padded batch, the device, the info."""

    kind = ""
    tasks: tuple[str, ...] = ()

    def __init__(self, encoder, tokenizer, max_input_length: int, cuda_graphs: str):
        self.encoder = encoder  # the BertModel
        self.tokenizer = tokenizer
        self.max_input_length = max_input_length
        self.pad_id = tokenizer.pad_token_id or 0
        # BertModel replays CUDA graphs of its padding-free encoder by itself on CUDA (kernel
        # backends, inference): "auto" leaves that on, "off" turns it off.
        if cuda_graphs == "on" and self.device.type != "cuda":
            raise ValueError(f"--cuda-graphs on needs a CUDA device; the model is on {self.device}")
        if hasattr(encoder, "cuda_graphs"):
            encoder.cuda_graphs = cuda_graphs != "off"

    @property
    def uses_cuda_graphs(self) -> bool:
        return (
            bool(getattr(self.encoder, "cuda_graphs", False))
            and self.device.type == "cuda"
            and self.backend_name != "torch"
        )

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.dtype

    @property
    def backend_name(self) -> str:
        return self.encoder.backend

    @property
    def padding_free(self) -> bool:
        """Kernel backends skip padded positions, and so does the torch backend in CPU
        inference (its GEMMs run on the real tokens); the torch path on a GPU computes them."""
        return self.backend_name != "torch" or self.device.type == "cpu"

    def _inputs(self, seqs: list[Sequence]) -> tuple[dict[str, torch.Tensor], list[int]]:
        lengths = [len(s.ids) for s in seqs]
        rows, width = len(seqs), max(lengths)
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        types = torch.zeros(rows, width, dtype=torch.long)
        mask = torch.zeros(rows, width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : lengths[i]] = torch.tensor(s.ids)
            types[i, : lengths[i]] = torch.tensor(s.type_ids)
            mask[i, : lengths[i]] = 1
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {k: v.to(self.device) for k, v in inputs.items()}, lengths

    def _encode(self, inputs: dict[str, torch.Tensor]):
        return self.encoder(**inputs, compute_pooler_output=False)  # the backends pool

    def run(self, seqs: list[Sequence]) -> list[Any]:
        """One forward over ``seqs``; a JSON-ready result per sequence, in order."""
        raise NotImplementedError

    def warmup(self) -> None:
        """One tiny forward, so the first request does not pay for kernel loading."""
        cls_id = self.tokenizer.cls_token_id or 0
        sep_id = self.tokenizer.sep_token_id or 0
        self.run([Sequence(self.tasks[0], [cls_id, sep_id], [0, 0])])

    def info(self) -> dict[str, Any]:
        raise NotImplementedError


class EmbeddingBackend(ModelBackend):
    """A sentence-transformers (or bare BERT) directory: /embed, /embed_all, cosine /rerank."""

    kind = "embedding"
    tasks = (EMBED, EMBED_ALL)

    def __init__(self, sentence_encoder, cuda_graphs: str = "auto"):
        super().__init__(
            sentence_encoder.model,
            sentence_encoder.tokenizer,
            int(sentence_encoder.max_seq_length),
            cuda_graphs,
        )
        self.sentence_encoder = sentence_encoder
        self.pooling = sentence_encoder.pooling
        dimension = getattr(sentence_encoder, "get_sentence_embedding_dimension", None)
        self.hidden_size = dimension() if dimension else sentence_encoder.model.config.hidden_size
        self.prompts: dict[str, str] = dict(getattr(sentence_encoder, "prompts", None) or {})
        self.default_prompt_name = getattr(sentence_encoder, "default_prompt_name", None)

    def prompt(self, name: str | None) -> str | None:
        """The prompt text for ``name`` (None: the directory's default prompt, if any)."""
        name = self.default_prompt_name if name is None else name
        if name is None:
            return None
        if name not in self.prompts:
            raise KeyError(name)
        return self.prompts[name]

    def prompt_length(self, prompt: str) -> int:
        """Tokens of the prompt with [CLS], without its [SEP]: what Pooling may leave out."""
        ids = self.tokenizer(prompt, truncation=True, max_length=self.max_input_length)
        ids = ids["input_ids"]
        special = set(self.tokenizer.all_special_ids)
        return len(ids) - (1 if ids and ids[-1] in special else 0)

    def _vectors(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        normalize: bool,
        prompt_length: int | None = None,
    ) -> torch.Tensor:
        """The directory's modules after the encoder (Pooling, Dense ...), then unit length
        if asked: TEI's ``normalize`` decides, whether or not the directory ends in Normalize."""
        modules = getattr(self.sentence_encoder, "modules", None)
        if modules is None:  # an encoder that only pools
            from bertfast.sentence import pool

            vectors = pool(hidden, mask, self.pooling)
        else:
            vectors = modules[0](hidden, mask, prompt_length)
            for module in modules[1:]:
                if type(module).__name__ != "Normalize":
                    vectors = module(vectors)
        vectors = vectors.float()
        return torch.nn.functional.normalize(vectors, p=2, dim=1) if normalize else vectors

    @torch.inference_mode()
    def run(self, seqs: list[Sequence]) -> list[Any]:
        inputs, lengths = self._inputs(seqs)
        hidden = self._encode(inputs).last_hidden_state
        mask = inputs["attention_mask"]
        out: list[Any] = [None] * len(seqs)
        groups: dict[tuple[bool, int | None], list[int]] = {}
        for i, s in enumerate(seqs):
            if s.task == EMBED:
                groups.setdefault((s.normalize, s.prompt_length), []).append(i)
        for (normalize, prompt_length), rows in groups.items():
            vectors = self._vectors(hidden[rows], mask[rows], normalize, prompt_length).cpu()
            finite(vectors, "embeddings")
            for row, i in enumerate(rows):
                out[i] = vectors[row].tolist()
        for i, s in enumerate(seqs):
            if s.task == EMBED_ALL:
                out[i] = finite(hidden[i, : lengths[i]].float().cpu(), "token embeddings").tolist()
        return out

    def info(self) -> dict[str, Any]:
        return {"embedding": {"pooling": self.pooling}}


class ClassifierBackend(ModelBackend):
    """A ``BertForSequenceClassification`` checkpoint: /predict, and /rerank with one label."""

    kind = "classifier"
    tasks = (CLASSIFY,)

    def __init__(self, head, tokenizer, cuda_graphs: str = "auto"):
        max_length = min(tokenizer.model_max_length, head.config.max_position_embeddings)
        super().__init__(head.bert, tokenizer, max_length, cuda_graphs)
        self.head = head.eval()
        self.config = head.config
        self.num_labels = head.config.num_labels

    @property
    def is_reranker(self) -> bool:
        return self.num_labels == 1

    def label(self, index: int) -> str:
        return self.config.id2label.get(index, f"LABEL_{index}")

    def default_function(self) -> str:
        """As transformers' text-classification pipeline: none, sigmoid or softmax."""
        problem_type = self.config.extra.get("problem_type")
        if problem_type == "regression":
            return "none"
        if problem_type == "multi_label_classification" or self.num_labels == 1:
            return "sigmoid"
        return "softmax"

    @torch.inference_mode()
    def run(self, seqs: list[Sequence]) -> list[Any]:
        inputs, _ = self._inputs(seqs)
        return finite(self.head(**inputs).logits.float().cpu(), "logits").tolist()

    def info(self) -> dict[str, Any]:
        id2label = {str(i): self.label(i) for i in range(self.num_labels)}
        kind = "reranker" if self.is_reranker else "classifier"
        return {kind: {"id2label": id2label, "label2id": {v: int(k) for k, v in id2label.items()}}}


def load_backend(
    model: str,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    cuda_graphs: str = "auto",
    quantize: str | None = None,
) -> ModelBackend:
    """The backend for a local model directory (or the bundled MiniLM's name), warmed up;
    ``quantize="int8"``: the encoder's GEMMs in int8 on the CPU."""
    from bertfast.tokenizer import BertTokenizer

    model_dir = resolve_model_dir(model)
    if "BertForSequenceClassification" in _architectures(model_dir):
        from bertfast.cpu_quantize import check_quantize, quantize_
        from bertfast.heads import BertForSequenceClassification

        check_quantize(quantize, dtype, device)
        head = BertForSequenceClassification.from_pretrained(model_dir, backend, dtype, device)
        if quantize is not None:
            quantize_(head, quantize)
        loaded: ModelBackend = ClassifierBackend(
            head, BertTokenizer.from_pretrained(model_dir), cuda_graphs
        )
    else:
        from bertfast.sentence import SentenceEncoder

        encoder = SentenceEncoder.from_pretrained(
            model_dir, backend, device, dtype, quantize=quantize
        )
        encoder.model.eval()
        loaded = EmbeddingBackend(encoder, cuda_graphs)
    loaded.warmup()
    return loaded
