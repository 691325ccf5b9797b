"""The IMDB Large Movie Review Dataset: reading, downloading and caching the encoded corpus.

The loader reads the official ``aclImdb`` layout (``{train,test}/{pos,neg}/<id>_<rating>.txt``)
from a folder (the ``aclImdb`` folder or one that contains it) or from a ``.tar.gz`` of it;
``train/unsup`` and the other files of the official archive are ignored.

Tokenizing 50,000 reviews takes tens of seconds, so :func:`load_corpus` caches the result:
every review as indices into a corpus-wide word list (safetensors + JSON, no pickle), keyed
by the source's content hash and :data:`~fastlstm.data.text.TOKENIZER_VERSION`. Building a
vocabulary and encoding against it then take well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fastlstm.data.text import TOKENIZER_VERSION, UNK_INDEX, Vocab, tokenize

__all__ = [
    "IMDB_SHA256",
    "IMDB_URL",
    "Corpus",
    "DataError",
    "default_cache_dir",
    "download_imdb",
    "iter_imdb",
    "load_corpus",
    "resolve_imdb",
]

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
IMDB_ARCHIVE = "aclImdb_v1.tar.gz"
SPLITS = ("train", "test")

# aclImdb/train/pos/123_9.txt (the leading aclImdb/ may be absent in a bare folder).
_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")


class DataError(RuntimeError):
    """The dataset cannot be found, read or fetched; the message says what to do."""


def default_cache_dir() -> Path:
    """``$FASTLSTM_CACHE`` or ``~/.cache/fastlstm`` (``$XDG_CACHE_HOME`` honoured)."""
    if env := os.environ.get("FASTLSTM_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastlstm"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_imdb(
    cache_dir: str | os.PathLike | None = None,
    url: str = IMDB_URL,
    sha256: str | None = IMDB_SHA256,
    timeout: float = 30.0,
) -> Path:
    """Fetch the official archive into ``cache_dir`` (once) and verify its checksum.

    Returns the archive's path. Raises :class:`DataError` naming the cause when the network
    is closed or the download is corrupt; a partial download never stays behind.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / IMDB_ARCHIVE
    if target.is_file() and (sha256 is None or _sha256(target) == sha256):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=IMDB_ARCHIVE, suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                h.update(block)
        if sha256 is not None and h.hexdigest() != sha256:
            raise DataError(
                f"downloaded {url} but its sha256 is {h.hexdigest()}, expected {sha256}; "
                "the file is corrupt or not the official archive; retry, or download it "
                "yourself and pass its path with --data"
            )
        os.replace(tmp, target)
        return target
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise DataError(
            f"cannot download the IMDB dataset from {url} ({reason}); download "
            f"{IMDB_ARCHIVE} on a machine with network access and pass its path with --data"
        ) from err
    finally:
        tmp.unlink(missing_ok=True)


