"""IMDB data: tokenizer, vocabulary, loader (folder, .tar.gz or download), bucketed batches."""

from fastlstm.data.batching import BucketBatchSampler, ReviewDataset, collate, train_val_split
from fastlstm.data.imdb import (
    IMDB_SHA256,
    IMDB_URL,
    Corpus,
    DataError,
    default_cache_dir,
    download_imdb,
    iter_imdb,
    load_corpus,
    resolve_imdb,
)
from fastlstm.data.synthetic import write_synthetic_imdb
from fastlstm.data.text import PAD, PAD_INDEX, UNK, UNK_INDEX, Vocab, tokenize

__all__ = [
    "IMDB_SHA256",
    "IMDB_URL",
    "PAD",
    "PAD_INDEX",
    "UNK",
    "UNK_INDEX",
    "BucketBatchSampler",
    "Corpus",
    "DataError",
    "ReviewDataset",
    "Vocab",
    "collate",
    "default_cache_dir",
    "download_imdb",
    "iter_imdb",
    "load_corpus",
    "resolve_imdb",
    "tokenize",
    "train_val_split",
    "write_synthetic_imdb",
]
