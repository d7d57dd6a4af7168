"""BERT WordPiece tokenizer built on the Hugging Face ``tokenizers`` library.

Outputs (``input_ids``, ``token_type_ids``, ``attention_mask``) match
``transformers.BertTokenizer`` for the same arguments, without depending on ``transformers``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import (
    AddedToken,
    Encoding,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import WordPiece

__all__ = ["BatchEncoding", "BertTokenizer"]

logger = logging.getLogger(__name__)

VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# transformers' sentinels for "no model_max_length known" (VERY_LARGE_INTEGER / LARGE_INTEGER).
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)

PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")
TENSOR_TYPES = (None, "pt")
# tokenizer_class values that transformers loads as its BertTokenizer.
BERT_TOKENIZER_CLASSES = ("BertTokenizer", "BertTokenizerFast")

# Order of transformers' SPECIAL_TOKENS_ATTRIBUTES, which fixes the order of all_special_ids.
SPECIAL_TOKEN_NAMES = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
DEFAULT_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


class BatchEncoding(dict):
    """Tokenizer output: a ``dict`` whose keys are also readable as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: Any) -> BatchEncoding:
        """Return a copy with every tensor value moved to ``device``."""
        return BatchEncoding({k: v.to(device) if hasattr(v, "to") else v for k, v in self.items()})


def _token_content(value: Any) -> str:
    # tokenizer_config.json may store a special token as a plain string or an AddedToken dict.
    if isinstance(value, dict):
        return str(value["content"])
    return str(value)


def _ids_to_list(ids: Any) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


