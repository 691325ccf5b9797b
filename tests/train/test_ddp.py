import json
import os
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

from fastlstm.data import write_synthetic_imdb

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_training(tmp_path):
    archive = write_synthetic_imdb(tmp_path, n_per_class=100, seed=3, archive=True)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "fastlstm",
        "train",
        "--data",
        str(archive),
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
        "--epochs",
        "6",
        "--embedding-dim",
        "16",
        "--hidden-size",
        "12",
        "--no-bidirectional",
        "--lr",
        "0.01",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Only rank 0 prints the summary and writes the run folder.
    summaries = [line for line in proc.stdout.splitlines() if "test accuracy" in line]
    assert len(summaries) == 1, proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 6
    assert metrics["result"]["world_size"] == 2
    # Each epoch covers all 180 training reviews across the two ranks (at most one batch
    # per rank repeated to even out the batch counts).
    assert all(180 <= row["train_reviews"] <= 196 for row in metrics["history"])
    assert metrics["result"]["test_accuracy"] > 0.75
