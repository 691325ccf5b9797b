import csv
import io
import itertools
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from fastlstm.data import PAD, UNK, Vocab, load_corpus, write_synthetic_imdb
from fastlstm.models import PRESETS
from fastlstm.train import (
    CheckpointError,
    ReviewError,
    RunFolder,
    TrainConfig,
    Trainer,
    build_datasets,
    evaluate,
    load_model,
    predict_texts,
)
from fastlstm.train.checkpoint import vocab_from_json, vocab_to_json
from fastlstm.train.config import PRESET_TRAINING
from fastlstm.train.datasets import split_indices


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("imdb")
    folder = write_synthetic_imdb(root, n_per_class=120, seed=0)
    return load_corpus(folder, use_cache=False)


def _config(out, **kw):
    base = dict(
        out=str(out),
        embedding_dim=16,
        hidden_size=12,
        bidirectional=False,
        dropout=0.1,
        embedding_dropout=None,
        token_dropout=0.0,
        pooling="max",
        vocab_max_size=None,
        batch_size=16,
        lr=1e-2,
        epochs=2,
        progress=False,
        threads=1,
        seed=7,
        average_last=None,
    )
    return TrainConfig(**{**base, **kw})


def test_synthetic_task_is_learned_and_the_run_folder_says_so(tmp_path, corpus):
    cfg = _config(tmp_path / "run", epochs=6)
    data = build_datasets(cfg, corpus)
    result = Trainer(cfg, data).fit()
    run = RunFolder(tmp_path / "run")
    assert result["status"] == "finished"
    assert {p.name for p in run.path.iterdir()} == {
        run.MODEL_WEIGHTS,
        run.MODEL_META,
        run.METRICS_CSV,
        run.METRICS_JSON,
        run.CURVES,
        run.RESUME_DIR,
    }
    metrics = json.loads(run.metrics_json.read_text())
    history = metrics["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]
    # Learning, not luck: the training loss falls from chance level (ln 2 for a balanced
    # binary task) and ends far below where it started; validation follows.
    losses = [row["train_loss"] for row in history]
    assert losses[0] > 0.5 and losses[-1] < 0.5 * losses[0], losses
    assert sum(b < a for a, b in itertools.pairwise(losses)) >= 4, losses
    assert max(row["val_accuracy"] for row in history) > 0.9
    assert all(row["train_reviews"] == len(data.train) for row in history)
    # The CSV holds the same rows as the JSON.
    with run.metrics_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["train_loss"]) for r in rows] == pytest.approx(losses, rel=1e-12)
    # The best epoch is the one with the highest validation accuracy, the model files hold
    # it, and the reported test accuracy is that model's, re-evaluated here.
    best = max(history, key=lambda r: r["val_accuracy"])
    assert result["best_epoch"] == best["epoch"]
    assert result["best_val_accuracy"] == best["val_accuracy"]
    meta = json.loads(run.model_meta.read_text())
    assert (
        meta["epoch"] == best["epoch"]
        and meta["result"]["test_accuracy"] == (result["test_accuracy"])
    )
    assert metrics["result"]["test_accuracy"] == result["test_accuracy"]
    model, _, _ = load_model(run.path)
    again = evaluate(model, data.test, batch_size=32)
    assert again["accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-12)
    assert again["loss"] == pytest.approx(result["test_loss"], rel=1e-5)
    assert result["test_accuracy"] > 0.85


def test_default_config_is_the_default_preset():
    assert TrainConfig() == TrainConfig.from_preset("default")
    for name in PRESETS:
        cfg = TrainConfig.from_preset(name)
        for key, value in {**PRESETS[name], **PRESET_TRAINING[name]}.items():
            assert getattr(cfg, key) == value, (name, key)


def test_a_saved_config_loads_back_exactly_and_nothing_else_does():
    for name in PRESETS:
        config = TrainConfig.from_preset(name, lr=1e-3, seed=5)
        assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    saved = TrainConfig().to_dict()
    del saved["token_dropout"]
    with pytest.raises(ValueError, match=r"missing \['token_dropout'\]"):
        TrainConfig.from_dict(saved)
    with pytest.raises(ValueError, match=r"unknown \['warmup'\]"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "warmup": 3})


def test_a_resume_folder_without_its_snapshots_is_reported(saved_run, corpus):
    (saved_run / "resume" / "snapshots.safetensors").unlink()
    cfg = _config(saved_run, epochs=2, evaluate_test=False)
    with pytest.raises(CheckpointError, match=r"snapshots\.safetensors not found"):
        Trainer(cfg, build_datasets(cfg, corpus)).fit(resume=True)


