"""The design table: where each Triton kernel design beat cuDNN, from one GPU benchmark run.

``backend="auto"`` runs a Triton design on CUDA only where ``kernels/measured.json`` says it
beat cuDNN ``nn.LSTM`` near the call (``kernels/measured.py``); this script makes that table
from a ``fastlstm bench`` results file and puts it there::

    python3 benchmarks/design_table.py OUT/bench/results.json --out OUT/design_table.json
    python3 benchmarks/design_table.py --merge OUT/design_table.json

The first writes one table in ``kernels/measured.py``'s format (``format: 1``): the GPU's
name, torch and triton versions, date, commit and command from the run's environment
record, and one entry per (precision, B, H) with ``ratios[design]`` = the ``nn.LSTM-padded``
forward+backward median over the ``fastlstm-triton-<design>`` one, both from the same run
(above 1: the design was faster). It prints the entries as a Markdown table. The second
puts that table into ``kernels/measured.json`` (``--into`` another file), replacing the
table of the same GPU name and Triton minor version, the two things a lookup matches on.

What is read, and why:

- Only one-layer, one-direction shapes without lengths: the lookup has no key for layers
  or lengths (the kernels run one direction of one layer; with lengths every design loops
  to its tile's longest sequence, which the full-length time bounds), and the honest
  baseline for varying lengths is the packed call, another comparison.
- A design gets a ratio only where it passed its check against ``nn.LSTM`` and was timed.
  An entry is written wherever the baseline was timed, even with no ratio in it: a lookup
  takes the nearest entry, so an entry where a design failed keeps a neighbour's win from
  reaching that shape.
- Several shapes with the same (precision, B, H) (other T or input size) give one entry:
  the geometric mean of their ratios, for designs timed in every one of them.
- Precisions: ``tf32`` and ``float32`` (TF32 off: ``ieee``), ``bfloat16`` (``bf16``),
  ``float16`` (``fp16``); others are skipped (the kernels run none).

A run that was not on a CUDA device (the GPU check's dry run: the CPU, Triton's
interpreter) still gives a table, to test this path, but its ``device`` starts with
``not a GPU:``, which no GPU's name does, so no lookup ever matches it; ``--merge``
refuses it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a plain checkout

from fastlstm.backends import DESIGNS  # noqa: E402

TABLE_PATH = ROOT / "kernels" / "measured.json"
FORMAT = 1
BASELINE = "nn.LSTM-padded"
CONTROL = "nn.LSTM-control"
MODE = "fwd+bwd"
# The bench's precision names -> the table's (kernels/measured.py's precision_key).
PRECISIONS = {"tf32": "tf32", "float32": "ieee", "bfloat16": "bf16", "float16": "fp16"}
NOT_A_GPU = "not a GPU: "
# Interquartile range over median beyond which a timing is flagged (as fastlstm bench does).
UNSTEADY_SPREAD = 0.25
TABLE_KEYS = ("device", "torch", "triton", "date", "commit", "command", "entries")


def device_name(environment: dict) -> str:
    """The table's device: the GPU's name as torch reports it, which the lookup matches.

    Off a GPU a name no GPU has, so the table applies to none.
    """
    if environment["device"] == "cuda":
        return environment["gpu_name"]
    where = " under the Triton interpreter" if environment["triton_interpret"] else ""
    return f"{NOT_A_GPU}{environment['device']} ({environment['hardware']}){where}"


def _spread(row: dict) -> float:
    return (row["q3_ms"] - row["q1_ms"]) / row["median_ms"]


def _timed(row: dict | None) -> bool:
    return row is not None and row["status"] == "ok" and bool(row["median_ms"])


def build_table(results: dict) -> tuple[dict, list[str]]:
    """The design table of a results file, and notes on what to mistrust in it.

    Notes name each entry whose timings spread widely (unsteady) and the control's
    readings (``nn.LSTM-control``: 1.00 unless the harness is biased).
    """
    env, config, rows = results["environment"], results["config"], results["rows"]
    by_key = {(r["shape"], r["dtype"], r["provider"], r["mode"]): r for r in rows}
    shapes = {}
    for r in rows:
        if (
            r["mode"] == MODE
            and r["dtype"] in PRECISIONS
            and r["layers"] == 1
            and not r["bidirectional"]
            and r["min_len"] is None
        ):
            shapes[(r["shape"], r["dtype"])] = (r["B"], r["H"])
    groups: dict[tuple[str, int, int], list[str]] = {}
    for (shape, dtype), (B, H) in shapes.items():
        if _timed(by_key.get((shape, dtype, BASELINE, MODE))):
            groups.setdefault((dtype, B, H), []).append(shape)

    entries, notes, controls = [], [], []
    order = list(PRECISIONS)
    for dtype, B, H in sorted(groups, key=lambda k: (order.index(k[0]), k[1], k[2])):
        members = groups[(dtype, B, H)]
        ratios = {}
        spreads = [_spread(by_key[(shape, dtype, BASELINE, MODE)]) for shape in members]
        for design in DESIGNS:
            found = []
            for shape in members:
                base = by_key[(shape, dtype, BASELINE, MODE)]
                row = by_key.get((shape, dtype, f"fastlstm-triton-{design}", MODE))
                if not _timed(row):
                    break
                found.append(base["median_ms"] / row["median_ms"])
                spreads.append(_spread(row))
            else:
                mean = math.exp(sum(map(math.log, found)) / len(found))
                ratios[design] = float(f"{mean:.3g}")  # 3 significant digits
        for shape in members:
            control = by_key.get((shape, dtype, CONTROL, MODE))
            if _timed(control):
                base = by_key[(shape, dtype, BASELINE, MODE)]
                controls.append(base["median_ms"] / control["median_ms"])
        entry = {"precision": PRECISIONS[dtype], "B": B, "H": H, "proj": 0, "ratios": ratios}
        entries.append(entry)
        if max(spreads) > UNSTEADY_SPREAD:
            notes.append(
                f"unsteady: {entry['precision']} B={B} H={H} (a timing's interquartile range "
                f"is {max(spreads):.0%} of its median)"
            )
    if controls:
        notes.append(
            f"control (nn.LSTM against itself, {MODE}): {min(controls):.2f}x to "
            f"{max(controls):.2f}x over {len(controls)} shape(s); 1.00x unless the harness "
            "is biased"
        )
    table = {
        "device": device_name(env),
        "torch": env["torch"],
        "triton": env["triton"],
        "date": env["date_utc"][:10],
        "commit": env["git_commit"],
        "command": config["command"],
        "entries": entries,
    }
    return table, notes


def format_table(table: dict, notes: list[str]) -> str:
    """The entries as Markdown: one line per (precision, B, H), one column per design."""
    lines = [
        f"Design table for {table['device']} (torch {table['torch']}, triton "
        f"{table['triton']}, {table['date']}, {table['commit']}): cuDNN's {MODE} time over "
        "each design's; above 1 the design is faster, and `auto` runs the fastest such "
        "(`-`: the design did not run or failed its check).",
        "",
    ]
    if table["entries"]:
        lines += [
            "| precision | B | H | " + " | ".join(DESIGNS) + " |",
            "|---|---:|---:|" + "---:|" * len(DESIGNS),
        ]
    else:
        lines.append("No entries: no full-length one-layer shape with a timed baseline.")
    for e in table["entries"]:
        cells = [f"{e['ratios'][d]:.3g}x" if d in e["ratios"] else "-" for d in DESIGNS]
        lines.append(f"| {e['precision']} | {e['B']} | {e['H']} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def merge(table: dict, path: Path = TABLE_PATH) -> dict:
    """Put ``table`` into the tables file at ``path``; returns the file's new content.

    Replaces the table of the same device and Triton minor version (a lookup would see
    both). Raises ValueError for a table that is not one GPU run's, or a file of an
    unknown format.
    """
    missing = [k for k in TABLE_KEYS if k not in table]
    if missing:
        raise ValueError(f"not a design table: no {', '.join(missing)}")
    if table["device"].startswith(NOT_A_GPU):
        raise ValueError(
            f"the table was not measured on a GPU ({table['device']}); it applies to none, "
            "so it is not merged"
        )
    content = json.loads(path.read_text()) if path.exists() else {"format": FORMAT, "tables": []}
    if content.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown design table format {content.get('format')!r}")
    same = (table["device"], _minor(table["triton"]))
    tables = [t for t in content["tables"] if (t["device"], _minor(t["triton"])) != same]
    tables.append(table)
    tables.sort(key=lambda t: (t["device"], _minor(t["triton"])))
    content = {"format": FORMAT, "tables": tables}
    path.write_text(json.dumps(content, indent=2) + "\n")
    return content


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Make the design table from a fastlstm bench results file, or merge one "
        "into kernels/measured.json.",
        epilog="python3 benchmarks/design_table.py RESULTS.json --out TABLE.json; "
        "python3 benchmarks/design_table.py --merge TABLE.json",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("results", nargs="?", type=Path, help="a results.json of fastlstm bench")
    what.add_argument("--merge", type=Path, metavar="TABLE", help="a table this script wrote")
    parser.add_argument("--out", type=Path, help="where to write the table (with RESULTS)")
    parser.add_argument(
        "--into", type=Path, default=TABLE_PATH, help="the tables file to merge into"
    )
    args = parser.parse_args(argv)
    try:
        if args.merge is not None:
            table = json.loads(args.merge.read_text())
            content = merge(table, args.into)
            print(
                f"{args.into}: {len(content['tables'])} table(s); {table['device']}, "
                f"triton {table['triton']}: {len(table['entries'])} entries"
            )
            return 0
        if args.out is None:
            parser.error("--out is required with a results file")
        table, notes = build_table(json.loads(args.results.read_text()))
    except (OSError, ValueError, KeyError) as err:
        print(f"design_table: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=2) + "\n")
    print(format_table(table, notes), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
