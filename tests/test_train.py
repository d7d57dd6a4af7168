"""bertfast finetune / pretrain on tiny random models (CPU, seconds)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from bertfast.cli import main  # noqa: E402
from bertfast.train import metrics  # noqa: E402

POSITIVE = ["good", "great", "fine", "happy", "nice", "love"]
NEGATIVE = ["bad", "awful", "poor", "sad", "ugly", "hate"]
NEUTRAL = ["the", "a", "movie", "film", "was", "is", "it", "and", "very", "this", "paris"]
WORDS = POSITIVE + NEGATIVE + NEUTRAL + ["john", "smith", "london", "lives", "in", "who"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
COMMON = ["--backend", "torch", "--device", "cpu", "--log-steps", "1", "--max-length", "32"]


def write_vocab(path) -> None:
    pieces = ["##s", "##ed", "##ing", "##y"]
    path.write_text("\n".join(SPECIAL + WORDS + pieces + list("abcdefghijklmnopqrstuvwxyz")))


def tiny_model(path, dropout: float = 0.1, seed: int = 0, layers: int = 2):
    """A random transformers.BertModel (hidden 32, 2 layers unless said) with its vocab.txt."""
    path.mkdir(parents=True, exist_ok=True)
    write_vocab(path / "vocab.txt")
    vocab = len((path / "vocab.txt").read_text().split("\n"))
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        initializer_range=0.1,  # larger than BERT's 0.02: a 2-layer model learns in few steps
    )
    transformers.BertModel(config).save_pretrained(path)
    return path


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sentiment_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["negative", "positive"])
        cue = POSITIVE if label == "positive" else NEGATIVE
        words = rng.sample(cue, 3) + rng.sample(NEUTRAL, 1)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def finetune(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["finetune", *argv, *COMMON])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentiment")
    return (
        write_jsonl(root / "train.jsonl", sentiment_rows(64, 0)),
        write_jsonl(root / "validation.jsonl", sentiment_rows(48, 1)),
    )


def test_classification_learns_and_saves_a_transformers_checkpoint(
    capsys, tmp_path, model_dir, sentiment
):
    train, validation = sentiment
    out_dir = tmp_path / "out"
    code, out, err = finetune(
        capsys,
        "--task", "classification", "--model", str(model_dir), "--train", train,
        "--validation", validation, "--output", str(out_dir), "--epochs", "4",
        "--batch-size", "8", "--learning-rate", "1e-2", "--warmup-ratio", "0.1",
    )  # fmt: skip
    assert code == 0, err
    log = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in log if "eval" in r]
    print([(r["epoch"], round(r["train_loss"], 4), r["eval"]) for r in epochs])
    assert len(epochs) == 4 and epochs[-1]["eval"]["accuracy"] >= 0.9
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    config = json.loads((out_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}

    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    from bertfast.heads import BertForSequenceClassification
    from bertfast.pipelines import pipeline

    ours = BertForSequenceClassification.from_pretrained(out_dir, backend="torch").eval()
    enc = hf_tok(["good movie", "the film was awful and sad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = hf(**enc).logits
        actual = ours(**enc).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    classify = pipeline("text-classification", model=str(out_dir), backend="torch")
    assert classify("it was great and nice")[0]["label"] == "positive"


def test_metric_definitions_on_hand_checked_cases():
    assert metrics.accuracy([0, 1, 1, 2], [0, 1, 2, 2]) == 0.75
    # per label F1: 0 -> 1, 1 -> 2/3, 2 -> 2/3
    assert metrics.macro_f1([0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_csv_with_text_pairs_trains(capsys, tmp_path, model_dir):
    lines = ["text,text_pair,label"] + [
        f"{w} movie,{v} film,{'same' if (w in POSITIVE) == (v in POSITIVE) else 'differ'}"
        for w, v in zip(POSITIVE + NEGATIVE, NEGATIVE + NEGATIVE, strict=True)
    ]
    train = tmp_path / "pairs.csv"
    train.write_text("\n".join(lines) + "\n")
    out_dir = tmp_path / "out"
    code, _, err = finetune(
        capsys, "--task", "classification", "--model", str(model_dir), "--train", str(train),
        "--output", str(out_dir), "--epochs", "1", "--batch-size", "4",
    )  # fmt: skip
    assert code == 0, err
    config = json.loads((out_dir / "config.json").read_text())
    assert config["label2id"] == {"differ": 0, "same": 1}


BAD_INPUTS = [
    ('{"label": "positive"}\n', "line 1, field 'text': missing"),
    ('{"text": "good", "label": "positive"}\n{"text": "bad", "label": 1.5}\n', "line 2, field 'label': expected"),
    ('{"text": "good", "label": "positive"}\n{"text": "bad", "label": 0}\n', "line 2, field 'label': int label"),
    ("", "empty file"),
    ('{"text": "good", "label": "positive"}\n[1, 2]\n', "line 2: expected a JSON object"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "message"), BAD_INPUTS)
def test_bad_training_files_fail_in_one_line_before_training(
    capsys, tmp_path, model_dir, content, message
):
    train = tmp_path / "train.jsonl"
    train.write_text(content)
    code, _, err = finetune(
        capsys, "--task", "classification", "--model", str(model_dir), "--train", str(train),
        "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 2 and message in err and str(train) in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_unknown_label_at_evaluation_is_named(capsys, tmp_path, model_dir, sentiment):
    validation = write_jsonl(tmp_path / "v.jsonl", [{"text": "good", "label": "neutral"}])
    code, _, err = finetune(
        capsys, "--task", "classification", "--model", str(model_dir), "--train", sentiment[0],
        "--validation", validation, "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 2 and f"{validation}, line 1, field 'label': unknown label 'neutral'" in err


def test_finetune_on_the_triton_backend(capsys, tmp_path, sentiment):
    """The fused kernels train, BERT's dropout included (the tiny model keeps transformers'
    default 0.1): two steps run, their losses are finite and a checkpoint is written. One
    layer and two examples a step: the interpreter runs each kernel."""
    from bertfast import backend_report

    if backend_report("cpu")["triton"]:
        pytest.skip(f"triton cannot run here: {backend_report('cpu')['triton']}")
    model_dir = tiny_model(tmp_path / "model", layers=1)
    out_dir = tmp_path / "out"
    argv = ["--task", "classification", "--model", str(model_dir), "--train", sentiment[0]]
    common = [a for a in COMMON if a not in ("--backend", "torch")]
    argv += ["--output", str(out_dir), "--backend", "triton", "--stop-after-steps", "2"]
    argv += ["--batch-size", "2", *common]
    code = main(["finetune", *argv])  # two steps: the interpreter is slow
    err = capsys.readouterr().err
    assert code == 0, err
    logged = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in logged if "loss" in row]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses), logged
    assert (out_dir / "checkpoint.pt").is_file()


def test_seqeval_definition_on_hand_checked_cases():
    # seqeval's README example: one of two entities right in each of gold and prediction.
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    assert metrics.entity_scores(gold, pred) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    # An I- after O opens an entity; a type change closes one; IOBES S- and E- are read.
    assert metrics.get_entities(["O", "I-PER", "I-PER", "I-LOC", "B-LOC", "O"]) == [
        ("PER", 1, 2),
        ("LOC", 3, 3),
        ("LOC", 4, 4),
    ]
    assert metrics.get_entities(["S-PER", "B-LOC", "E-LOC"]) == [("PER", 0, 0), ("LOC", 1, 2)]
    assert metrics.entity_scores([["O"]], [["B-PER"]]) == {"precision": 0, "recall": 0, "f1": 0}


def test_squad_definition_on_hand_checked_cases():
    assert metrics.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert metrics.normalize_answer("an apple a day") == "apple day"
    # "cat sat" vs "cat sat down": precision 1, recall 2/3
    assert metrics.squad_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    scores = metrics.squad_scores(["The Cat", "dog"], [["cat", "a cat"], ["big dog", "cow"]])
    assert scores["exact_match"] == 50.0
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def ner_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 6)):
            kind = rng.random()
            if kind < 0.25:
                tokens += ["john", rng.choice(["smith", "smiths"])]
                tags += ["B-PER", "I-PER"]
            elif kind < 0.45:
                tokens.append(rng.choice(["london", "paris"]))
                tags.append("B-LOC")
            else:
                tokens.append(rng.choice(NEUTRAL + POSITIVE))
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def last_eval(out_dir) -> dict:
    log = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in log if "eval" in r][-1]["eval"]


def test_ner_end_to_end(capsys, tmp_path, model_dir):
    from bertfast.heads import BertForTokenClassification
    from bertfast.tokenizer import BertTokenizer
    from bertfast.train import data, tasks

    train = write_jsonl(tmp_path / "train.jsonl", ner_rows(40, 0))
    validation = write_jsonl(tmp_path / "val.jsonl", ner_rows(16, 1))
    out_dir = tmp_path / "out"
    code, _, err = finetune(
        capsys, "--task", "ner", "--model", str(model_dir), "--train", train,
        "--validation", validation, "--output", str(out_dir), "--epochs", "3",
        "--batch-size", "8", "--learning-rate", "1e-2",
    )  # fmt: skip
    assert code == 0, err
    config = json.loads((out_dir / "config.json").read_text())
    assert list(config["id2label"].values()) == ["O", "B-LOC", "B-PER", "I-PER"]
    logged = last_eval(out_dir)
    print("ner", logged)
    assert logged["f1"] > 0.5
    # The logged scores are seqeval's on the saved model's word-level predictions.
    model = BertForTokenClassification.from_pretrained(out_dir, backend="torch").eval()
    tokenizer = BertTokenizer.from_pretrained(out_dir)
    examples = data.read_tagged(validation)
    features = data.encode_tagged(tokenizer, examples, model.config.label2id, 32)
    with torch.no_grad():
        again = tasks.ner_metrics(model, features, examples, model.config.id2label, 0, 5)
    assert again == pytest.approx(logged)
    hf = transformers.AutoModelForTokenClassification.from_pretrained(out_dir).eval()
    ids = torch.tensor([features[0].input_ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)
    assert features[0].targets["labels"][0] == -100  # [CLS]
    smiths = next(f for f, e in zip(features, examples) if "smiths" in e.tokens)
    assert -100 in smiths.targets["labels"][1:-1]  # the ##s piece


def test_ner_stops_at_the_first_word_that_does_not_fit(minilm_dir):
    """The long word does not fit in 16 tokens: the sentence ends there, and "paris" is neither
    trained on nor scored against the long word's gold tag."""
    from types import SimpleNamespace

    from bertfast.tokenizer import BertTokenizer
    from bertfast.train import data, tasks

    tokenizer = BertTokenizer.from_pretrained(minilm_dir)
    tokens = ["john"] + ["a"] * 9 + ["supercalifragilisticexpialidocious", "paris", "is", "nice"]
    tags = ["B-PER"] + ["O"] * 9 + ["B-MISC", "B-LOC", "O", "O"]
    label2id = {"O": 0, "B-PER": 1, "B-MISC": 2, "B-LOC": 3}
    record = data.Record("t.jsonl", 1, {})
    examples = [
        data.TaggedExample(tokens, tags, record),
        data.TaggedExample(["paris"], ["B-LOC"], record),
    ]
    features = data.encode_tagged(tokenizer, examples, label2id, 16)
    paris = tokenizer.convert_tokens_to_ids("paris")
    assert paris not in features[0].input_ids and len(features[0].extra["starts"]) == 10
    assert features[1].input_ids[1] == paris  # the next example starts at its own words

    class Tagger(torch.nn.Module):
        """Tags every token by its id: john B-PER, paris B-LOC, anything else O."""

        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(len(tokenizer), 4)
            with torch.no_grad():
                self.table.weight.zero_()
                self.table.weight[:, 0] = 1
                self.table.weight[tokenizer.convert_tokens_to_ids("john"), 1] = 2
                self.table.weight[paris, 3] = 2

        def forward(self, input_ids, **_):
            return SimpleNamespace(logits=self.table(input_ids))

    id2label = {v: k for k, v in label2id.items()}
    scores = tasks.ner_metrics(Tagger(), features, examples, id2label, 0, 2)
    assert scores == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def qa_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        filler = [rng.choice(NEUTRAL + POSITIVE) for _ in range(rng.randint(8, 24))]
        at = rng.randint(0, len(filler))
        name = rng.choice(["john", "john smith", "smith"])
        words = filler[:at] + [name, "lives", "in", "london"] + filler[at:]
        context = " ".join(words)
        start = len(" ".join(filler[:at])) + (1 if at else 0)
        answer = {"text": [name], "answer_start": [start]}
        rows.append(
            {
                "id": f"q{i}",
                "question": "who lives in london",
                "context": context,
                "answers": answer,
            }
        )
    return rows


