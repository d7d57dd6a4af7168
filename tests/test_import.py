"""The package imports and runs its CPU path without touching a GPU driver."""

import subprocess
import sys

CODE = """
import torch, bertfast
from bertfast import BertConfig, BertModel
import bertfast.cli, bertfast.ops, bertfast.sentence, bertfast.weights
config = BertConfig.preset("transformer-base", num_hidden_layers=1, vocab_size=100)
model = BertModel(config).eval()
out = model(torch.randint(0, 100, (2, 5)))
assert out.last_hidden_state.shape == (2, 5, 512)
assert not torch.cuda.is_initialized(), "a CUDA context was created"
print("ok", model.backend)
"""


def test_import_and_cpu_path_without_gpu():
    result = subprocess.run(
        [sys.executable, "-c", CODE],
        capture_output=True,
        text=True,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok torch"
