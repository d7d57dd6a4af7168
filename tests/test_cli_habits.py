"""The command line's answers to the usual slips: a misspelled option, command, choice or model
name, no command at all; and the help texts and defaults users expect (in-process, no model
loads)."""

import argparse

import pytest

from bertfast.cli import build_parser, main
from bertfast.model_dirs import DEFAULT_MODEL


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """main(argv) in this process: (exit status, stdout, stderr); argparse's exits included."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv, usage, hint",
    [
        (["embed", "--modle", "x"], "usage: bertfast embed", "did you mean --model?"),
        # Subcommands registered by other modules parse the same way.
        (["qa", "--questoin", "why?"], "usage: bertfast qa", "did you mean --question?"),
        (
            ["finetune", "--task", "ner", "--trian", "t.jsonl"],
            "usage: bertfast finetune",
            "did you mean --train?",
        ),
        (["serve", "--prot", "80"], "usage: bertfast serve", "did you mean --port?"),
    ],
)
def test_misspelled_option_shows_the_subcommand_usage_and_the_option_meant(
    capsys, argv, usage, hint
):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(usage)
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{usage[7:]}: error: unrecognized arguments: {argv[-2]}")
    assert hint in last


def test_a_misspelled_required_option_is_named_before_its_absence(capsys):
    code, _, err = run(capsys, "finetune", "--task", "ner", "--trian", "t.jsonl", "--output", "o")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "bertfast finetune: error: unrecognized arguments: --trian; did you mean --train? "
        "(and the following arguments are required: --train)"
    )


def test_several_misspelled_options_each_get_a_suggestion(capsys):
    code, _, err = run(capsys, "embed", "hi", "--modle", "m", "--bach-size", "3", "--zzz")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "bertfast embed: error: unrecognized arguments: --modle m --bach-size 3 --zzz; "
        "did you mean --model for --modle, --batch-size for --bach-size?"
    )


def test_unknown_option_far_from_any_has_no_suggestion(capsys):
    code, _, err = run(capsys, "embed", "--zzz")
    assert code == 2
    assert err.strip().splitlines()[-1] == "bertfast embed: error: unrecognized arguments: --zzz"


def test_misspelled_command_and_choice(capsys):
    code, _, err = run(capsys, "embedd", "hi")
    assert code == 2 and err.startswith("usage: bertfast [-h]")
    assert "invalid choice: 'embedd' (choose from 'info', 'embed'," in err
    assert err.rstrip().endswith("did you mean 'embed'?")
    code, _, err = run(capsys, "embed", "hi", "--show", "vector")
    assert code == 2 and err.startswith("usage: bertfast embed")
    assert err.rstrip().endswith(
        "argument --show: invalid choice: 'vector' (choose from 'vectors', 'similarity'); "
        "did you mean 'vectors'?"
    )


@pytest.mark.parametrize(
    "argv, option, given, meant",
    [
        (["embed", "hi"], "model", "all-minilm-l6-v2", "all-MiniLM-L6-v2"),
        (["embed", "hi"], "model", "all-MiniLM-L6v2", "all-MiniLM-L6-v2"),
        (
            ["serve"],
            "model",
            "sentence-transformers/all-MiniLM-L6-V2",
            "sentence-transformers/all-MiniLM-L6-v2",
        ),
        (
            ["finetune", "--task", "ner", "--train", "t.jsonl", "--output", "out"],
            "model",
            "all_MiniLM_L6_v2",
            "all-MiniLM-L6-v2",
        ),
        (
            ["pretrain", "--corpus", "c.txt", "--config", "bert-base", "--output", "out"],
            "tokenizer",
            "All-MiniLM-L6-v2",
            "all-MiniLM-L6-v2",
        ),
    ],
)
def test_near_miss_of_the_bundled_model_name_suggests_it(capsys, argv, option, given, meant):
    code, out, err = run(capsys, *argv, f"--{option}", given)
    assert code == 2 and out == ""
    assert err == (
        f"bertfast {argv[0]}: error: --{option} {given!r} is neither a directory nor the "
        f"bundled model's name; did you mean {meant!r}?\n"
    )


def test_a_name_far_from_the_bundled_one_is_not_answered_with_it(capsys):
    code, _, err = run(capsys, "embed", "hi", "--model", "/no/such/dir", "--device", "cpu")
    assert code == 2 and "no model directory at '/no/such/dir'" in err
    assert "did you mean" not in err


def test_no_command_is_usage_on_stderr_and_exit_2(capsys):
    code, out, err = run(capsys)
    assert code == 2 and out == ""
    assert err.startswith("usage: bertfast [-h] [--version] COMMAND ...")
    assert "    embed " in err  # the commands are listed


def _subcommands(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_help_texts_print_percent_signs_once(capsys):
    code, out, _ = run(capsys, "pretrain", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "masked LM (15% of tokens; 80% [MASK], 10% random, 10% kept" in text
    for name, sub in _subcommands(build_parser()).items():
        assert "%%" not in sub.format_help(), name


def test_finetune_model_defaults_to_the_bundled_checkpoint_as_embed_and_serve():
    parser = build_parser()
    finetune = parser.parse_args(["finetune", "--task", "ner", "--train", "t", "--output", "o"])
    embed = parser.parse_args(["embed", "hi"])
    serve = parser.parse_args(["serve"])
    assert finetune.model == embed.model == serve.model == DEFAULT_MODEL
    help_text = " ".join(_subcommands(parser)["finetune"].format_help().split())
    assert f"(default: {DEFAULT_MODEL})" in help_text.replace("- ", "-")
