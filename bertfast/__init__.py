"""bertfast: a fast, faithful BERT encoder on fused Triton and CUDA kernels."""

from bertfast.config import BertConfig
from bertfast.model import BertModel, BertModelOutput
from bertfast.ops import backend_report, resolve_backend
from bertfast.sentence import SentenceEncoder
from bertfast.tokenizer import BertTokenizer

__version__ = "0.1.0"

__all__ = [
    "BertConfig",
    "BertModel",
    "BertModelOutput",
    "BertTokenizer",
    "SentenceEncoder",
    "__version__",
    "backend_report",
    "resolve_backend",
]
