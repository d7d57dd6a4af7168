"""CUDAGraphEncoder on a real GPU: replays equal eager forwards, for each kernel backend."""

import pytest
import torch

from bertfast import BertConfig, BertModel, ops
from bertfast.graphs import CUDAGraphEncoder
from tests.helpers import max_abs_error

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("backend", ["triton", "cuda", "torch"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_graph_replay_equals_eager(backend, dtype):
    if ops.backend_report("cuda")[backend] is not None:
        pytest.skip(ops.backend_report("cuda")[backend])
    config = BertConfig.preset("bert-base", num_hidden_layers=4)
    torch.manual_seed(0)
    model = BertModel(config, backend=backend, device="cuda", dtype=dtype).eval()
    encoder = CUDAGraphEncoder(model)
    for batch, seq in [(1, 128), (8, 77), (1, 128)]:
        ids = torch.randint(0, config.vocab_size, (batch, seq), device="cuda")
        mask = torch.ones_like(ids)
        mask[-1, seq // 2 :] = 0
        replayed = encoder(ids, attention_mask=mask)
        with torch.inference_mode():
            eager = model(ids, attention_mask=mask, compute_padded_positions=True)
        # Same kernels on the same inputs; cuBLAS may pick another algorithm inside a graph.
        assert max_abs_error(replayed.last_hidden_state, eager.last_hidden_state) <= 3e-2
        assert max_abs_error(replayed.pooler_output, eager.pooler_output) <= 3e-2
    assert sorted(encoder.captured_shapes) == [(1, 128), (8, 77)]
