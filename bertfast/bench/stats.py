"""Statistics for timings taken on a shared, noisy machine.

- The median's 95 % confidence interval from order statistics (distribution-free: no normality
  assumed, valid for the skewed, heavy-tailed times a busy machine gives).
- Candidates run interleaved, one call each per round with the order rotated every round, so
  a burst of load hits them alike; a ratio's interval comes from the per-round ratios.
- Rounds go on until every interval is within a stated relative width or a time cap is hit;
  a row still wider is marked noisy.
- The load average before and after, with a warning when it was high.
- A ceiling measured until two readings agree, and flagged when a row beats it.

Pure Python and injectable clocks: the tests drive it with synthetic timings.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

CONFIDENCE = 0.95
# Relative width (interval / median) a row must reach; wider rows are "noisy".
DEFAULT_CI_WIDTH = 0.05
# Fewer samples than this give no 95 % interval from order statistics (0.5^5 * 2 > 0.05).
MIN_SAMPLES_FOR_CI = 6
# Load average per core above which timings are called unreliable.
HIGH_LOAD_PER_CPU = 0.75


def _binom_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_ci(samples: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The interval [x_(k), x_(n+1-k)] of sorted samples covering the median with probability
    >= ``confidence``: the widest k with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. With
    too few samples for that, the full range (which covers it with less)."""
    xs = sorted(samples)
    n = len(xs)
    if n == 0:
        raise ValueError("no samples")
    alpha = (1.0 - confidence) / 2
    k = 0  # 1-based rank of the lower end; 0 = none found
    for j in range(1, n // 2 + 1):
        if _binom_cdf(j - 1, n) <= alpha:
            k = j
        else:
            break
    if k == 0:
        return xs[0], xs[-1]
    return xs[k - 1], xs[n - k]


@dataclass(frozen=True)
class Summary:
    """A row's figure: median with its interval, sample count, spread and the noisy mark."""

    median: float
    ci_low: float
    ci_high: float
    samples: int
    p10: float
    p90: float
    noisy: bool

    @property
    def rel_width(self) -> float:
        """(high - low) / median: the interval as a fraction of the figure."""
        return (self.ci_high - self.ci_low) / self.median if self.median else math.inf

    def to_dict(self) -> dict:
        return {**asdict(self), "rel_width": self.rel_width}


def relative_width(samples: Sequence[float], confidence: float = CONFIDENCE) -> float:
    """The median interval's width over the median (inf with too few samples)."""
    if len(samples) < MIN_SAMPLES_FOR_CI:
        return math.inf
    low, high = median_ci(samples, confidence)
    median = statistics.median(samples)
    return (high - low) / median if median else math.inf


def summarise(samples: Sequence[float], ci_width: float = DEFAULT_CI_WIDTH) -> Summary:
    """Median, 95 % interval, 10th / 90th percentiles; noisy when the interval is wider than
    ``ci_width`` of the median or the samples are too few to have one."""
    xs = list(samples)
    low, high = median_ci(xs)
    if len(xs) > 1:
        deciles = statistics.quantiles(xs, n=10, method="inclusive")
        p10, p90 = deciles[0], deciles[-1]
    else:
        p10 = p90 = xs[0]
    return Summary(
        statistics.median(xs),
        low,
        high,
        len(xs),
        p10,
        p90,
        noisy=relative_width(xs) > ci_width,
    )


def rate_summary(seconds_per_unit: Sequence[float], ci_width: float = DEFAULT_CI_WIDTH) -> Summary:
    """A rate (units per second) from per-sample seconds per unit: the times' summary turned
    over (1 / median, the interval's ends and the percentiles swapped), noisy as the times are."""
    s = summarise(seconds_per_unit, ci_width)
    return Summary(1 / s.median, 1 / s.ci_high, 1 / s.ci_low, s.samples, 1 / s.p90, 1 / s.p10,
                   s.noisy)  # fmt: skip


def ratio_summary(
    numerators: Sequence[float], denominators: Sequence[float], ci_width: float = DEFAULT_CI_WIDTH
) -> Summary:
    """The ratio of two interleaved candidates from their per-round ratios (round i of one
    against round i of the other: the same load), with the median's interval."""
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} against {len(denominators)} rounds: not paired")
    return summarise([a / b for a, b in zip(numerators, denominators, strict=True)], ci_width)


def interleaved_order(names: Sequence[str], round_index: int) -> list[str]:
    """Round ``round_index``'s order: every candidate once, rotated by one each round so none
    always runs first (after a pause) or right after the same neighbour."""
    if not names:
        return []
    shift = round_index % len(names)
    return list(names[shift:]) + list(names[:shift])


@dataclass
class Interleaved:
    """What ``run_interleaved`` measured: seconds per call of each candidate, per round."""

    samples: dict[str, list[float]]
    rounds: int
    elapsed_s: float
    stopped: str  # "converged", "time cap" or "max rounds"
    failed: dict[str, BaseException]


