from dataclasses import fields

import pytest
import torch

from fastlstm.models import PRESETS, ModelSettings, SentimentClassifier

CONFIGS = [
    pytest.param({"embedding_dim": 8, "hidden_size": 6}, id="E8-H6-last"),
    pytest.param({"embedding_dim": 8, "hidden_size": 6, "bidirectional": True}, id="bidir-last"),
    pytest.param({"embedding_dim": 5, "hidden_size": 7, "pooling": "max"}, id="E5-H7-max"),
    pytest.param(
        {
            "embedding_dim": 6,
            "hidden_size": 5,
            "num_layers": 2,
            "bidirectional": True,
            "pooling": "mean",
        },
        id="L2-bidir-mean",
    ),
    pytest.param(
        {"embedding_dim": 7, "hidden_size": 4, "bidirectional": True, "pooling": "max_mean"},
        id="bidir-max_mean",
    ),
]


def _batch(lengths, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    tokens = torch.randint(2, vocab, (T, len(lengths)), generator=g)
    for b, n in enumerate(lengths):
        tokens[n:, b] = 0
    return tokens, torch.tensor(lengths)


@pytest.mark.parametrize("config", CONFIGS)
def test_output_shapes_and_probabilities(config):
    model = SentimentClassifier(50, **config)
    tokens, lengths = _batch([9, 4, 1])
    logits = model(tokens, lengths)
    assert logits.shape == (3,)
    probs = model.predict_proba(tokens, lengths)
    assert probs.shape == (3,) and bool(((probs > 0) & (probs < 1)).all())
    assert model.training  # predict_proba restores the mode


@pytest.mark.parametrize("config", CONFIGS)
def test_padding_does_not_change_a_reviews_logit(config):
    model = SentimentClassifier(50, dropout=0.0, **config).eval()
    tokens, lengths = _batch([6])
    alone = model(tokens, lengths)
    # The same review in a batch with a longer one, so it gets 14 padding steps.
    other, _ = _batch([20], seed=1)
    batch = torch.zeros(20, 2, dtype=torch.int64)
    batch[:6, 0] = tokens[:, 0]
    batch[:, 1] = other[:, 0]
    together = model(batch, torch.tensor([6, 20]))
    torch.testing.assert_close(together[0], alone[0], atol=1e-6, rtol=1e-5)


def test_backends_agree():
    torch.manual_seed(0)
    ref = SentimentClassifier(50, 8, 6, bidirectional=True, pooling="max", backend="reference")
    aten = SentimentClassifier.from_config({**ref.config, "backend": "aten"})
    aten.load_state_dict(ref.state_dict())
    tokens, lengths = _batch([7, 3, 5])
    torch.testing.assert_close(aten(tokens, lengths), ref(tokens, lengths), atol=1e-5, rtol=1e-4)
    assert (ref.last_backend, aten.last_backend) == ("reference", "aten")


@pytest.mark.parametrize("config", CONFIGS)
def test_config_rebuilds_the_model(config):
    model = SentimentClassifier(30, dropout=0.2, **config).eval()
    clone = SentimentClassifier.from_config(model.config)
    assert clone.config == model.config
    assert set(model.config) == {"vocab_size", *(f.name for f in fields(ModelSettings))}
    clone.load_state_dict(model.state_dict())
    tokens, lengths = _batch([5, 2, 3], vocab=30)
    torch.testing.assert_close(clone.eval()(tokens, lengths), model(tokens, lengths))
    # A fresh model from the same config (other weights) gives other logits: the check
    # above compares trained weights, not two copies of a constant.
    torch.manual_seed(123)
    other = SentimentClassifier.from_config(model.config).eval()
    assert not torch.allclose(other(tokens, lengths), model(tokens, lengths))


def test_presets_sizes():
    def size(name):
        p = dict(PRESETS[name])
        vocab = p.pop("vocab_max_size") + 2
        return sum(t.numel() for t in SentimentClassifier(vocab, **p).parameters())

    assert 117_000 <= size("exercise") <= 209_000  # the teaching exercise's range
    assert size("default") < 1_000_000


def _lstm_input(model, tokens, lengths):
    seen = []
    handle = model.lstm.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        model(tokens, lengths)
    finally:
        handle.remove()
    return seen[0]  # [T, B, E]


def test_token_dropout_zeroes_whole_tokens_in_training_only():
    torch.manual_seed(0)
    model = SentimentClassifier(50, 8, 6, dropout=0.0, token_dropout=0.5, pooling="max")
    tokens, lengths = _batch([40] * 16)
    embedded = model.embedding(tokens).detach()  # [T, B, E]
    x = _lstm_input(model.train(), tokens, lengths).detach()
    dropped = (x == 0).all(-1)  # [T, B]
    # Every token is either gone entirely or kept whole and scaled by 1 / (1 - p).
    torch.testing.assert_close(x[~dropped], 2 * embedded[~dropped])
    assert 0.4 < dropped.float().mean().item() < 0.6
    torch.testing.assert_close(_lstm_input(model.eval(), tokens, lengths), embedded)


def test_embedding_dropout_follows_dropout_unless_given():
    assert SentimentClassifier(30, 8, 6, dropout=0.3).embedding_dropout.p == 0.3
    model = SentimentClassifier(30, 8, 6, dropout=0.3, embedding_dropout=0.0)
    assert (model.embedding_dropout.p, model.dropout.p) == (0.0, 0.3)
    tokens, lengths = _batch([12, 5], vocab=30)
    torch.testing.assert_close(_lstm_input(model.train(), tokens, lengths), model.embedding(tokens))


def test_configs_without_token_dropout_still_load():
    """Checkpoints written before ``token_dropout`` existed rebuild the model they held."""
    config = SentimentClassifier(30, 8, 6).config
    del config["token_dropout"], config["embedding_dropout"]
    rebuilt = SentimentClassifier.from_config(config).config
    assert (rebuilt["token_dropout"], rebuilt["embedding_dropout"]) == (0.0, None)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
        ),
    ],
)
@pytest.mark.parametrize("pooling", ["last", "max_mean"])
def test_lengths_kept_on_the_host_reach_the_lstm_there(device, pooling):
    """The trainer keeps lengths on the CPU: reading them on a GPU would wait for it."""
    torch.manual_seed(0)
    model = SentimentClassifier(50, 8, 6, bidirectional=True, pooling=pooling).to(device).eval()
    tokens, lengths = _batch([9, 4, 1, 0])
    seen = []
    model.lstm.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["lengths"].device), with_kwargs=True
    )
    on_host = model(tokens.to(device), lengths)
    assert seen == [torch.device("cpu")]
    # The same logits as with every input on the device.
    torch.testing.assert_close(on_host, model(tokens.to(device), lengths.to(device)))


