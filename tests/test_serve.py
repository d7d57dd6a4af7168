"""bertfast serve: real server processes on free loopback ports, driven over HTTP.

Three servers start once for the module (the bundled MiniLM for embeddings, a tiny random
3-label classifier and a tiny random cross-encoder); the shutdown test starts a fourth,
short-lived one. Every answer is checked against transformers / sentence-transformers run
here on the same inputs. All traffic goes to 127.0.0.1 and is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
transformers = pytest.importorskip("transformers")

from bertfast.serve.server import READY, STOPPED  # noqa: E402

HOST = "127.0.0.1"
START_TIMEOUT = 120  # seconds for a server process to load its model on a busy 2-core machine
WORDS = (
    "the a cat dog sat on mat river bank money loan water fish green red blue house tree "
    "car road city night day sun moon star light dark fast slow small big old new good bad "
    "happy sad man woman child book paper music song dance food bread milk coffee tea cup "
    "table chair door window garden flower bird sky cloud rain snow wind fire stone hill"
).split()
LABELS = {0: "contradiction", 1: "entailment", 2: "neutral"}


class Server:
    """A ``bertfast serve`` child process; its output is collected for failure messages."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            **(env or {}),
        )
        env.pop("TRITON_INTERPRET", None)  # the CPU torch path; no kernel is interpreted
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bertfast", "serve", "--host", HOST, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
        )
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if READY in line:  # a line of its own, or a JSON log line's message
                self.url = re.search(r"http://[^\s\"]+", line).group(0)
                self._ready.set()
        self._ready.set()

    def wait_ready(self) -> str:
        self._ready.wait(START_TIMEOUT)
        if self.url is None:
            self.stop()
            pytest.fail("server did not start:\n" + self.log())
        return self.url

    def log(self) -> str:
        return "\n".join(self.lines[-40:])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# -- tiny random checkpoints --------------------------------------------------------------


def write_vocab(path: Path) -> Path:
    """Special tokens, WORDS, and last a 'poison' word whose id the models do not have."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "!", ".", ",", "poison"]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def tiny_checkpoint(path: Path, vocab: Path, head: str, num_labels: int = 3, seed: int = 0):
    """A 2-layer random BERT saved by transformers, with a tokenizer beside it. Its
    vocab_size leaves out the vocabulary's last token, so an input with it fails in the model."""
    from bertfast.tokenizer import BertTokenizer

    torch.manual_seed(seed)
    n_vocab = len(vocab.read_text().split())
    config = transformers.BertConfig(
        vocab_size=n_vocab - 1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=num_labels,
        id2label={i: LABELS.get(i, f"LABEL_{i}") for i in range(num_labels)},
        label2id={LABELS.get(i, f"LABEL_{i}"): i for i in range(num_labels)},
    )
    model_cls = getattr(transformers, head)
    model = model_cls(config).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a dropped term shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    BertTokenizer.from_vocab(vocab, model_max_length=64).save_pretrained(path)
    return path


def random_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("serve")
    vocab = write_vocab(root / "vocab.txt")
    # MiniLM with two prompts, as a directory with prompts has (the weights linked, not copied).
    prompted = root / "minilm"
    shutil.copytree(minilm_dir, prompted, ignore=shutil.ignore_patterns("*.safetensors"))
    for weights in Path(minilm_dir).glob("*.safetensors"):
        (prompted / weights.name).symlink_to(weights)
    (prompted / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "passage": "passage: "}})
    )
    return {
        "minilm": Path(minilm_dir),
        "minilm_prompts": prompted,
        "classifier": tiny_checkpoint(
            root / "classifier", vocab, "BertForSequenceClassification", 3
        ),
        "reranker": tiny_checkpoint(
            root / "reranker", vocab, "BertForSequenceClassification", 1, seed=1
        ),
        "embedder": tiny_checkpoint(root / "embedder", vocab, "BertModel", seed=2),
    }


class Started(dict):
    """Server URLs by name; ``procs`` holds the Server objects (their output)."""

    procs: dict[str, Server]


@pytest.fixture(scope="module")
def servers(model_dirs):
    """The three module servers, started together (they load in parallel)."""
    started = {
        "embed": Server(
            ["--model", str(model_dirs["minilm_prompts"]), "--tokenization-workers", "2"]
        ),
        "classifier": Server(
            ["--model", str(model_dirs["classifier"]), "--max-concurrent-requests", "2"]
        ),
        "reranker": Server(["--model", str(model_dirs["reranker"])]),
    }
    try:
        urls = Started({name: s.wait_ready() for name, s in started.items()})
        urls.procs = started
        yield urls
    finally:
        # SIGINT stops as gracefully as SIGTERM: exit status 0.
        codes = {name: s.stop(signal.SIGINT) for name, s in started.items()}
    assert codes == dict.fromkeys(started, 0), {n: started[n].log() for n in started}


