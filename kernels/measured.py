"""The measured design table: which kernel design beat cuDNN ``nn.LSTM``, where, and by how much.

``benchmarks/gpu_check.sh`` times every design against cuDNN on a GPU and writes a table
(``benchmarks/design_table.py``); committed into ``kernels/measured.json``, it is what lets
``backend="auto"`` run a Triton design at all. Where the table says nothing, ``auto`` runs cuDNN.

Format (``format: 1``): a list of tables, one per GPU and software stack::

    {"device": "NVIDIA H200", "torch": "2.11.0+cu130", "triton": "3.6.0",
     "date": "2026-12-06", "commit": "...", "command": "...",
     "entries": [{"precision": "tf32", "B": 64, "H": 256, "proj": 0,
                  "ratios": {"persistent": 1.41, "step": 0.31, "batch": 0.52}}]}

``precision`` is ``ieee`` or ``tf32`` (float32 by the TF32 switch), ``bf16`` or ``fp16``;
``ratios`` are cuDNN's forward+backward time over the design's (above 1: the design wins).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch

__all__ = ["TABLE_PATH", "load_tables", "lookup", "precision_key"]

TABLE_PATH = Path(__file__).with_name("measured.json")


@functools.cache
def load_tables(path: Path = TABLE_PATH) -> tuple[dict, ...]:
    """The committed tables (none when the file is absent)."""
    if not path.exists():
        return ()
    found = json.loads(path.read_text())
    if found.get("format") != 1:
        raise ValueError(f"{path}: unknown design table format {found.get('format')!r}")
    return tuple(found["tables"])


def precision_key(dtype: torch.dtype, precision: str) -> str:
    """The table's precision for a dtype and the fp32 dot precision."""
    if dtype == torch.float32:
        return precision
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def _minor_version(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def lookup(
    device_name: str,
    triton_version: str,
    precision: str,
    batch: int,
    hidden: int,
    proj: int,
    tables: tuple[dict, ...] | None = None,
) -> tuple[dict[str, float], str] | None:
    """The measured ratios at the nearest measured shape, and a description of the entry.

    A table applies to the same GPU name and Triton minor version (kernels compile
    differently across versions). The nearest entry with the same precision and the same
    presence of a projection is taken in log2 distance over (B, H), and only within a factor
    of two on each; otherwise None: nothing measured near this call.
    """
    tables = load_tables() if tables is None else tables
    best, best_distance = None, math.inf
    for table in tables:
        if table["device"] != device_name:
            continue
        if _minor_version(table["triton"]) != _minor_version(triton_version):
            continue
        for entry in table["entries"]:
            if entry["precision"] != precision or bool(entry["proj"]) != bool(proj):
                continue
            db = abs(math.log2(max(1, entry["B"]) / max(1, batch)))
            dh = abs(math.log2(entry["H"] / hidden))
            if db > 1 or dh > 1:
                continue
            if db + dh < best_distance:
                best, best_distance = (table, entry), db + dh
    if best is None:
        return None
    table, entry = best
    where = (
        f"measured on {table['device']} ({table['date']}, triton {table['triton']}) at "
        f"B={entry['B']} H={entry['H']} proj={entry['proj']} {entry['precision']}"
    )
    return dict(entry["ratios"]), where