def resolve_imdb(
    path: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> Path:
    """The dataset location to read: ``path`` if given, else the cached official archive.

    Without ``path``: the archive already in the cache is used; with ``download=True`` it is
    fetched first when missing. Raises :class:`DataError` with the fix when nothing is found.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"IMDB data not found at {p}; pass the aclImdb folder or its .tar.gz")
        if p.is_dir():
            if (p / "aclImdb").is_dir():
                p = p / "aclImdb"
            if not all((p / s / c).is_dir() for s in SPLITS for c in ("pos", "neg")):
                raise DataError(
                    f"{p} is not in the aclImdb layout (expected train/pos, train/neg, "
                    "test/pos, test/neg inside); pass the aclImdb folder or its .tar.gz"
                )
        elif not tarfile.is_tarfile(p):
            raise DataError(f"{p} is not a folder or a tar archive; pass the aclImdb .tar.gz")
        return p
    cached = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / IMDB_ARCHIVE
    if cached.is_file():
        return cached
    if download:
        return download_imdb(cache_dir)
    raise DataError(
        "no IMDB data given: pass --data PATH (the aclImdb folder or aclImdb_v1.tar.gz), or "
        f"--download to fetch it from {IMDB_URL} into {cached.parent}"
    )


def iter_imdb(path: str | os.PathLike) -> Iterator[tuple[str, int, int, str]]:
    """Yield ``(split, review id, label, text)`` for every labelled review under ``path``.

    ``path`` is an aclImdb folder or a tar archive of one (see :func:`resolve_imdb`).
    Labels: 1 positive, 0 negative. Order is that of the archive or of the file listing.
    """
    p = Path(path)
    if p.is_dir():
        for f in sorted(p.glob("*/*/*.txt")):
            m = _MEMBER.search(f.relative_to(p).as_posix())
            if m:
                yield m[1], int(m[3]), int(m[2] == "pos"), f.read_text(encoding="utf-8")
        return
    try:
        with tarfile.open(p, "r:*") as tar:
            for member in tar:
                m = _MEMBER.search(member.name)
                if m and member.isfile():
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    yield m[1], int(m[3]), int(m[2] == "pos"), data.decode("utf-8")
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as err:
        raise DataError(
            f"cannot read {p}: {err}; the archive is damaged: download it again"
        ) from err


@dataclass
class Corpus:
    """Every review of both splits, tokenized, as indices into a corpus-wide word list.

    Attributes:
        words: the corpus word list (index → token string).
        ids: int32 ``[N_tokens]``, all reviews concatenated.
        offsets: int64 ``[N + 1]``; review ``k`` is ``ids[offsets[k]:offsets[k + 1]]``.
        labels: int64 ``[N]``, 1 positive, 0 negative.
        splits: name → ``(first review, end)`` range; reviews are grouped by split.
    """

    words: list[str]
    ids: Tensor
    offsets: Tensor
    labels: Tensor
    splits: dict[str, tuple[int, int]]

    def split_indices(self, split: str) -> Tensor:
        if split not in self.splits:
            raise DataError(f"no {split!r} split in this dataset (has {', '.join(self.splits)})")
        start, end = self.splits[split]
        return torch.arange(start, end)

    def token_counts(self, indices: Tensor) -> dict[str, int]:
        """Token frequencies over the reviews ``indices`` (to build a vocabulary)."""
        chunks = [self.ids[self.offsets[k] : self.offsets[k + 1]] for k in indices.tolist()]
        flat = torch.cat(chunks).long() if chunks else torch.zeros(0, dtype=torch.long)
        counts = torch.bincount(flat, minlength=len(self.words)).tolist()
        return {w: n for w, n in zip(self.words, counts, strict=True) if n}

    def encode(self, vocab: Vocab, indices: Tensor, max_length: int | None = None) -> list[Tensor]:
        """The reviews ``indices`` as int64 vocabulary indices (unknown → 1), truncated."""
        table = torch.tensor([vocab.stoi.get(w, UNK_INDEX) for w in self.words], dtype=torch.int64)
        mapped = table[self.ids.long()]
        out = []
        for k in indices.tolist():
            start, end = int(self.offsets[k]), int(self.offsets[k + 1])
            if max_length is not None:
                end = min(end, start + max_length)
            out.append(mapped[start:end])
        return out


def _source_key(path: Path) -> str:
    """A content key for the cache: the archive's sha256, or a folder's listing + sizes."""
    if path.is_file():
        return _sha256(path)
    h = hashlib.sha256()
    for f in sorted(path.glob("*/*/*.txt")):
        st = f.stat()
        h.update(f"{f.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _tokenize_source(path: Path, progress: bool) -> Corpus:
    rows = list(iter_imdb(path))
    if not rows:
        raise DataError(
            f"no reviews found in {path}; expected aclImdb/{{train,test}}/{{pos,neg}}/*.txt"
        )
    # Sorted by (split, label, id) so the corpus never depends on the archive's member order.
    rows.sort(key=lambda r: (SPLITS.index(r[0]), -r[2], r[1]))
    word_index: dict[str, int] = {}
    ids: list[int] = []
    offsets = [0]
    iterator = rows
    # A bar only on a terminal: redirected to a log, carriage-return bars flood it.
    if progress and sys.stderr.isatty():
        # Imported here: only an interactive first read of the archive draws a bar.
        from tqdm.auto import tqdm

        iterator = tqdm(rows, desc="tokenizing IMDB", unit="review", file=sys.stderr)
    for _, _, _, text in iterator:
        for tok in tokenize(text):
            ids.append(word_index.setdefault(tok, len(word_index)))
        offsets.append(len(ids))
    splits: dict[str, tuple[int, int]] = {}
    for k, row in enumerate(rows):
        start, _ = splits.get(row[0], (k, k))
        splits[row[0]] = (start, k + 1)
    return Corpus(
        words=list(word_index),
        ids=torch.tensor(ids, dtype=torch.int32),
        offsets=torch.tensor(offsets, dtype=torch.int64),
        labels=torch.tensor([r[2] for r in rows], dtype=torch.int64),
        splits=splits,
    )


def load_corpus(
    path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = False,
) -> Corpus:
    """Read and tokenize the dataset at ``path``, through the encoded-corpus cache.

    The cache entry (``<cache>/imdb-<key>.safetensors`` + ``.json``) is keyed by the source's
    content and the tokenizer version, so a changed archive or tokenizer is re-read.
    """
    src = Path(path)
    if not use_cache:
        return _tokenize_source(src, progress)
    # Imported here: safetensors comes with the "train" extra, the rest of this module not.
    from safetensors.torch import load_file, save_file

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(f"{_source_key(src)}:tok{TOKENIZER_VERSION}".encode()).hexdigest()[:20]
    tensors_path, meta_path = cache / f"imdb-{key}.safetensors", cache / f"imdb-{key}.json"
    if tensors_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            t = load_file(tensors_path)
            return Corpus(
                words=meta["words"],
                ids=t["ids"],
                offsets=t["offsets"],
                labels=t["labels"],
                splits={k: tuple(v) for k, v in meta["splits"].items()},
            )
        except Exception:
            pass
    corpus = _tokenize_source(src, progress)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # Per-process temporary names: torchrun ranks may build the same entry at once.
        tmp_t = tensors_path.with_name(f"{tensors_path.name}.{os.getpid()}.tmp")
        tmp_m = meta_path.with_name(f"{meta_path.name}.{os.getpid()}.tmp")
        save_file({"ids": corpus.ids, "offsets": corpus.offsets, "labels": corpus.labels}, tmp_t)
        tmp_m.write_text(
            json.dumps(
                {
                    "source": str(src),
                    "tokenizer_version": TOKENIZER_VERSION,
                    "words": corpus.words,
                    "splits": corpus.splits,
                }
            ),
            encoding="utf-8",
        )
        os.replace(tmp_t, tensors_path)
        os.replace(tmp_m, meta_path)
    except OSError:
        pass  # a read-only cache only costs the next run the parsing time
    return corpus
