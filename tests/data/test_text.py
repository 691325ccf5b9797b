import pytest
import torch

from fastlstm.data import PAD, UNK, UNK_INDEX, Vocab, tokenize


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Great Movie", ["great", "movie"], id="lowercase"),
        pytest.param("Bad.<br /><br />Awful", ["bad", ".", "awful"], id="html-breaks"),
        pytest.param("one<BR>two<br/>three", ["one", "two", "three"], id="break-spellings"),
        pytest.param("I don't like it!!", ["i", "don't", "like", "it", "!", "!"], id="apostrophe"),
        pytest.param(
            "10/10, a must-see", ["10", "/", "10", ",", "a", "must", "-", "see"], id="punct"
        ),
        pytest.param("Café naïve", ["café", "naïve"], id="unicode"),
        pytest.param("   ", [], id="blank"),
    ],
)
def test_tokenize(text, expected):
    assert tokenize(text) == expected


def test_vocab_specials_max_size_and_ties():
    counts = {"b": 3, "a": 3, "c": 2, "d": 1}
    vocab = Vocab.build(counts, max_size=3)
    # Ties break alphabetically, specials first, max_size counts words only.
    assert vocab.itos == [PAD, UNK, "a", "b", "c"]
    assert len(Vocab.build(counts, min_freq=2)) == 5
    assert Vocab.build(counts).itos[-1] == "d"


def test_vocab_encode_maps_unknown_words_and_truncates():
    vocab = Vocab.build({"the": 2, "film": 1, "end": 1})
    ids = vocab.encode(tokenize("the unseen film"))
    assert ids.dtype == torch.int64
    assert ids.tolist() == [vocab.stoi["the"], UNK_INDEX, vocab.stoi["film"]]
    assert vocab.encode(["the", "film", "the"], max_length=2).tolist() == ids[[0, 2]].tolist()


@pytest.mark.parametrize(
    ("tokens", "match"),
    [
        pytest.param(["a", "b"], "must start with", id="no-specials"),
        pytest.param([PAD, UNK, "a", "a"], "duplicate", id="duplicates"),
    ],
)
def test_vocab_rejects_bad_token_lists(tokens, match):
    with pytest.raises(ValueError, match=match):
        Vocab(tokens)


def test_fingerprint_tells_vocabularies_apart():
    a = Vocab([PAD, UNK, "good", "bad"])
    assert a.fingerprint() == Vocab(list(a.itos)).fingerprint()
    assert a.fingerprint() != Vocab([PAD, UNK, "bad", "good"]).fingerprint()
