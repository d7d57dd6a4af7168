"""``bertfast finetune``: registered by bertfast.cli; torch is already loaded by then."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from bertfast.cli_options import (
    add_backend_option,
    add_device_option,
    add_max_length_option,
    add_model_option,
    add_output_option,
    check_backend,
    check_device,
    default_device,
)
from bertfast.model_dirs import DEFAULT_MODEL

TASKS = ("classification", "ner", "qa")


def _device_and_backend(args: argparse.Namespace) -> str:
    device = check_device(default_device(args.device))
    check_backend(args.backend, device)
    return str(device)


def _settings(args: argparse.Namespace):
    from bertfast.train.loop import TrainSettings

    return TrainSettings(
        output=args.output,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        accumulation=args.gradient_accumulation,
        seed=args.seed,
        max_grad_norm=args.max_grad_norm,
        autocast=args.autocast,
        save_steps=args.save_steps,
        log_steps=args.log_steps,
        max_steps=args.max_steps,
        stop_after_steps=args.stop_after_steps,
        resume=args.resume,
    )


def _fingerprint(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names}


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
    """A file's identity by content (its path may be spelled another way, or the file moved):
    its size and SHA-256, streamed (about 0.5 GB/s)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


def directory_digest(path: str | os.PathLike) -> dict[str, Any]:
    """The content of a model or tokenizer directory: every file directly in it, by name."""
    digest = hashlib.sha256()
    size = 0
    for entry in sorted(Path(path).iterdir()):
        if entry.is_file():
            file = file_digest(entry)
            digest.update(f"{entry.name}\0{file['sha256']}\0".encode())
            size += file["bytes"]
    return {"bytes": size, "sha256": digest.hexdigest()}


def cmd_finetune(args: argparse.Namespace) -> int:
    from bertfast.config import BertConfig
    from bertfast.model_dirs import resolve_model_dir
    from bertfast.tokenizer import BertTokenizer
    from bertfast.train import tasks
    from bertfast.train.loop import Task, close_distributed, init_distributed, train

    device = _device_and_backend(args)
    settings = _settings(args)
    settings.check()
    model_dir = resolve_model_dir(args.model)
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    config = BertConfig.from_pretrained(model_dir)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"{model_dir}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size "
            f"is {config.vocab_size}; they do not belong together"
        )
    if args.max_length is None:
        args.max_length = min(128, config.max_position_embeddings)
    if args.max_length < 8:
        raise ValueError(f"--max-length must be >= 8, got {args.max_length}")
    if args.max_length > config.max_position_embeddings:
        raise ValueError(
            f"--max-length {args.max_length} exceeds the model's max_position_embeddings "
            f"({config.max_position_embeddings})"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    job = tasks.PREPARE[args.task](
        args, tokenizer, config, pad_id
    )  # reads and checks every file first
    dist, device = init_distributed(device)
    model, new = tasks.build_head(
        job.head_class, model_dir, job.config, args.backend, device, args.seed
    )
    if dist.is_main and new:
        print(f"bertfast finetune: newly initialised: {', '.join(new)}", file=sys.stderr)

    def save_model(trained) -> None:
        trained.save_pretrained(args.output)
        tokenizer.save_pretrained(args.output)

    evaluate = None
    if job.evaluate is not None:
        evaluate = job.evaluate
    try:
        records = train(
            model,
            job.train_features,
            Task(collate=job.collate, weight=job.weight, evaluate=evaluate),
            settings,
            dist,
            _fingerprint(args, FINGERPRINT)
            | {"train": file_digest(args.train), "model": directory_digest(model_dir)},
            save_model,
        )
    finally:
        close_distributed(dist)
    if dist.is_main and records and "eval" in records[-1]:
        print(" ".join(f"{k} {v:.4f}" for k, v in records[-1]["eval"].items()))
    return 0


def load_pretraining_config(name: str, vocab_size: int, max_length: int):
    """A preset by name, or a config.json (file or directory), sized for the tokenizer."""
    import dataclasses
    import json
    import os

    from bertfast.config import PRESETS, BertConfig

    if name in PRESETS:
        config = BertConfig.preset(name, vocab_size=vocab_size)
    elif os.path.isdir(name):
        config = BertConfig.from_pretrained(name)
    elif os.path.isfile(name):
        try:
            with open(name, encoding="utf-8") as f:
                config = BertConfig.from_dict(json.load(f))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}: not valid JSON ({exc.msg})") from None
    else:
        raise ValueError(
            f"--config {name!r} is neither a preset ({', '.join(PRESETS)}) nor a config file"
        )
    if config.vocab_size < vocab_size:
        raise ValueError(
            f"--config {name}: vocab_size {config.vocab_size} is smaller than the tokenizer's "
            f"{vocab_size} tokens"
        )
    if config.max_position_embeddings < max_length:
        config = dataclasses.replace(config, max_position_embeddings=max_length)
    return config