class BertTokenizer:
    """Fast BERT WordPiece tokenizer with a ``transformers``-compatible call interface."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        model_max_length: int = 512,
        special_tokens: dict[str, str] | None = None,
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        """Wrap a ready ``tokenizers.Tokenizer``; prefer ``from_pretrained`` / ``from_vocab``."""
        self._tokenizer = tokenizer
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        # Truncation and padding are per-call settings on the shared backend.
        self._lock = threading.Lock()
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.model_max_length = int(model_max_length)
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self._special_tokens = {**DEFAULT_SPECIAL_TOKENS, **(special_tokens or {})}
        self._warned_too_long = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_vocab(
        cls,
        vocab_file: str | os.PathLike[str],
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        model_max_length: int = 512,
    ) -> BertTokenizer:
        """Build a tokenizer from a BERT ``vocab.txt`` (one token per line, id = line number)."""
        return cls._from_vocab(
            vocab_file,
            do_lower_case=do_lower_case,
            strip_accents=strip_accents,
            tokenize_chinese_chars=tokenize_chinese_chars,
            model_max_length=model_max_length,
            special_tokens=dict(DEFAULT_SPECIAL_TOKENS),
            clean_up_tokenization_spaces=False,
        )

    @classmethod
    def _from_vocab(
        cls,
        vocab_file: str | os.PathLike[str],
        *,
        do_lower_case: bool,
        strip_accents: bool | None,
        tokenize_chinese_chars: bool,
        model_max_length: int,
        special_tokens: dict[str, str],
        clean_up_tokenization_spaces: bool,
    ) -> BertTokenizer:
        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise FileNotFoundError(f"vocab file not found: {vocab_file}")
        vocab = WordPiece.read_file(str(vocab_file))
        unk, cls_tok, sep = (special_tokens[k] for k in ("unk_token", "cls_token", "sep_token"))
        tok = Tokenizer(
            WordPiece(
                vocab,
                unk_token=unk,
                continuing_subword_prefix="##",
                max_input_chars_per_word=100,
            )
        )
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents,
            lowercase=do_lower_case,
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.add_special_tokens(
            [
                AddedToken(special_tokens[name], special=True, normalized=False)
                for name in SPECIAL_TOKEN_NAMES
            ]
        )
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls_tok}:0 $A:0 {sep}:0",
            pair=f"{cls_tok}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls_tok, tok.token_to_id(cls_tok)), (sep, tok.token_to_id(sep))],
        )
        return cls(
            tok,
            do_lower_case=do_lower_case,
            strip_accents=strip_accents,
            tokenize_chinese_chars=tokenize_chinese_chars,
            model_max_length=model_max_length,
            special_tokens=special_tokens,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> BertTokenizer:
        """Load from a local directory holding ``tokenizer.json`` and/or ``vocab.txt``.

        ``tokenizer_config.json`` is read when present. Truncation and padding baked into
        ``tokenizer.json`` are ignored, as ``transformers`` does.
        """
        from bertfast.model_dirs import MINILM_NAMES, resolve_model_dir

        # The bundled model's name resolves here as it does for BertModel.from_pretrained.
        directory = resolve_model_dir(path) if str(path) in MINILM_NAMES else Path(path)
        tokenizer_file = directory / TOKENIZER_FILE
        vocab_file = directory / VOCAB_FILE
        if not directory.is_dir() or not (tokenizer_file.is_file() or vocab_file.is_file()):
            raise FileNotFoundError(
                f"{str(path)!r} is not a directory containing {TOKENIZER_FILE} or {VOCAB_FILE}"
            )

        config: dict[str, Any] = {}
        config_file = directory / TOKENIZER_CONFIG_FILE
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{config_file}: not valid JSON ({exc})") from None
            if not isinstance(config, dict):
                raise ValueError(
                    f"{config_file}: expected a JSON object, got {type(config).__name__}"
                )
        special_tokens = {
            name: _token_content(config[name]) if config.get(name) is not None else default
            for name, default in DEFAULT_SPECIAL_TOKENS.items()
        }
        model_max_length = int(config.get("model_max_length") or VERY_LARGE_INTEGER)
        clean_up = bool(config.get("clean_up_tokenization_spaces", False))

        if not tokenizer_file.is_file():
            return cls._from_vocab(
                vocab_file,
                do_lower_case=config.get("do_lower_case", True),
                strip_accents=config.get("strip_accents"),
                tokenize_chinese_chars=config.get("tokenize_chinese_chars", True),
                model_max_length=model_max_length,
                special_tokens=special_tokens,
                clean_up_tokenization_spaces=clean_up,
            )

        try:
            tok = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            raise ValueError(f"{tokenizer_file}: not a readable tokenizer file ({exc})") from None
        norm_state: dict[str, Any] = {}
        if tok.normalizer is not None:
            norm_state = json.loads(tok.normalizer.__getstate__())
        is_bert_normalizer = norm_state.get("type") == "BertNormalizer"
        if config.get("tokenizer_class") in BERT_TOKENIZER_CLASSES:
            # transformers 5's BertTokenizer builds its normalizer from tokenizer_config.json
            # (its defaults for missing keys) and ignores the one in tokenizer.json.
            do_lower_case = config.get("do_lower_case", True)
            strip_accents = config.get("strip_accents")
            chinese = config.get("tokenize_chinese_chars", True)
            tok.normalizer = normalizers.BertNormalizer(
                clean_text=True,
                handle_chinese_chars=chinese,
                strip_accents=strip_accents,
                lowercase=do_lower_case,
            )
            norm_state = json.loads(tok.normalizer.__getstate__())
        # tokenizer_config.json wins over tokenizer.json's normalizer, as in transformers.
        do_lower_case = config.get("do_lower_case", norm_state.get("lowercase", True))
        strip_accents = config.get("strip_accents", norm_state.get("strip_accents"))
        chinese = config.get("tokenize_chinese_chars", norm_state.get("handle_chinese_chars", True))
        if is_bert_normalizer and (
            do_lower_case != norm_state.get("lowercase")
            or strip_accents != norm_state.get("strip_accents")
            or chinese != norm_state.get("handle_chinese_chars")
        ):
            tok.normalizer = normalizers.BertNormalizer(
                clean_text=norm_state.get("clean_text", True),
                handle_chinese_chars=chinese,
                strip_accents=strip_accents,
                lowercase=do_lower_case,
            )
        return cls(
            tok,
            do_lower_case=do_lower_case,
            strip_accents=strip_accents,
            tokenize_chinese_chars=chinese,
            model_max_length=model_max_length,
            special_tokens=special_tokens,
            clean_up_tokenization_spaces=clean_up,
        )

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> tuple[str, ...]:
        """Write ``vocab.txt``, ``tokenizer.json`` and ``tokenizer_config.json``; return paths."""
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{str(directory)!r} exists and is not a directory")
        directory.mkdir(parents=True, exist_ok=True)

        vocab = self._tokenizer.get_vocab(with_added_tokens=False)
        vocab_path = directory / VOCAB_FILE
        with open(vocab_path, "w", encoding="utf-8") as fh:
            for token, _ in sorted(vocab.items(), key=lambda item: item[1]):
                fh.write(token + "\n")

        tokenizer_path = directory / TOKENIZER_FILE
        self._tokenizer.save(str(tokenizer_path))

        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "model_max_length": self.model_max_length,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            **self._special_tokens,
        }
        config_path = directory / TOKENIZER_CONFIG_FILE
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return str(vocab_path), str(tokenizer_path), str(config_path)

    def lowercase_inputs(self) -> None:
        """Lowercase every input before normalising, as sentence-transformers does for a
        Transformer module with ``do_lower_case``: a Lowercase step is put in front of the
        normalizer unless it already lowercases (a BertNormalizer's own lowercasing also strips
        accents, which this does not)."""
        normalizer = self._tokenizer.normalizer
        steps = [] if normalizer is None else [normalizer]
        if isinstance(normalizer, normalizers.Sequence):
            steps = list(normalizer)
        if any(isinstance(n, normalizers.Lowercase) for n in steps):
            return
        self._tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), *steps])

    # ------------------------------------------------------------------ vocabulary

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (no truncation or padding configured)."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """Token to id mapping, added tokens included."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Map a token (or tokens) to ids; unknown tokens map to ``unk_token_id``."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> int:
        index = self._tokenizer.token_to_id(token)
        return self.unk_token_id if index is None else index

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | None | list[str | None]:
        """Map an id (or ids) to tokens; an id outside the vocabulary gives ``None``."""
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(i) for i in _ids_to_list(ids) if i not in skip]

    @property
    def unk_token(self) -> str:
        return self._special_tokens["unk_token"]

    @property
    def sep_token(self) -> str:
        return self._special_tokens["sep_token"]

    @property
    def pad_token(self) -> str:
        return self._special_tokens["pad_token"]

    @property
    def cls_token(self) -> str:
        return self._special_tokens["cls_token"]

    @property
    def mask_token(self) -> str:
        return self._special_tokens["mask_token"]

    @property
    def unk_token_id(self) -> int | None:
        return self._tokenizer.token_to_id(self.unk_token)

    @property
    def sep_token_id(self) -> int | None:
        return self._tokenizer.token_to_id(self.sep_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._tokenizer.token_to_id(self.pad_token)

    @property
    def cls_token_id(self) -> int | None:
        return self._tokenizer.token_to_id(self.cls_token)

    @property
    def mask_token_id(self) -> int | None:
        return self._tokenizer.token_to_id(self.mask_token)

    @property
    def all_special_tokens(self) -> list[str]:
        """Special tokens in ``transformers`` order (unk, sep, pad, cls, mask)."""
        return [self._special_tokens[name] for name in SPECIAL_TOKEN_NAMES]

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of ``all_special_tokens``, same order."""
        ids = (self._tokenizer.token_to_id(t) for t in self.all_special_tokens)
        return [i for i in ids if i is not None]

    # ------------------------------------------------------------------ encoding

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
        return_offsets_mapping: bool = False,
    ) -> BatchEncoding:
        """Encode a text (or pair) or a batch of them into model inputs.

        A single ``str`` gives flat lists, a list gives lists of lists; with
        ``return_tensors="pt"`` values are ``torch.long`` tensors of shape (batch, length).
        ``return_offsets_mapping`` adds ``offset_mapping``: each token's (start, end) character
        span in its text, (0, 0) for special and padding tokens, as transformers gives it.
        """
        if not isinstance(return_offsets_mapping, bool):
            raise TypeError(
                "return_offsets_mapping must be a bool, got "
                f"{type(return_offsets_mapping).__name__}"
            )
        if return_tensors not in TENSOR_TYPES:
            raise ValueError(
                f"return_tensors={return_tensors!r} is not supported; allowed: {TENSOR_TYPES}"
            )
        batch, is_batched = self._as_batch(text, text_pair)
        padding_strategy, truncation_strategy, max_length = self._resolve_strategies(
            padding, truncation, max_length
        )
        encodings = self._encode(
            batch,
            add_special_tokens=add_special_tokens,
            truncation_strategy=truncation_strategy,
            max_length=max_length,
            padding_strategy=padding_strategy,
        )
        if max_length is None:
            self._warn_if_too_long(encodings)

        data: dict[str, Any] = {
            "input_ids": [e.ids for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
        }
        if return_offsets_mapping:
            data["offset_mapping"] = [list(e.offsets) for e in encodings]
        if return_tensors == "pt":
            lengths = {len(ids) for ids in data["input_ids"]}
            if len(lengths) > 1:
                raise ValueError(
                    f"cannot build a tensor from sequences of different lengths {sorted(lengths)}; "
                    "pass padding=True (and truncation=True if needed)"
                )
            import torch

            data = {k: torch.tensor(v, dtype=torch.long) for k, v in data.items()}
        elif not is_batched:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data)

    def encode_with_offsets(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        return_overflowing_tokens: bool = False,
        add_special_tokens: bool = True,
    ) -> list[Encoding]:
        """Encode without padding and return the raw ``tokenizers.Encoding`` objects.

        Each ``Encoding`` carries ``offsets``, ``word_ids`` and ``sequence_ids`` for mapping
        tokens back to characters. One ``Encoding`` per input (a single ``str`` gives a list of
        one); when truncation cuts an input, the remaining windows (overlapping by ``stride``
        tokens) are in its ``overflowing``. With ``return_overflowing_tokens=True`` those windows
        are returned inline, each input's first window followed by its overflow.
        """
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
            raise ValueError(f"stride must be a non-negative int, got {stride!r}")
        batch, _ = self._as_batch(text, text_pair)
        _, truncation_strategy, max_length = self._resolve_strategies(False, truncation, max_length)
        encodings = self._encode(
            batch,
            add_special_tokens=add_special_tokens,
            truncation_strategy=truncation_strategy,
            max_length=max_length,
            padding_strategy="do_not_pad",
            stride=stride,
        )
        if return_overflowing_tokens:
            return [w for e in encodings for w in (e, *e.overflowing)]
        return encodings

    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into WordPiece tokens, without special tokens."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        (encoding,) = self._encode(
            [text],
            add_special_tokens=False,
            truncation_strategy="do_not_truncate",
            max_length=None,
            padding_strategy="do_not_pad",
        )
        return encoding.tokens

    @staticmethod
    def _as_batch(text: Any, text_pair: Any) -> tuple[list[str | tuple[str, str]], bool]:
        if isinstance(text, str):
            if text_pair is not None and not isinstance(text_pair, str):
                raise TypeError(
                    f"text_pair must be a str when text is a str, got {type(text_pair).__name__}"
                )
            # transformers treats an empty text_pair as absent for a single input.
            return ([(text, text_pair)] if text_pair else [text]), False

        if not isinstance(text, (list, tuple)):
            raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
        if not text:
            raise ValueError("text is an empty list; pass at least one string")
        bad = [i for i, t in enumerate(text) if not isinstance(t, str)]
        if bad:
            raise TypeError(
                f"text must be a str or a list of str, got {type(text[bad[0]]).__name__} "
                f"at index {bad[0]}"
            )
        if text_pair is None:
            return list(text), True
        if not isinstance(text_pair, (list, tuple)):
            raise TypeError(
                "text_pair must be a list of str of the same length as text when text is a list, "
                f"got {type(text_pair).__name__}"
            )
        if len(text_pair) != len(text):
            raise ValueError(
                f"text has {len(text)} items but text_pair has {len(text_pair)}; "
                "they must have the same length"
            )
        bad = [i for i, t in enumerate(text_pair) if not isinstance(t, str)]
        if bad:
            raise TypeError(
                f"text_pair must be a list of str, got {type(text_pair[bad[0]]).__name__} "
                f"at index {bad[0]}"
            )
        return list(zip(text, text_pair)), True

    def _resolve_strategies(
        self, padding: Any, truncation: Any, max_length: Any
    ) -> tuple[str, str, int | None]:
        """Mirror transformers' ``_get_padding_truncation_strategies``."""
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 0
        ):
            raise ValueError(f"max_length must be None or a non-negative int, got {max_length!r}")

        # Only the literal False (not "do_not_pad") turns a bare max_length into truncation.
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"

        if padding is True:
            if max_length is not None and truncation in (None, False, "do_not_truncate"):
                warnings.warn(
                    "`max_length` is ignored when `padding`=`True` and there is no truncation "
                    "strategy. To pad to max length, use `padding='max_length'`.",
                    stacklevel=3,
                )
            padding_strategy = "longest"
        elif padding is False:
            padding_strategy = "do_not_pad"
        elif isinstance(padding, str) and padding in PADDING_STRATEGIES:
            padding_strategy = padding
        else:
            raise ValueError(
                f"padding={padding!r} is not valid; allowed: True, False, "
                + ", ".join(repr(s) for s in PADDING_STRATEGIES)
            )

        if truncation is True:
            truncation_strategy = "longest_first"
        elif truncation is None or truncation is False:
            truncation_strategy = "do_not_truncate"
        elif isinstance(truncation, str) and truncation in TRUNCATION_STRATEGIES:
            truncation_strategy = truncation
        else:
            raise ValueError(
                f"truncation={truncation!r} is not valid; allowed: True, False, None, "
                + ", ".join(repr(s) for s in TRUNCATION_STRATEGIES)
            )

        if max_length is None:
            has_limit = self.model_max_length <= LARGE_INTEGER
            if padding_strategy == "max_length":
                if has_limit:
                    max_length = self.model_max_length
                else:
                    padding_strategy = "do_not_pad"
            if truncation_strategy != "do_not_truncate":
                if has_limit:
                    max_length = self.model_max_length
                else:
                    truncation_strategy = "do_not_truncate"
        return padding_strategy, truncation_strategy, max_length

    def _encode(
        self,
        batch: list[str | tuple[str, str]],
        *,
        add_special_tokens: bool,
        truncation_strategy: str,
        max_length: int | None,
        padding_strategy: str,
        stride: int = 0,
    ) -> list[Encoding]:
        pad_id = self.pad_token_id
        if padding_strategy != "do_not_pad" and pad_id is None:
            raise ValueError(f"cannot pad: pad token {self.pad_token!r} is not in the vocabulary")
        with self._lock:
            try:
                if truncation_strategy != "do_not_truncate":
                    self._tokenizer.enable_truncation(
                        max_length=max_length,
                        stride=stride,
                        strategy=truncation_strategy,
                        direction="right",
                    )
                if padding_strategy != "do_not_pad":
                    self._tokenizer.enable_padding(
                        direction="right",
                        pad_id=pad_id,
                        pad_type_id=0,
                        pad_token=self.pad_token,
                        length=max_length if padding_strategy == "max_length" else None,
                    )
                try:
                    return self._tokenizer.encode_batch(
                        batch, add_special_tokens=add_special_tokens
                    )
                except BaseException as err:
                    # The Rust side panics (a BaseException, not an Exception) when the stride
                    # leaves a truncation window no room to advance.
                    if type(err).__name__ != "PanicException":
                        raise
                    raise ValueError(
                        f"stride {stride} is too large for max_length {max_length}: each "
                        "overflowing window must advance; use a smaller stride"
                    ) from None
            except Exception as err:
                # tokenizers reports truncation problems (e.g. only_second on an input without a
                # pair, or a sequence too short to cut) as a bare Exception, and only when an input
                # actually needs cutting, so they cannot be checked up front.
                if type(err) is Exception:
                    raise ValueError(
                        f"{err} (truncation={truncation_strategy!r}, max_length={max_length}, "
                        f"stride={stride})"
                    ) from err
                raise
            finally:
                self._tokenizer.no_truncation()
                self._tokenizer.no_padding()

    def _warn_if_too_long(self, encodings: list[Encoding]) -> None:
        if self._warned_too_long or self.model_max_length == 0:
            return
        longest = max(len(e.ids) for e in encodings)
        if longest > self.model_max_length:
            # Like transformers: warn once, return the sequence untruncated.
            logger.warning(
                "Token indices sequence length is longer than the specified maximum sequence "
                "length for this model (%d > %d). Running this sequence through the model will "
                "result in indexing errors; pass truncation=True to cut it.",
                longest,
                self.model_max_length,
            )
            self._warned_too_long = True

    # ------------------------------------------------------------------ decoding

    def decode(
        self,
        ids: int | Sequence[int] | Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """Turn ids (list, int or 1-D tensor) back into text, as ``transformers`` does.

        ``clean_up_tokenization_spaces`` defaults to the value from ``tokenizer_config.json``
        (``False`` when absent, the transformers 5 default).
        """
        text = self._tokenizer.decode(_ids_to_list(ids), skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces:
            text = (
                text.replace(" .", ".")
                .replace(" ?", "?")
                .replace(" !", "!")
                .replace(" ,", ",")
                .replace(" ' ", "'")
                .replace(" n't", "n't")
                .replace(" 'm", "'m")
                .replace(" 's", "'s")
                .replace(" 've", "'ve")
                .replace(" 're", "'re")
            )
        return text

    def batch_decode(
        self,
        sequences: Sequence[Sequence[int]] | Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        """``decode`` each sequence of a batch (list of lists or 2-D tensor)."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [
            self.decode(s, skip_special_tokens, clean_up_tokenization_spaces) for s in sequences
        ]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, "
            f"model_max_length={self.model_max_length}, do_lower_case={self.do_lower_case})"
        )
