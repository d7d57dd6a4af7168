"""The benchmark statistics on synthetic timings: the median's interval from order statistics,
interleaving order, the stop rule (converged, time cap), noisy marking, paired ratios, the load
warning, ceilings re-measured until stable, a candidate failing its warm-up, and how the report
shows them (intervals, error bars). No timing is asserted."""

import itertools
import random

import pytest
import torch

from bertfast.bench import stats
from bertfast.bench.report import _row_interval, _table, machine_lines
from bertfast.bench.settings import TimerSettings
from bertfast.bench.timing import benchmark_interleaved, summarise


@pytest.mark.parametrize(
    "n, ranks",
    # Textbook 95 % ranks of the median (binomial, p = 1/2): n=6 -> (1, 6), 10 -> (2, 9),
    # 20 -> (6, 15), 50 -> (18, 33).
    [(6, (1, 6)), (10, (2, 9)), (20, (6, 15)), (50, (18, 33))],
)
def test_median_interval_is_the_order_statistics(n, ranks):
    samples = [float(v) for v in random.Random(n).sample(range(1000), n)]
    ordered = sorted(samples)
    assert stats.median_ci(samples) == (ordered[ranks[0] - 1], ordered[ranks[1] - 1])


def test_too_few_samples_have_no_interval_and_are_noisy():
    samples = [1.0, 1.0, 1.0, 1.0, 1.1]  # n=5: no pair of ranks covers the median with 95 %
    assert stats.median_ci(samples) == (1.0, 1.1)
    assert stats.relative_width(samples) == float("inf")
    assert stats.summarise(samples).noisy
    with pytest.raises(ValueError):
        stats.median_ci([])


def test_interval_covers_the_median_about_95_percent_of_the_time():
    rng = random.Random(0)
    hits = 0
    trials = 400
    for _ in range(trials):
        samples = [rng.lognormvariate(0.0, 0.5) for _ in range(25)]  # skewed, median 1.0
        low, high = stats.median_ci(samples)
        hits += low <= 1.0 <= high
    assert 0.92 <= hits / trials <= 0.995


def test_noisy_marking_follows_the_width():
    steady = [10.0 + 0.01 * (i % 3) for i in range(30)]
    bursty = [10.0 if i % 2 else 14.0 + i % 5 for i in range(30)]
    assert not stats.summarise(steady, ci_width=0.05).noisy
    noisy = stats.summarise(bursty, ci_width=0.05)
    assert noisy.noisy and noisy.rel_width > 0.05
    timing = summarise(bursty, ci_width=0.05)  # the benchmark's Timing carries the same
    assert timing.noisy and (timing.ci_low_ms, timing.ci_high_ms) == (noisy.ci_low, noisy.ci_high)
    assert timing.row_fields()["ci_rel_width"] == pytest.approx(noisy.rel_width)


def test_interleaved_order_rotates_every_candidate_once_per_round():
    names = ["a", "b", "c"]
    rounds = [stats.interleaved_order(names, r) for r in range(6)]
    assert rounds[:3] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert all(sorted(r) == names for r in rounds)
    firsts = [r[0] for r in rounds]
    assert {n: firsts.count(n) for n in names} == {"a": 2, "b": 2, "c": 2}
    assert stats.interleaved_order([], 3) == []


