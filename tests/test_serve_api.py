"""bertfast serve as OpenAI-client and TEI users meet it: the official ``openai`` client, the
OpenAPI document (every route answers as it says; schemathesis fuzzing finds no 5xx), the API
key, access logs, and /metrics under TEI's names.

One server starts once for the module: a tiny random embedding model behind an API key
(given in the environment), with two served names and JSON logs (the cross-encoder's spec,
the text access logs and /metrics are checked in tests/test_serve.py). Vectors are checked
against transformers and sentence-transformers run here. All traffic goes to 127.0.0.1,
bounded in count and time.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
schemathesis = pytest.importorskip("schemathesis")
transformers = pytest.importorskip("transformers")
from hypothesis import HealthCheck, settings  # noqa: E402

from tests.test_serve import (  # noqa: E402
    NODELAY,
    Server,
    assert_close,
    tiny_checkpoint,
    wait_for_line,
    write_vocab,
)

API_KEY = "test-key-7f3a9c"  # given through API_KEY; must never appear in the server's output
AUTH = {"Authorization": f"Bearer {API_KEY}"}
NAMES = ["tiny-embedder", "tiny"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_api")
    vocab = write_vocab(root / "vocab.txt")
    return {
        "embedder": tiny_checkpoint(root / "embedder", vocab, "BertModel", seed=3),
    }


@pytest.fixture(scope="module")
def servers(model_dirs):
    started = {
        "embed": Server(
            [
                "--model",
                str(model_dirs["embedder"]),
                "--log-format",
                "json",
                "--max-client-batch-size",
                "8",
                "--served-model-name",
                *NAMES,
            ],
            env={"API_KEY": API_KEY},
        ),  # fmt: skip
    }
    try:
        yield {name: s.wait_ready() for name, s in started.items()}, started
    finally:
        codes = {name: s.stop() for name, s in started.items()}
    assert codes == dict.fromkeys(started, 0), {n: started[n].log() for n in started}


@pytest.fixture(scope="module")
def urls(servers):
    return servers[0]


@pytest.fixture(scope="module")
def client(urls):
    with httpx.Client(timeout=60, transport=httpx.HTTPTransport(socket_options=NODELAY)) as c:
        yield c


@pytest.fixture(scope="module")
def oai(urls):
    return openai.OpenAI(base_url=urls["embed"] + "/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def reference(model_dirs):
    """The tiny embedder as transformers computes it: mean pooling, unit length."""
    hf = transformers.AutoModel.from_pretrained(model_dirs["embedder"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dirs["embedder"])

    def embed(texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            with torch.no_grad():
                hidden = hf(**tok(text, return_tensors="pt")).last_hidden_state[0]
            rows.append(torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy())
        return np.stack(rows)

    embed.tokenizer = tok
    return embed


TEXTS = ["a cat sat on the mat", "money in the bank", "the dog is happy"]


# -- the openai client -----------------------------------------------------------------------


def test_openai_client_embeddings(oai, reference):
    expected = reference(TEXTS)
    # The client asks for base64 unless told otherwise, and decodes it.
    r = oai.embeddings.create(model="tiny", input=TEXTS)
    assert r.model == "tiny" and [d.index for d in r.data] == [0, 1, 2]
    assert_close([d.embedding for d in r.data], expected, atol=1e-5, what="openai base64")
    r = oai.embeddings.create(model="tiny-embedder", input=TEXTS[0], encoding_format="float")
    assert_close(r.data[0].embedding, expected[0], atol=1e-5, what="openai float")
    n_tokens = len(reference.tokenizer(TEXTS[0])["input_ids"])
    assert (r.usage.prompt_tokens, r.usage.total_tokens) == (n_tokens, n_tokens)


def test_openai_token_id_inputs_equal_their_text(oai, reference):
    ids = [reference.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    expected = reference(TEXTS)
    r = oai.embeddings.create(model="tiny", input=ids, encoding_format="float")
    assert_close([d.embedding for d in r.data], expected, atol=1e-5, what="lists of ids")
    r = oai.embeddings.create(model="tiny", input=ids[1], encoding_format="float")
    assert_close(r.data[0].embedding, expected[1], atol=1e-5, what="one list of ids")
    with pytest.raises(openai.UnprocessableEntityError) as info:
        oai.embeddings.create(model="tiny", input=[[1, 10_000]])
    assert info.value.param == "input" and "integer in [0, " in info.value.message


def test_openai_dimensions_as_sentence_transformers_truncate_dim(oai, model_dirs):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(model_dirs["embedder"]), device="cpu")
    expected = model.encode(TEXTS, truncate_dim=8, normalize_embeddings=True)
    r = oai.embeddings.create(model="tiny", input=TEXTS, dimensions=8, encoding_format="float")
    assert_close([d.embedding for d in r.data], expected, atol=1e-5, what="dimensions=8")
    with pytest.raises(openai.UnprocessableEntityError) as info:
        oai.embeddings.create(model="tiny", input="a", dimensions=33)
    assert info.value.param == "dimensions"
    assert "from 1 to 32 (this model's width), got 33" in info.value.message


def test_openai_errors_in_openai_shape(oai, urls, client):
    # The message reaches the user (before: only "Error code: 422").
    with pytest.raises(openai.UnprocessableEntityError) as info:
        oai.embeddings.create(model="tiny", input="a", encoding_format="hex")  # type: ignore[arg-type]
    err = info.value
    assert "must be 'float' or 'base64', got 'hex'" in str(err)
    assert (err.type, err.param, err.code) == ("invalid_request_error", "encoding_format",
                                              "validation")  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="`input` cannot be empty"):
        oai.embeddings.create(model="tiny", input=[])
    body = client.post(urls["embed"] + "/v1/embeddings", content=b"{", headers=AUTH).json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    # TEI's routes keep TEI's shape.
    body = client.post(urls["embed"] + "/embed", content=b"{", headers=AUTH).json()
    assert set(body) == {"error", "error_type"}


def test_openai_models_and_the_model_check(oai):
    assert [m.id for m in oai.models.list()] == NAMES
    card = oai.models.retrieve("tiny")
    assert (card.id, card.object, card.owned_by) == ("tiny", "model", "bertfast")
    with pytest.raises(openai.NotFoundError) as info:
        oai.models.retrieve("gpt-4")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        oai.embeddings.create(model="text-embedding-3-small", input="a")
    assert info.value.code == "model_not_found" and info.value.param == "model"
    assert "serves: tiny-embedder, tiny" in info.value.message


# -- TEI routes -------------------------------------------------------------------------------


def test_similarity_as_tei(urls, client, reference):
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}}
    r = client.post(urls["embed"] + "/similarity", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    vectors = reference(TEXTS)
    assert_close(r.json(), vectors[1:] @ vectors[0], atol=1e-5, what="/similarity")
    body["inputs"]["sentences"] = ["a"] * 8  # with the source: 9 > --max-client-batch-size 8
    r = client.post(urls["embed"] + "/similarity", json=body, headers=AUTH)
    assert r.status_code == 422 and "batch size 9 > maximum allowed batch size 8" in r.text


def test_api_key(urls, client, servers):
    url = urls["embed"]
    assert client.get(url + "/health").status_code == 200  # a probe needs no key
    for method, route in [("GET", "/info"), ("GET", "/metrics"), ("GET", "/openapi.json"),
                          ("GET", "/docs"), ("GET", "/v1/models"), ("POST", "/embed")]:  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            r = client.request(method, url + route, json={"inputs": "a"}, headers=headers)
            assert r.status_code == 401, (route, headers)
            assert r.headers["www-authenticate"] == "Bearer"
            if route.startswith("/v1/"):
                assert r.json()["error"]["code"] == "invalid_api_key"
            else:
                assert r.json()["error_type"] == "Unauthorized"
        assert client.request(method, url + route, json={"inputs": "a"}, headers=AUTH).is_success
    bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.embeddings.create(model="tiny", input="a")
    assert info.value.code == "invalid_api_key"
    log = "\n".join(servers[1]["embed"].lines)
    assert API_KEY not in log and "wrong" not in log


# -- logs and metrics -------------------------------------------------------------------------


def test_access_logs_in_json(urls, client, servers):
    client.post(urls["embed"] + "/embed", json={"inputs": ["a", "b", "c"]}, headers=AUTH)
    server = servers[1]["embed"]
    wait_for_line(server, r'"route": "/embed", "status": 200, .*"inputs": 3')
    entries = [json.loads(line) for line in server.lines]  # every line is JSON
    entry = [e for e in entries if e.get("route") == "/embed" and e.get("inputs") == 3][-1]
    assert entry["level"] == "INFO" and entry["target"] == "bertfast.serve.access"
    assert entry["method"] == "POST" and entry["status"] == 200 and entry["tokens"] == 9
    assert entry["total_time_ms"] >= entry["inference_time_ms"] >= 0
    assert any("listening on" in e["message"] for e in entries)


# -- the OpenAPI document ---------------------------------------------------------------------

# One valid request per operation: the spec test fails when a route has none.
EXAMPLES = {
    ("POST", "/embed"): {"body": {"inputs": ["a cat", "a dog"], "dimensions": 4}},
    ("POST", "/embed_all"): {"body": {"inputs": "a cat"}},
    ("POST", "/v1/embeddings"): {"body": {"input": "a cat"}},
    ("POST", "/predict"): {"body": {"inputs": "a cat"}},
    ("POST", "/rerank"): {"body": {"query": "a cat", "texts": ["a dog"], "return_text": True}},
    ("POST", "/similarity"): {"body": {"inputs": {"source_sentence": "a", "sentences": ["b"]}}},
    ("POST", "/tokenize"): {"body": {"inputs": "a cat"}},
    ("POST", "/decode"): {"body": {"ids": [2, 10, 3]}},
    ("GET", "/health"): {},
    ("GET", "/info"): {},
    ("GET", "/metrics"): {},
    ("GET", "/v1/models"): {},
    ("GET", "/v1/models/{model_id}"): {},  # the server's first served name
    ("GET", "/openapi.json"): {},
    ("GET", "/docs"): {},
}
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


def load_schema(url: str, headers: dict[str, str]):
    return schemathesis.openapi.from_url(url + "/openapi.json", headers=headers)


def check_spec_routes(url: str, headers: dict[str, str], not_served: set[str]) -> None:
    """Call every operation of the server's OpenAPI document with its example: each answers
    200 (424 for the routes in ``not_served``), with a documented status, content type and
    body schema."""
    spec = httpx.get(url + "/openapi.json", headers=headers, timeout=60).json()
    operations = {(m.upper(), path) for path, ops in spec["paths"].items() for m in ops}
    assert operations == set(EXAMPLES)
    schema = load_schema(url, headers)
    served = httpx.get(url + "/v1/models", headers=headers, timeout=60).json()["data"][0]["id"]
    for (method, path), example in EXAMPLES.items():
        if path == "/v1/models/{model_id}":
            example = {"path_parameters": {"model_id": served}}
        case = schema[path][method].Case(**example)
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        expected = 424 if path in not_served else 200
        assert response.status_code == expected, (method, path, response.text[:300])


def test_every_route_in_the_spec_answers_as_documented(urls):
    check_spec_routes(urls["embed"], AUTH, not_served={"/predict"})


def test_docs_page_works_offline(urls, client):
    page = client.get(urls["embed"] + "/docs", headers=AUTH)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    spec = client.get(urls["embed"] + "/openapi.json", headers=AUTH).json()
    for path in spec["paths"]:
        assert f"<code>{path}</code>" in page.text
    assert not re.search(r"<script|<link|src=|https?://(?!127\.0\.0\.1)", page.text)


@pytest.fixture(scope="module")
def fuzzed_schema(urls):
    return load_schema(urls["embed"], AUTH)


@pytest.mark.parametrize("operation", list(EXAMPLES), ids=" ".join)
def test_fuzzing_the_spec_finds_no_server_error(fuzzed_schema, operation):
    from hypothesis import given

    method, path = operation

    # Property-based: schemathesis draws requests from the spec (valid and not), each answer
    # must be no 5xx, a documented status and content type, and match its schema.
    @given(case=fuzzed_schema[path][method].as_strategy())
    @settings(
        max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case) -> None:
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    check()
