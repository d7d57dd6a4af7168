"""benchmarks/serve_load.py and benchmarks/embed_corpus.py on the CPU with tiny inputs: every
figure comes from interleaved rounds and carries its interval, sample count and noisy mark; the
load average before and after is recorded. serve_load starts its server once for the module
(the script's own start, on a free loopback port, the bundled MiniLM).

Nothing here asserts a timing: the numbers of a shared CPU mean nothing.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from benchmarks import serve_load  # noqa: E402
from bertfast.bench.stats import Interleaved  # noqa: E402

# -- serve_load: the figures from synthetic rounds ------------------------------------------


def _round(ok: int, tokens: int, seconds: float, errors: dict | None = None) -> dict:
    """One answer of ``run_level``: ``ok`` requests of 10 ms each."""
    statuses = {"200": ok, **(errors or {})}
    return {
        "requests": sum(statuses.values()),
        "ok": ok,
        "statuses": statuses,
        "tokens": tokens,
        "seconds": seconds,
        "latencies_s": [0.010] * ok,
    }


def test_level_row_has_intervals_counts_and_the_noisy_mark():
    # The server at 1,000 tokens/s (spread out), the in-process reference steady at 2,000.
    server = [1e-3 * f for f in (0.8, 1.0, 1.3, 0.9, 1.1, 1.6)]
    local = [0.5e-3] * 6
    result = Interleaved({serve_load.SERVER: server, serve_load.IN_PROCESS: local}, 6, 1.0,
                         "time cap", {})  # fmt: skip
    rounds = [_round(10, 100, 0.1), *[_round(10, 100, 0.1) for _ in range(4)],
              _round(9, 90, 0.1, {"503": 1})]  # fmt: skip
    row = serve_load.level_row(4, rounds, result, ci_width=0.05)
    assert (row["concurrency"], row["rounds"], row["stopped"]) == (4, 6, "time cap")
    assert row["samples"] == 6 and row["noisy"] is True  # the server's spread
    assert row["requests"] == 60 and row["ok"] == 59 and row["errors"] == {"503": 1}
    low, high = row["tokens_per_s_ci"]
    assert low <= row["tokens_per_s"] <= high and low < high
    assert row["in_process"]["tokens_per_s"] == pytest.approx(2000.0)
    assert row["in_process"]["noisy"] is False and row["in_process"]["samples"] == 6
    # Server tokens/s over in-process tokens/s, round by round: about a half.
    assert row["vs_in_process"] < 1 and row["vs_in_process_ci"][0] <= row["vs_in_process"]
    assert row["latency_samples"] == 59 and row["p50_ms"] == pytest.approx(10.0)
    assert row["failed"] == {}


def test_level_row_of_a_server_that_answered_nothing():
    result = Interleaved({serve_load.IN_PROCESS: [0.5e-3] * 6}, 6, 1.0, "converged",
                         {serve_load.SERVER: RuntimeError("no request answered")})  # fmt: skip
    row = serve_load.level_row(1, [_round(0, 0, 0.1, {"500": 10})], result, ci_width=0.05)
    assert row["tokens_per_s"] is None and row["noisy"] is True and row["samples"] == 0
    assert row["vs_in_process"] is None
    assert row["failed"] == {"server": "RuntimeError: no request answered"}


def test_latency_row_gives_ratio_and_difference_per_round():
    # Load moves both sides together: the per-round ratio and difference stay put.
    local = [0.004, 0.004, 0.008, 0.004, 0.006, 0.004, 0.004, 0.005]
    server = [t + 0.002 for t in local]
    result = Interleaved({serve_load.SERVER: server, serve_load.IN_PROCESS: local}, 8, 0.1,
                         "converged", {})  # fmt: skip
    row = serve_load.latency_row(result, ci_width=0.05)
    assert row["server"]["samples"] == row["in_process"]["samples"] == 8
    assert row["in_process"]["p50_ms"] == pytest.approx(4.0)
    low, high = row["in_process"]["p50_ci_ms"]
    assert low <= 4.0 <= high
    assert row["difference_ms"]["median"] == pytest.approx(2.0)
    assert row["difference_ms"]["ci"] == pytest.approx([2.0, 2.0])
    assert row["ratio"]["median"] > 1 and row["ratio"]["samples"] == 8


def test_cli_checks_the_interval_flags():
    for argv in (["--ci-width", "0"], ["--time-cap", "-1"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            serve_load.main(argv)
    with pytest.raises(SystemExit):
        serve_load.main(["--url", "http://example.com:8080"])


# -- serve_load: one run against its own server ---------------------------------------------


@pytest.fixture(scope="module")
def serve_run(tmp_path_factory, minilm_dir):
    """One tiny run: two levels of 6 requests, latency rounds, a 2 s cap per measurement."""
    out = tmp_path_factory.mktemp("serve-load")
    argv = ["--model", str(minilm_dir), "--concurrency", "1,2", "--requests", "6",
            "--duration", "20", "--repeats", "6", "--time-cap", "2", "--batch-sizes", "4,8",
            "--num-threads", "1", "--out", str(out)]  # fmt: skip
    assert serve_load.main(argv) == 0
    report = json.loads((out / "serve_load.json").read_text())
    return report, (out / "serve_load.md").read_text()


def test_each_level_carries_its_interval_and_rounds(serve_run):
    report, _ = serve_run
    assert report["ci_width"] == 0.05 and report["time_cap_s"] == 2.0
    assert [row["concurrency"] for row in report["levels"]] == [1, 2]
    assert report["client"] == "raw"  # the lean load generator by default
    for row in report["levels"]:
        assert row["failed"] == {} and row["errors"] == {}
        assert row["client_cpu_ms_per_request"] > 0
        assert row["rounds"] >= 1 and row["samples"] == row["rounds"]
        assert row["ok"] == 6 * row["rounds"] == row["latency_samples"]
        low, high = row["tokens_per_s_ci"]
        assert low <= row["tokens_per_s"] <= high
        assert isinstance(row["noisy"], bool)
        ip = row["in_process"]
        assert ip["samples"] == row["rounds"] and isinstance(ip["noisy"], bool)
        # Interleaved: one server round and one in-process encode per round, paired.
        samples = row["samples_s_per_token"]
        assert len(samples["server"]) == len(samples["in process"]) == row["rounds"]
        assert row["vs_in_process_ci"][0] <= row["vs_in_process"] <= row["vs_in_process_ci"][1]
    batch = report["in_process_batch_sizes"]
    assert batch["best_batch_size"] in (4, 8)
    assert {r["batch_size"] for r in batch["batched"]} == {4, 8}


def test_latency_comparisons_are_paired(serve_run):
    report, _ = serve_run
    for key in ("short_sentence", "one_text_of_the_mix"):
        row = report[key]
        assert row["failed"] == {}
        n = row["rounds"]
        assert row["server"]["samples"] == row["in_process"]["samples"] == n >= 1
        assert row["ratio"]["samples"] == row["difference_ms"]["samples"] == n
        for side in ("server", "in_process"):
            low, high = row[side]["p50_ci_ms"]
            assert low <= row[side]["p50_ms"] <= high
        assert row["ratio"]["ci"][0] <= row["ratio"]["median"] <= row["ratio"]["ci"][1]


def test_load_and_markdown(serve_run):
    report, text = serve_run
    load = report["load_average"]
    assert len(load["before"]) == len(load["after"]) == 3
    assert "Load average (1 / 5 / 15 min) before" in text
    assert ("**Warning:" in text) == bool(load["warning"])
    assert "| concurrency | rounds | requests |" in text
    for row in report["levels"]:
        line = next(
            line for line in text.splitlines() if line.startswith(f"| {row['concurrency']} |")
        )
        assert line.count("[") >= 4  # tokens/s, p50, in-process, ratio
        assert ("**noisy**" in line) == (
            row["noisy"] or row["in_process"]["noisy"] or row["vs_in_process_noisy"]
        )
    assert "Short sentence ('A man is eating food.'), concurrency 1" in text
    assert "server / in-process per round" in text and "server - in-process" in text


# -- embed_corpus ---------------------------------------------------------------------------


def test_embed_corpus_rounds_are_interleaved_with_intervals(tmp_path, minilm_dir):
    pytest.importorskip("sentence_transformers")
    from benchmarks import embed_corpus

    out = tmp_path / "embed"
    argv = ["--model", str(minilm_dir), "--device", "cpu", "--texts", "12", "--chunk", "6",
            "--time-cap", "1", "--output", str(out)]  # fmt: skip
    assert embed_corpus.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["chunks"] == 2 and result["rounds"] >= 1
    assert result["max_abs_diff_vs_sentence_transformers"] < 1e-4
    for row in result["rows"]:
        # One run of each per round: the same rounds behind both rows.
        assert row["rounds"] == result["rounds"] == len(row["seconds_per_round"])
        for key in ("texts_per_s", "tokens_per_s"):
            figure = row[key]
            assert figure["ci_low"] <= figure["median"] <= figure["ci_high"]
            assert figure["samples"] == result["rounds"] and isinstance(figure["noisy"], bool)
    speedup = result["speedup"]
    assert speedup["samples"] == result["rounds"]
    assert speedup["ci_low"] <= speedup["median"] <= speedup["ci_high"]
    assert set(result["load_average"]) == {"before", "after", "warning"}
    text = (out / "results.md").read_text()
    assert "Load average (1 / 5 / 15 min) before" in text
    assert "| | texts/s | tokens/s | rounds | batches | padding |" in text
    assert "per round on the same chunk" in text