def test_embedding_pads_with_zero_and_empty_review_runs():
    model = SentimentClassifier(10, 4, 3)
    assert model.embedding.padding_idx == 0
    assert model(torch.zeros(1, 2, dtype=torch.int64), torch.tensor([0, 1])).shape == (2,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"vocab_size": 2}, "vocab_size", id="tiny-vocab"),
        pytest.param({"pooling": "attention"}, "pooling", id="pooling"),
        pytest.param({"dropout": 1.0}, "dropout", id="dropout"),
        pytest.param({"token_dropout": -0.1}, "token_dropout", id="token-dropout"),
        pytest.param({"embedding_dropout": 1.0}, "embedding_dropout", id="embedding-dropout"),
        pytest.param({"hidden_size": 0}, "hidden_size", id="hidden-0"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"vocab_size": 10, "embedding_dim": 4, "hidden_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        SentimentClassifier(**args)


def test_bad_input_shapes():
    model = SentimentClassifier(10, 4, 3)
    with pytest.raises(ValueError, match=r"tokens must be \[T, B\]"):
        model(torch.zeros(3, dtype=torch.int64), torch.tensor([3]))
    with pytest.raises(ValueError, match="lengths must be"):
        model(torch.zeros(3, 2, dtype=torch.int64), torch.tensor([3]))
