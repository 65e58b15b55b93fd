"""Tokenizers of checkpoints (tokenizer.json, the `tokenizers` format) and streaming decode."""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError
from .loading.configs import read_json


def load_tokenizer(checkpoint_dir: str | Path):
    """The checkpoint's tokenizer.json as a ``tokenizers.Tokenizer``, or None if it has none."""
    path = Path(checkpoint_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises a bare Exception
        raise CheckpointError(f"{path}: cannot read tokenizer ({e})") from None


def eos_token_ids(checkpoint_dir: str | Path) -> list[int]:
    """The end-of-sequence ids of the checkpoint's config.json: its ``eos_token_id``, one id or
    a list of them as in transformers; [] where it names none."""
    path = Path(checkpoint_dir) / "config.json"
    value = read_json(path).get("eos_token_id")
    ids = value if isinstance(value, list) else [] if value is None else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise CheckpointError(f"{path}: field 'eos_token_id' must be a token id or a list of them, got {value!r}")
    return ids


class TextStream:
    """Turns a growing list of token ids into text pieces, holding back incomplete characters."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
            return ""
        return self._rest(text)

    def finish(self) -> str:
        """What push held back, once no token follows, as the tokenizer decodes it (U+FFFD for
        bytes that never became a character)."""
        return self._rest(self.tokenizer.decode(self.ids))

    def _rest(self, text: str) -> str:
        piece, self.emitted = text[self.emitted :], len(text)
        return piece
