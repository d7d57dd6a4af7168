"""The fine-tuning tasks: which head, how features become batches, how a model is scored."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bertfast import heads
from bertfast.config import BertConfig
from bertfast.train import data, metrics
from bertfast.train.data import Feature
from bertfast.weights import load_state_dict, split_encoder_keys


def build_head(
    head_class: type[heads.BertPreTrainedHead],
    model_dir: str | os.PathLike,
    config: BertConfig,
    backend: str,
    device: str,
    seed: int,
) -> tuple[heads.BertPreTrainedHead, list[str]]:
    """``head_class`` with the encoder (and, when shapes fit, the head) of ``model_dir``;
    weights the checkpoint lacks keep Hugging Face's initialisation, drawn from ``seed``.
    Returns the model and the names of the newly initialised weights."""
    torch.manual_seed(seed)
    fresh = head_class(config, backend="torch", device="cpu")
    state = fresh.hf_state_dict()
    encoder, rest = split_encoder_keys(load_state_dict(model_dir))
    given = {"bert." + k: v for k, v in encoder.items()} | rest
    new = []
    for key, value in state.items():
        if key in given and given[key].shape == value.shape:
            state[key] = given[key]
        else:
            new.append(key)
    model = head_class.from_hf_state_dict(
        config, state, backend=backend, device=device, source=str(model_dir)
    )
    return model, new


def pad_batch(
    features: Sequence[Feature], pad_id: int, target_keys: Sequence[str], target_pad: int = -100
) -> dict[str, torch.Tensor]:
    """Right-padded model inputs, plus each target: per-token lists padded with ``target_pad``,
    scalars stacked."""
    length = max(len(f.input_ids) for f in features)
    batch = len(features)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros(batch, length, dtype=torch.long)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f.input_ids)
        input_ids[i, :n] = torch.tensor(f.input_ids)
        token_type_ids[i, :n] = torch.tensor(f.token_type_ids)
        attention_mask[i, :n] = 1
    out = {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
    }
    for key in target_keys:
        values = [f.targets[key] for f in features]
        if isinstance(values[0], list):
            column = torch.full((batch, length), target_pad, dtype=torch.long)
            for i, v in enumerate(values):
                column[i, : len(v)] = torch.tensor(v)
            out[key] = column
        else:
            out[key] = torch.tensor(values, dtype=torch.long)
    return out


def predict_batches(
    model: torch.nn.Module, features: Sequence[Feature], pad_id: int, batch_size: int
) -> list[Any]:
    """The model's outputs (moved to the CPU) batch by batch, inputs only."""
    device = next(model.parameters()).device
    outputs = []
    for start in range(0, len(features), batch_size):
        chunk = features[start : start + batch_size]
        batch = pad_batch(chunk, pad_id, ())
        out = model(**{k: v.to(device) for k, v in batch.items()})
        outputs.append((chunk, batch, out))
    return outputs


def classification_metrics(
    model: torch.nn.Module, features: Sequence[Feature], pad_id: int, batch_size: int
) -> dict[str, float]:
    gold, predicted = [], []
    for chunk, _, out in predict_batches(model, features, pad_id, batch_size):
        predicted += out.logits.argmax(-1).cpu().tolist()
        gold += [f.targets["labels"] for f in chunk]
    return {
        "accuracy": metrics.accuracy(gold, predicted),
        "macro_f1": metrics.macro_f1(gold, predicted),
    }


@dataclass
class Job:
    """A task ready to train: its head and config, encoded features, batching and scoring."""

    head_class: type[heads.BertPreTrainedHead]
    config: BertConfig
    train_features: list[Feature]
    collate: Callable[[Sequence[Feature]], dict[str, torch.Tensor]]
    weight: Callable[[dict[str, torch.Tensor]], int]
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None


def with_labels(config: BertConfig, names: Sequence[str], **extra: Any) -> BertConfig:
    """A copy of ``config`` whose id2label / label2id are ``names`` in order."""
    id2label = dict(enumerate(names))
    return dataclasses.replace(
        config,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        extra={**config.extra, **extra},
    )


def prepare_classification(args, tokenizer, config: BertConfig, pad_id: int) -> Job:
    train_examples = data.read_classification(args.train)
    names = data.label_names([e.label for e in train_examples])
    if len(names) < 2:
        raise data.DataError(f"{args.train}: field 'label': one label only ({names}); need two")
    config = with_labels(config, names, problem_type="single_label_classification")
    label2id = config.label2id
    features = data.encode_classification(tokenizer, train_examples, label2id, args.max_length)
    evaluate = None
    if args.validation:
        val = data.encode_classification(
            tokenizer, data.read_classification(args.validation), label2id, args.max_length
        )

        def evaluate(model: torch.nn.Module) -> dict[str, float]:
            return classification_metrics(model, val, pad_id, args.eval_batch_size)

    return Job(
        heads.BertForSequenceClassification,
        config,
        features,
        collate=lambda fs: pad_batch(fs, pad_id, ("labels",)),
        weight=lambda batch: int(batch["labels"].numel()),
        evaluate=evaluate,
    )


