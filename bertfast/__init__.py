"""bertfast: a fast, faithful BERT encoder on fused Triton and CUDA kernels."""

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
from bertfast.sentence import SentenceEncoder
from bertfast.tokenizer import BertTokenizer

__version__ = "0.1.0"

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
    "__version__",
    "backend_report",
    "pipeline",
    "resolve_backend",
]
