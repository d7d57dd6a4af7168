"""Tiny sentence-transformers model directories, saved by sentence-transformers itself, for
comparing SentenceEncoder against ``SentenceTransformer(dir).encode``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def tiny_bert_dir(
    path: Path,
    minilm_dir: str | Path,
    cased: bool = False,
    max_position_embeddings: int = 512,
    model_max_length: int | None = None,
    seed: int = 0,
) -> Path:
    """A random 2-layer BertModel with MiniLM's vocabulary (uncased, or cased) saved to ``path``."""
    import transformers

    from tests.helpers import randomize_biases_and_norms

    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=max_position_embeddings,
    )
    model = transformers.BertModel(config).eval()
    randomize_biases_and_norms(model)
    model.save_pretrained(path)
    if cased:
        kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
        tokenizer = transformers.BertTokenizerFast(
            str(Path(minilm_dir) / "vocab.txt"), do_lower_case=False, **kwargs
        )
        tokenizer.save_pretrained(path)
    else:
        for name in TOKENIZER_FILES:
            shutil.copy(Path(minilm_dir) / name, path / name)
        if model_max_length is not None:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
            tokenizer.model_max_length = model_max_length
            tokenizer.save_pretrained(path)
    return path


def sentence_transformers_dir(
    path: Path,
    minilm_dir: str | Path,
    after_pooling=(),
    pooling_mode="mean",
    include_prompt: bool = True,
    max_seq_length: int | None = None,
    do_lower_case: bool = False,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    **bert_kwargs,
) -> Path:
    """Transformer → Pooling → ``after_pooling`` modules, saved with SentenceTransformer.save."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    bert = tiny_bert_dir(path.parent / (path.name + "_bert"), minilm_dir, **bert_kwargs)
    transformer = modules.Transformer(str(bert))
    pooling = modules.Pooling(32, pooling_mode=pooling_mode, include_prompt=include_prompt)
    model = SentenceTransformer(
        modules=[transformer, pooling, *after_pooling],
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        device="cpu",
    )
    model.save(str(path))
    # Written as the hub's models carry them (sentence-transformers 6 would instead bake them
    # into the saved tokenizer); sentence-transformers applies both when loading.
    settings = {"max_seq_length": max_seq_length, "do_lower_case": do_lower_case}
    (path / "sentence_bert_config.json").write_text(json.dumps(settings))
    return path