def test_validation_split_is_seeded_and_disjoint(corpus):
    a = split_indices(corpus, 0.2, seed=3)
    assert torch.equal(a["val"], split_indices(corpus, 0.2, seed=3)["val"])
    assert not torch.equal(a["val"], split_indices(corpus, 0.2, seed=4)["val"])
    train, val = set(a["train"].tolist()), set(a["val"].tolist())
    assert not train & val and len(val) == round(0.2 * len(train | val))
    assert train | val == set(corpus.split_indices("train").tolist())


def test_checkpoint_round_trip(tmp_path, corpus):
    cfg = _config(tmp_path / "run", epochs=1)
    data = build_datasets(cfg, corpus)
    trainer = Trainer(cfg, data)
    trainer.fit()
    model, vocab, meta = load_model(tmp_path / "run")
    assert vocab == data.vocab
    assert meta["model"] == trainer.model.config
    tokens = torch.tensor([[2, 3], [4, 0]])
    lengths = torch.tensor([2, 1])
    trainer.model.eval()
    torch.testing.assert_close(model.eval()(tokens, lengths), trainer.model(tokens, lengths))
    suffixes = {p.suffix for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert suffixes <= {".safetensors", ".json", ".csv", ".png"}  # never pickle


def _final_state(out):
    run = RunFolder(out)
    kept = {f"model/{k}": v for k, v in load_file(run.model_weights).items()}
    return {**load_file(run.resume_weights), **kept}


def _history(out):
    rows = json.loads((out / "metrics.json").read_text())["history"]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


@pytest.mark.parametrize(
    ("stop_at", "schedule", "average_last"),
    [((0, 5), "constant", None), ((1, 1), "cosine", None), ((2, 3), "constant", 2)],
    ids=["mid-epoch1", "start-epoch2-cosine", "mid-epoch3-averaging"],
)
def test_interrupt_and_resume_equals_uninterrupted(
    tmp_path, corpus, stop_at, schedule, average_last
):
    settings = {"lr_schedule": schedule, "average_last": average_last, "epochs": 3}
    cfg_a = _config(tmp_path / "a", **settings)
    Trainer(cfg_a, build_datasets(cfg_a, corpus)).fit()

    cfg_b = _config(tmp_path / "b", **settings)
    data_b = build_datasets(cfg_b, corpus)

    def interrupt(trainer, epoch, step):
        if (epoch, step) == stop_at:
            trainer.request_stop()  # what Ctrl-C does

    first = Trainer(cfg_b, data_b, on_step=interrupt).fit()
    assert first["status"] == "interrupted"
    resumed = Trainer(cfg_b, data_b).fit(resume=True)
    assert resumed["status"] == "finished"

    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0, msg=name)
    assert _history(tmp_path / "b") == _history(tmp_path / "a")
    assert resumed["test_accuracy"] == pytest.approx(
        json.loads((tmp_path / "a" / "metrics.json").read_text())["result"]["test_accuracy"]
    )


