"""A tiny synthetic review dataset in the aclImdb layout, for tests, demos and smoke runs.

Each review is filler words with a few sentiment words of its class mixed in, so a small
model learns it in an epoch or two; the files look exactly like the official dataset's.
"""

from __future__ import annotations

import os
import random
import tarfile
from pathlib import Path

__all__ = ["write_synthetic_imdb"]

_FILLER = [
    "the",
    "movie",
    "film",
    "plot",
    "actor",
    "scene",
    "story",
    "director",
    "was",
    "is",
    "it",
    "this",
    "and",
    "a",
    "of",
    "to",
    "in",
    "that",
    "with",
    "for",
    "as",
    "but",
    "on",
    "his",
    "her",
    "they",
    "one",
    "about",
    "from",
    "an",
    "at",
    "by",
    "all",
    "some",
    "more",
]
_POSITIVE = [
    "great",
    "wonderful",
    "excellent",
    "superb",
    "loved",
    "brilliant",
    "moving",
    "delightful",
]
_NEGATIVE = ["awful", "terrible", "boring", "worst", "dull", "waste", "poor", "horrible"]


def _review(rng: random.Random, positive: bool, min_len: int, max_len: int) -> str:
    words = [rng.choice(_FILLER) for _ in range(rng.randint(min_len, max_len))]
    cue = _POSITIVE if positive else _NEGATIVE
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(cue))
    text = " ".join(words).capitalize() + "."
    # A line break in IMDB's HTML spelling, which the tokenizer must drop.
    return text.replace(" ", " <br /><br />", 1) if rng.random() < 0.3 else text


def write_synthetic_imdb(
    root: str | os.PathLike,
    n_per_class: int = 50,
    seed: int = 0,
    min_len: int = 5,
    max_len: int = 40,
    archive: bool = False,
) -> Path:
    """Write ``root/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt`` (and ``README``).

    Returns the ``aclImdb`` folder, or with ``archive=True`` a ``root/aclImdb.tar.gz`` of it.
    """
    rng = random.Random(seed)
    base = Path(root) / "aclImdb"
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            folder = base / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                rating = rng.randint(7, 10) if label == "pos" else rng.randint(1, 4)
                text = _review(rng, label == "pos", min_len, max_len)
                (folder / f"{i}_{rating}.txt").write_text(text, encoding="utf-8")
    (base / "README").write_text("synthetic aclImdb-layout data for fastlstm tests\n")
    if not archive:
        return base
    path = Path(root) / "aclImdb.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(base, arcname="aclImdb")
    return path
