"""``auto`` per op and shape, and the L2 flush of the benchmark timer."""

import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bertfast import ops
from bertfast.bench.timing import flush_l2


def test_auto_attention_switches_to_triton_on_long_sequences(monkeypatch):
    cuda = torch.device("cuda")
    triton_ok = dataclasses.replace(ops.BACKEND_INFO["triton"], unavailable_reason=lambda d: None)
    monkeypatch.setitem(ops.BACKEND_INFO, "triton", triton_ok)
    threshold = ops.AUTO_ATTENTION_SWITCH["cuda"][0]
    assert ops.auto_attention_backend("cuda", cuda, 64, threshold - 1) == "cuda"
    assert ops.auto_attention_backend("cuda", cuda, 64, threshold) == "triton"
    assert ops.auto_attention_backend("triton", cuda, 64, 512) == "triton"
    # Where Triton cannot run (here: its head dims), the model's backend stays.
    assert ops.auto_attention_backend("cuda", cuda, 48, 512) == "cuda"
    missing = dataclasses.replace(triton_ok, unavailable_reason=lambda d: "not installed")
    monkeypatch.setitem(ops.BACKEND_INFO, "triton", missing)
    assert ops.auto_attention_backend("cuda", cuda, 64, 512) == "cuda"


def test_l2_flush_only_reads():
    """Zeroing would leave dirty lines whose write-back is charged to the timed call."""
    mutated = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func._schema.is_mutable:
                mutated.append(str(func))
            return func(*args, **(kwargs or {}))

    cache = torch.ones(1 << 12, dtype=torch.int32)
    before = cache.clone()
    with Watch():
        flush_l2(cache)
    assert mutated == [] and torch.equal(cache, before)
