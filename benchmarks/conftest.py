"""pytest-benchmark suite setup: the grid option, GPU skips, shared ceilings, models and
training sources.

The cases, inputs, reference and the device synchronisation come from ``bertfast.bench`` (the
suite behind ``bertfast bench``); this file only adapts them to pytest-benchmark's fixture.
"""

from __future__ import annotations

import pytest
import torch

from bertfast.bench.settings import TimerSettings
from bertfast.bench.timing import empty_cache, measure_ceilings

# Timing budget of the ceilings measured once per session (the suite's quick CPU budget).
CEILING_TIMER = TimerSettings(
    warmup=1, rep_ms=100.0, min_reps=3, max_reps=20, n_inputs=1, flush_l2=False
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-quick",
        action="store_true",
        help="bertfast: the small grid of `bertfast bench --quick` (CI runs the CPU cases so)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run scripts/gpu_check.sh on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ceilings() -> dict[str, dict]:
    """Per device type, the copy and matmul ceilings (bertfast.bench.timing), measured once."""
    measured: dict[str, dict] = {}

    class Lazy(dict):
        def __missing__(self, key: tuple[str, str]) -> dict:
            device, dtype = key
            result = measure_ceilings(torch.device(device), [dtype], CEILING_TIMER, lambda _: None)
            measured[key] = result
            self[key] = result
            return result

    return Lazy()


class OneAtATime:
    """Keeps the last thing built for a key (a model, an op's inputs) and frees the one before.

    Tests of one case and dtype are collected next to each other, so each is built once, and
    only one BERT-large or set of BERT-base tables is alive at a time on the device.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: object = None

    def get(self, key: tuple, build):
        if key != self.key:
            device = self.key[0] if self.key else None
            self.key, self.value = None, None
            if device is not None:
                empty_cache(torch.device(device))
            self.value = build()
            self.key = key
        return self.value


@pytest.fixture(scope="session")
def op_cases() -> OneAtATime:
    return OneAtATime()


@pytest.fixture(scope="session")
def model_sources() -> OneAtATime:
    return OneAtATime()


@pytest.fixture(scope="session")
def train_sources() -> OneAtATime:
    return OneAtATime()
