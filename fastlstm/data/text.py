"""Tokenizer and vocabulary for English review text."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["PAD", "PAD_INDEX", "TOKENIZER_VERSION", "UNK", "UNK_INDEX", "Vocab", "tokenize"]

PAD, UNK = "<pad>", "<unk>"
PAD_INDEX, UNK_INDEX = 0, 1

# Bump when tokenize() changes: the encoded-corpus cache is keyed by it.
TOKENIZER_VERSION = 1

# IMDB reviews carry HTML line breaks in every spelling: <br />, <br/>, <BR>.
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# A word (letters/digits, with inner apostrophes such as "don't") or one punctuation mark.
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Split ``text`` into lower-case words and single punctuation marks.

    HTML line breaks become spaces; "don't" stays one token; "great!!" gives
    ``["great", "!", "!"]``.
    """
    return _TOKEN.findall(_BREAK.sub(" ", text).lower())


class Vocab:
    """A token ↔ index table with ``<pad>`` = 0 and ``<unk>`` = 1.

    Args:
        tokens: every entry in index order, the two specials first.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if tokens[:2] != [PAD, UNK]:
            raise ValueError(f"vocabulary must start with {PAD!r}, {UNK!r}; got {tokens[:2]}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary has duplicate tokens")
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, counts: dict[str, int], max_size: int | None = None, min_freq: int = 1) -> Vocab:
        """The ``max_size`` most frequent tokens seen at least ``min_freq`` times.

        ``max_size`` counts words only, not the two specials (5,000 gives 5,002 entries).
        Ties break alphabetically so the result never depends on the input order.
        """
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0 or None, got {max_size}")
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        kept = sorted(
            (t for t, n in counts.items() if n >= min_freq and t not in (PAD, UNK)),
            key=lambda t: (-counts[t], t),
        )
        return cls([PAD, UNK, *kept[:max_size]])

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    def fingerprint(self) -> str:
        """A short hash of the token list: checkpoints record it to catch a vocabulary swap."""
        return hashlib.sha256("\n".join(self.itos).encode()).hexdigest()[:16]

    def encode(self, tokens: Iterable[str], max_length: int | None = None) -> Tensor:
        """Indices of ``tokens`` (unknown → 1) as int64 ``[L]``, the first ``max_length`` kept."""
        ids = [self.stoi.get(t, UNK_INDEX) for t in tokens]
        if max_length is not None:
            ids = ids[:max_length]
        return torch.tensor(ids, dtype=torch.int64)
