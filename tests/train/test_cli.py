import argparse
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from fastlstm.cli import build_parser, main
from fastlstm.data import write_synthetic_imdb
from fastlstm.models import PRESETS, ModelSettings, SentimentClassifier
from fastlstm.train.config import TrainConfig, option, parameter_count, value_type

TRAIN = [
    "--embedding-dim",
    "16",
    "--hidden-size",
    "12",
    "--no-bidirectional",
    "--lr",
    "0.01",
    "--batch-size",
    "16",
    "--threads",
    "1",
    "--no-progress",
]


def _train_argv(archive, out, cache, *extra) -> list[str]:
    """``train`` on the synthetic archive into ``out``, with the small model of ``TRAIN``."""
    return ["train", "--data", str(archive), "--out", str(out), "--cache-dir", str(cache),
            *TRAIN, *map(str, extra)]  # fmt: skip


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return write_synthetic_imdb(
        tmp_path_factory.mktemp("imdb"), n_per_class=100, seed=2, archive=True
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, archive):
    out = tmp_path_factory.mktemp("runs") / "run"
    cache = out.parent / "cache"
    assert main(_train_argv(archive, out, cache, "--epochs", 6)) == 0
    return out


def _cli(*args, stdin=None, env=None):
    """``python -m fastlstm ARGS`` in a subprocess; returns (rc, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "fastlstm", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_train_evaluate_predict_end_to_end(tmp_path, archive):
    out = tmp_path / "run"
    # Without --no-progress: stderr is a pipe here, so no progress bars, one line per epoch.
    argv = _train_argv(archive, out, tmp_path / "cache", "--epochs", 2)
    argv.remove("--no-progress")
    rc, stdout, stderr = _cli(*argv)
    assert rc == 0, stderr
    assert "\r" not in stderr and "\x1b" not in stderr, stderr
    epoch_lines = [line for line in stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"], stderr
    assert all("train loss" in line and "val loss" in line for line in epoch_lines)
    summary = stdout.strip().splitlines()[-1]
    assert "test accuracy" in summary and str(out / "model.safetensors") in summary
    assert (out / "curves.png").is_file() and (out / "metrics.csv").is_file()

    rc, stdout, stderr = _cli(
        "evaluate", "-c", out, "--data", archive, "--cache-dir", tmp_path / "cache", "--json"
    )
    assert rc == 0, stderr
    result = json.loads(stdout)
    assert result["split"] == "test" and result["reviews"] == 200

    rc, stdout, stderr = _cli("predict", "-c", out, "--json", stdin="great film\nawful plot\n")
    assert rc == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["text"] for r in rows] == ["great film", "awful plot"]
    assert all(0.0 <= r["probability_positive"] <= 1.0 for r in rows)


def test_predict_from_args_and_file(run_dir, tmp_path, capsys):
    assert (
        main(["predict", "-c", str(run_dir), "a wonderful superb film", "boring awful and dull"])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("positive") and lines[1].startswith("negative")
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("loved it, brilliant\nthe worst waste of time\n")
    assert main(["predict", "-c", str(run_dir), "--file", str(reviews)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_evaluate_validation_split(run_dir, archive, capsys):
    rc = main(
        [
            "evaluate",
            "-c",
            str(run_dir),
            "--data",
            str(archive),
            "--split",
            "val",
            "--cache-dir",
            str(run_dir.parent / "cache"),
        ]
    )
    assert rc == 0
    meta = json.loads((run_dir / "model.json").read_text())
    expected = f"val accuracy {100 * meta['val_accuracy']:.2f}%"
    assert capsys.readouterr().out.startswith(expected)


def _error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        pytest.param(["train", "--data", "/nonexistent/aclImdb"], "not found", id="missing-data"),
        pytest.param(["train", "--data", "{bad_file}"], "not a folder or a tar", id="bad-data"),
        pytest.param(["train", "--data", "{tmp}"], "aclImdb layout", id="folder-not-layout"),
        pytest.param(["train", "--cache-dir", "{tmp}"], "--data PATH", id="no-data"),
        pytest.param(["predict", "-c", "{run}", "   "], "review 1 is empty", id="empty-review"),
        pytest.param(
            ["predict", "-c", "{run}", "great", "qwzx xqzw"],
            "review 2 .* no word",
            id="unknown-words",
        ),
        pytest.param(["predict", "-c", "{tmp}/none", "good"], "not found", id="no-checkpoint"),
        pytest.param(
            ["train", "--out", "{run}", "--resume", "--data", "{tmp}/nope"],
            "not found",
            id="resume-missing-data",
        ),
        pytest.param(["train", "--out", "{tmp}", "--resume"], "no saved run", id="resume-none"),
    ],
)
def test_user_errors_are_one_line(capsys, tmp_path, run_dir, argv, match):
    bad_file = tmp_path / "junk.tar.gz"
    bad_file.write_bytes(b"junk")
    argv = [a.format(tmp=tmp_path, run=run_dir, bad_file=bad_file) for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert re.search(match, err), err


def test_existing_run_is_not_overwritten(capsys, run_dir, archive):
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    err = _error(capsys, ["train", "--data", str(archive), "--out", str(run_dir), *TRAIN])
    assert "already holds a run" in err and "--resume" in err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_corrupt_checkpoint_is_reported_and_left_alone(capsys, run_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((run_dir / "model.json").read_text())
    (broken / "model.safetensors").write_bytes(b"\x00" * 16)
    err = _error(capsys, ["predict", "-c", str(broken), "good film"])
    assert "corrupt" in err
    assert (broken / "model.safetensors").read_bytes() == b"\x00" * 16


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_gpu_option_without_gpu(capsys, run_dir, archive, command):
    argv = {
        "train": ["train", "--data", str(archive), "--out", str(run_dir.parent / "gpu")],
        "evaluate": ["evaluate", "-c", str(run_dir), "--data", str(archive)],
        "predict": ["predict", "-c", str(run_dir), "good"],
    }[command]
    err = _error(capsys, [*argv, "--device", "cuda"])
    assert "no CUDA GPU" in err and "--device cpu" in err
    assert not (run_dir.parent / "gpu").exists()


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_help_explains_every_option(capsys, command):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[command]._actions:
        assert action.help, f"{command}: {action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert command in capsys.readouterr().out


def test_train_has_an_option_for_every_model_setting():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    dests = {action.dest for action in sub.choices["train"]._actions}
    assert {f.name for f in fields(ModelSettings)} <= dests
    args = parser.parse_args(["train", "--token-dropout", "0.2", "--dropout", "0.1"])
    assert (args.token_dropout, args.dropout) == (0.2, 0.1)
    assert parser.parse_args(["train", "--average-last", "0"]).average_last == 0
    assert parser.parse_args(["train", "--low-memory"]).low_memory is True
    assert parser.parse_args(["train"]).low_memory is None  # the saved run's, on --resume


def _train_actions() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest: action for action in sub.choices["train"]._actions}


def _sample(name: str) -> tuple[list[str], object]:
    """Arguments that set TrainConfig field ``name`` to a value other than its default."""
    opt, kind, default = option(name), value_type(name), getattr(TrainConfig(), name)
    flag = _train_actions()[name].option_strings[0]
    if kind is bool:
        # A one-way flag switches the default; --x/--no-x needs the way away from it.
        return [f"--no-{flag[2:]}" if opt.both and default else flag], not default
    if opt.choices is not None:
        value = next(c for c in opt.choices if c != default)
        return [flag, value], value
    value = {int: (opt.minimum or 0) + 3, float: 0.5, str: "somewhere"}[kind]
    return [flag, str(value)], value


def test_every_setting_of_a_run_is_an_option_generated_from_its_field():
    actions = _train_actions()
    train_fields = [f.name for f in fields(TrainConfig) if option(f.name).group != "evaluate"]
    assert set(train_fields) <= set(actions)
    for name in train_fields:
        argv, value = _sample(name)
        args = build_parser().parse_args(["train", *argv])
        assert getattr(args, name) == value, (name, argv)
        # Left out, an option is None (the preset's or the saved run's value), except the
        # two the command needs before it has a config.
        left_out = getattr(build_parser().parse_args(["train"]), name)
        assert left_out == (getattr(TrainConfig(), name) if name in ("out", "preset") else None)
        assert actions[name].help, name
    assert build_parser().parse_args(["evaluate", "--batch-size", "7"]).eval_batch_size == 7


def test_help_shows_each_presets_value_where_they_differ():
    actions = _train_actions()
    assert actions["embedding_dim"].help.endswith("(preset: exercise 40, default 64)")
    assert actions["bidirectional"].help.endswith("(preset: exercise no, default yes)")
    assert actions["embedding_dropout"].help.endswith("(preset: exercise 0.25, default 0)")
    assert actions["average_last"].help.endswith("(preset: exercise off, default 4)")
    assert actions["num_layers"].help.endswith("(default 1)")
    assert actions["max_length"].help.endswith("(default: all)")
    assert actions["device"].help.endswith("(default: cuda when available, else cpu)")
    resume = actions["resume"].help
    assert all(flag in resume for flag in ("--data", "--epochs", "--no-progress", "--log-every"))


def test_help_builds_no_model(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built to print --help")

    monkeypatch.setattr(SentimentClassifier, "__init__", refuse)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "706,817 parameters" in out and "208,751 parameters" in out


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"num_layers": 3, "pooling": "max_mean"},
        {"num_layers": 2, "bidirectional": False, "pooling": "last"},
        {"embedding_dim": 7, "hidden_size": 5, "pooling": "mean"},
    ],
    ids=["preset", "3-layers-max_mean", "2-layers-one-way", "small-mean"],
)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_count_is_the_built_models(preset, change):
    config = TrainConfig.from_preset(preset, **change)
    vocab = PRESETS[preset]["vocab_max_size"] + 2
    model = SentimentClassifier(**config.model_kwargs(vocab))
    assert parameter_count(config, vocab) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"threads": 0}, "threads must be >= 1 or None"),
        ({"log_every": 0}, "log_every must be >= 1, got 0"),
        ({"backend": "cudnn"}, "backend must be one of"),
        ({"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\)"),
    ],
)
def test_config_checks_the_limits_its_options_declare(change, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**change).check()


def test_resume_through_the_cli_finishes_the_run(tmp_path, archive, capsys):
    out = tmp_path / "run"
    assert main(_train_argv(archive, out, tmp_path / "cache", "--epochs", 1)) == 0
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "/2" in summary
    rows = json.loads((out / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert Path(json.loads((out / "metrics.json").read_text())["config"]["data"]) == archive


def test_ctrl_c_saves_a_resumable_run(tmp_path, archive):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "fastlstm",
        *_train_argv(archive, out, tmp_path / "cache", "--epochs", 1000),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # wait until training is under way
            if line.startswith("epoch 2/"):
                break
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "--resume" in stdout and "interrupted" in stdout
    state = json.loads((out / "resume" / "state.json").read_text())
    assert state["epoch"] >= 2
    rc, stdout, stderr = _cli(
        "train", "--out", out, "--resume", "--epochs", state["epoch"] + 1, "--no-progress"
    )
    assert rc == 0, stderr
    assert f"/{state['epoch'] + 1}" in stdout


def test_force_replaces_the_previous_run(tmp_path, archive):
    out = tmp_path / "run"
    base = _train_argv(archive, out, tmp_path / "cache")
    assert main([*base, "--epochs", "2"]) == 0
    (out / "curves.png").unlink()
    assert main([*base, "--epochs", "1", "--force", "--no-test"]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1]
    assert json.loads((out / "resume" / "state.json").read_text())["epoch"] == 1
    assert (out / "curves.png").is_file()
