"""The corpus options of ``bertfast embed`` (``--input`` switches the command to corpus mode)."""

from __future__ import annotations

import argparse

from bertfast.cli_options import add_max_length_option, add_output_option, parse_dtype
from bertfast.corpus.embed import DEFAULT_BATCH_TOKENS, DEFAULT_SAVE_EVERY, DEFAULT_SHARD_SIZE
from bertfast.corpus.readers import FORMATS
from bertfast.corpus.writer import OUTPUT_DTYPES

# Corpus-mode options (argparse dest -> default): given without --input they are refused.
CORPUS_DEFAULTS = {
    "output": None,
    "field": "text",
    "id_field": None,
    "input_format": "auto",
    "batch_tokens": DEFAULT_BATCH_TOKENS,
    "max_length": None,
    "normalize": None,
    "output_dtype": "float32",
    "skip_bad_lines": False,
    "shard_size": DEFAULT_SHARD_SIZE,
    "save_every": DEFAULT_SAVE_EVERY,
    "parquet": False,
}


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--input FILE...`` and the options of corpus mode to the ``embed`` parser."""
    group = parser.add_argument_group(
        "corpus mode", "embed whole files into shards of vectors (given --input)"
    )
    group.add_argument(
        "--input",
        nargs="+",
        metavar="FILE",
        default=None,
        help="files to embed, in order: plain text (a line a text), JSON Lines (.jsonl), "
        "CSV (.csv) or TSV (.tsv); switches to corpus mode (default: texts on the command line)",
    )
    add_output_option(
        group,
        "the shards and manifest.json; rerunning into it resumes",
        default_text="none, required with --input",
    )
    group.add_argument(
        "--field", default="text", help="the JSON Lines field or CSV/TSV column holding the text"
    )
    group.add_argument(
        "--id-field",
        default=None,
        help="the JSON Lines field or CSV/TSV column of an id written beside each vector "
        "(default: none; ids are FILE:LINE)",
    )
    group.add_argument(
        "--format",
        dest="input_format",
        default="auto",
        choices=FORMATS,
        help="how to read the inputs; auto goes by the file extension, plain text otherwise",
    )
    group.add_argument(
        "--batch-tokens",
        type=int,
        default=DEFAULT_BATCH_TOKENS,
        help="padded tokens per forward pass; texts are sorted by length so batches pad little",
    )
    add_max_length_option(group, None, "the model's max_seq_length; longer texts are cut")
    group.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="unit-length vectors, or not (default: as the model directory's modules say)",
    )
    group.add_argument(
        "--output-dtype",
        default="float32",
        choices=OUTPUT_DTYPES,
        help="dtype of the stored vectors",
    )
    group.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip lines that cannot be embedded and count them in the manifest "
        "(default: stop at the first, naming file and line)",
    )
    group.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help="texts per output shard: the unit of resuming and of the split across torchrun ranks",
    )
    group.add_argument(
        "--save-every",
        type=float,
        default=DEFAULT_SAVE_EVERY,
        metavar="SECONDS",
        help="save the finished texts of the shard under way this often, so that a kill or "
        f"Ctrl-C loses at most that much work; a rerun takes them up (default: "
        f"{DEFAULT_SAVE_EVERY:g})",
    )
    group.add_argument(
        "--parquet",
        action="store_true",
        help="also write each shard as Parquet (id, embedding); needs pyarrow",
    )


def run_corpus(args: argparse.Namespace) -> int:
    """``bertfast embed --input ...``: embed the files into ``--output``."""
    from bertfast.corpus.embed import EmbedOptions, embed_corpus

    if args.texts:
        raise ValueError(
            f"give texts or --input files, not both (got {len(args.texts)} text(s) and --input)"
        )
    if args.output is None:
        raise ValueError("--input needs --output DIR for the shards and manifest")
    options = EmbedOptions(
        inputs=args.input,
        output=args.output,
        model=args.model,
        text_field=args.field,
        id_field=args.id_field,
        input_format=args.input_format,
        batch_tokens=args.batch_tokens,
        max_length=args.max_length,
        normalize=args.normalize,
        dtype=parse_dtype(args.dtype),
        quantize=args.quantize,
        output_dtype=args.output_dtype,
        device=args.device,
        backend=args.backend,
        skip_bad_lines=args.skip_bad_lines,
        shard_size=args.shard_size,
        save_every=args.save_every,
        parquet=args.parquet,
    )
    embed_corpus(options)
    return 0


def check_sentence_mode(args: argparse.Namespace) -> None:
    """Refuse corpus options given without --input: they would be silently ignored; and
    texts on the command line that are not UTF-8 (Python keeps their bytes as lone
    surrogates, which the tokenizer cannot take)."""
    for number, text in enumerate(args.texts, start=1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(text[exc.start])
            what = f"byte {code - 0xDC00:#04x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
            raise ValueError(
                f"text argument {number} is not valid UTF-8 ({what} at character "
                f"{exc.start + 1}); give UTF-8 text"
            ) from None
    given = [name for name, default in CORPUS_DEFAULTS.items() if getattr(args, name) != default]
    if given:
        flags = ", ".join(
            "--" + ("format" if n == "input_format" else n.replace("_", "-")) for n in given
        )
        raise ValueError(f"{flags} only apply to corpus mode; add --input FILE...")
