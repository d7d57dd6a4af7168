"""Router-side tokenization: texts (or pairs) to model ids, with TEI's truncation rules.

Runs on a small thread pool, off the event loop. An input over the model's limit is cut
(``truncate``, from the right or the left) or refused with 413 saying its token count.
"""

from __future__ import annotations

from dataclasses import dataclass

from bertfast.serve import errors
from bertfast.tokenizer import BertTokenizer

Text = str | tuple[str, str]
DIRECTIONS = ("right", "left")


@dataclass
class Encoded:
    ids: list[int]
    type_ids: list[int]
    chars: int


def _cut_single(ids: list[int], max_length: int, direction: str) -> list[int]:
    # [CLS] body [SEP]: keep both special tokens, cut the body from one end.
    if direction == "right":
        return ids[: max_length - 1] + ids[-1:]
    return ids[:1] + ids[len(ids) - (max_length - 1) :]


class Tokenization:
    """Encodes request inputs for the model; thread-safe (the tokenizer locks itself)."""

    def __init__(self, tokenizer: BertTokenizer, max_input_length: int):
        self.tokenizer = tokenizer
        self.max_input_length = max_input_length

    def _too_long(self, index: int, count: int) -> errors.ServeError:
        return errors.validation(
            f"input {index} has {count} tokens; the model takes at most "
            f"{self.max_input_length} tokens: pass truncate=true or shorten the input",
            status=413,
        )

    def encode(self, texts: list[Text], truncate: bool, direction: str = "right") -> list[Encoded]:
        """One ``Encoded`` per input, in order; pairs get token type 1 on the second text."""
        singles = [i for i, t in enumerate(texts) if isinstance(t, str)]
        pairs = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        out: list[Encoded | None] = [None] * len(texts)
        try:
            if singles:
                enc = self.tokenizer([texts[i] for i in singles])
                for i, ids in zip(singles, enc["input_ids"]):
                    out[i] = self._fit_single(i, ids, texts[i], truncate, direction)
            if pairs:
                first = [texts[i][0] for i in pairs]
                second = [texts[i][1] for i in pairs]
                enc = self.tokenizer(first, second)
                for k, i in enumerate(pairs):
                    out[i] = self._fit_pair(
                        i, enc["input_ids"][k], enc["token_type_ids"][k], texts[i], truncate,
                        direction,
                    )  # fmt: skip
        except errors.ServeError:
            raise
        except Exception as exc:
            raise errors.ServeError(422, errors.TOKENIZER, f"tokenization failed: {exc}") from exc
        return out  # type: ignore[return-value]

    def encode_ids(
        self,
        rows: list[list[int]],
        truncate: bool,
        direction: str = "right",
        prompt: str | None = None,
    ) -> list[Encoded]:
        """Inputs given as token ids (OpenAI's token-array ``input``): the ids of a text's
        tokens without special tokens, wrapped in [CLS] ... [SEP] as tokenizing the text
        would, after the prompt's tokens; the length limit and truncation are the text's."""
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        prefix: list[int] = []
        if prompt:
            prefix = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        out = []
        for index, row in enumerate(rows):
            ids = [cls_id, *prefix, *row, sep_id]
            out.append(self._fit_single(index, ids, "", truncate, direction))
        return out

    def _fit_single(
        self, index: int, ids: list[int], text: str, truncate: bool, direction: str
    ) -> Encoded:
        if len(ids) > self.max_input_length:
            if not truncate:
                raise self._too_long(index, len(ids))
            ids = _cut_single(ids, self.max_input_length, direction)
        return Encoded(ids, [0] * len(ids), len(text))

    def _fit_pair(
        self,
        index: int,
        ids: list[int],
        types: list[int],
        pair: tuple[str, str],
        truncate: bool,
        direction: str,
    ) -> Encoded:
        chars = len(pair[0]) + len(pair[1])
        limit = self.max_input_length
        if len(ids) <= limit:
            return Encoded(ids, types, chars)
        if not truncate:
            raise self._too_long(index, len(ids))
        # How many tokens of each text survive is the tokenizer's longest-first rule; the
        # direction only says which end of each text they are taken from.
        cut = self.tokenizer(pair[0], pair[1], truncation=True, max_length=limit)
        if direction == "right":
            return Encoded(cut["input_ids"], cut["token_type_ids"], chars)
        keep_first = cut["token_type_ids"].count(0) - 2  # minus [CLS] and [SEP]
        keep_second = cut["token_type_ids"].count(1) - 1  # minus the last [SEP]
        len_first = types.count(0) - 2
        body_first = ids[1 : 1 + len_first]
        body_second = ids[2 + len_first : -1]
        first = body_first[len(body_first) - keep_first :]
        second = body_second[len(body_second) - keep_second :] if keep_second else []
        new_ids = ids[:1] + first + ids[1 + len_first : 2 + len_first] + second + ids[-1:]
        new_types = [0] * (len(first) + 2) + [1] * (len(second) + 1)
        return Encoded(new_ids, new_types, chars)

    def tokens(
        self,
        texts: list[str],
        add_special_tokens: bool,
        truncate: bool = False,
        direction: str = "right",
    ) -> list[list[dict]]:
        """TEI's /tokenize answer: id, text, special, and character offsets (null for
        special tokens). The limit is /embed's: at most ``max_input_length`` tokens with the
        special tokens, two fewer without them (what a model input can hold besides them);
        longer inputs are cut from ``direction`` with ``truncate``, else refused (413)."""
        special = set(self.tokenizer.all_special_ids)
        try:
            encodings = self.tokenizer.encode_with_offsets(
                texts, add_special_tokens=add_special_tokens
            )
        except Exception as exc:
            raise errors.ServeError(422, errors.TOKENIZER, f"tokenization failed: {exc}") from exc
        limit = self.max_input_length - (0 if add_special_tokens else 2)
        out = []
        for index, (text, enc) in enumerate(zip(texts, encodings)):
            rows = list(zip(enc.ids, enc.tokens, enc.offsets, enc.word_ids))
            if len(rows) > limit:
                if not truncate:
                    raise self._too_long(index, len(rows) + (0 if add_special_tokens else 2))
                if add_special_tokens:  # keep [CLS] and [SEP], cut the body from one end
                    body, room = rows[1:-1], limit - 2
                    keep = body[:room] if direction == "right" else body[len(body) - room :]
                    rows = [rows[0], *keep, rows[-1]]
                else:
                    rows = rows[:limit] if direction == "right" else rows[len(rows) - limit :]
            row = []
            for token_id, token, (start, stop), word in rows:
                is_special = token_id in special and word is None
                row.append(
                    {
                        "id": token_id,
                        "text": token if is_special else text[start:stop],
                        "special": is_special,
                        "start": None if is_special else start,
                        "stop": None if is_special else stop,
                    }
                )
            out.append(row)
        return out
