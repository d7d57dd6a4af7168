"""bertfast: a fast, faithful BERT encoder on fused Triton and CUDA kernels."""

from bertfast.config import BertConfig
from bertfast.model import BertModel, BertModelOutput
from bertfast.ops import backend_report, resolve_backend

__version__ = "0.1.0"

__all__ = [
    "BertConfig",
    "BertModel",
    "BertModelOutput",
    "__version__",
    "backend_report",
    "resolve_backend",
]