def test_qa_end_to_end_with_squad_json_and_windows(capsys, tmp_path, model_dir):
    from bertfast.heads import BertForQuestionAnswering
    from bertfast.pipelines import pipeline
    from bertfast.tokenizer import BertTokenizer
    from bertfast.train import data, tasks

    train = write_jsonl(tmp_path / "train.jsonl", qa_rows(24, 0))
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": []}]}
    for row in qa_rows(8, 1):
        answers = [
            {"text": row["answers"]["text"][0], "answer_start": row["answers"]["answer_start"][0]}
        ]
        qas = [{"id": row["id"], "question": row["question"], "answers": answers}]
        squad["data"][0]["paragraphs"].append({"context": row["context"], "qas": qas})
    validation = tmp_path / "dev.json"
    validation.write_text(json.dumps(squad))
    out_dir = tmp_path / "out"
    code, _, err = finetune(
        capsys, "--task", "qa", "--model", str(model_dir), "--train", train,
        "--validation", str(validation), "--output", str(out_dir), "--epochs", "2",
        "--batch-size", "8", "--learning-rate", "5e-3", "--stride", "8",
    )  # fmt: skip
    assert code == 0, err
    logged = last_eval(out_dir)
    print("qa", logged)
    model = BertForQuestionAnswering.from_pretrained(out_dir, backend="torch").eval()
    tokenizer = BertTokenizer.from_pretrained(out_dir)
    examples = data.read_qa(validation)
    features = data.encode_qa(tokenizer, examples, 32, 8)
    assert len(features) > len(examples)  # long contexts were split into windows
    for f in features:  # a target span lies on the answer's text, or on [CLS]
        s, e = f.targets["start_positions"], f.targets["end_positions"]
        if s:
            ctx = examples[f.example].context
            assert (
                ctx[f.extra["offsets"][s][0] : f.extra["offsets"][e][1]]
                == examples[f.example].answers[0][0]
            )
    with torch.no_grad():
        predictions = tasks.qa_predictions(model, features, examples, 0, 7, 30)
    gold = [[t for t, _ in e.answers] for e in examples]
    assert metrics.squad_scores(predictions, gold) == pytest.approx(logged)
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(out_dir).eval()
    ids = torch.tensor([features[0].input_ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).start_logits, hf(ids).start_logits, atol=1e-4, rtol=0)
    answer = pipeline("question-answering", model=str(out_dir), backend="torch")(
        question="who lives in london", context=examples[0].context
    )
    assert isinstance(answer["answer"], str)


