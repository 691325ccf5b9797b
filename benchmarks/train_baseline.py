"""The teaching exercise's IMDB pipeline, timed side by side with fastlstm's.

The exercise: regex tokenizer, 5,000-word vocabulary (+ <pad>, <unk>), embedding 40, LSTM 30,
linear, sigmoid + BCELoss, Adam, gradient clipping 30, batch 32 drawn at random, each batch
padded to its longest review and run through ``pack_padded_sequence`` + ``torch.nn.LSTM``.
fastlstm's pipeline: the same model size (``--preset exercise``) on length-bucketed batches
of padded reviews fed to ``fastlstm.LSTM`` with ``lengths=``.

    python benchmarks/train_baseline.py --data PATH                  # 1 epoch of each
    python benchmarks/train_baseline.py --data PATH --baseline-epochs 8 --fastlstm-epochs 0

Prints one line per epoch and writes a JSON report (``--json``) with the machine, versions,
thread count, load average and per-epoch train time and accuracy of each pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastlstm.data import iter_imdb, load_corpus
from fastlstm.train import RunFolder, TrainConfig, Trainer, build_datasets

# The exercise's tokenizer: lower-case words and a few punctuation marks, <br /> removed.
_BR = re.compile(r"<br\s*/?>")
_WORD = re.compile(r"[\w']+|[.,!?;]")


def exercise_tokenize(text: str) -> list[str]:
    return _WORD.findall(_BR.sub(" ", text.lower()))


class ExerciseModel(nn.Module):
    """Embedding → nn.LSTM (packed) → linear → sigmoid, as in the exercise."""

    def __init__(self, vocab_size: int, embedding_dim: int = 40, hidden_size: int = 30) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, 1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(
            self.embedding(tokens), lengths, batch_first=True, enforce_sorted=False
        )
        _, (h_n, _) = self.lstm(packed)
        return torch.sigmoid(self.fc(h_n[-1])).squeeze(-1)


def _batches(reviews, labels, batch_size, shuffle, generator):
    order = (
        torch.randperm(len(reviews), generator=generator) if shuffle else torch.arange(len(reviews))
    )
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size].tolist()
        lengths = torch.tensor([max(len(reviews[i]), 1) for i in idx])
        tokens = torch.zeros(len(idx), int(lengths.max()), dtype=torch.int64)
        for b, i in enumerate(idx):
            tokens[b, : len(reviews[i])] = torch.tensor(reviews[i], dtype=torch.int64)
        yield tokens, lengths, labels[idx]


def run_baseline(path: Path, epochs: int, seed: int) -> list[dict]:
    t0 = time.perf_counter()
    rows = list(iter_imdb(path))
    train = [(exercise_tokenize(t), y) for split, _, y, t in rows if split == "train"]
    test = [(exercise_tokenize(t), y) for split, _, y, t in rows if split == "test"]
    counts = Counter(tok for toks, _ in train for tok in toks)
    itos = ["<pad>", "<unk>"] + [w for w, _ in counts.most_common(5000)]
    stoi = {w: i for i, w in enumerate(itos)}

    def encode(data):
        return [[stoi.get(t, 1) for t in toks] for toks, _ in data], torch.tensor(
            [y for _, y in data], dtype=torch.float32
        )

    (train_x, train_y), (test_x, test_y) = encode(train), encode(test)
    print(f"baseline: data ready in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    torch.manual_seed(seed)
    model = ExerciseModel(len(itos))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCELoss()
    g = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        t = time.perf_counter()
        correct = total = 0
        for tokens, lengths, y in _batches(train_x, train_y, 32, True, g):
            p = model(tokens, lengths)
            loss = loss_fn(p, y)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 30)
            optimizer.step()
            correct += int(((p > 0.5).float() == y).sum())
            total += len(y)
        train_seconds = time.perf_counter() - t
        model.eval()
        test_correct = 0
        with torch.no_grad():
            for tokens, lengths, y in _batches(test_x, test_y, 256, False, g):
                test_correct += int(((model(tokens, lengths) > 0.5).float() == y).sum())
        row = {
            "epoch": epoch,
            "train_seconds": train_seconds,
            "train_accuracy": correct / total,
            "test_accuracy": test_correct / len(test_y),
        }
        history.append(row)
        print(
            f"baseline epoch {epoch}: {train_seconds:.1f}s train, train acc "
            f"{row['train_accuracy']:.4f}, test acc {row['test_accuracy']:.4f}",
            flush=True,
        )
    return history


def run_fastlstm(
    path: Path, epochs: int, seed: int, backend: str, device: str, batch_size: int
) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig.from_preset(
            "exercise",
            data=str(path),
            out=out,
            epochs=epochs,
            seed=seed,
            backend=backend,
            device=device,
            progress=False,
            batch_size=batch_size,
        )
        data = build_datasets(config, load_corpus(path))
        result = Trainer(config, data).fit()
        history = json.loads(RunFolder(out).metrics_json.read_text())["history"]
    for row in history:
        print(
            f"fastlstm[{backend}] epoch {row['epoch']}: {row['train_seconds']:.1f}s train, "
            f"val acc {row['val_accuracy']:.4f}",
            flush=True,
        )
    if "test_accuracy" in result:
        print(f"fastlstm[{backend}] best-epoch test acc {result['test_accuracy']:.4f}", flush=True)
    return [{**row, "test_accuracy_best": result.get("test_accuracy")} for row in history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default=os.environ.get("FASTLSTM_IMDB_PATH"),
        help="aclImdb folder or .tar.gz (default $FASTLSTM_IMDB_PATH)",
    )
    parser.add_argument("--baseline-epochs", type=int, default=1, help="default 1")
    parser.add_argument("--fastlstm-epochs", type=int, default=1, help="default 1")
    parser.add_argument(
        "--backends",
        default="auto",
        help="comma-separated fastlstm backends to time (e.g. aten,triton)",
    )
    parser.add_argument("--device", default="cpu", help="device for fastlstm (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (both)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="fastlstm batch size (default 64; the baseline keeps 32)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument(
        "--plot", type=Path, default=None, help="write a bar chart of seconds per epoch here (PNG)"
    )
    args = parser.parse_args()
    if not args.data:
        parser.error("pass --data PATH or set FASTLSTM_IMDB_PATH")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg(),
        "command": " ".join(sys.argv),
    }
    if args.baseline_epochs:
        report["baseline"] = run_baseline(Path(args.data), args.baseline_epochs, args.seed)
    for backend in args.backends.split(","):
        if args.fastlstm_epochs:
            report[f"fastlstm_{backend}"] = run_fastlstm(
                Path(args.data),
                args.fastlstm_epochs,
                args.seed,
                backend,
                args.device,
                args.batch_size,
            )
    report["load_average_end"] = os.getloadavg()
    if "baseline" in report:
        base = sum(r["train_seconds"] for r in report["baseline"]) / len(report["baseline"])
        for key, rows in list(report.items()):
            if key.startswith("fastlstm_"):
                ours = sum(r["train_seconds"] for r in rows) / len(rows)
                report[f"speedup_{key}"] = base / ours
                print(
                    f"{key}: {ours:.1f}s/epoch vs baseline {base:.1f}s/epoch "
                    f"= {base / ours:.1f}x faster",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.plot:
        plot_epoch_times(report, args.plot)


def plot_epoch_times(report: dict, path: Path) -> None:
    """Horizontal bars: mean training seconds per epoch of each pipeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, seconds = [], []
    for key, rows in report.items():
        if key == "baseline" or key.startswith("fastlstm_"):
            label = (
                "exercise pipeline\n(random batches, packed nn.LSTM)"
                if key == "baseline"
                else f"fastlstm, backend {key.removeprefix('fastlstm_')}\n(bucketed, lengths=)"
            )
            names.append(label)
            seconds.append(sum(r["train_seconds"] for r in rows) / len(rows))
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.8 * len(names)))
    bars = ax.barh(names, seconds, color=["tab:gray"] + ["tab:blue"] * (len(names) - 1))
    ax.bar_label(bars, [f"{s:.0f} s" for s in seconds], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("training seconds per IMDB epoch, exercise-size model")
    ax.set_title(f"{report['threads']} thread(s), {report['cpus']} CPUs, torch {report['torch']}")
    ax.set_xlim(0, max(seconds) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
