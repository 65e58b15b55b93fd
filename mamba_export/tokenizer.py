"""Tokenizers of checkpoints (tokenizer.json, the `tokenizers` format) and streaming decode."""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError


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
