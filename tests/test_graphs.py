"""The packed CUDA-graph path on the CPU: the capture seam is replaced by a recorder that runs
the captured region under a host-sync detector and replays by re-running it, so everything
that would break a real capture (a device-to-host read, an output shape that depends on device
values) fails here, under the Triton interpreter."""

from __future__ import annotations

import threading

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bertfast import BertModel, ops
from bertfast.graphs import CUDAGraphEncoder, GraphBuckets
from tests.helpers import max_abs_error, mixed_mask, random_hf_bert

transformers = pytest.importorskip("transformers")
aten = torch.ops.aten

# Ops that read device values on the host, or whose output shape depends on them.
SYNCING_OPS = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.unique_dim.default,
    aten.repeat_interleave.Tensor,
}


class HostSyncError(AssertionError):
    pass


# Per thread, as torch's dispatch modes are: one caller's capture must not flag another's
# host reads outside its captured region.
_state = threading.local()


def _guarding() -> bool:
    return getattr(_state, "active", False) and not getattr(_state, "paused", False)


class _SyncDetector(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNCING_OPS and _guarding():
            raise HostSyncError(f"{func} inside the captured region would sync the host")
        return func(*args, **(kwargs or {}))


class SyncGuard:
    """Active inside the captured region: raises on any host sync. Kernel launches run
    paused (the interpreter reads its arguments on the host; a GPU launch does not)."""

    def __enter__(self):
        _state.active = True
        self.mode = _SyncDetector()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        _state.active = False


def _refuse(name, original):
    def method(self, *args, **kwargs):
        if _guarding():
            raise HostSyncError(f"Tensor.{name}() inside the captured region syncs the host")
        return original(self, *args, **kwargs)

    return method


@pytest.fixture(autouse=True)
def sync_guard_hooks(monkeypatch):
    for name in ("tolist", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, _refuse(name, getattr(torch.Tensor, name)))
    original = ops.get_kernel

    def paused_kernel(op, backend):
        kernel = original(op, backend)

        def launch(*args, **kwargs):
            paused = getattr(_state, "paused", False)
            _state.paused = True
            try:
                return kernel(*args, **kwargs)
            finally:
                _state.paused = paused

        return launch

    monkeypatch.setattr(ops.registry, "get_kernel", paused_kernel)


class RecordingCapture:
    """Stands in for CUDA graph capture: runs the region under the sync guard, replays by
    re-running it under the guard."""

    def __init__(self):
        self.captures = 0
        self.replays = 0

    def __call__(self, fn):
        self.captures += 1
        with SyncGuard():
            fn()

        def replay():
            self.replays += 1
            with SyncGuard():
                fn()

        return replay


# Small ladders: the interpreter runs every padded token of a bucket (the default ladder's
# smallest is 64 tokens; test_cuda_graph_encoder_keeps_its_api runs on it).
ONE_BUCKET = GraphBuckets((16,), (2,), (8,))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path, hf = random_hf_bert(tmp_path_factory.mktemp("hf"))
    return path, hf


def graph_model(path, **kwargs) -> tuple[BertModel, RecordingCapture]:
    model = BertModel.from_pretrained(path, backend="triton").eval()
    capture = RecordingCapture()
    model.enable_cuda_graphs(capture=capture, **kwargs)
    return model, capture


def hf_reference(hf, ids, mask, types):
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, token_type_ids=types)


def test_the_guard_catches_a_host_sync():
    """The detector this file relies on fails on each kind of sync."""
    x = torch.arange(4)
    for sync in (lambda: x.sum().item(), lambda: x.tolist(), lambda: torch.nonzero(x)):
        with pytest.raises(HostSyncError), SyncGuard():
            sync()


