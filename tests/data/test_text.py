import json

import pytest

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


def test_vocab_from_texts_and_encode():
    vocab = Vocab.from_texts(["the film", "The end"], max_size=None)
    ids = vocab.encode_text("the unseen film")
    assert ids.tolist() == [vocab.stoi["the"], UNK_INDEX, vocab.stoi["film"]]
    assert vocab.encode_text("the film the film", max_length=2).tolist() == ids[[0, 2]].tolist()
    assert vocab.decode(ids) == ["the", UNK, "film"]


def test_vocab_json_round_trip(tmp_path):
    vocab = Vocab.from_texts(["a b c a b a", "émigré's tale"])
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocab.load(tmp_path / "vocab.json")
    assert loaded == vocab
    assert loaded.fingerprint() == vocab.fingerprint()
    assert json.loads((tmp_path / "vocab.json").read_text())["tokens"][:2] == [PAD, UNK]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("{not json", id="malformed"),
        pytest.param('{"format": "other"}', id="wrong-format"),
        pytest.param('{"format": "fastlstm.vocab", "tokens": ["a", "b"]}', id="no-specials"),
    ],
)
def test_vocab_load_rejects_bad_files(tmp_path, content):
    (tmp_path / "v.json").write_text(content)
    with pytest.raises(ValueError, match=r"vocabulary|fastlstm"):
        Vocab.load(tmp_path / "v.json")
