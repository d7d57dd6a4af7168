"""Task subcommands of the ``bertfast`` command: fill-mask, nsp, classify, ner, qa.

Every task needs head weights that the bundled all-MiniLM-L6-v2 (a bare encoder) lacks, so
``--model`` (a local checkpoint directory with the head) is required.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from bertfast.cli_options import (
    add_model_arguments,
    default_device,
    finite_json,
    has_non_finite,
    parse_dtype,
    read_lines,
)
from bertfast.pipelines import pipeline
from bertfast.pipelines.token_classification import AGGREGATION_STRATEGIES

MODEL_NOTE = (
    "--model is a local checkpoint directory with the task's head: saved from the matching "
    "transformers class, or written by bertfast finetune (classify, ner, qa) or bertfast "
    "pretrain (fill-mask, nsp). The bundled all-MiniLM-L6-v2 has no task heads; the README's "
    "'Heads and pipelines' shows how to make one on this machine"
)


def _load(task: str, args: argparse.Namespace, **kwargs: Any):
    return pipeline(
        task,
        model=args.model,
        backend=args.backend,
        device=default_device(args.device),
        dtype=parse_dtype(args.dtype),
        quantize=args.quantize,
        **kwargs,
    )


def read_text_file(path: str, option: str) -> str:
    """The UTF-8 text of ``path``, or a one-line ValueError saying why it cannot be read."""
    if os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a directory; give a text file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"{option} {path!r}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{option} {path!r}: line {line} is not valid UTF-8") from None


def _texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.texts) or read_lines(sys.stdin)
    if not texts:
        raise ValueError("give at least one text (as arguments or one per line on stdin)")
    return texts


def _print_json(result: Any) -> int:
    """Print valid JSON (non-finite scores as null); exit status 1 when there were any."""
    print(finite_json(result, ensure_ascii=False))
    if has_non_finite(result):
        print(
            "error: the model produced non-finite values (NaN or infinity); they are shown as "
            "null. Try --dtype fp32",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_fill_mask(args: argparse.Namespace) -> int:
    texts = _texts(args)
    fill = _load("fill-mask", args)
    results = fill(texts, top_k=args.top_k, targets=args.target)
    results = [results] if len(texts) == 1 else results  # a list of one gives its result alone
    if args.json:
        return _print_json(results if len(texts) > 1 else results[0])
    for text, result in zip(texts, results, strict=True):
        print(text)
        per_mask = result if result and isinstance(result[0], list) else [result]
        for m, predictions in enumerate(per_mask):
            if len(per_mask) > 1:
                print(f"  mask {m}:")
            for p in predictions:
                print(f"  {p['score']:.4f}  {p['token_str']:<15s} {p['sequence']}")
    return 0


def cmd_nsp(args: argparse.Namespace) -> int:
    result = _load("next-sentence", args)((args.sentence_a, args.sentence_b))
    if args.json:
        return _print_json(result)
    else:
        print(f"is_next {result['is_next']:.4f}  not_next {result['not_next']:.4f}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    texts = _texts(args)
    if args.pair is not None:
        if len(texts) != 1:
            raise ValueError("--pair goes with exactly one text")
        inputs = [{"text": texts[0], "text_pair": args.pair}]
    else:
        inputs = texts
    classify = _load("text-classification", args)
    top_k = None if args.all else args.top_k
    results = classify(
        inputs, top_k=top_k, function_to_apply=args.function, truncation=args.truncate
    )
    if args.json:
        return _print_json(results if len(inputs) > 1 else results[0])
    for item, ranked in zip(texts, results, strict=True):
        print(item if args.pair is None else f"{item} || {args.pair}")
        for r in ranked:
            print(f"  {r['score']:.4f}  {r['label']}")
    return 0


def cmd_ner(args: argparse.Namespace) -> int:
    texts = _texts(args)
    ner = _load("token-classification", args, aggregation_strategy=args.aggregation)
    results = ner(texts)
    if args.json:
        return _print_json(results if len(texts) > 1 else results[0])
    for text, entities in zip(texts, results, strict=True):
        print(text)
        if not entities:
            print("  (no entities)")
        for e in entities:
            label = e.get("entity_group", e.get("entity"))
            print(f"  {label:<10s} {e['score']:.4f}  {e['word']!r} [{e['start']}:{e['end']}]")
    return 0


def cmd_qa(args: argparse.Namespace) -> int:
    if (args.context is None) == (args.context_file is None):
        raise ValueError("give exactly one of --context and --context-file")
    context = args.context
    if args.context_file is not None:
        context = read_text_file(args.context_file, "--context-file")
    qa = _load("question-answering", args)
    answers = qa(
        question=args.question,
        context=context,
        top_k=args.top_k,
        max_answer_len=args.max_answer_len,
        doc_stride=args.doc_stride,
        max_seq_len=args.max_seq_len,
        handle_impossible_answer=args.handle_impossible_answer,
    )
    answers = answers if isinstance(answers, list) else [answers]
    if args.json:
        return _print_json(answers if args.top_k > 1 else answers[0])
    for a in answers:
        shown = repr(a["answer"]) if a["answer"] else "(no answer)"
        print(f"{a['score']:.4f}  {shown} [{a['start']}:{a['end']}]")
    return 0


def _texts_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("texts", nargs="*", help=f"{what} (default: one per line on stdin)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the task subcommands to the ``bertfast`` parser."""

    def add(name: str, help_text: str, func) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(
            name, help=help_text, description=f"{help_text}. {MODEL_NOTE}."
        )
        add_model_arguments(parser, None)
        parser.add_argument("--json", action="store_true", help="print JSON")
        parser.set_defaults(func=func)
        return parser

    fill = add("fill-mask", "predict the tokens at [MASK]", cmd_fill_mask)
    _texts_argument(fill, "texts with [MASK]")
    fill.add_argument("--top-k", type=int, default=5, help="predictions shown per [MASK]")
    fill.add_argument(
        "--target",
        action="append",
        help="only score this token (repeat for several; default: every token)",
    )

    nsp = add("nsp", "probability that sentence B follows sentence A", cmd_nsp)
    nsp.add_argument("sentence_a", help="the first sentence")
    nsp.add_argument("sentence_b", help="the sentence that may follow it")

    classify = add("classify", "label texts or a text pair (sentiment, NLI ...)", cmd_classify)
    _texts_argument(classify, "texts to classify")
    classify.add_argument(
        "--pair", help="second text of a pair, e.g. an NLI hypothesis (default: none)"
    )
    classify.add_argument("--top-k", type=int, default=1, help="labels shown per text")
    classify.add_argument("--all", action="store_true", help="show every label")
    classify.add_argument(
        "--function",
        choices=("softmax", "sigmoid", "none"),
        default=None,
        help="applied to the logits (default: as transformers: none for regression, sigmoid "
        "for multi-label or one-output models, else softmax)",
    )
    classify.add_argument("--truncate", action="store_true", help="cut over-long inputs")

    ner = add("ner", "named entities (token classification)", cmd_ner)
    _texts_argument(ner, "texts to tag")
    ner.add_argument(
        "--aggregation",
        choices=AGGREGATION_STRATEGIES,
        default="simple",
        help="how word pieces are merged into entities (none: one row per token)",
    )

    qa = add("qa", "extract the answer to a question from a context", cmd_qa)
    qa.add_argument("--question", required=True, help="the question to answer")
    qa.add_argument(
        "--context", help="the text to find the answer in (this or --context-file; no default)"
    )
    qa.add_argument(
        "--context-file", help="read the context from this file (default: use --context)"
    )
    qa.add_argument("--top-k", type=int, default=1, help="answers shown")
    qa.add_argument("--max-answer-len", type=int, default=15, help="longest answer, in tokens")
    qa.add_argument(
        "--doc-stride",
        type=int,
        default=None,
        help="tokens shared by consecutive windows of a long context "
        "(default: half of --max-seq-len, at most 128)",
    )
    qa.add_argument(
        "--max-seq-len",
        type=int,
        default=None,
        help="tokens per window, question included (default: 384 capped at the model's "
        "max_position_embeddings)",
    )
    qa.add_argument(
        "--handle-impossible-answer",
        action="store_true",
        help="allow the empty answer (SQuAD 2.0 style) when it scores best",
    )
