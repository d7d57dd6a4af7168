"""bertfast: a fast, faithful BERT encoder on fused Triton and CUDA kernels."""

from bertfast._version import __version__
from bertfast.config import BertConfig
from bertfast.heads import (
    BertForMaskedLM,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from bertfast.model import BertModel, BertModelOutput
from bertfast.ops import backend_report, resolve_backend
from bertfast.pipelines import pipeline
from bertfast.sentence import SentenceEncoder, SentenceTransformer, quantize_embeddings
from bertfast.tokenizer import BertTokenizer

# The Hugging Face bridge imports transformers: loaded on first use only.
_HF_BRIDGE = ("accelerate", "from_hf", "register_attention")


def __getattr__(name: str):
    if name in _HF_BRIDGE:
        from bertfast import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'bertfast' has no attribute {name!r}")


__all__ = [
    "BertConfig",
    "BertForMaskedLM",
    "BertForNextSentencePrediction",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "BertModelOutput",
    "BertTokenizer",
    "SentenceEncoder",
    "SentenceTransformer",
    "__version__",
    "accelerate",
    "from_hf",
    "register_attention",
    "backend_report",
    "pipeline",
    "quantize_embeddings",
    "resolve_backend",
]