# Without TCP_NODELAY httpx's separate header and body writes wait on delayed ACKs.
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def async_client(**kwargs):
    limits = kwargs.pop("limits", httpx.Limits())
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=NODELAY)
    return httpx.AsyncClient(timeout=120, transport=transport, **kwargs)


@pytest.fixture(scope="module")
def client():
    with httpx.Client(timeout=60, transport=httpx.HTTPTransport(socket_options=NODELAY)) as c:
        yield c


@pytest.fixture(scope="module")
def st_model(model_dirs):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(model_dirs["minilm"]), device="cpu")


@pytest.fixture(scope="module")
def hf_classifiers(model_dirs):
    out = {}
    for key in ("classifier", "reranker"):
        out[key] = (
            transformers.AutoModelForSequenceClassification.from_pretrained(model_dirs[key]).eval(),
            transformers.AutoTokenizer.from_pretrained(model_dirs[key]),
        )
    return out


def assert_close(ours, theirs, atol: float = 2e-5, what: str = "result") -> None:
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    err = np.abs(ours - theirs)
    worst = np.unravel_index(err.argmax(), err.shape) if err.size else ()
    assert err.max(initial=0) <= atol, (
        f"{what}: max abs error {err.max():.3g} at {worst} (ours {ours[worst]}, reference "
        f"{theirs[worst]}); {np.mean(err > atol):.1%} of elements over {atol}"
    )


def post(client, url: str, route: str, body) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(url + route, content=data, headers={"content-type": "application/json"})


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)\n"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


# -- routes against the offline result -----------------------------------------------------

EMBED_TEXTS = [
    "A man is eating food.",
    "A cheetah is running behind its prey.",
    "hi",
    " ".join(["The quick brown fox jumps over the lazy dog."] * 40),  # over 256 tokens
]


def test_embed_matches_sentence_transformers(servers, client, st_model, model_dirs):
    from bertfast.sentence import SentenceEncoder

    url = servers["embed"]
    r = post(client, url, "/embed", {"inputs": EMBED_TEXTS, "truncate": True})
    assert r.status_code == 200, r.text
    expected = st_model.encode(EMBED_TEXTS, convert_to_numpy=True)
    assert_close(r.json(), expected, what="/embed vs sentence-transformers")
    ours = np.asarray(SentenceEncoder.from_pretrained(model_dirs["minilm"]).encode(EMBED_TEXTS))
    assert_close(r.json(), ours, what="/embed vs SentenceEncoder.encode")
    # A single string is a batch of one; headers count its tokens.
    r = post(client, url, "/embed", {"inputs": "hi"})
    assert r.status_code == 200 and len(r.json()) == 1
    assert_close(r.json()[0], expected[2], what="/embed single")
    assert r.headers["x-compute-tokens"] == "3"  # [CLS] hi [SEP]
    for header in ("x-compute-time", "x-queue-time", "x-inference-time", "x-tokenization-time"):
        assert int(r.headers[header]) >= 0
    # normalize=false: the pooled vectors before the directory's Normalize module.
    st = pytest.importorskip("sentence_transformers")
    pooled_only = st.SentenceTransformer(modules=[st_model[0], st_model[1]], device="cpu")
    r = post(client, url, "/embed", {"inputs": EMBED_TEXTS[:3], "normalize": False})
    assert_close(r.json(), pooled_only.encode(EMBED_TEXTS[:3]), what="normalize=false")


def test_embed_prompt_name(servers, client, st_model):
    texts = ["A man is eating food.", "hi"]
    r = post(client, servers["embed"], "/embed", {"inputs": texts, "prompt_name": "query"})
    assert r.status_code == 200, r.text
    assert_close(r.json(), st_model.encode(texts, prompt="query: "), what="prompt_name")
    r = post(client, servers["embed"], "/embed", {"inputs": texts, "prompt_name": "nope"})
    assert r.status_code == 422 and "['passage', 'query']" in r.json()["error"]


def test_embed_truncation_directions(servers, client, st_model):
    url = servers["embed"]
    long_text = EMBED_TEXTS[3] + " " + "zebra " * 10
    left = post(client, url, "/embed", {"inputs": long_text, "truncate": True,
                                        "truncation_direction": "Left"})  # fmt: skip
    assert left.status_code == 200, left.text
    # Left truncation keeps the end of the text: build its tokens by hand.
    tok = st_model.tokenizer
    ids = tok(long_text)["input_ids"]
    kept = [ids[0], *ids[len(ids) - 255 :]]
    enc = {"input_ids": torch.tensor([kept]), "attention_mask": torch.ones(1, len(kept))}
    with torch.no_grad():
        out = st_model({**enc, "token_type_ids": torch.zeros(1, len(kept), dtype=torch.long)})
    assert_close(left.json()[0], out["sentence_embedding"][0], what="left truncation")


