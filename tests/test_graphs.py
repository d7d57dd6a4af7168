"""CUDAGraphEncoder's buffer handling on the CPU (a capture that replays by re-running)."""

import pytest
import torch

from bertfast import BertModel
from bertfast.graphs import CUDAGraphEncoder
from tests.helpers import max_abs_error, random_hf_bert

transformers = pytest.importorskip("transformers")


class RecordingCapture:
    """Stands in for CUDA graph capture: records each capture, replays by re-running."""

    def __init__(self):
        self.captures = 0
        self.replays = 0

    def __call__(self, fn):
        self.captures += 1
        fn()

        def replay():
            self.replays += 1
            fn()

        return replay


@pytest.fixture(scope="module", params=["torch", "triton"])
def setup(request, tmp_path_factory):
    path, hf = random_hf_bert(tmp_path_factory.mktemp("hf"))
    model = BertModel.from_pretrained(path, backend=request.param)
    return model, hf


def test_replays_match_transformers_including_padded_positions(setup):
    model, hf = setup
    capture = RecordingCapture()
    encoder = CUDAGraphEncoder(model, capture=capture)
    ids = torch.randint(1, 99, (3, 9))
    types = torch.randint(0, 2, (3, 9))
    for lengths in ([9, 5, 1], [2, 9, 7]):  # same shape, new inputs: one capture
        mask = (torch.arange(9)[None, :] < torch.tensor(lengths)[:, None]).long()
        out = encoder(ids, attention_mask=mask, token_type_ids=types)
        with torch.no_grad():
            ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        everywhere = torch.ones_like(mask)
        assert max_abs_error(out.last_hidden_state, ref.last_hidden_state, everywhere) <= 1e-4
        assert max_abs_error(out.pooler_output, ref.pooler_output) <= 1e-4
        ids = torch.randint(1, 99, (3, 9))
    assert (capture.captures, capture.replays) == (1, 2)


def test_unpadded_input_and_fresh_outputs(setup):
    model, _ = setup
    encoder = CUDAGraphEncoder(model, capture=RecordingCapture())
    ids = torch.randint(1, 99, (2, 6))
    first = encoder(ids)
    expected = model(ids).last_hidden_state
    assert max_abs_error(first.last_hidden_state, expected) <= 1e-5
    second = encoder(torch.randint(1, 99, (2, 6)))
    # The first result is a copy, not a view of the graph's buffer that the replay overwrote.
    assert max_abs_error(first.last_hidden_state, expected) <= 1e-5
    assert not torch.equal(first.last_hidden_state, second.last_hidden_state)


def test_one_graph_per_shape_and_eviction(setup):
    model, _ = setup
    capture = RecordingCapture()
    encoder = CUDAGraphEncoder(model, max_graphs=2, capture=capture)
    for shape in [(1, 4), (2, 4), (1, 4), (1, 5)]:
        encoder(torch.randint(1, 99, shape))
    assert capture.captures == 3
    assert encoder.captured_shapes == [(2, 4), (1, 5)]


def test_refusals(setup):
    model, _ = setup
    with pytest.raises(RuntimeError, match="CUDA graphs need the model on a CUDA device"):
        CUDAGraphEncoder(model)
    with pytest.raises(ValueError, match="max_graphs must be >= 1"):
        CUDAGraphEncoder(model, max_graphs=0, capture=RecordingCapture())
    encoder = CUDAGraphEncoder(model, capture=RecordingCapture())
    with pytest.raises(ValueError, match="input_ids contains 99"):
        encoder(torch.tensor([[1, 99]]))
    model.train()
    try:
        with pytest.raises(ValueError, match="inference only"):
            CUDAGraphEncoder(model, capture=RecordingCapture())
    finally:
        model.eval()
