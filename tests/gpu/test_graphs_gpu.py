"""The packed CUDA-graph path on a real GPU: replays equal eager forwards for each kernel
backend, with and without fused GEMM epilogues; buckets are shared across batch shapes."""

import pytest
import torch

from bertfast import BertConfig, BertModel, ops
from bertfast.graphs import GraphBuckets
from tests.helpers import max_abs_error

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("backend,fused", [("triton", False), ("triton", True), ("cuda", False)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_graph_replay_equals_eager(backend, fused, dtype):
    if ops.backend_report("cuda")[backend] is not None:
        pytest.skip(ops.backend_report("cuda")[backend])
    config = BertConfig.preset("bert-base", num_hidden_layers=4)
    torch.manual_seed(0)
    model = BertModel(config, backend=backend, device="cuda", dtype=dtype).eval()
    model.fused_epilogues = fused
    eager = BertModel(config, backend=backend, device="cuda", dtype=dtype, cuda_graphs=False)
    eager.load_state_dict(model.state_dict())
    eager.eval().fused_epilogues = fused
    for batch, seq in [(1, 128), (8, 77), (1, 128), (32, 128)]:
        ids = torch.randint(0, config.vocab_size, (batch, seq), device="cuda")
        mask = torch.ones_like(ids)
        mask[-1, seq // 2 :] = 0
        with torch.inference_mode():
            replayed = model(ids, attention_mask=mask)
            reference = eager(ids, attention_mask=mask)
        real = mask.bool()
        # Same kernels on the same inputs; cuBLAS may pick another algorithm inside a graph.
        err = max_abs_error(replayed.last_hidden_state, reference.last_hidden_state, real)
        assert err <= 3e-2
        assert max_abs_error(replayed.pooler_output, reference.pooler_output) <= 3e-2
    assert model.graphs.replays == 4
    # b1: one row of 64 real tokens; b8 x 77: 577 tokens; b32 x 128: 4032 tokens.
    assert model.graphs.captured == [(1024, 8, 128), (64, 1, 64), (4096, 32, 128)]


def test_warmup_and_shared_pool():
    if ops.backend_report("cuda")["triton"] is not None:
        pytest.skip(ops.backend_report("cuda")["triton"])
    config = BertConfig.preset("bert-base", num_hidden_layers=2)
    model = BertModel(config, backend="triton", device="cuda", dtype=torch.bfloat16).eval()
    model.enable_cuda_graphs(buckets=GraphBuckets((128, 512), (1, 4), (128,)), max_graphs=2)
    assert model.graphs.warmup([(128, 1), (400, 4, 100)]) == [(128, 1, 128), (512, 4, 128)]
    ids = torch.randint(0, config.vocab_size, (4, 100), device="cuda")
    with torch.inference_mode():
        model(ids)
    assert model.graphs.replays == 1 and len(model.graphs.captured) == 2
