"""Kernel launches per forward, counted on the CPU: every aten op that would launch a kernel
(views and allocations do not) plus every bertfast kernel launch. A regression in launches
per layer, or a host sync on the eager packed path, shows here."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bertfast import BertConfig, BertModel, ops
from tests.helpers import mixed_mask

aten = torch.ops.aten
ALLOCATIONS = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default}
SYNCS = {aten._local_scalar_dense.default, aten.nonzero.default}


class LaunchCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.aten: list[str] = []
        self.kernels: list[str] = []
        self.syncs: list[str] = []
        self.inside_kernel = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside_kernel:
            if func in SYNCS:
                self.syncs.append(str(func))
            if not func.is_view and func not in ALLOCATIONS:
                self.aten.append(str(func))
        return func(*args, **(kwargs or {}))

    @property
    def launches(self) -> int:
        return len(self.aten) + len(self.kernels)


@pytest.fixture
def counter(monkeypatch):
    counting = LaunchCounter()
    original = ops.get_kernel

    def counted(op, backend):
        kernel = original(op, backend)

        def launch(*args, **kwargs):
            counting.kernels.append(op)
            counting.inside_kernel = True  # what a kernel does inside is one launch
            try:
                return kernel(*args, **kwargs)
            finally:
                counting.inside_kernel = False

        return launch

    monkeypatch.setattr(ops.registry, "get_kernel", counted)
    return counting


def count(model, counting, ids, mask=None, lengths_on_host=True):
    model(ids, attention_mask=mask)  # first forward: checks layouts once
    counting.aten.clear(), counting.kernels.clear(), counting.syncs.clear()
    with counting, torch.no_grad():
        model(ids, attention_mask=mask)
    return counting.launches, list(counting.kernels), list(counting.syncs)


def tiny(layers: int, backend: str, **kwargs) -> BertModel:
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return BertModel(config, backend=backend, **kwargs).eval()


@pytest.mark.parametrize(
    "fused,per_layer",
    # qkv addmm, attention, out-proj mm, bias+residual+LN, FFN-up mm, bias+GELU, FFN-down mm,
    # bias+residual+LN; fused: qkv addmm, attention and three GEMMs with their epilogues.
    [(False, 8), (True, 5)],
)
def test_launches_per_layer(counter, fused, per_layer):
    ids = torch.randint(1, 50, (3, 7))
    mask = mixed_mask(3, 7, seed=0).long()
    one, _, _ = count(tiny(1, "triton", fused_epilogues=fused), counter, ids, mask)
    three, kernels, syncs = count(tiny(3, "triton", fused_epilogues=fused), counter, ids, mask)
    assert (three - one) / 2 == per_layer
    expected_kernels = 1 + 3 * (4 if fused else 4)  # embedding + per layer
    assert len(kernels) == expected_kernels, kernels
    # The forward's one host read is prepare_inputs' checks on the CPU inputs; packing uses
    # the lengths it returned, so no nonzero / item follows.
    assert syncs == [], syncs


def test_fixed_cost_outside_the_layers(counter):
    """Validation, packing and unpacking around the layers: a budget, so growth shows."""
    ids = torch.randint(1, 50, (3, 7))
    mask = mixed_mask(3, 7, seed=0).long()
    total, _, _ = count(tiny(1, "triton"), counter, ids, mask)
    assert total - 8 <= 40, counter.aten