@torch.no_grad()
def test_packed_graphs_equal_eager_and_transformers(setup):
    path, hf = setup
    model, capture = graph_model(path, buckets=GraphBuckets((16, 32), (1, 4), (8, 16)))
    eager = BertModel.from_pretrained(path, backend="triton", cuda_graphs=False).eval()
    for batch, seq, seed in ((3, 5, 0), (4, 4, 1), (3, 5, 2), (1, 3, 3)):
        ids = torch.randint(1, 99, (batch, seq))
        types = torch.randint(0, 2, (batch, seq))
        mask = mixed_mask(batch, seq, seed=seed).long()
        out = model(ids, attention_mask=mask, token_type_ids=types)
        ref = hf_reference(hf, ids, mask, types)
        own = eager(ids, attention_mask=mask, token_type_ids=types)
        real = mask.bool()
        assert max_abs_error(out.last_hidden_state, ref.last_hidden_state, real) <= 1e-5
        assert max_abs_error(out.last_hidden_state, own.last_hidden_state, real) <= 1e-6
        assert max_abs_error(out.pooler_output, ref.pooler_output) <= 1e-5
        # Padded positions come back as zeros, as on the eager padding-free path.
        assert out.last_hidden_state[~real].abs().max().item() == 0
    # At most 16 tokens in 3, 4, 3 and 1 sequences of at most 5: (16, 4, 8) and (16, 1, 8).
    assert model.graphs.replays == 4 and capture.captures == 2
    assert model.graphs.captured == [(16, 4, 8), (16, 1, 8)]
    assert eager.graphs is None


@torch.no_grad()
def test_unpadded_batches_and_fresh_outputs(setup):
    path, hf = setup
    model, _ = graph_model(path, buckets=ONE_BUCKET)
    ids = torch.randint(1, 99, (2, 6))
    first = model(ids)
    expected = hf_reference(hf, ids, None, None).last_hidden_state
    assert max_abs_error(first.last_hidden_state, expected) <= 1e-5
    second = model(torch.randint(1, 99, (2, 6)))
    # The first result is a copy, not a view of the graph's buffer the replay overwrote.
    assert max_abs_error(first.last_hidden_state, expected) <= 1e-5
    assert not torch.equal(first.last_hidden_state, second.last_hidden_state)
    assert model.graphs.replays == 2


def test_bucket_ladder():
    buckets = GraphBuckets(tokens=(16, 64, 256), sequences=(1, 4, 16), lengths=(8, 32, 128))
    assert buckets.select(1, 1, 1) == (16, 1, 8)
    assert buckets.select(16, 2, 9) == (16, 4, 16)  # no longer than the token bucket
    assert buckets.select(17, 4, 9) == (64, 4, 32)
    assert buckets.select(256, 16) == (256, 16, 128)  # the longest the tokens allow
    assert buckets.select(257, 1) is None and buckets.select(8, 17) is None
    assert buckets.select(200, 1, 129) is None
    with pytest.raises(ValueError, match="strictly ascending"):
        GraphBuckets(tokens=(64, 16))
    with pytest.raises(ValueError, match="positive ints"):
        GraphBuckets(sequences=(0, 4))


@torch.no_grad()
def test_lru_eviction_and_warmup(setup):
    path, _ = setup
    buckets = GraphBuckets((8, 16, 32), (1, 2, 4), (8,))
    model, capture = graph_model(path, buckets=buckets, max_graphs=2)
    assert model.graphs.warmup([(8, 1), (20, 3, 7)]) == [(8, 1, 8), (32, 4, 8)]
    assert capture.captures == 2
    model(torch.randint(1, 99, (1, 8)))  # (8, 1, 8) is used: (32, 4, 8) is now the oldest
    model(torch.randint(1, 99, (2, 7)))  # (16, 2, 8) captured, (32, 4, 8) evicted
    assert model.graphs.captured == [(8, 1, 8), (16, 2, 8)] and capture.captures == 3
    model(torch.randint(1, 99, (3, 6)))  # (32, 4, 8) again: captured anew, (8, 1, 8) goes
    assert model.graphs.captured == [(16, 2, 8), (32, 4, 8)] and capture.captures == 4
    with pytest.raises(ValueError, match="beyond the bucket ladder"):
        model.graphs.warmup([(33, 1)])