def run_interleaved(
    candidates: dict[str, Callable[[int], object]],
    ci_width: float = DEFAULT_CI_WIDTH,
    min_rounds: int = 8,
    max_rounds: int = 200,
    time_cap_s: float = 60.0,
    clock: Callable[[], float] = time.perf_counter,
    time_call: Callable[[str, int], float] | None = None,
    ratio_to: str | None = None,
) -> Interleaved:
    """Call every candidate once per round (``fn(round)``), in ``interleaved_order``, until each
    median's interval is within ``ci_width`` of it (with ``ratio_to``, each ratio's interval
    to that candidate instead) and ``min_rounds`` are done, or ``time_cap_s`` / ``max_rounds``
    is reached. A call is timed by ``clock`` around it, or by ``time_call(name, round)``, which
    runs it and returns its seconds (CUDA events on a GPU). A candidate that raises is dropped
    and its exception kept in ``failed``."""
    names = list(candidates)
    samples: dict[str, list[float]] = {n: [] for n in names}
    failed: dict[str, BaseException] = {}
    start = clock()
    stopped = "max rounds"
    rounds = 0
    for r in range(max_rounds):
        for name in interleaved_order(names, r):
            if name in failed:
                continue
            try:
                if time_call is not None:
                    elapsed = time_call(name, r)
                else:
                    t0 = clock()
                    candidates[name](r)
                    elapsed = clock() - t0
            except Exception as exc:  # one candidate failing must not end the others
                failed[name] = exc
                continue
            samples[name].append(elapsed)
        rounds = r + 1
        live = [n for n in names if n not in failed]
        if rounds >= min_rounds and _converged(samples, live, ci_width, ratio_to):
            stopped = "converged"
            break
        if clock() - start >= time_cap_s:
            stopped = "time cap"
            break
    for name in failed:
        samples.pop(name)
    return Interleaved(samples, rounds, clock() - start, stopped, failed)


def _converged(
    samples: dict[str, list[float]], live: list[str], ci_width: float, ratio_to: str | None
) -> bool:
    if not live:
        return True
    if ratio_to is not None and ratio_to in live:
        base = samples[ratio_to]
        return (
            all(
                relative_width([a / b for a, b in zip(samples[n], base, strict=False)]) <= ci_width
                for n in live
                if n != ratio_to
            )
            and relative_width(base) <= 2 * ci_width
        )
    return all(relative_width(samples[n]) <= ci_width for n in live)


# ---------------------------------------------------------------------------- the machine


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def load_warning(
    before: Sequence[float] | None,
    after: Sequence[float] | None,
    cpus: int | None = None,
    own_threads: int = 0,
) -> str | None:
    """A warning when the 1-minute load of other work exceeded HIGH_LOAD_PER_CPU per core
    before or after the run: it shared the cores, and the timings carry its noise. The load
    read after counts the run's own ``own_threads`` busy threads, which are taken off."""
    cpus = cpus or os.cpu_count() or 1
    limit = HIGH_LOAD_PER_CPU * cpus
    others = [before[0]] if before else []
    if after:
        others.append(max(after[0] - own_threads, 0.0))
    worst = max(others, default=None)
    if worst is None or worst <= limit:
        return None
    return (
        f"load average of other work {worst:.2f} (1 min) on {cpus} CPUs, above {limit:.2f}: it "
        "shared the cores; figures are noisy, compare only rows measured interleaved"
    )


@dataclass(frozen=True)
class Ceiling:
    """A measured peak rate (higher is better): the best reading, all readings, and whether two
    consecutive readings agreed within the tolerance (stable)."""

    value: float
    readings: tuple[float, ...]
    stable: bool


def stable_ceiling(
    measure: Callable[[], float], rel_tol: float = 0.03, max_tries: int = 6
) -> Ceiling:
    """Measure a peak rate until two consecutive readings agree within ``rel_tol``, at most
    ``max_tries`` times; the best reading is the ceiling (load only ever lowers a rate)."""
    readings = [measure()]
    stable = False
    while len(readings) < max_tries:
        readings.append(measure())
        a, b = readings[-2], readings[-1]
        if abs(a - b) <= rel_tol * max(a, b):
            stable = True
            break
    return Ceiling(max(readings), tuple(readings), stable)


def fraction_of_ceiling(achieved: float, ceiling: float | None) -> tuple[float | None, str | None]:
    """``achieved / ceiling``, or (None, why) when there is no ceiling or the row beat it: a
    ceiling below what a row reached was measured low (a noisy machine, a slow kernel chosen
    for the probe), not a row above 100 %."""
    if not ceiling:
        return None, None
    fraction = achieved / ceiling
    if fraction > 1.0:
        return None, (
            f"reached {fraction:.0%} of the measured ceiling: the ceiling was measured low, so "
            "no fraction is reported"
        )
    return fraction, None
