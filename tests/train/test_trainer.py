import json

import pytest
import torch
from safetensors.torch import load_file

from fastlstm.data import load_corpus, write_synthetic_imdb
from fastlstm.train import CheckpointError, TrainConfig, Trainer, build_datasets, load_model
from fastlstm.train.trainer import RESUME_DIR


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
        pooling="max",
        vocab_max_size=None,
        batch_size=16,
        lr=1e-2,
        epochs=2,
        progress=False,
        threads=1,
        seed=7,
    )
    return TrainConfig(**{**base, **kw})


def test_synthetic_task_is_learned(tmp_path, corpus):
    cfg = _config(tmp_path / "run", epochs=6)
    result = Trainer(cfg, build_datasets(cfg, corpus)).fit()
    assert result["status"] == "finished"
    assert result["test_accuracy"] > 0.8
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {
        "model.safetensors",
        "model.json",
        "metrics.csv",
        "metrics.json",
        "curves.png",
        RESUME_DIR,
    } <= files
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]


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
    return load_file(out / RESUME_DIR / "weights.safetensors")


def _history(out):
    rows = json.loads((out / "metrics.json").read_text())["history"]
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


@pytest.mark.parametrize(
    ("stop_at", "schedule"),
    [((0, 5), "constant"), ((1, 1), "cosine")],
    ids=["mid-epoch1", "start-epoch2-cosine"],
)
def test_interrupt_and_resume_equals_uninterrupted(tmp_path, corpus, stop_at, schedule):
    cfg_a = _config(tmp_path / "a", lr_schedule=schedule)
    Trainer(cfg_a, build_datasets(cfg_a, corpus)).fit()

    cfg_b = _config(tmp_path / "b", lr_schedule=schedule)
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
