import hashlib
import io
import os
import tarfile
import urllib.error
from pathlib import Path

import pytest

from fastlstm.data import (
    DataError,
    download_imdb,
    iter_imdb,
    load_corpus,
    resolve_imdb,
    write_synthetic_imdb,
)
from fastlstm.data import imdb as imdb_mod


@pytest.fixture
def folder(tmp_path):
    return write_synthetic_imdb(tmp_path / "src", n_per_class=6, seed=1)


def _rows(path):
    return sorted(iter_imdb(path))


def test_folder_and_tarball_read_the_same(tmp_path, folder):
    archive = write_synthetic_imdb(tmp_path / "src", n_per_class=6, seed=1, archive=True)
    rows = _rows(folder)
    assert len(rows) == 24
    assert rows == _rows(archive)
    # The folder above aclImdb works too.
    assert resolve_imdb(folder.parent) == folder
    assert {(r[0], r[2]) for r in rows} == {("train", 0), ("train", 1), ("test", 0), ("test", 1)}


def test_official_extras_are_ignored(tmp_path, folder):
    (folder / "train" / "unsup").mkdir()
    (folder / "train" / "unsup" / "0_0.txt").write_text("unlabelled")
    (folder / "train" / "urls_pos.txt").write_text("http://x")
    (folder / "train" / "labeledBow.feat").write_text("0:1")
    assert len(_rows(folder)) == 24


def test_corpus_matches_sources_and_is_cached(tmp_path, folder, monkeypatch):
    cache = tmp_path / "cache"
    corpus = load_corpus(folder, cache_dir=cache)
    assert corpus.splits == {"train": (0, 12), "test": (12, 24)}
    assert corpus.labels.tolist() == ([1] * 6 + [0] * 6) * 2
    assert len(list(cache.glob("imdb-*.safetensors"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenized despite the cache")

    monkeypatch.setattr(imdb_mod, "_tokenize_source", fail)
    again = load_corpus(folder, cache_dir=cache)
    assert again.words == corpus.words
    assert again.ids.tolist() == corpus.ids.tolist()


def test_cache_is_invalidated_by_a_changed_source(tmp_path, folder):
    cache = tmp_path / "cache"
    before = load_corpus(folder, cache_dir=cache)
    review = next((folder / "train" / "pos").glob("*.txt"))
    review.write_text("a completely different and longer review text")
    after = load_corpus(folder, cache_dir=cache)
    assert after.ids.numel() != before.ids.numel()


def test_damaged_cache_entry_is_rebuilt(tmp_path, folder):
    cache = tmp_path / "cache"
    corpus = load_corpus(folder, cache_dir=cache)
    next(cache.glob("*.safetensors")).write_bytes(b"garbage")
    assert load_corpus(folder, cache_dir=cache).ids.tolist() == corpus.ids.tolist()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        pytest.param(lambda p: p / "missing", "not found", id="missing"),
        pytest.param(lambda p: p, "aclImdb layout", id="not-layout"),
        pytest.param(lambda p: _write(p / "x.tar.gz", b"not a tarball"), "not a folder", id="junk"),
    ],
)
def test_bad_paths_raise_clear_errors(tmp_path, make, match):
    with pytest.raises(DataError, match=match):
        resolve_imdb(make(tmp_path))


def test_truncated_archive_raises_data_error(tmp_path):
    archive = write_synthetic_imdb(tmp_path, n_per_class=30, archive=True)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="damaged"):
        list(iter_imdb(archive))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_no_path_and_no_cache_says_how_to_get_data(tmp_path):
    with pytest.raises(DataError, match="--data PATH"):
        resolve_imdb(None, cache_dir=tmp_path)


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _tar_bytes(tmp_path) -> bytes:
    return write_synthetic_imdb(tmp_path / "dl-src", n_per_class=2, archive=True).read_bytes()


def test_download_verifies_checksum_and_caches(tmp_path, monkeypatch):
    payload = _tar_bytes(tmp_path)
    calls = []

    def urlopen(url, timeout):
        calls.append(url)
        return _FakeResponse(payload)

    monkeypatch.setattr(imdb_mod.urllib.request, "urlopen", urlopen)
    sha = hashlib.sha256(payload).hexdigest()
    path = download_imdb(tmp_path / "cache", url="http://example/a.tar.gz", sha256=sha)
    assert path.read_bytes() == payload and tarfile.is_tarfile(path)
    assert download_imdb(tmp_path / "cache", url="http://example/a.tar.gz", sha256=sha) == path
    assert len(calls) == 1  # the second call found the verified archive in the cache


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, monkeypatch):
    payload = _tar_bytes(tmp_path)
    monkeypatch.setattr(
        imdb_mod.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(payload)
    )
    with pytest.raises(DataError, match="sha256"):
        download_imdb(tmp_path / "cache", url="http://example/a.tar.gz", sha256="0" * 64)
    assert os.listdir(tmp_path / "cache") == []


def test_download_without_network_says_what_to_do(tmp_path, monkeypatch):
    def urlopen(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(imdb_mod.urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError, match=r"cannot download.*--data"):
        resolve_imdb(None, cache_dir=tmp_path / "cache", download=True)
    assert os.listdir(tmp_path / "cache") == []


@pytest.mark.data
def test_shared_archive(imdb_path, tmp_path):
    corpus = load_corpus(imdb_path)
    assert corpus.splits == {"train": (0, 25000), "test": (25000, 50000)}
    for split in ("train", "test"):
        labels = corpus.labels[corpus.split_indices(split)]
        assert int(labels.sum()) == 12500
    assert corpus.ids.numel() > 10_000_000