def ner_metrics(
    model: torch.nn.Module,
    features: Sequence[Feature],
    examples: Sequence[data.TaggedExample],
    id2label: dict[int, str],
    pad_id: int,
    batch_size: int,
) -> dict[str, float]:
    """Entity-level scores on the words that fit in --max-length (each word's tag is the
    prediction at its first piece), gold and prediction paired by word index."""
    gold, predicted = [], []
    for chunk, _, out in predict_batches(model, features, pad_id, batch_size):
        best = out.logits.argmax(-1).cpu()
        for row, feature in zip(best, chunk, strict=True):
            tags = examples[feature.example].tags
            kept = zip(feature.extra["words"], feature.extra["starts"], strict=True)
            pairs = [(tags[w], id2label[int(row[i])]) for w, i in kept]
            gold.append([g for g, _ in pairs])
            predicted.append([p for _, p in pairs])
    return metrics.entity_scores(gold, predicted)


def prepare_ner(args, tokenizer, config: BertConfig, pad_id: int) -> Job:
    train_examples = data.read_tagged(args.train)
    names = data.tag_names([t for e in train_examples for t in e.tags])
    config = with_labels(config, names)
    features = data.encode_tagged(tokenizer, train_examples, config.label2id, args.max_length)
    evaluate = None
    if args.validation:
        val_examples = data.read_tagged(args.validation)
        val = data.encode_tagged(tokenizer, val_examples, config.label2id, args.max_length)

        def evaluate(model: torch.nn.Module) -> dict[str, float]:
            return ner_metrics(
                model, val, val_examples, config.id2label, pad_id, args.eval_batch_size
            )

    return Job(
        heads.BertForTokenClassification,
        config,
        features,
        collate=lambda fs: pad_batch(fs, pad_id, ("labels",)),
        weight=lambda batch: int((batch["labels"] != data.IGNORE_INDEX).sum()),
        evaluate=evaluate,
    )


def best_span(
    start_logits: Sequence[float],
    end_logits: Sequence[float],
    offsets: Sequence[tuple[int, int] | None],
    max_answer_length: int,
    n_best: int = 20,
) -> tuple[float, int, int] | None:
    """(score, start char, end char) of the best context span in one window: the top
    ``n_best`` starts and ends, end not before start, at most ``max_answer_length`` tokens."""
    context = [i for i, o in enumerate(offsets) if o is not None]
    starts = sorted(context, key=lambda i: -start_logits[i])[:n_best]
    ends = sorted(context, key=lambda i: -end_logits[i])[:n_best]
    best = None
    for s in starts:
        for e in ends:
            if e < s or e - s + 1 > max_answer_length:
                continue
            score = start_logits[s] + end_logits[e]
            if best is None or score > best[0]:
                best = (score, offsets[s][0], offsets[e][1])
    return best


def qa_predictions(
    model: torch.nn.Module,
    features: Sequence[Feature],
    examples: Sequence[data.QAExample],
    pad_id: int,
    batch_size: int,
    max_answer_length: int,
) -> list[str]:
    """The best answer text of each example over all of its windows ("" when none fits)."""
    best: dict[int, tuple[float, int, int]] = {}
    for chunk, _, out in predict_batches(model, features, pad_id, batch_size):
        for i, feature in enumerate(chunk):
            n = len(feature.input_ids)
            span = best_span(
                out.start_logits[i, :n].tolist(),
                out.end_logits[i, :n].tolist(),
                feature.extra["offsets"],
                max_answer_length,
            )
            if span is not None and (
                feature.example not in best or span[0] > best[feature.example][0]
            ):
                best[feature.example] = span
    return [e.context[best[n][1] : best[n][2]] if n in best else "" for n, e in enumerate(examples)]


