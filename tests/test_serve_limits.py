"""bertfast serve's limits and timeouts under clients that misbehave: slow bodies, departed
clients, too many connections, shutdown while a client trickles.

The server is the real app on uvicorn, on a free loopback port, run in a thread of this
process with a tiny random embedding model whose forward can be held at a gate, so what is
queued, running or dropped at any moment is known rather than raced. The model loads once for
the module; each test starts its own server with the limits it is about (a fraction of a
second). All traffic goes to 127.0.0.1 and is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import types

import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from tests.test_serve import (  # noqa: E402
    HOST,
    finish_raw,
    metric,
    raw_partial_request,
    tiny_checkpoint,
    write_vocab,
)

WAIT = 30  # seconds any single wait may take before the test fails


def until(condition, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class GatedBackend:
    """Wraps a backend's forward: records each forward's inputs, then waits at a gate."""

    def __init__(self, backend):
        self.backend = backend
        self.gate = threading.Event()
        self.gate.set()
        self.forwards: list[list[tuple[int, ...]]] = []
        self._run = backend.run
        backend.run = self.run

    def run(self, seqs):
        self.forwards.append([tuple(s.ids) for s in seqs])
        assert self.gate.wait(WAIT), "the gate was never opened"
        return self._run(seqs)

    def ran(self) -> set[tuple[int, ...]]:
        return {ids for forward in self.forwards for ids in forward}

    def ids(self, text: str) -> tuple[int, ...]:
        return tuple(self.backend.tokenizer(text)["input_ids"])


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    from bertfast.serve.backend import load_backend

    root = tmp_path_factory.mktemp("serve_limits")
    model = tiny_checkpoint(root / "embedder", write_vocab(root / "vocab.txt"), "BertModel")
    return GatedBackend(load_backend(str(model)))


@contextlib.contextmanager
def running(gated: GatedBackend, **limits):
    """A server on the gated model with ``limits`` over the defaults; yields (url, router,
    server, its thread) and stops it (as a signal would) on the way out. Its warm-up is the
    first recorded forward."""
    from bertfast.serve.app import build_app
    from bertfast.serve.server import bind, build_server
    from bertfast.serve.settings import ServeSettings

    settings = ServeSettings(model="embedder", host=HOST, port=0, **limits)
    settings.check()
    gated.gate.set()
    gated.forwards.clear()
    app = build_app(gated.backend, settings)
    sock = bind(HOST, 0)
    server = build_server(app, settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    until(lambda: server.started or not thread.is_alive(), "the server to start")
    assert server.started
    url = "http://{}:{}".format(*sock.getsockname()[:2])
    try:
        yield url, app.router, server, thread
    finally:
        gated.gate.set()
        server.should_exit = True
        thread.join(WAIT)
        assert not thread.is_alive(), "the server did not stop"


def post_in_thread(url: str, route: str, body: dict) -> dict:
    """Send a request from a thread; the returned dict gets its response (or error)."""
    out: dict = {}

    def go():
        try:
            out["response"] = httpx.post(url + route, json=body, timeout=WAIT)
        except Exception as exc:  # reported by the test that reads it
            out["error"] = exc

    out["thread"] = threading.Thread(target=go, daemon=True)
    out["thread"].start()
    return out


def answer(pending: dict) -> httpx.Response:
    pending["thread"].join(WAIT)
    assert "response" in pending, pending.get("error", "no answer")
    return pending["response"]


def test_429_only_while_inference_slots_are_taken(gated):
    with running(gated, max_concurrent_requests=1) as (url, router, *_):
        gated.gate.clear()
        first = post_in_thread(url, "/embed", {"inputs": "a cat"})
        until(lambda: len(gated.forwards) == 2, "the first request to reach the model")
        r = httpx.post(url + "/embed", json={"inputs": "a dog"}, timeout=WAIT)
        assert r.status_code == 429, r.text
        assert r.json()["error_type"] == "Overloaded" and "at most 1" in r.json()["error"]
        gated.gate.set()
        assert answer(first).status_code == 200
        until(lambda: router.in_flight == 0, "the first request to leave")
        assert httpx.post(url + "/embed", json={"inputs": "a dog"}, timeout=WAIT).status_code == 200


def test_slow_bodies_hold_no_inference_slot(gated):
    # Before: a request held a slot from its headers on, so trickling clients locked
    # everyone out with 429 while /health said 200.
    with running(gated, max_concurrent_requests=1) as (url, router, *_):
        body = json.dumps({"inputs": "the slow one"}).encode()
        slow = [raw_partial_request(url, "/embed", body) for _ in range(3)]
        until(lambda: router.reading == 3, "three bodies in progress")
        metrics = httpx.get(url + "/metrics", timeout=WAIT).text
        assert metric(metrics, "bertfast_requests_reading") == 3
        r = httpx.post(url + "/embed", json={"inputs": "a real client"}, timeout=WAIT)
        assert r.status_code == 200, r.text
        for sock, rest in slow:  # each is still answered once its body is in
            status, vectors = finish_raw(sock, rest)
            assert status == 200 and len(vectors) == 1


def test_a_body_slower_than_the_timeout_is_answered_408(gated):
    with running(gated, timeout_body=0.5) as (url, router, *_):
        body = json.dumps({"inputs": "never finished"}).encode()
        sock, _ = raw_partial_request(url, "/embed", body)
        sock.settimeout(10)  # before: no deadline, the server waited for ever
        data = b""
        while chunk := sock.recv(65536):  # the server answers, then closes
            data += chunk
        sock.close()
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.split()[1] == b"408", data
        assert b"connection: close" in head.lower()
        assert json.loads(payload) == {
            "error": "the request body did not arrive within 0.5 s (--timeout-body)",
            "error_type": "Timeout",
        }
        assert router.reading == 0 and router.in_flight == 0
        assert len(gated.forwards) == 1  # only the warm-up forward ran


def test_shutdown_does_not_wait_for_ever_on_a_trickling_client(gated):
    # The body timeout is long here: the graceful-shutdown period alone must end the wait.
    limits = {"timeout_body": 60.0, "timeout_graceful_shutdown": 1.0}
    with running(gated, **limits) as (url, router, server, thread):
        sock, _ = raw_partial_request(url, "/embed", b'{"inputs": "trickle"}')
        until(lambda: router.reading == 1, "the body to be in progress")
        start = time.monotonic()
        server.should_exit = True  # what SIGTERM does
        thread.join(10)
        assert not thread.is_alive(), "shutdown still waiting on the trickling client"
        assert time.monotonic() - start < 5
        sock.close()


def test_inputs_of_a_departed_client_are_not_computed(gated):
    with running(gated, max_concurrent_requests=4) as (url, router, *_):
        gated.gate.clear()
        first = post_in_thread(url, "/embed", {"inputs": "the cat sat"})
        until(lambda: len(gated.forwards) == 2, "the first request to reach the model")
        departed = ["the dog ran far", "a red bird sang"]
        body = json.dumps({"inputs": departed}).encode()
        sock, rest = raw_partial_request(url, "/embed", body)
        sock.sendall(rest)  # the whole request is in; its inputs queue behind the first
        until(lambda: len(router.batcher._queue) == 2, "the departed client's inputs to queue")
        sock.close()
        until(lambda: router.in_flight == 1, "the departed client's request to be cancelled")
        gated.gate.set()
        assert answer(first).status_code == 200
        r = httpx.post(url + "/embed", json={"inputs": "a green tree"}, timeout=WAIT)
        assert r.status_code == 200
        ran = gated.ran()
        assert gated.ids("the cat sat") in ran and gated.ids("a green tree") in ran
        for text in departed:
            assert gated.ids(text) not in ran, f"{text!r} was computed for a departed client"
        metrics = httpx.get(url + "/metrics", timeout=WAIT).text
        assert metric(metrics, "te_request_failure", 'err="dropped"') == 1


def test_rerank_on_an_idle_server_is_not_refused_by_the_queue_bound(gated):
    # Before: the queue held max_concurrent x max_client_batch inputs (here 2), so a query
    # and two texts (3 inputs) were answered 429 on an idle server.
    limits = {"max_concurrent_requests": 1, "max_client_batch_size": 2}
    with running(gated, **limits) as (url, *_):
        body = {"query": "a cat", "texts": ["a cat sat", "money in the bank"]}
        r = httpx.post(url + "/rerank", json=body, timeout=WAIT)
        assert r.status_code == 200, r.text
        assert sorted(x["index"] for x in r.json()) == [0, 1]


def test_connections_are_bounded_apart_from_inference(gated):
    with running(gated, max_connections=3, max_concurrent_requests=8) as (url, router, *_):
        body = json.dumps({"inputs": "slow"}).encode()
        held = [raw_partial_request(url, "/embed", body) for _ in range(3)]
        until(lambda: router.reading == 3, "three bodies in progress")
        # A fourth connection is one more than max_connections.
        r = httpx.get(url + "/health", timeout=WAIT)
        assert r.status_code == 503, r.text
        for sock, rest in held:
            assert finish_raw(sock, rest)[0] == 200
        until(lambda: len(router.batcher._queue) == 0 and router.in_flight == 0, "idle")
        assert httpx.get(url + "/health", timeout=WAIT).status_code == 200


def test_settings_refuse_timeouts_that_are_not_positive():
    from bertfast.serve.settings import ServeSettings

    for name in ("timeout_body", "timeout_graceful_shutdown", "timeout_keep_alive"):
        with pytest.raises(ValueError, match=f"{name} must be a positive number of seconds"):
            ServeSettings(**{name: 0}).check()
    with pytest.raises(ValueError, match="max_connections must be a positive integer, got 0"):
        ServeSettings(max_connections=0).check()


def test_inputs_of_departed_clients_do_not_fill_the_queue():
    """A queue full of cancelled inputs (clients that went away during a long forward) takes
    a live request instead of answering 429."""
    from bertfast.serve.batcher import Batcher

    async def scenario():
        backend = types.SimpleNamespace(padding_free=True)
        batcher = Batcher(backend, max_batch_tokens=100, max_batch_requests=None, max_queue=4)
        seq = types.SimpleNamespace(length=3)
        for item in batcher.submit([seq] * 4):
            item.future.cancel()
        live = batcher.submit([seq, seq])
        assert len(batcher._queue) == 2 and all(not i.future.done() for i in live)
        with pytest.raises(Exception, match="the queue is full"):
            batcher.submit([seq] * 3)

    asyncio.run(scenario())


def test_vectors_arrive_exactly_and_non_finite_outputs_are_refused(gated):
    """The answer's floats are the backend's, bit for bit (however the JSON is rendered); a
    model whose output holds NaN gets an error naming it, never a vector with null or NaN."""
    from bertfast.serve.backend import EMBED, Sequence

    ids = gated.ids("a finite sentence")
    with running(gated) as (url, _, _, _):
        got = httpx.post(f"{url}/embed", json={"inputs": "a finite sentence"}, timeout=WAIT)
        assert got.status_code == 200, got.text
        expected = gated.backend.run([Sequence(EMBED, list(ids), [0] * len(ids))])
        assert got.json() == expected
        weight = gated.backend.encoder.embeddings.layer_norm.weight
        saved = weight.detach().clone()
        with torch.no_grad():
            weight[0] = float("nan")
        try:
            bad = httpx.post(f"{url}/embed", json={"inputs": "a poisoned sentence"}, timeout=WAIT)
        finally:
            with torch.no_grad():
                weight.copy_(saved)
        assert bad.status_code == 424, bad.text  # not a 200 carrying nulls
        assert "non-finite" in bad.json()["error"], bad.text
