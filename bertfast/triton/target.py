"""What a Triton launch targets, and the one call every launcher runs a kernel through.

The launchers pick block sizes, warps and stages by the GPU's compute capability (sm_80 and
sm_90 differ in registers per thread under pressure, shared memory and MMA shape) and size
reductions by its SM count. ``record_launches`` lets the compile report
(``bertfast.compile_report``) ask the real launchers what they would run on an sm_80 or sm_90
card, on meta tensors, from a machine without one: inside it ``run`` records each launch
instead of running it, and ``capability`` / ``multiprocessors`` answer for the recorded card.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch

# SMs of the cards a recording stands for when none is given: H100 SXM (sm_90), A100 (sm_80).
DEFAULT_MULTIPROCESSORS = {9: 132, 8: 108}


@dataclass(frozen=True)
class Launch:
    """One kernel launch as a launcher issued it: the @triton.jit function, grid, arguments."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    meta: dict


@dataclass
class _Recording:
    capability: tuple[int, int]
    multiprocessors: int
    launches: list[Launch] = field(default_factory=list)


_recording: ContextVar[_Recording | None] = ContextVar("bertfast_triton_recording", default=None)


def run(kernel: Any, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    """``kernel[grid](*args, **meta)``, or its record inside ``record_launches``."""
    recording = _recording.get()
    if recording is not None:
        recording.launches.append(Launch(kernel, tuple(grid), args, meta))
        return
    kernel[grid](*args, **meta)


@functools.cache
def _cuda_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


@functools.cache
def _cuda_multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def capability(device: torch.device) -> tuple[int, int] | None:
    """The compute capability a launch on ``device`` is configured for: the recorded card's
    inside ``record_launches``, the CUDA device's, or None (CPU tensors: the interpreter)."""
    recording = _recording.get()
    if recording is not None:
        return recording.capability
    if device.type == "cuda":
        return _cuda_capability(_index(device))
    return None


def multiprocessors(device: torch.device) -> int | None:
    """SMs of the card a launch on ``device`` targets (None under the interpreter)."""
    recording = _recording.get()
    if recording is not None:
        return recording.multiprocessors
    if device.type == "cuda":
        return _cuda_multiprocessors(_index(device))
    return None


@contextmanager
def record_launches(
    capability: tuple[int, int], multiprocessors: int | None = None
) -> Iterator[list[Launch]]:
    """Within the block, launchers called (on meta tensors, typically) record their launches,
    configured for a card of ``capability``, into the yielded list instead of running them."""
    if multiprocessors is None:
        multiprocessors = DEFAULT_MULTIPROCESSORS.get(capability[0], 108)
    recording = _Recording(tuple(capability), multiprocessors)
    token = _recording.set(recording)
    try:
        yield recording.launches
    finally:
        _recording.reset(token)