def prepare_qa(args, tokenizer, config: BertConfig, pad_id: int) -> Job:
    if not 0 <= args.stride < args.max_length // 2:
        raise ValueError(
            f"--stride must lie in [0, --max-length / 2) = [0, {args.max_length // 2}), got "
            f"{args.stride}"
        )
    config = with_labels(config, ["LABEL_0", "LABEL_1"])
    features = data.encode_qa(tokenizer, data.read_qa(args.train), args.max_length, args.stride)
    evaluate = None
    if args.validation:
        val_examples = data.read_qa(args.validation)
        val = data.encode_qa(tokenizer, val_examples, args.max_length, args.stride)

        def evaluate(model: torch.nn.Module) -> dict[str, float]:
            predictions = qa_predictions(
                model, val, val_examples, pad_id, args.eval_batch_size, args.max_answer_length
            )
            return metrics.squad_scores(
                predictions, [[t for t, _ in e.answers] for e in val_examples]
            )

    return Job(
        heads.BertForQuestionAnswering,
        config,
        features,
        collate=lambda fs: pad_batch(fs, pad_id, ("start_positions", "end_positions")),
        weight=lambda batch: int(batch["start_positions"].numel()),
        evaluate=evaluate,
    )


PREPARE = {"classification": prepare_classification, "ner": prepare_ner, "qa": prepare_qa}


def read_corpus(paths: Sequence[str]) -> list[list[str]]:
    """Documents of the corpus files: one sentence a line, a blank line between documents."""
    documents: list[list[str]] = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no corpus file at {path!r}")
        current: list[str] = []
        try:
            with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is no text
                for line in f:
                    if line.strip():
                        current.append(line.strip())
                    elif current:
                        documents.append(current)
                        current = []
        except UnicodeDecodeError as exc:
            raise data.DataError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
        if current:
            documents.append(current)
    if not documents:
        raise data.DataError(f"{', '.join(paths)}: empty corpus (no sentences)")
    return documents


def pack_sentences(
    documents: Sequence[Sequence[str]], tokenizer, budget: int
) -> list[list[list[int]]]:
    """Each document's consecutive sentences joined into segments of at most ``budget`` tokens
    (a longer sentence stays alone and is cut later), so that a pair [CLS] A [SEP] B [SEP]
    fills --max-length as BERT's data does rather than holding two short sentences."""
    flat = [s for doc in documents for s in doc]
    encoded = iter(tokenizer(flat, add_special_tokens=False)["input_ids"])
    packed = []
    for doc in documents:
        segments: list[list[int]] = []
        current: list[int] = []
        for _ in doc:
            ids = list(next(encoded))
            if current and len(current) + len(ids) > budget:
                segments.append(current)
                current = []
            current += ids
        if current:
            segments.append(current)
        packed.append(segments)
    return packed


def prepare_pretraining(args, tokenizer, config: BertConfig, pad_id: int) -> Job:
    """Next-sentence pairs of the corpus, each masked once (static masking, as Google's
    create_pretraining_data.py does) from --seed, so that batches and resume are exact."""
    from bertfast.data import MaskedLMCollator, build_next_sentence_pairs

    documents = read_corpus(args.corpus)
    budget = (args.max_length - 3) // 2
    packed = pack_sentences(documents, tokenizer, budget)
    if not any(len(segments) >= 2 for segments in packed):
        if any(len(doc) >= 2 for doc in documents):
            raise data.DataError(
                f"{', '.join(args.corpus)}: every document's sentences fit together in one "
                f"segment of {budget} tokens (half of --max-length {args.max_length}, less 3), "
                "so there is no next segment to predict; give a smaller --max-length, or longer "
                "documents (a blank line ends a document)"
            )
        raise data.DataError(
            f"{', '.join(args.corpus)}: no document has two sentences (one sentence a line, a "
            "blank line between documents), so there is no next sentence to predict"
        )
    pairs = build_next_sentence_pairs(
        packed,
        tokenizer,
        max_length=args.max_length,
        rng=args.seed,
    )
    collator = MaskedLMCollator(
        tokenizer,
        mlm_probability=args.mlm_probability,
        whole_word_mask=args.whole_word_mask,
    )
    generator = torch.Generator().manual_seed(args.seed)
    special = set(torch.nonzero(collator.is_special).flatten().tolist())
    features = []
    for n, pair in enumerate(pairs):
        ids = torch.tensor([pair["input_ids"]])
        masked, labels = collator.mask_tokens(ids, generator=generator)
        if not (labels != data.IGNORE_INDEX).any():  # every example teaches the MLM something
            maskable = [i for i, t in enumerate(pair["input_ids"]) if t not in special]
            i = maskable[int(torch.randint(len(maskable), (1,), generator=generator))]
            labels[0, i], masked[0, i] = ids[0, i], collator.mask_token_id
        features.append(
            Feature(
                masked[0].tolist(),
                pair["token_type_ids"],
                {"labels": labels[0].tolist(), "next_sentence_label": pair["next_sentence_label"]},
                example=n,
            )
        )
    return Job(
        heads.BertForPreTraining,
        config,
        features,
        collate=lambda fs: pad_batch(fs, pad_id, ("labels", "next_sentence_label")),
        weight=lambda batch: int(batch["next_sentence_label"].numel()),
        evaluate=None,
    )