@torch.no_grad()
def test_batches_beyond_the_ladder_run_eagerly(setup):
    path, hf = setup
    model, capture = graph_model(path, buckets=GraphBuckets((8,), (2,), (8,)))
    ids = torch.randint(1, 99, (3, 4))  # 3 sequences > 2
    out = model(ids)
    ref = hf_reference(hf, ids, None, None)
    assert max_abs_error(out.last_hidden_state, ref.last_hidden_state) <= 1e-5
    hidden = model(ids[:1], output_hidden_states=True)  # hidden states: eager too
    assert len(hidden.hidden_states) == model.config.num_hidden_layers + 1
    assert capture.captures == 0 and model.graphs.eager_fallbacks == 1


@torch.no_grad()
def test_concurrent_callers_get_their_own_results(setup):
    path, hf = setup
    model, _ = graph_model(path, buckets=ONE_BUCKET)  # every call replays the same graph
    inputs = [torch.randint(1, 99, (2, 3 + i)) for i in range(4)]
    expected = [hf_reference(hf, ids, None, None).last_hidden_state for ids in inputs]
    results: dict[int, torch.Tensor] = {}
    errors = []

    def call(i):
        try:
            with torch.no_grad():
                for _ in range(2):
                    results[i] = model(inputs[i]).last_hidden_state
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for i, ref in enumerate(expected):
        assert max_abs_error(results[i], ref) <= 1e-5
    assert model.graphs.replays == 2 * len(inputs)


@torch.no_grad()
def test_heads_get_the_graph_path(tmp_path):
    from bertfast.heads import BertForSequenceClassification

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=99,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=3,
    )
    hf = transformers.BertForSequenceClassification(config).eval()
    hf.save_pretrained(tmp_path)
    head = BertForSequenceClassification.from_pretrained(tmp_path, backend="triton").eval()
    capture = RecordingCapture()
    head.bert.enable_cuda_graphs(capture=capture, buckets=GraphBuckets((32,), (4,), (8,)))
    ids = torch.randint(1, 99, (3, 7))
    mask = mixed_mask(3, 7, seed=4).long()
    logits = head(input_ids=ids, attention_mask=mask).logits
    ref = hf(input_ids=ids, attention_mask=mask).logits
    assert max_abs_error(logits, ref) <= 1e-5
    assert capture.captures == 1 and head.bert.graphs.replays == 1


def test_graphs_are_off_where_they_cannot_run(setup):
    path, _ = setup
    model = BertModel.from_pretrained(path, backend="triton")
    assert model.cuda_graphs  # the default
    with torch.no_grad():
        model.eval()(torch.randint(1, 99, (1, 4)))
    assert model.graphs is None  # on the CPU no runner is made
    torch_model, capture = BertModel.from_pretrained(path, backend="torch").eval(), None
    torch_model.enable_cuda_graphs(capture=RecordingCapture())
    with torch.no_grad():
        torch_model(torch.randint(1, 99, (1, 4)))
    assert torch_model.graphs.replays == 0  # the torch backend is the eager reference
    model.enable_cuda_graphs(capture=RecordingCapture())
    model(torch.randint(1, 99, (1, 4)))  # grad enabled: eager
    assert model.graphs.replays == 0 and capture is None


def test_cuda_graph_encoder_keeps_its_api(setup):
    path, hf = setup
    model = BertModel.from_pretrained(path, backend="triton").eval()
    with pytest.raises(RuntimeError, match="CUDA graphs need the model on a CUDA device"):
        CUDAGraphEncoder(model)
    encoder = CUDAGraphEncoder(model, capture=RecordingCapture())
    ids = torch.randint(1, 99, (2, 5))
    out = encoder(ids)
    assert max_abs_error(out.last_hidden_state, hf_reference(hf, ids, None, None)[0]) <= 1e-5
    assert encoder.captured_shapes == [(64, 2, 32)]
    with pytest.raises(ValueError, match="input_ids contains 99"):
        encoder(torch.tensor([[1, 99]]))
    model.train()
    with pytest.raises(ValueError, match="inference only"):
        CUDAGraphEncoder(model, capture=RecordingCapture())