def test_embed_all_matches_transformers(servers, client, model_dirs):
    texts = ["A man is eating food.", "hi there"]
    r = post(client, servers["embed"], "/embed_all", {"inputs": texts})
    assert r.status_code == 200, r.text
    hf = transformers.AutoModel.from_pretrained(model_dirs["minilm"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dirs["minilm"])
    for text, tokens in zip(texts, r.json()):
        with torch.no_grad():
            expected = hf(**tok(text, return_tensors="pt")).last_hidden_state[0]
        assert_close(tokens, expected, atol=5e-5, what=f"/embed_all {text!r}")


def test_openai_embeddings_float_and_base64(servers, client, st_model):
    url = servers["embed"]
    texts = ["A man is eating food.", "hi"]
    r = post(client, url, "/v1/embeddings", {"input": texts, "model": "minilm"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "minilm"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    expected = st_model.encode(texts)
    assert_close([d["embedding"] for d in body["data"]], expected, what="/v1/embeddings")
    n_tokens = sum(len(st_model.tokenizer(t)["input_ids"]) for t in texts)
    assert body["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    r = post(client, url, "/v1/embeddings", {"input": texts[0], "encoding_format": "base64"})
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert_close(np.frombuffer(raw, dtype="<f4"), expected[0], what="base64")


def test_rerank_embedding_model_by_cosine(servers, client, st_model):
    query, texts = "a cat on a mat", ["a dog sat on the mat", "money in the bank", "a cat"]
    r = post(client, servers["embed"], "/rerank", {"query": query, "texts": texts,
                                                   "return_text": True})  # fmt: skip
    assert r.status_code == 200, r.text
    vectors = st_model.encode([query, *texts])
    cosine = vectors[1:] @ vectors[0]
    ranks = r.json()
    assert [x["index"] for x in ranks] == list(np.argsort(-cosine))
    for x in ranks:
        assert x["text"] == texts[x["index"]]
        assert abs(x["score"] - cosine[x["index"]]) < 2e-5


def test_tokenize_with_offsets_and_decode(servers, client, model_dirs):
    url = servers["embed"]
    tok = transformers.AutoTokenizer.from_pretrained(model_dirs["minilm"])
    texts = ["Hello, world!", "Unaffable tokenizers"]
    r = post(client, url, "/tokenize", {"inputs": texts})
    assert r.status_code == 200, r.text
    for text, tokens in zip(texts, r.json()):
        enc = tok(text, return_offsets_mapping=True)
        assert [t["id"] for t in tokens] == enc["input_ids"]
        assert tokens[0] == {"id": tok.cls_token_id, "text": "[CLS]", "special": True,
                             "start": None, "stop": None}  # fmt: skip
        for t, (start, stop) in zip(tokens[1:-1], enc["offset_mapping"][1:-1]):
            assert (t["start"], t["stop"], t["special"]) == (start, stop, False)
            assert t["text"] == text[start:stop]
    r = post(client, url, "/tokenize", {"inputs": "Hello", "add_special_tokens": False})
    assert [t["id"] for t in r.json()[0]] == tok("Hello", add_special_tokens=False)["input_ids"]
    ids = tok(texts)["input_ids"]
    r = post(client, url, "/decode", {"ids": ids})
    assert r.json() == [tok.decode(i, skip_special_tokens=True) for i in ids]
    r = post(client, url, "/decode", {"ids": ids[0], "skip_special_tokens": False})
    assert r.json() == [tok.decode(ids[0], skip_special_tokens=False)]


def hf_logits(hf, texts) -> np.ndarray:
    model, tok = hf
    rows = []
    for t in texts:
        enc = tok(*t) if isinstance(t, tuple) else tok(t)
        with torch.no_grad():
            rows.append(model(**{k: torch.tensor([v]) for k, v in enc.items()}).logits[0])
    return torch.stack(rows).double().numpy()


def test_predict_singles_pairs_and_raw_scores(servers, client, hf_classifiers):
    url = servers["classifier"]
    hf = hf_classifiers["classifier"]
    inputs = [["a cat sat on the mat"], ["the dog is happy", "the dog is sad"], ["red"]]
    r = post(client, url, "/predict", {"inputs": inputs})
    assert r.status_code == 200, r.text
    logits = hf_logits(hf, ["a cat sat on the mat", ("the dog is happy", "the dog is sad"), "red"])
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for answer, p in zip(r.json(), probs):
        assert [a["label"] for a in answer] == [LABELS[i] for i in np.argsort(-p)]
        assert_close([a["score"] for a in answer], np.sort(p)[::-1], what="/predict")
    # A single pair, and raw scores (logits).
    r = post(client, url, "/predict", {"inputs": ["the dog is happy", "the dog is sad"],
                                       "raw_scores": True})  # fmt: skip
    answer = r.json()
    assert isinstance(answer[0], dict)
    by_label = {a["label"]: a["score"] for a in answer}
    assert_close([by_label[LABELS[i]] for i in range(3)], logits[1], what="raw_scores")
    r = post(client, url, "/predict", {"inputs": "red"})
    assert_close([a["score"] for a in r.json()], np.sort(probs[2])[::-1], what="single")


def test_rerank_cross_encoder(servers, client, hf_classifiers):
    url = servers["reranker"]
    query, texts = "the river bank", ["money in the bank", "a fish in the river", "green tree"]
    logits = hf_logits(hf_classifiers["reranker"], [(query, t) for t in texts])[:, 0]
    r = post(client, url, "/rerank", {"query": query, "texts": texts})
    assert r.status_code == 200, r.text
    ranks = r.json()
    assert [x["index"] for x in ranks] == list(np.argsort(-logits))
    assert "text" not in ranks[0]
    assert_close([x["score"] for x in ranks], 1 / (1 + np.exp(-np.sort(logits)[::-1])))
    r = post(client, url, "/rerank", {"query": query, "texts": texts, "raw_scores": True})
    assert_close([x["score"] for x in r.json()], np.sort(logits)[::-1], what="raw")
    # A cross-encoder pair over the limit is cut longest-first, as transformers does.
    long_text = random_text(random.Random(0), 120)  # both texts over half the limit
    model, tok = hf_classifiers["reranker"]
    for side in ("right", "left"):
        r = post(client, url, "/rerank", {"query": long_text[:200], "texts": [long_text],
                                          "truncate": True, "truncation_direction": side})  # fmt: skip
        tok.truncation_side = side
        enc = tok(long_text[:200], long_text, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            expected = torch.sigmoid(model(**enc).logits[0, 0]).item()
        assert abs(r.json()[0]["score"] - expected) < 2e-5, side
    tok.truncation_side = "right"


def test_health_and_info(servers, client):
    assert client.get(servers["embed"] + "/health").status_code == 200
    info = client.get(servers["embed"] + "/info").json()
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 256
    assert (info["max_concurrent_requests"], info["max_client_batch_size"]) == (512, 32)
    assert (info["max_batch_tokens"], info["payload_limit"]) == (16384, 2_000_000)
    assert (info["timeout_body"], info["timeout_graceful_shutdown"]) == (30, 20)
    assert (info["timeout_keep_alive"], info["max_connections"]) == (5, 1000)
    info = client.get(servers["classifier"] + "/info").json()
    assert info["model_type"]["classifier"]["id2label"] == {str(k): v for k, v in LABELS.items()}
    assert "reranker" in client.get(servers["reranker"] + "/info").json()["model_type"]


# -- errors ---------------------------------------------------------------------------------

ERRORS = [
    ("embed", "/embed", b'{"inputs": ', 422, "Validation", "malformed JSON"),
    ("embed", "/embed", [1, 2], 422, "Validation", "JSON object"),
    ("embed", "/embed", {"inputs": 5}, 422, "Validation", "got int"),
    ("embed", "/embed", {"inputs": ["a", 3]}, 422, "Validation", "at index 1"),
    ("embed", "/embed", {"inputs": "a", "normalize": "yes"}, 422, "Validation", "boolean"),
    ("embed", "/embed", {"inputs": "a", "truncation_direction": "up"}, 422, "Validation", "left"),
    ("embed", "/embed", {"inputs": []}, 400, "Empty", "cannot be empty"),
    ("embed", "/embed", {"inputs": ["a"] * 33}, 422, "Validation", "batch size 33 > maximum"),
    ("embed", "/embed", {"inputs": EMBED_TEXTS[3]}, 413, "Validation", "has 402 tokens"),
    (
        "embed",
        "/v1/embeddings",
        {"input": "a", "encoding_format": "hex"},
        422,
        "Validation",
        "base64",
    ),
    (
        "embed",
        "/v1/embeddings",
        {"input": "a", "encoding_format": ""},
        422,
        "Validation",
        "must be 'float' or 'base64', got ''",
    ),
    (
        "embed",
        "/v1/embeddings",
        {"input": "a", "model": "\ud800"},
        422,
        "Validation",
        "`model` holds a lone surrogate",
    ),  # fmt: skip
    (
        "embed",
        "/tokenize",
        {"inputs": ["a", "\ud800"]},
        422,
        "Validation",
        "`inputs[1]` holds a lone surrogate",
    ),  # fmt: skip
    (
        "embed",
        "/embed",
        {"inputs": "a", "x": {"\udfff": 1}},
        422,
        "Validation",
        "a key of x",
    ),  # fmt: skip
    ("embed", "/embed", b"[" * 100_000, 422, "Validation", "nested too deeply"),
    ("embed", "/tokenize", {"inputs": EMBED_TEXTS[3]}, 413, "Validation", "has 402 tokens"),
    ("embed", "/tokenize", {"inputs": ["a"] * 33}, 422, "Validation", "batch size 33 > maximum"),
    ("embed", "/predict", {"inputs": "a"}, 424, "Backend", "of kind classifier"),
    ("embed", "/decode", {"ids": [1, "x"]}, 422, "Validation", "integer"),
    ("embed", "/rerank", {"query": "a", "texts": []}, 400, "Empty", "cannot be empty"),
    ("classifier", "/embed", {"inputs": "a"}, 424, "Backend", "of kind embedding"),
    ("classifier", "/rerank", {"query": "a", "texts": ["b"]}, 424, "Backend", "3 labels"),
    ("classifier", "/predict", {"inputs": ["a", "b", "c"]}, 422, "Validation", "pair"),
    ("classifier", "/predict", {"inputs": [["a"], []]}, 422, "Validation", "at index 1"),
    (
        "reranker",
        "/rerank",
        {"query": "a", "texts": [random_text(random.Random(1), 80)]},
        413,
        "Validation",
        "at most 64 tokens",
    ),  # fmt: skip
]


@pytest.mark.parametrize("server,route,body,status,error_type,message", ERRORS)
def test_errors(servers, client, server, route, body, status, error_type, message):
    r = post(client, servers[server], route, body)
    assert r.status_code == status, r.text
    answer = r.json()
    if route.startswith("/v1/"):  # OpenAI's shape
        error = answer["error"]
        assert set(answer) == {"error"} and set(error) == {"message", "type", "param", "code"}
        assert error["code"] == error_type.lower() and error["type"] == "invalid_request_error"
        assert message in error["message"], error["message"]
    else:
        assert set(answer) == {"error", "error_type"}
        assert answer["error_type"] == error_type
        assert message in answer["error"], answer["error"]


def test_bad_unicode_is_a_json_4xx_counted_as_a_failure(servers, client):
    # Before: the echoed model name could not be encoded: a plain-text 500 counted a success.
    url = servers["embed"]
    before = client.get(url + "/metrics").text
    r = post(client, url, "/v1/embeddings", {"input": "a", "model": "\ud800"})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    after = client.get(url + "/metrics").text
    success = ("te_request_success", 'method="single"')
    failure = ("te_request_failure", 'err="validation"')
    assert metric(after, *success) == metric(before, *success)
    assert metric(after, *failure) == metric(before, *failure) + 1


def test_a_body_that_is_not_utf8_is_a_json_422(servers, client):
    """JSON in UTF-16 or UTF-32 (which json.loads would take) is refused: in those the
    surrogate check could not see the escapes, and the echoed model name was a plain-text 500."""
    url = servers["embed"]
    text = json.dumps({"input": "a", "model": "\ud800"}, ensure_ascii=False)
    for encoding in ("utf-16", "utf-32"):
        raw = text.encode(encoding, "surrogatepass")
        headers = {"content-type": "application/json"}
        r = client.post(url + "/v1/embeddings", content=raw, headers=headers)
        assert r.status_code == 422 and r.headers["content-type"] == "application/json", r.text
        assert "not UTF-8" in r.json()["error"]["message"]
    # A byte-order mark before UTF-8 JSON is allowed (RFC 8259 lets a parser ignore it).
    r = client.post(url + "/embed", content=b"\xef\xbb\xbf" + b'{"inputs": "a"}', headers=headers)
    assert r.status_code == 200, r.text


def test_tokenize_has_the_input_limits_of_embed(servers, client, model_dirs):
    url = servers["embed"]
    tok = transformers.AutoTokenizer.from_pretrained(model_dirs["minilm"])
    text = EMBED_TEXTS[3]  # 402 tokens; the model takes 256
    for side in ("right", "left"):
        r = post(client, url, "/tokenize", {"inputs": text, "truncate": True,
                                            "truncation_direction": side})  # fmt: skip
        assert r.status_code == 200, r.text
        tok.truncation_side = side
        enc = tok(text, truncation=True, max_length=256, return_offsets_mapping=True)
        tokens = r.json()[0]
        assert [t["id"] for t in tokens] == enc["input_ids"], side
        for t, (start, stop) in zip(tokens[1:-1], enc["offset_mapping"][1:-1]):
            assert (t["start"], t["stop"], t["text"]) == (start, stop, text[start:stop])
        # Without special tokens the limit leaves room for them: 254.
        r = post(client, url, "/tokenize", {"inputs": text, "truncate": True,
                                            "add_special_tokens": False,
                                            "truncation_direction": side})  # fmt: skip
        expected = tok(text, add_special_tokens=False, truncation=True, max_length=254)
        assert [t["id"] for t in r.json()[0]] == expected["input_ids"], side
    tok.truncation_side = "right"
    r = post(client, url, "/tokenize", {"inputs": text, "add_special_tokens": False})
    assert r.status_code == 413 and "has 402 tokens" in r.json()["error"]


def test_payload_limit_and_unknown_route(servers, client):
    url = servers["embed"]
    big = json.dumps({"inputs": "x" * 2_000_100})
    r = post(client, url, "/embed", big)
    assert r.status_code == 413 and r.json()["error_type"] == "Validation"
    assert "over the limit of 2000000 bytes" in r.json()["error"]
    r = client.get(url + "/nowhere")
    assert r.status_code == 404 and "routes:" in r.json()["error"]


def wait_for_line(server: Server, pattern: str) -> str:
    """The first output line matching ``pattern`` (access lines follow the answer closely)."""
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in list(server.lines):
            if re.search(pattern, line):
                return line
        time.sleep(0.05)
    pytest.fail(f"no line matching {pattern!r}:\n" + server.log())


def raw_partial_request(url: str, route: str, body: bytes) -> tuple[socket.socket, bytes]:
    """Send a POST's headers and all but the last byte of its body; return the socket and
    the missing byte (the server waits for it, up to --timeout-body)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = (
        f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:-1])
    return sock, body[-1:]


def finish_raw(sock: socket.socket, rest: bytes) -> tuple[int, object]:
    sock.sendall(rest)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def wait_for_in_flight(
    client, url: str, count: int, exactly: bool = False, gauge: str = "bertfast_requests_in_flight"
) -> None:
    """Poll /metrics until at least (or exactly) ``count`` inference requests are in flight
    (or, with ``gauge="bertfast_requests_reading"``, have their body arriving)."""
    deadline = time.monotonic() + 30
    while True:
        now = metric(client.get(url + "/metrics").text, gauge)
        if now == count or (now > count and not exactly):
            return
        assert time.monotonic() < deadline, f"never saw {count} requests in flight (now {now})"
        time.sleep(0.02)


def test_model_failure_is_424_for_that_input_only(servers, client, hf_classifiers):
    url = servers["classifier"]
    wait_for_in_flight(client, url, 0, exactly=True)  # the limit of 2 is all ours
    good = ["a dog sat on the mat"]  # with the bad one: the server's limit of 2 in flight

    async def go():
        async with async_client() as ac:
            bodies = [{"inputs": "poison the cat"}, *({"inputs": t} for t in good)]
            return await asyncio.gather(*(ac.post(url + "/predict", json=b) for b in bodies))

    bad, *fine = asyncio.run(go())
    assert bad.status_code == 424, bad.text
    assert bad.json()["error_type"] == "Backend" and "vocab_size" in bad.json()["error"]
    probs = torch.softmax(torch.tensor(hf_logits(hf_classifiers["classifier"], good)), -1)
    for r, p in zip(fine, probs):
        assert r.status_code == 200, r.text
        assert_close(max(a["score"] for a in r.json()), p.max(), what="healthy input")
    assert client.get(url + "/health").status_code == 200
    r = post(client, url, "/predict", {"inputs": [["the cat"], ["poison"]]})
    assert r.status_code == 424  # a request fails whole when one of its inputs fails


# The series TEI's router and inference core expose (text-embeddings-inference router/src and
# core/src), as a classifier server fills them in.
TEI_SERIES = [
    'te_request_count{method="batch"}',
    'te_request_count{method="single"}',
    'te_request_success{method="batch"}',
    'te_request_failure{err="batch_size"}',
    'te_request_failure{err="model_type"}',
    'te_request_failure{err="validation"}',
    "te_request_duration_count",
    "te_request_tokenization_duration_count",
    "te_request_queue_duration_count",
    "te_request_inference_duration_count",
    "te_request_input_length_count",
    "te_predict_count",
    "te_predict_success",
    "te_predict_duration_count",
    "te_predict_tokenization_duration_count",
    "te_predict_queue_duration_count",
    "te_predict_inference_duration_count",
    "te_batch_next_size_count",
    "te_batch_next_tokens_count",
    "te_queue_size",
]


def test_metrics_under_tei_names(servers, client):
    url = servers["classifier"]
    before = client.get(url + "/metrics").text
    client.post(url + "/predict", json={"inputs": [["a cat"], ["a dog", "a cat"]]})
    client.post(url + "/predict", json={"inputs": "a"})
    client.post(url + "/predict", json={"inputs": [["a"]] * 33})  # batch_size
    client.post(url + "/embed", json={"inputs": "a"})  # model_type
    client.post(url + "/embed", content=b"{")  # validation
    text = client.get(url + "/metrics").text
    for series in TEI_SERIES:
        assert re.search(rf"^{re.escape(series)} ", text, re.M), f"{series} missing"
    # TEI's exporter: no _total suffix, no _created series.
    assert not re.search(r"_total[{ ]|_created[{ ]", text)
    for name in ("te_predict_count", "te_predict_success"):
        assert metric(text, name) - metric(before, name) == 3  # inputs: 2 + 1
    assert metric(text, "te_request_failure", 'err="batch_size"') >= 1


def test_access_logs_in_tei_style(servers, client):
    texts = ["a", "b", "c", "d", "e"]  # five: no other /rerank request of this module has
    r = post(client, servers["reranker"], "/rerank", {"query": "a cat", "texts": texts})
    assert r.status_code == 200
    line = wait_for_line(
        servers.procs["reranker"], r"bertfast\.serve\.access: POST /rerank 200 .* inputs=5 "
    )
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z  INFO ", line), line
    assert re.search(r'total_time="[\d.]+ms" inputs=5 tokens=\d+ tokenization_time="[\d.]+ms" '
                     r'queue_time="[\d.]+ms" inference_time="[\d.]+ms"', line), line  # fmt: skip


def test_every_route_in_the_spec_answers_as_documented_on_a_cross_encoder(servers):
    pytest.importorskip("schemathesis")
    from tests.test_serve_api import check_spec_routes

    not_served = {"/embed", "/embed_all", "/similarity", "/v1/embeddings"}
    check_spec_routes(servers["reranker"], {}, not_served)


# -- load -------------------------------------------------------------------------------------


def test_200_concurrent_mixed_requests_each_get_their_own_answer(servers, client, st_model):
    url = servers["embed"]
    rng = random.Random(0)
    requests = []
    for i in range(200):
        n_inputs = rng.choice((1, 1, 1, 1, 2, 3))
        # Every text is unique (its index leads), lengths from 2 to 40 words.
        texts = [
            f"request {i} input {k}: " + random_text(rng, rng.choice((2, 5, 10, 20, 40)))
            for k in range(n_inputs)
        ]
        requests.append(texts)
    before = client.get(url + "/metrics").text

    async def go():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with async_client(limits=limits) as ac:
            return await asyncio.gather(
                *(ac.post(url + "/embed", json={"inputs": t, "truncate": True}) for t in requests)
            )

    responses = asyncio.run(go())
    flat = [t for texts in requests for t in texts]
    expected = st_model.encode(flat, batch_size=64)
    row = 0
    for texts, r in zip(requests, responses):
        assert r.status_code == 200, r.text
        assert_close(r.json(), expected[row : row + len(texts)], what=f"request {texts[0][:20]}")
        row += len(texts)
    after = client.get(url + "/metrics").text
    label = 'method="batch"'  # every request sent a list
    for name in ("te_request_count", "te_request_success"):
        assert metric(after, name, label) - metric(before, name, label) == 200
    for name in ("te_embed_count", "te_embed_success"):  # per input
        assert metric(after, name) - metric(before, name) == len(flat)
    assert (
        metric(after, "te_request_duration_count") - metric(before, "te_request_duration_count")
        == 200
    )
    # Every input went through exactly one forward, and they were batched together.
    inputs = metric(after, "te_batch_next_size_sum") - metric(before, "te_batch_next_size_sum")
    forwards = metric(after, "te_batch_next_size_count") - metric(
        before, "te_batch_next_size_count"
    )
    assert inputs == len(flat)
    assert forwards < len(flat)
    assert metric(after, "te_queue_size") == 0


def test_shutdown_under_load_loses_nothing(model_dirs):
    server = Server(["--model", str(model_dirs["embedder"])])
    url = server.wait_ready()
    hf = transformers.AutoModel.from_pretrained(model_dirs["embedder"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dirs["embedder"])

    def expected(text: str) -> np.ndarray:
        with torch.no_grad():
            hidden = hf(**tok(text, return_tensors="pt")).last_hidden_state[0]
        return torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy()

    rng = random.Random(1)
    held_texts = [random_text(rng, 5 + i) for i in range(3)]
    load_texts = [random_text(rng, rng.randint(1, 40)) for _ in range(60)]
    with httpx.Client(timeout=60, transport=httpx.HTTPTransport(socket_options=NODELAY)) as c:
        held = [
            raw_partial_request(url, "/embed", json.dumps({"inputs": t}).encode())
            for t in held_texts
        ]
        wait_for_in_flight(c, url, len(held), gauge="bertfast_requests_reading")

    async def load_then_stop():
        async with async_client() as ac:
            tasks = [asyncio.ensure_future(ac.post(url + "/embed", json={"inputs": t}))
                     for t in load_texts]  # fmt: skip
            # Stop once the server is busy: some answered, the rest in flight or not sent yet.
            for done, _ in enumerate(asyncio.as_completed(tasks)):
                await _
                if done == 9:
                    break
            server.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(load_then_stop())
    # Requests already accepted are answered in full, after the signal.
    answered = 0
    for (sock, rest), text in zip(held, held_texts):
        status, answer = finish_raw(sock, rest)
        assert status == 200
        assert_close(answer[0], expected(text), atol=1e-5, what="held request")
        answered += 1
    for text, r in zip(load_texts, results):
        if isinstance(r, Exception):  # refused: never accepted (the listener had closed)
            assert isinstance(r, httpx.TransportError), repr(r)
            continue
        assert r.status_code == 200, r.text
        assert_close(r.json()[0], expected(text), atol=1e-5, what="request under load")
        answered += 1
    assert server.proc.wait(60) == 0, server.log()
    time.sleep(0.1)  # the reader thread takes the last line
    stopped = [line for line in server.lines if line.startswith(STOPPED)]
    # Every request the server answered reached its client: nothing was lost on the way out.
    assert stopped == [f"{STOPPED} {answered} inference requests answered"], server.log()
    with pytest.raises(httpx.TransportError):
        httpx.post(url + "/embed", json={"inputs": "late"}, timeout=5)


# -- the batcher alone, on a fake backend ---------------------------------------------------


class RecordingBackend:
    """Answers each sequence with its own ids; fails any forward holding id 13."""

    padding_free = False

    def warmup(self):
        pass

    def __init__(self):
        self.forwards: list[list[int]] = []

    def run(self, seqs):
        self.forwards.append([len(s.ids) for s in seqs])
        if any(13 in s.ids for s in seqs):
            raise ValueError("id 13 is out of range")
        return [list(s.ids) for s in seqs]


@pytest.mark.parametrize("padding_free", [False, True])
def test_batcher_budgets_order_and_failure_isolation(padding_free):
    from bertfast.serve.backend import Sequence
    from bertfast.serve.batcher import PADDED_PER_REAL, Batcher
    from bertfast.serve.errors import ServeError

    backend = RecordingBackend()
    backend.padding_free = padding_free
    rng = random.Random(0)
    lengths = [rng.randint(1, 40) for _ in range(60)]
    seqs = [Sequence("embed", [100 + i] * n, [0] * n) for i, n in enumerate(lengths)]
    seqs[7] = Sequence("embed", [13, 13], [0, 0])

    async def go():
        batcher = Batcher(backend, max_batch_tokens=64, max_batch_requests=5, max_queue=100)
        await batcher.start()
        items = [batcher.submit([s])[0] for s in seqs]  # all queued before the first forward
        results = await asyncio.gather(*(it.future for it in items), return_exceptions=True)
        await batcher.stop()
        return results

    results = asyncio.run(go())
    for i, (seq, result) in enumerate(zip(seqs, results)):
        if i == 7:
            assert isinstance(result, ServeError) and result.status == 424
            assert "id 13 is out of range" in result.message
        else:
            assert result == seq.ids, f"input {i} got another input's answer"
    for lengths in backend.forwards:
        assert len(lengths) <= 5
        assert lengths == sorted(lengths)
        cost = sum(lengths) if padding_free else len(lengths) * max(lengths)
        assert cost <= 64 or len(lengths) == 1
        if not padding_free and len(lengths) > 1:  # little padding in a padded forward
            assert len(lengths) * max(lengths) <= PADDED_PER_REAL * sum(lengths)
    # The failing forward was rerun one input at a time.
    assert sum(lengths == [2] for lengths in backend.forwards) >= 1


def test_batcher_refuses_when_the_queue_is_full():
    from bertfast.serve.backend import Sequence
    from bertfast.serve.batcher import Batcher
    from bertfast.serve.errors import ServeError

    async def go():
        batcher = Batcher(RecordingBackend(), 64, None, max_queue=3)
        batcher.submit([Sequence("embed", [1], [0])] * 3)
        with pytest.raises(ServeError) as info:
            batcher.submit([Sequence("embed", [1], [0])])
        assert info.value.status == 429 and "at most 3" in info.value.message

    asyncio.run(go())


def test_cli_errors_name_the_problem(capsys, tmp_path):
    from bertfast.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert f"cannot bind {HOST}:{port}" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--max-batch-tokens", "0"]) == 2
    assert "max_batch_tokens must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--timeout-body", "0"]) == 2
    assert "timeout_body must be a positive number of seconds" in capsys.readouterr().err
    # An empty key (--api-key "$KEY" with KEY unset) is refused, not taken as "no key".
    assert main(["serve", "--port", "0", "--api-key", ""]) == 2
    assert "api_key must be non-empty" in capsys.readouterr().err