def cmd_pretrain(args: argparse.Namespace) -> int:
    from bertfast.heads import BertForPreTraining
    from bertfast.model_dirs import resolve_model_dir
    from bertfast.tokenizer import BertTokenizer
    from bertfast.train import tasks
    from bertfast.train.loop import Task, close_distributed, init_distributed, train

    device = _device_and_backend(args)
    settings = _settings(args)
    settings.check()
    if not 8 <= args.max_length:
        raise ValueError(f"--max-length must be >= 8, got {args.max_length}")
    tokenizer = BertTokenizer.from_pretrained(args.tokenizer)
    config = load_pretraining_config(args.config, len(tokenizer), args.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    job = tasks.prepare_pretraining(args, tokenizer, config, pad_id)
    dist, device = init_distributed(device)
    torch_seed(args.seed)
    model = BertForPreTraining(config, backend=args.backend, device=device)
    if dist.is_main:
        print(
            f"bertfast pretrain: {len(job.train_features)} sequence pairs, "
            f"{sum(p.numel() for p in model.parameters()):,} parameters",
            file=sys.stderr,
        )

    def save_model(trained) -> None:
        trained.save_pretrained(args.output)
        tokenizer.save_pretrained(args.output)

    fingerprint = _fingerprint(args, PRETRAIN_FINGERPRINT) | {
        "corpus": [file_digest(path) for path in args.corpus],
        "config": _config_identity(args.config),
        "tokenizer": directory_digest(resolve_model_dir(args.tokenizer)),
    }
    try:
        train(
            model,
            job.train_features,
            Task(job.collate, job.weight),
            settings,
            dist,
            fingerprint,
            save_model,
        )
    finally:
        close_distributed(dist)
    return 0


def _config_identity(name: str) -> str | dict[str, Any]:
    """A preset by name; a config file (or a directory's config.json) by content."""
    if os.path.isdir(name):
        return file_digest(os.path.join(name, "config.json"))
    return file_digest(name) if os.path.isfile(name) else name


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


# Settings whose change makes a resumed run a different run (compared as a dict: order free):
# the optimisation options both commands share, then each command's own.
TRAINING_FINGERPRINT = (
    "epochs",
    "batch_size",
    "learning_rate",
    "warmup_ratio",
    "weight_decay",
    "gradient_accumulation",
    "seed",
    "max_length",
    "max_grad_norm",
    "autocast",
    "backend",
    "max_steps",
)
PRETRAIN_FINGERPRINT = (
    "corpus",
    "config",
    "tokenizer",
    *TRAINING_FINGERPRINT,
    "mlm_probability",
    "whole_word_mask",
)
FINGERPRINT = ("task", "train", *TRAINING_FINGERPRINT, "stride")


def add_training_arguments(p: argparse.ArgumentParser, batch_size: int, lr: float) -> None:
    """The optimisation, checkpoint and logging options shared by finetune and pretrain."""
    add_output_option(p, "the model, checkpoint and log", required=True)
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the training data")
    p.add_argument(
        "--batch-size", type=int, default=batch_size, help="examples per micro-batch per process"
    )
    p.add_argument("--learning-rate", type=float, default=lr, help="AdamW peak learning rate")
    p.add_argument(
        "--warmup-ratio",
        type=float,
        default=0.0,
        help="fraction of the steps over which the learning rate rises linearly from 0 "
        "(default: 0)",
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=0.01,
        help="AdamW weight decay (never on biases and LayerNorm weights)",
    )
    p.add_argument(
        "--gradient-accumulation",
        type=int,
        default=1,
        help="micro-batches summed into one optimizer step",
    )
    p.add_argument(
        "--max-grad-norm", type=float, default=1.0, help="gradient clipping norm; 0 turns it off"
    )
    p.add_argument("--seed", type=int, default=42, help="seeds the head, dropout and the order")
    p.add_argument(
        "--autocast",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="mixed precision for forward and backward (weights stay fp32; fp16 scales the loss "
        "on GPUs)",
    )
    p.add_argument(
        "--save-steps",
        type=int,
        default=0,
        help="write the resumable checkpoint every N optimizer steps (default: 0, at each "
        "epoch's end only)",
    )
    p.add_argument("--log-steps", type=int, default=10, help="log the loss every N steps")
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="optimizer steps of the whole run, overriding --epochs; the learning rate reaches "
        "0 at the last (default: as many as --epochs take)",
    )
    p.add_argument(
        "--stop-after-steps",
        type=int,
        default=None,
        help="stop this invocation after N more optimizer steps, the schedule unchanged, with a "
        "checkpoint and the model so far (default: run to the end); --resume continues",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --output (model, optimizer, scheduler, RNG, "
        "data position)",
    )
    add_backend_option(p, training=True)
    add_device_option(p)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a BERT checkpoint for classification, NER or extractive QA",
        description="Fine-tune a local Hugging Face BERT directory and write a checkpoint that "
        "transformers and the bertfast pipelines load. Data: JSON Lines or CSV; classification "
        "reads text (+ text_pair) and label; ner reads tokens and tags; qa reads SQuAD v1 JSON "
        "or JSON Lines with question, context and answers {text, answer_start}. Runs "
        "data-parallel under torchrun.",
    )
    p.add_argument("--task", required=True, choices=TASKS, help="what to fine-tune for")
    add_model_option(p, DEFAULT_MODEL)
    p.add_argument("--train", required=True, help="training data file")
    p.add_argument(
        "--validation", default=None, help="data scored after each epoch (default: none)"
    )
    add_max_length_option(p, None, "128, or the model's max_position_embeddings when smaller")
    p.add_argument(
        "--eval-batch-size", type=int, default=64, help="sequences per forward when evaluating"
    )
    p.add_argument(
        "--stride",
        type=int,
        default=32,
        help="qa: context tokens shared by consecutive windows of a long context",
    )
    p.add_argument("--max-answer-length", type=int, default=30, help="qa: answer tokens at most")
    add_training_arguments(p, batch_size=16, lr=5e-5)
    p.set_defaults(func=cmd_finetune)

    p = subparsers.add_parser(
        "pretrain",
        help="pre-train BERT from scratch with masked-LM and next-sentence prediction",
        description="Pre-train on text files (one sentence a line, a blank line between "
        "documents) with BERT's objectives: masked LM (15%% of tokens; 80%% [MASK], 10%% random, "
        "10%% kept; optionally whole words) and next-sentence prediction. Writes a checkpoint "
        "transformers.BertForPreTraining loads.",
    )
    p.add_argument("--corpus", required=True, nargs="+", help="text files of documents")
    p.add_argument(
        "--config",
        required=True,
        help="model size: transformer-base, bert-base, bert-large, or a config.json",
    )
    p.add_argument("--tokenizer", required=True, help="directory with vocab.txt or tokenizer.json")
    add_max_length_option(p, 128, "128; a sequence is a sentence pair")
    p.add_argument(
        "--mlm-probability", type=float, default=0.15, help="fraction of tokens to predict"
    )
    p.add_argument(
        "--whole-word-mask", action="store_true", help="mask every piece of a chosen word"
    )
    add_training_arguments(p, batch_size=32, lr=1e-4)
    p.set_defaults(func=cmd_pretrain)