def test_average_last_keeps_the_mean_of_the_last_epochs(tmp_path, corpus):
    cfg = _config(tmp_path / "run", epochs=4, average_last=3)
    data = build_datasets(cfg, corpus)
    steps = math.ceil(len(data.train) / cfg.batch_size)
    ends = {}

    def snapshot(trainer, epoch, step):
        if step == steps:  # the weights the epoch ends with
            ends[epoch + 1] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    result = Trainer(cfg, data, on_step=snapshot).fit()
    assert result["averaged_epochs"] == [2, 3, 4]
    kept = load_file(RunFolder(tmp_path / "run").model_weights)
    for name, tensor in kept.items():
        mean = (ends[2][name] + ends[3][name] + ends[4][name]) / 3
        torch.testing.assert_close(tensor, mean, msg=name)
    # Not the last epoch's weights under another name: the epochs differ.
    assert any(not torch.equal(kept[name], ends[4][name]) for name in kept)
    model, _, meta = load_model(tmp_path / "run")
    assert meta["averaged_epochs"] == [2, 3, 4]
    again = evaluate(model, data.test, batch_size=32)
    assert again["accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-12)
    assert evaluate(model, data.val)["accuracy"] == result["average_val_accuracy"]


def test_average_last_zero_keeps_the_best_epoch(tmp_path, corpus):
    cfg = _config(tmp_path / "run", average_last=0)
    result = Trainer(cfg, build_datasets(cfg, corpus)).fit()
    assert "averaged_epochs" not in result
    assert "averaged_epochs" not in json.loads(RunFolder(cfg.out).model_meta.read_text())
    with pytest.raises(ValueError, match="average_last"):
        _config(tmp_path / "bad", average_last=-1).check()


def test_early_stopping(tmp_path, corpus):
    cfg = _config(tmp_path / "run", epochs=8, patience=1, lr=0.0)
    result = Trainer(cfg, build_datasets(cfg, corpus)).fit()
    assert result["status"] == "early_stopped"
    assert result["epochs_run"] == 2 and result["best_epoch"] == 1


@pytest.fixture
def saved_run(tmp_path, corpus):
    cfg = _config(tmp_path / "run", epochs=1, evaluate_test=False)
    Trainer(cfg, build_datasets(cfg, corpus)).fit()
    return tmp_path / "run"


def _edit_json(path, fn):
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        pytest.param(
            lambda d: (d / "model.safetensors").write_bytes(b"\0" * 20),
            "corrupt",
            id="weights-garbage",
        ),
        pytest.param(lambda d: (d / "model.json").write_text("{"), "corrupt", id="json-garbage"),
        pytest.param(lambda d: (d / "model.json").unlink(), "not found", id="json-missing"),
        pytest.param(
            lambda d: _edit_json(d / "model.json", lambda m: m["vocab"].__setitem__(5, "zzz")),
            "vocabulary does not match",
            id="other-vocab",
        ),
        pytest.param(
            lambda d: _edit_json(d / "model.json", lambda m: m["model"].update(hidden_size=9)),
            "another shape",
            id="other-shape",
        ),
        pytest.param(
            lambda d: _edit_json(d / "model.json", lambda m: m.update(format="x")),
            "not a fastlstm",
            id="other-format",
        ),
    ],
)
def test_bad_checkpoints_are_rejected(saved_run, damage, match):
    damage(saved_run)
    with pytest.raises(CheckpointError, match=match):
        load_model(saved_run)


@pytest.mark.data
def test_learns_a_small_real_subset(imdb_path, tmp_path):
    corpus = load_corpus(imdb_path)
    # 4,000 training reviews (3,600 + 400 validation) truncated to 200 tokens; 1,000 test.
    g = torch.Generator().manual_seed(0)
    keep_train = torch.randperm(25000, generator=g)[:4000].sort().values
    keep_test = 25000 + torch.randperm(25000, generator=g)[:1000].sort().values
    keep = torch.cat([keep_train, keep_test])
    chunks = [corpus.ids[corpus.offsets[k] : corpus.offsets[k + 1]] for k in keep.tolist()]
    lengths = torch.tensor([len(c) for c in chunks])
    corpus.ids = torch.cat(chunks)
    corpus.offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    corpus.labels = corpus.labels[keep]
    corpus.splits = {"train": (0, 4000), "test": (4000, 5000)}
    cfg = TrainConfig.from_preset(
        "exercise",
        out=str(tmp_path / "run"),
        pooling="max",
        max_length=200,
        epochs=4,
        lr=5e-3,
        progress=False,
        threads=1,
    )
    result = Trainer(cfg, build_datasets(cfg, corpus)).fit()
    assert result["test_accuracy"] > 0.7, result


def test_predict_texts_scores_in_batches_and_rejects_meaningless_reviews(saved_run):
    model, vocab, meta = load_model(saved_run)
    texts = ["a wonderful superb film", "boring awful and dull", "the plot was brilliant"] * 3
    one_batch = predict_texts(model, vocab, texts, meta.get("max_length"))
    in_twos = predict_texts(model, vocab, texts, meta.get("max_length"), batch_size=2)
    assert in_twos == pytest.approx(one_batch, abs=1e-6)
    # Each review alone gives the same probability: padding in a batch changes nothing.
    alone = [predict_texts(model, vocab, [t])[0] for t in texts[:3]]
    assert one_batch[:3] == pytest.approx(alone, abs=1e-6)
    assert len(set(alone)) == 3
    with pytest.raises(ReviewError, match="review 2 is empty") as err:
        predict_texts(model, vocab, ["great film", "  ", "awful film"])
    assert err.value.index == 1
    with pytest.raises(ReviewError, match=r"review 1 .* no word"):
        predict_texts(model, vocab, ["qwzx xqzw"])


def test_vocabulary_round_trips_through_checkpoint_json(tmp_path):
    vocab = Vocab([PAD, UNK, "émigré's", "tale", "the"])
    meta = json.loads(json.dumps(vocab_to_json(vocab), ensure_ascii=False))
    assert vocab_from_json(meta, tmp_path / "m.json") == vocab
    with pytest.raises(CheckpointError, match="does not match"):
        vocab_from_json({**meta, "vocab": [PAD, UNK, "tale", "émigré's", "the"]}, tmp_path)
    with pytest.raises(CheckpointError, match="corrupt"):
        vocab_from_json({**meta, "vocab": "the"}, tmp_path)
    with pytest.raises(CheckpointError, match="corrupt"):
        vocab_from_json({**meta, "vocab": ["a", "b"]}, tmp_path)


