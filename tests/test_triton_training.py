"""Training a model on the Triton backend: what is refused names the op or setting that lacks a
backward."""

import pytest
import torch

from bertfast import BertModel
from tests.helpers import random_hf_bert


def test_training_refusal_names_dropout_and_the_op_without_backward(tmp_path):
    path, _ = random_hf_bert(tmp_path)  # dropout 0.1 as transformers' default
    model = BertModel.from_pretrained(path, backend="triton").train()
    with pytest.raises(NotImplementedError) as refused:
        model(torch.randint(1, 99, (1, 4)))
    message = str(refused.value)
    assert "hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1; set both to 0" in message
    assert "the triton kernel 'attention' has no backward pass" in message
    for op in ("embedding_layer_norm", "bias_residual_layer_norm", "bias_gelu"):
        assert op not in message


def test_training_without_dropout_refuses_only_attention(tmp_path):
    path, _ = random_hf_bert(tmp_path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertModel.from_pretrained(path, backend="triton").train()
    with pytest.raises(NotImplementedError, match="^cannot train on backend='triton': the triton "
                       "kernel 'attention' has no backward pass; train with backend='torch'$"):  # fmt: skip
        model(torch.randint(1, 99, (1, 4)))