def load_weights(out_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out_dir / "model.safetensors"))


def test_resume_gives_the_weights_of_an_uninterrupted_run(
    capsys, tmp_path, model_dir, sentiment, monkeypatch
):
    import os
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(sentiment[0], "train.jsonl")
    argv = [
        "--task", "classification", "--model", str(model_dir), "--epochs", "1.5",
        "--batch-size", "4", "--gradient-accumulation", "2", "--learning-rate", "1e-2",
        "--warmup-ratio", "0.2",
    ]  # fmt: skip
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    code, _, err = finetune(capsys, *argv, "--train", "train.jsonl", "--output", str(whole))
    assert code == 0 and f"finished at step 12 of 12; the model is in {whole}" in err, err
    argv += ["--train", str(tmp_path / "train.jsonl")]  # the same file, spelled otherwise
    code, _, err = finetune(capsys, *argv, "--output", str(parts), "--stop-after-steps", "5")
    assert code == 0 and f"stopped at step 5 of 12; the model so far is in {parts}" in err, err
    # The partial model loads, with the files' modes as the umask says.
    transformers.AutoModelForSequenceClassification.from_pretrained(parts)
    mask = os.umask(0o022)
    os.umask(mask)
    assert (parts / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    shutil.copy(parts / "checkpoint.pt", tmp_path / "step5.pt")
    for change, message in [
        (["--seed", "7"], "(seed: was 42, now 7)"),
        (["--max-grad-norm", "0.5"], "(max_grad_norm: was 1.0, now 0.5)"),
        (["--autocast", "bf16"], "(autocast: was 'fp32', now 'bf16')"),
    ]:
        code, _, err = finetune(capsys, *argv, "--output", str(parts), "--resume", *change)
        assert code == 2 and message in err, err
    # The same path with other lines is other data.
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    flipped = [{**r, "label": "positive" if r["label"] == "negative" else "negative"} for r in rows]
    write_jsonl(tmp_path / "flipped.jsonl", flipped)
    shutil.copy(tmp_path / "train.jsonl", tmp_path / "kept.jsonl")
    shutil.copy(tmp_path / "flipped.jsonl", tmp_path / "train.jsonl")
    code, _, err = finetune(capsys, *argv, "--output", str(parts), "--resume")
    assert code == 2 and "different settings or data (train: was " in err, err
    shutil.copy(tmp_path / "kept.jsonl", tmp_path / "train.jsonl")
    # --stop-after-steps counts this invocation's steps: the same flag makes progress again.
    code, _, err = finetune(
        capsys, *argv, "--output", str(parts), "--resume", "--stop-after-steps", "5"
    )
    assert code == 0 and "stopped at step 10 of 12" in err, err
    # A kill after step 10 was logged but before its checkpoint: resume from step 5's, and the
    # log holds each step once.
    shutil.copy(tmp_path / "step5.pt", parts / "checkpoint.pt")
    assert finetune(capsys, *argv, "--output", str(parts), "--resume")[0] == 0
    expected, actual = load_weights(whole), load_weights(parts)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    log = [json.loads(line) for line in (parts / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 13))
    assert [r["step"] for r in log if "train_loss" in r] == [8, 12]


def test_max_steps_sets_the_length_of_the_run(capsys, tmp_path, model_dir, sentiment):
    code, _, err = finetune(
        capsys, "--task", "classification", "--model", str(model_dir), "--train", sentiment[0],
        "--output", str(tmp_path / "o"), "--max-steps", "3", "--batch-size", "4",
    )  # fmt: skip
    assert code == 0 and "finished at step 3 of 3" in err, err
    log = [json.loads(line) for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    # The schedule spans the 3 steps: linear decay from 5e-5, reaching 0 after the last.
    rates = [r["learning_rate"] for r in steps]
    assert rates == pytest.approx([5e-5, 5e-5 * 2 / 3, 5e-5 / 3])


def test_ctrl_c_finishes_the_step_checkpoints_and_resumes_exactly(
    capsys, tmp_path, model_dir, sentiment, monkeypatch, python_sigint
):
    import os
    import signal

    from bertfast.train import tasks

    argv = [
        "--task", "classification", "--model", str(model_dir), "--train", sentiment[0],
        "--epochs", "1", "--batch-size", "8", "--learning-rate", "1e-2",
    ]  # fmt: skip
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert finetune(capsys, *argv, "--output", str(whole))[0] == 0
    calls, pad_batch = [], tasks.pad_batch

    def interrupting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # while building step 3's batch
            os.kill(os.getpid(), signal.SIGINT)
        return pad_batch(*args, **kwargs)

    monkeypatch.setattr(tasks, "pad_batch", interrupting)
    code, _, err = finetune(capsys, *argv, "--output", str(parts))
    assert code == 130 and "interrupted: checkpoint at step 3 of 8" in err, err
    monkeypatch.setattr(tasks, "pad_batch", pad_batch)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert finetune(capsys, *argv, "--output", str(parts), "--resume")[0] == 0
    expected, actual = load_weights(whole), load_weights(parts)
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def test_a_checkpoint_write_that_dies_leaves_the_last_one(tmp_path, monkeypatch):
    from bertfast.train import loop

    path = str(tmp_path / "checkpoint.pt")
    loop.atomic_save({"step": 1}, path)

    def dies(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        loop.atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_no_weight_decay_on_biases_and_layer_norms(model_dir):
    from bertfast.config import BertConfig
    from bertfast.heads import BertForSequenceClassification
    from bertfast.train.loop import linear_schedule, parameter_groups

    model = BertForSequenceClassification(BertConfig.from_pretrained(model_dir), backend="torch")
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 2 for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {"classifier.bias"}
    assert all(names[id(p)].endswith("bias") or "norm" in names[id(p)] for p in no_decay["params"])
    factor = linear_schedule(2, 10)
    assert [factor(s) for s in (0, 1, 2, 6, 10)] == [0, 0.5, 1, 0.5, 0]


def write_corpus(path, documents: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(documents):
        topic = rng.choice([POSITIVE, NEGATIVE])
        for _ in range(rng.randint(3, 5)):
            lines.append(" ".join(rng.choice(topic + NEUTRAL[:3]) for _ in range(5)))
        lines.append("")
    path.write_text("\n".join(lines))
    return str(path)


def tiny_config_file(path) -> str:
    config = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    path.write_text(json.dumps(config))
    return str(path)


def test_pretrain_loss_falls_and_transformers_loads_it(capsys, tmp_path, model_dir):
    corpus = write_corpus(tmp_path / "corpus.txt", 8, 0)
    out_dir = tmp_path / "out"
    code = main(
        ["pretrain", "--corpus", corpus, "--config", tiny_config_file(tmp_path / "c.json"),
         "--tokenizer", str(model_dir), "--output", str(out_dir), "--max-length", "24",
         "--epochs", "5", "--batch-size", "8", "--learning-rate", "1e-2", "--save-steps", "3",
         "--whole-word-mask", "--backend", "torch", "--device", "cpu", "--log-steps", "1"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    epochs = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in epochs if "train_loss" in r]
    print("pretrain epoch losses", [round(x, 3) for x in losses])
    assert len(losses) == 5 and losses[-1] < 0.8 * losses[0]
    hf = transformers.BertForPreTraining.from_pretrained(out_dir).eval()
    from bertfast.heads import BertForPreTraining

    ours = BertForPreTraining.from_pretrained(out_dir, backend="torch").eval()
    ids = torch.tensor([[2, 10, 11, 12, 3, 13, 14, 3]])
    with torch.no_grad():
        expected, actual = hf(ids), ours(ids)
    torch.testing.assert_close(
        actual.prediction_logits, expected.prediction_logits, atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        actual.seq_relationship_logits, expected.seq_relationship_logits, atol=1e-4, rtol=0
    )


def test_pretrain_resume_refuses_another_corpus(capsys, tmp_path, model_dir):
    corpus = write_corpus(tmp_path / "corpus.txt", 4, 0)
    argv = [
        "pretrain", "--corpus", corpus, "--config", tiny_config_file(tmp_path / "c.json"),
        "--tokenizer", str(model_dir), "--output", str(tmp_path / "out"), "--max-length", "24",
        "--batch-size", "4", "--backend", "torch", "--device", "cpu",
    ]  # fmt: skip
    assert main([*argv, "--stop-after-steps", "1"]) == 0
    assert "stopped at step 1 of" in capsys.readouterr().err
    write_corpus(tmp_path / "corpus.txt", 4, 1)  # the same name, other sentences
    assert main([*argv, "--resume"]) == 2
    assert "different settings or data (corpus: was [" in capsys.readouterr().err


def test_pretrain_says_when_packing_leaves_one_segment_a_document(capsys, tmp_path, model_dir):
    corpus = tmp_path / "short.txt"
    corpus.write_text("good movie\nbad film\n\nthe end\nlove it\n")
    argv = [
        "pretrain", "--corpus", str(corpus), "--config", tiny_config_file(tmp_path / "c.json"),
        "--tokenizer", str(model_dir), "--output", str(tmp_path / "out"), "--device", "cpu",
    ]  # fmt: skip
    assert main([*argv, "--max-length", "32"]) == 2
    err = capsys.readouterr().err
    assert "fit together in one segment of 14 tokens" in err and "smaller --max-length" in err
    corpus.write_text("good movie\n\nbad film\n")
    assert main([*argv, "--max-length", "32"]) == 2
    assert "no document has two sentences" in capsys.readouterr().err


def test_training_files_may_start_with_a_byte_order_mark(tmp_path):
    from bertfast.train import data

    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.csv").write_bytes(bom + b"text,label\ngood movie,positive\n")
    (tmp_path / "a.jsonl").write_bytes(bom + b'{"text": "good movie", "label": "positive"}\n')
    for name in ("a.csv", "a.jsonl"):
        [example] = data.read_classification(tmp_path / name)
        assert (example.text, example.label) == ("good movie", "positive")
    (tmp_path / "t.jsonl").write_bytes(bom + b'{"tokens": ["john"], "tags": ["B-PER"]}\n')
    assert data.read_tagged(tmp_path / "t.jsonl")[0].tags == ["B-PER"]
    squad = {"data": [{"paragraphs": [{"context": "john", "qas": [
        {"id": "q", "question": "who", "answers": [{"text": "john", "answer_start": 0}]}
    ]}]}]}  # fmt: skip
    (tmp_path / "s.json").write_bytes(bom + json.dumps(squad).encode())
    assert data.read_qa(tmp_path / "s.json")[0].answers == [("john", 0)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_torchrun_matches_one_process_with_the_same_global_batch(tmp_path):
    """gloo on the CPU; dropout 0 so that the ranks' dropout draws play no part. The weights
    agree to float reordering of the gradient all-reduce (Adam amplifies it on tiny grads).
    58 examples: the last global batch of 8 holds 2, so rank 1 has none and steps on a
    zero-weight stand-in."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    model = tiny_model(tmp_path / "model", dropout=0.0)
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(58, 2))
    argv = [
        "finetune", "--task", "classification", "--model", str(model), "--train", train,
        "--epochs", "1", "--learning-rate", "1e-4", "--gradient-accumulation", "2", *COMMON,
    ]  # fmt: skip
    assert main([*argv, "--output", str(tmp_path / "one"), "--batch-size", "4"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    run += ["--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "bertfast"]
    result = subprocess.run(
        [*run, *argv, "--output", str(tmp_path / "two"), "--batch-size", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = load_weights(tmp_path / "one"), load_weights(tmp_path / "two")
    start = load_file(str(model / "model.safetensors"))
    moved = max((one[k] - start[k[5:]]).abs().max().item() for k in one if k[5:] in start)
    differ = max((one[k] - two[k]).abs().max().item() for k in one)
    print(f"1 vs 2 processes: max weight difference {differ:.2e}, max change {moved:.2e}")
    assert moved > 1e-4 and differ < 2e-5
    logs = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("one", "two")]
    assert len(logs[0]) == len(logs[1])  # rank 0 alone writes
    losses = [json.loads(log[-1])["train_loss"] for log in logs]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_a_tokenizer_bigger_than_the_model_vocabulary_is_refused(capsys, tmp_path, sentiment):
    model = tiny_model(tmp_path / "model")
    with (model / "vocab.txt").open("a") as f:
        f.write("\nextra1\nextra2")
    code, _, err = finetune(
        capsys, "--task", "classification", "--model", str(model), "--train", sentiment[0],
        "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 2 and "do not belong together" in err, err


def test_pretraining_segments_pack_consecutive_sentences(model_dir):
    from bertfast.tokenizer import BertTokenizer
    from bertfast.train.tasks import pack_sentences

    tokenizer = BertTokenizer.from_pretrained(model_dir)
    docs = [["good movie", "bad film", "the end"], ["love it"]]
    ids = {s: tokenizer(s, add_special_tokens=False)["input_ids"] for d in docs for s in d}
    packed = pack_sentences(docs, tokenizer, budget=4)
    assert packed == [
        [ids["good movie"] + ids["bad film"], ids["the end"]],
        [ids["love it"]],
    ]


def test_qa_answers_that_are_not_where_they_say_are_named(tmp_path):
    from bertfast.train import data

    row = {
        "question": "who",
        "context": "john lives here",
        "answers": [{"text": "john", "answer_start": 3}],
    }
    path = tmp_path / "one.json"  # one JSON Lines record in a .json file is not SQuAD JSON
    path.write_text(json.dumps(row))
    with pytest.raises(data.DataError, match=r"one.json, line 1, field 'answers': answer 0 'john'"):
        data.read_qa(path)
    row["answers"][0]["answer_start"] = 0
    path.write_text(json.dumps(row))
    assert data.read_qa(path)[0].answers == [("john", 0)]
    path.write_text(
        json.dumps({"data": [{"paragraphs": [{"context": "x", "qas": [{"question": "q"}]}]}]})
    )
    with pytest.raises(
        data.DataError, match=r"data\[0\].paragraphs\[0\].qas\[0\], field 'answers'"
    ):
        data.read_qa(path)
