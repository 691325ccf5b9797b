"""The per-epoch metrics of a run: CSV, JSON and a PNG of the curves."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from fastlstm.train.checkpoint import write_json
from fastlstm.train.config import TrainConfig
from fastlstm.train.run_folder import RunFolder

__all__ = ["plot_history", "write_metrics"]


def write_metrics(
    run: RunFolder, history: list[dict[str, float]], result: dict[str, Any], config: TrainConfig
) -> Path:
    """Write ``metrics.csv``, ``metrics.json`` and ``curves.png``; returns the plot's path."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = run.metrics_csv.with_name(run.METRICS_CSV + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, run.metrics_csv)
    write_json(run.metrics_json, {"history": history, "result": result, "config": config.to_dict()})
    return plot_history(history, run.curves, result.get("test_accuracy"))


def plot_history(
    history: list[dict[str, float]], path: Path, test_accuracy: float | None = None
) -> Path:
    """Loss and accuracy curves per epoch (train and validation) as a PNG."""
    # Imported here: matplotlib costs about a second to import and only this function uses it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "-s")):
        if all(f"{split}_loss" in row for row in history):
            ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], style, label=split)
            ax_acc.plot(epochs, [100 * r[f"{split}_accuracy"] for r in history], style, label=split)
    if test_accuracy is not None:
        ax_acc.axhline(
            100 * test_accuracy,
            color="gray",
            ls="--",
            label=f"test (kept model) {100 * test_accuracy:.2f}%",
        )
    ax_loss.set(xlabel="epoch", ylabel="BCE loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) < 20:
            ax.set_xticks(epochs)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