def test_resume_refuses_another_vocabulary(tmp_path, corpus):
    cfg = _config(tmp_path / "run", epochs=1)
    Trainer(cfg, build_datasets(cfg, corpus)).fit()
    other = build_datasets(_config(tmp_path / "run", epochs=2, vocab_max_size=20), corpus)
    with pytest.raises(CheckpointError, match="vocabulary differs"):
        Trainer(_config(tmp_path / "run", epochs=2), other).fit(resume=True)


def test_cosine_schedule_reaches_zero_at_the_end(tmp_path, corpus):
    cfg = _config(tmp_path / "run", epochs=2, lr_schedule="cosine", evaluate_test=False)
    lrs = []
    trainer = Trainer(cfg, build_datasets(cfg, corpus))
    trainer.on_step = lambda t, e, s: lrs.append(t.optimizer.param_groups[0]["lr"])
    trainer.fit()
    steps = len(lrs)
    assert lrs[0] == pytest.approx(cfg.lr)
    expected = [cfg.lr * 0.5 * (1 + math.cos(math.pi * k / steps)) for k in range(steps)]
    assert lrs == pytest.approx(expected, rel=1e-9)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream", [io.StringIO, _Terminal], ids=["pipe", "terminal"])
def test_progress_bars_only_on_a_terminal(tmp_path, corpus, stream):
    log = stream()
    cfg = _config(tmp_path / "run", epochs=2, progress=True, evaluate_test=False)
    Trainer(cfg, build_datasets(cfg, corpus), log=log).fit()
    text = log.getvalue()
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.startswith("epoch ")]
    assert sum(": train loss" in line for line in lines) == 2
    if stream is _Terminal:
        assert "\r" in text and "batch" in text  # tqdm redraws its bar in place
    else:
        assert "\r" not in text
        assert text.splitlines() == lines  # nothing but the epoch lines


def test_resume_changes_only_the_resumable_settings():
    saved = TrainConfig(lr=1e-3, epochs=3, seed=4)
    changes = {"epochs": 9, "threads": 2, "low_memory": True, "lr": 5.0, "seed": 0}
    resumed = saved.resumed({**changes, "hidden_size": 3})
    assert (resumed.epochs, resumed.threads, resumed.low_memory) == (9, 2, True)
    assert (resumed.lr, resumed.seed, resumed.hidden_size) == (1e-3, 4, saved.hidden_size)


def test_low_memory_leaves_large_blocks_to_the_system_and_trains_the_same(
    tmp_path, corpus, monkeypatch
):
    """``low_memory`` only changes where freed blocks go, never what is computed.

    The allocator switch is process-wide and sticky (tests/test_runtime.py measures it in
    subprocesses), so here the trainer's request is recorded instead of applied.
    """
    requested = []
    monkeypatch.setattr(
        "fastlstm.train.loop.steady_cpu_allocator", lambda heap_only: requested.append(heap_only)
    )
    histories = []
    for low_memory in (False, True):
        cfg = _config(tmp_path / f"run-{low_memory}", epochs=1, low_memory=low_memory)
        Trainer(cfg, build_datasets(cfg, corpus)).fit()
        histories.append(json.loads(RunFolder(cfg.out).metrics_json.read_text())["history"])
    assert requested == [True, False]  # heap_only unless low_memory
    timeless = [[{k: v for k, v in r.items() if "seconds" not in k} for r in h] for h in histories]
    assert timeless[0] == timeless[1] and len(timeless[0]) == 1


@pytest.mark.parametrize(
    ("change", "match"),
    [
        pytest.param({"lr_schedule": "step"}, "lr_schedule", id="schedule"),
        pytest.param({"val_fraction": 1.0}, "val_fraction", id="val-fraction"),
        pytest.param({"batch_size": 0}, "batch_size", id="batch-size"),
        pytest.param({"vocab_max_size": 0}, "vocab_max_size", id="vocab-size"),
        pytest.param({"pooling": "attention"}, "pooling", id="pooling"),
    ],
)
def test_bad_settings_are_named(tmp_path, corpus, change, match):
    cfg = _config(tmp_path / "run", **change)
    with pytest.raises(ValueError, match=match):
        cfg.check()