class FakeClock:
    """A clock that only the candidates advance, by the durations they are given."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def candidate(self, durations, log=None, name=None):
        it = iter(durations)

        def run(i):
            if log is not None:
                log.append(name)
            self.now += next(it)

        return run


def test_run_interleaved_calls_in_rotating_rounds_and_stops_when_converged():
    clock, log = FakeClock(), []
    candidates = {
        "a": clock.candidate(itertools.repeat(0.010), log, "a"),
        "b": clock.candidate(itertools.repeat(0.020), log, "b"),
    }
    result = stats.run_interleaved(candidates, min_rounds=8, clock=clock, time_cap_s=100)
    assert result.stopped == "converged" and result.rounds == 8
    assert log[:4] == ["a", "b", "b", "a"]
    assert result.samples.keys() == {"a", "b"}
    assert result.samples["a"] == pytest.approx([0.010] * 8)
    assert result.samples["b"] == pytest.approx([0.020] * 8)


def test_run_interleaved_stops_at_the_time_cap_and_the_row_is_noisy():
    clock = FakeClock()
    rng = random.Random(1)
    wild = (rng.choice([0.01, 0.05, 0.2]) for _ in itertools.count())
    result = stats.run_interleaved(
        {"wild": clock.candidate(wild)}, ci_width=0.05, time_cap_s=2.0, clock=clock
    )
    assert result.stopped == "time cap"
    assert 2.0 <= result.elapsed_s < 2.3  # stops within one round of the cap
    assert stats.summarise(result.samples["wild"], 0.05).noisy


def test_run_interleaved_drops_a_failing_candidate_and_keeps_the_rest():
    clock = FakeClock()

    def broken(i):
        if i == 2:
            raise RuntimeError("kernel failed")
        clock.now += 0.01

    result = stats.run_interleaved(
        {"ok": clock.candidate(itertools.repeat(0.01)), "broken": broken},
        clock=clock,
        min_rounds=8,
    )
    assert set(result.samples) == {"ok"} and len(result.samples["ok"]) == result.rounds
    assert isinstance(result.failed["broken"], RuntimeError)


def test_ratio_comes_from_paired_rounds():
    # Load doubles both in rounds 3-5: the per-round ratio stays 2, the medians' spread does not.
    base = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    fast = [t / 2 for t in base]
    ratio = stats.ratio_summary(base, fast)
    assert (ratio.median, ratio.ci_low, ratio.ci_high) == (2.0, 2.0, 2.0)
    assert not ratio.noisy
    with pytest.raises(ValueError, match="not paired"):
        stats.ratio_summary(base, fast[:-1])


def test_rate_summary_turns_the_times_over():
    per_token = [0.002, 0.001, 0.004, 0.002, 0.001, 0.002]
    times, rate = stats.summarise(per_token), stats.rate_summary(per_token)
    assert rate.median == pytest.approx(1 / times.median)
    assert (rate.ci_low, rate.ci_high) == pytest.approx((1 / times.ci_high, 1 / times.ci_low))
    assert (rate.p10, rate.p90) == pytest.approx((1 / times.p90, 1 / times.p10))
    assert rate.ci_low <= rate.median <= rate.ci_high
    assert rate.samples == 6 and rate.noisy == times.noisy


def test_converged_with_ratio_to_uses_the_paired_ratios():
    # Both swing together round by round: each median's interval is wide, the ratio's is not.
    swing = [1.0, 3.0] * 10
    samples = {"base": swing, "cand": [t * 0.5 for t in swing]}
    assert stats.relative_width(swing) > 0.05
    assert not stats._converged(samples, ["base", "cand"], 0.05, None)
    assert not stats._converged(samples, ["base", "cand"], 0.05, "base")  # base itself too wide
    steady = {"base": [1.0] * 20, "cand": [0.5] * 20}
    assert stats._converged(steady, ["base", "cand"], 0.05, "base")


def test_load_warning():
    assert stats.load_warning((0.5, 0.4, 0.3), (1.2, 0.8, 0.5), cpus=2) is None
    warning = stats.load_warning((0.5, 0.4, 0.3), (3.9, 2.0, 1.0), cpus=2)
    assert "3.90" in warning and "noisy" in warning
    assert stats.load_warning(None, None, cpus=2) is None
    # The run's own two busy threads are in the load read after it: not other work.
    assert stats.load_warning((0.5, 0.4, 0.3), (2.6, 1.0, 0.5), cpus=2, own_threads=2) is None
    assert "1.90" in stats.load_warning(None, (3.9, 2.0, 1.0), cpus=2, own_threads=2)


def test_ceiling_is_measured_until_two_readings_agree():
    readings = iter([50.0, 80.0, 100.0, 101.0, 999.0])
    ceiling = stats.stable_ceiling(lambda: next(readings), rel_tol=0.03)
    assert ceiling.stable and ceiling.readings == (50.0, 80.0, 100.0, 101.0)
    assert ceiling.value == 101.0
    never = iter([10.0, 20.0, 10.0, 20.0])
    unstable = stats.stable_ceiling(lambda: next(never), max_tries=4)
    assert not unstable.stable and unstable.value == 20.0


def test_a_row_beating_the_ceiling_gets_no_fraction():
    assert stats.fraction_of_ceiling(50.0, 100.0) == (0.5, None)
    frac, note = stats.fraction_of_ceiling(143.0, 100.0)
    assert frac is None and "143%" in note and "measured low" in note
    assert stats.fraction_of_ceiling(1.0, None) == (None, None)


def test_report_shows_intervals_noisy_rows_load_and_beaten_ceilings():
    rows = [
        {"backend": "a", "median_ms": 2.0, "ci_low_ms": 1.9, "ci_high_ms": 2.1, "repeats": 40},
        {"backend": "b", "median_ms": 3.0, "ci_low_ms": 2.0, "ci_high_ms": 5.0, "repeats": 12},
    ]
    rows[1]["noisy"] = True
    rows[1]["ceiling_note"] = "reached 143% of the measured ceiling"
    columns = [
        ("backend", "backend", "s"),
        ("median_ms", "median ms", ".4g"),
        ("ci_ms", "95 % CI ms", "ci"),
        ("repeats", "n", "d"),
        ("noisy", "noisy", "noisy"),
    ]
    table = _table(rows, columns)
    assert table[2] == "| a | 2 | 1.9–2.1 | 40 |  |"
    assert table[3] == "| b | 3 | 2–5 | 12 | **noisy** |"
    results = {
        "rows": rows,
        "settings": {"timer": {"ci_width": 0.05}},
        "ceilings": {"unstable": ["fp32 matmul"]},
        "load_average": {
            "before": [3.5, 2.0, 1.0],
            "after": [3.9, 2.5, 1.2],
            "warning": "load average 3.90 (1 min) on 2 CPUs",
        },
    }
    text = "".join(machine_lines(results))
    assert "before 3.50 / 2.00 / 1.00, after 3.90 / 2.50 / 1.20" in text
    assert "**Warning: load average 3.90" in text
    assert "never agreed within 3 % (best reading kept): fp32 matmul" in text
    assert "1 row(s) beat the measured ceiling" in text
    assert "1 row(s) marked **noisy**" in text


def test_ci_width_setting_reaches_both_timers():
    from bertfast.bench.plan import make_settings

    settings = make_settings(device="cpu", quick=True, ci_width=0.02)
    assert settings.timer.ci_width == 0.02 and settings.train_timer.ci_width == 0.02
    assert settings.to_dict()["timer"]["ci_width"] == 0.02
    assert make_settings(device="cpu", quick=True).timer.ci_width == stats.DEFAULT_CI_WIDTH
    with pytest.raises(ValueError, match="ci_width"):
        make_settings(device="cpu", quick=True, ci_width=0.0)


def test_benchmark_interleaved_drops_a_candidate_that_fails_its_warm_up():
    """A failure in the warm-up is the candidate's, like one in the rounds: the others run."""
    timer = TimerSettings(1, 50.0, 1, 2, 1, False)
    calls = []

    def broken(i):
        raise RuntimeError("no kernel for this shape")

    timings, failed = benchmark_interleaved(
        {"ok": calls.append, "broken": broken}, torch.device("cpu"), timer
    )
    assert set(timings) == {"ok"} and timings["ok"].repeats == len(calls) - 1  # - warm-up
    assert set(failed) == {"broken"} and "no kernel" in str(failed["broken"])
    timings, failed = benchmark_interleaved({"broken": broken}, torch.device("cpu"), timer)
    assert timings == {} and set(failed) == {"broken"}


def test_plotted_intervals():
    """Error bars: a speedup's own interval; a rate's from the time's; none for a ratio of
    memory."""
    row = {
        "median_ms": 2.0,
        "ci_low_ms": 1.0,
        "ci_high_ms": 4.0,
        "frac_ceiling": 0.5,
        "speedup_vs_baseline": 1.5,
        "speedup_ci_low": 1.2,
        "speedup_ci_high": 1.8,
        "peak_ratio_vs_hf_eager": 0.9,
    }
    assert _row_interval(row, "speedup_vs_baseline") == (1.2, 1.8)
    assert _row_interval({**row, "speedup_ci_low": None}, "speedup_vs_hf_eager") is None
    assert _row_interval(row, "frac_ceiling") == (0.25, 1.0)  # rate ~ 1 / time
    assert _row_interval(row, "peak_ratio_vs_hf_eager") is None
