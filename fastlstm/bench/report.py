"""Turn benchmark rows into a printed table, JSON and CSV files, and a speedup chart."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from fastlstm.backends import DESIGNS
from fastlstm.bench.providers import BASELINE_VARIABLE, CONTROL, PROVIDERS

__all__ = [
    "CSV_FIELDS",
    "UNSTEADY_SPREAD",
    "format_headline",
    "format_markdown",
    "format_table",
    "headline_ratios",
    "load_json",
    "plot_speedup",
    "unsteady",
    "write_csv",
    "write_json",
]

CSV_FIELDS = (
    "shape",
    "T",
    "B",
    "I",
    "H",
    "layers",
    "bidirectional",
    "min_len",
    "dtype",
    "provider",
    "mode",
    "status",
    "backend",
    "median_ms",
    "q1_ms",
    "q3_ms",
    "min_ms",
    "us_per_step",
    "repeats",
    "peak_mem_bytes",
    "baseline",
    "speedup",
    "check_rel_err",
    "detail",
)

# The side-by-side ratios the drop-in issue asks for: (label, provider, versus, which shapes).
_HEADLINES = (
    ("auto vs nn.LSTM (padded)", "fastlstm-auto", "nn.LSTM-padded", "fixed"),
    ("triton vs nn.LSTM (padded)", "fastlstm-triton", "nn.LSTM-padded", "fixed"),
    ("triton+lengths vs nn.LSTM packed", "fastlstm-triton", BASELINE_VARIABLE, "variable"),
    ("auto+lengths vs nn.LSTM packed", "fastlstm-auto", BASELINE_VARIABLE, "variable"),
    # Each pinned kernel design against cuDNN: what the design table is made of.
    *(
        (f"triton {d} vs nn.LSTM (padded)", f"fastlstm-triton-{d}", "nn.LSTM-padded", "fixed")
        for d in DESIGNS
    ),
    *(
        (
            f"triton {d}+lengths vs nn.LSTM packed",
            f"fastlstm-triton-{d}",
            BASELINE_VARIABLE,
            "variable",
        )
        for d in DESIGNS
    ),
    ("fastlstm vs nn.LSTM, same PackedSequence", "fastlstm-packed", BASELINE_VARIABLE, "variable"),
    ("reference vs python loop", "fastlstm-reference", "python-loop", "all"),
    # The harness's own error: the baseline against an identical copy of itself.
    ("control: nn.LSTM vs itself", CONTROL, "nn.LSTM-padded", "fixed"),
    ("control: nn.LSTM vs itself", CONTROL, BASELINE_VARIABLE, "variable"),
)


def _fmt_ms(value: object) -> str:
    if value is None:
        return "-"
    v = float(value)
    return f"{v:.3g}" if v < 10 else f"{v:.0f}"


def _fmt_x(value: object) -> str:
    if value is None:
        return "-"
    v = float(value)
    return f"{v:.2f}x" if v >= 0.1 else f"{v:.2g}x"


def _fmt_mb(value: object) -> str:
    return "-" if value is None else f"{int(value) / 2**20:.1f}"


def _fmt_us(value: object) -> str:
    if value is None:
        return "-"
    v = float(value)
    return f"{v:.3g}" if v < 1000 else f"{v:.0f}"


def _case(r: dict) -> tuple[str, str]:
    """A row's case: its shape and precision."""
    return r["shape"], r["dtype"]


def _index(rows: Sequence[dict]) -> dict[tuple[str, str, str, str], dict]:
    return {(*_case(r), r["provider"], r["mode"]): r for r in rows}


# A ratio is flagged when either timing's interquartile range exceeds this share of its
# median. Steady timings spread by 1-23 % (the idle quick grid); on a 2-vCPU machine a
# two-thread op whose second thread is now and then descheduled takes one of two times (5 or
# 10 ms), which shows here as a spread of 40-90 % while the median hops between the two modes
# from run to run.
UNSTEADY_SPREAD = 0.25

_TABLE_HEADER = (
    "shape",
    "dtype",
    "provider",
    "backend",
    "fwd ms",
    "fwd µs/step",
    "fwd x",
    "fwd+bwd ms",
    "fwd+bwd µs/step",
    "fwd+bwd x",
    "peak MB",
    "note",
)
_NUMERIC = {4, 5, 6, 7, 8, 9, 10}


def _several_dtypes(rows: Sequence[dict]) -> bool:
    return len({r["dtype"] for r in rows}) > 1


def _drop_dtype(cells: Sequence[str]) -> tuple[str, ...]:
    return (cells[0], *cells[2:])


def _table_cells(rows: Sequence[dict]) -> list[tuple[str, ...]]:
    """One tuple of formatted cells (as ``_TABLE_HEADER``) per case and provider."""
    by_key = _index(rows)
    lines: list[tuple[str, ...]] = []
    seen = list(dict.fromkeys((*_case(r), r["provider"]) for r in rows))
    for shape, dtype, provider in seen:
        fwd = by_key.get((shape, dtype, provider, "fwd"), {})
        both = by_key.get((shape, dtype, provider, "fwd+bwd"), {})
        any_row = fwd or both
        if any_row["status"] == "not applicable":
            continue
        note = any_row["status"] if any_row["status"] != "ok" else ""
        detail = any_row["detail"]
        if detail:
            note = f"{note}: {detail}" if note else detail
        if provider == any_row["baseline"]:
            note = f"baseline; {note}" if note else "baseline"
        lines.append(
            (
                shape,
                dtype,
                provider,
                any_row["backend"] or "-",
                _fmt_ms(fwd.get("median_ms")),
                _fmt_us(fwd.get("us_per_step")),
                _fmt_x(fwd.get("speedup")),
                _fmt_ms(both.get("median_ms")),
                _fmt_us(both.get("us_per_step")),
                _fmt_x(both.get("speedup")),
                _fmt_mb(both.get("peak_mem_bytes")),
                note,
            )
        )
    return lines


def _settle_words(config: dict[str, object]) -> str:
    """How each timed call was settled."""
    settle_ms = float(config["settle_s"]) * 1e3  # type: ignore[arg-type]
    return f", each after {settle_ms:g} ms (at least {config['settle']} call) of untimed calls"


def _table_layout(rows: Sequence[dict]) -> tuple[tuple[str, ...], list[tuple[str, ...]], set]:
    """Header, cell lines and numeric columns; the dtype column only when it varies."""
    header, lines, numeric = _TABLE_HEADER, _table_cells(rows), _NUMERIC
    if not _several_dtypes(rows):
        header, lines = _drop_dtype(header), [_drop_dtype(line) for line in lines]
        numeric = {i - 1 for i in numeric}
    return header, lines, numeric


def format_table(rows: Sequence[dict]) -> str:
    """One line per case and provider: times, speedups over nn.LSTM, peak memory, status."""
    header, lines, numeric = _table_layout(rows)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def render(cells: Sequence[str]) -> str:
        cols = enumerate(zip(cells, widths, strict=True))
        parts = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in cols]
        return "  ".join(parts).rstrip()

    out = [render(header), render(["-" * w for w in widths])]
    previous = None
    for line, cells in zip(lines, _table_cells(rows), strict=True):
        if previous is not None and cells[:2] != previous:
            out.append("")
        out.append(render(line))
        previous = cells[:2]
    return "\n".join(out)


def _spread(row: dict) -> float:
    """Interquartile range of a timed row's calls relative to their median."""
    return (float(row["q3_ms"]) - float(row["q1_ms"])) / float(row["median_ms"])


def unsteady(ratio: dict) -> bool:
    """Whether a headline ratio rests on widely spread timings (see UNSTEADY_SPREAD)."""
    return ratio["spread"] > UNSTEADY_SPREAD


def headline_ratios(rows: Sequence[dict]) -> list[dict[str, object]]:
    """The drop-in issue's ratios, each from two medians measured in this run.

    ``ratio`` = time(versus) / time(provider): above 1 means the provider is faster.
    ``spread`` is the larger of the two rows' interquartile ranges relative to their medians;
    above :data:`UNSTEADY_SPREAD` the ratio is unsteady.
    """
    by_key = _index(rows)
    cases = list(dict.fromkeys(_case(r) for r in rows))
    variable = {r["shape"]: r["min_len"] is not None for r in rows}
    out = []
    for label, provider, versus, which in _HEADLINES:
        for shape, dtype in cases:
            if which != "all" and variable[shape] != (which == "variable"):
                continue
            for mode in ("fwd", "fwd+bwd"):
                a = by_key.get((shape, dtype, provider, mode))
                b = by_key.get((shape, dtype, versus, mode))
                if not (a and b and a["status"] == "ok" and b["status"] == "ok"):
                    continue
                out.append(
                    {
                        "comparison": label,
                        "shape": shape,
                        "dtype": dtype,
                        "mode": mode,
                        "provider": provider,
                        "versus": versus,
                        "ratio": float(b["median_ms"]) / float(a["median_ms"]),
                        "us_per_step": a["us_per_step"],
                        "spread": max(_spread(a), _spread(b)),
                    }
                )
    return out


def format_headline(ratios: Sequence[dict]) -> str:
    """The headline ratios as an aligned text block (empty string when there are none)."""
    if not ratios:
        return ""
    several = len({r["dtype"] for r in ratios}) > 1
    labels = [f"{r['shape']} {r['dtype']}" if several else r["shape"] for r in ratios]
    width_l = max(len(r["comparison"]) for r in ratios)
    width_s = max(len(label) for label in labels)
    lines = [
        f"{r['comparison']:<{width_l}}  {label:<{width_s}}  {r['mode']:<7}  {_fmt_x(r['ratio'])}"
        + (f"  unsteady (spread {r['spread']:.0%})" if unsteady(r) else "")
        for r, label in zip(ratios, labels, strict=True)
    ]
    return "\n".join(lines)


def format_markdown(results: dict) -> str:
    """A results file (as :func:`write_json` writes it) as Markdown: where, how, and the figures.

    Written next to the JSON as ``results.md``, so the docs can include the figures verbatim
    (and a test can check that they still match the file).
    """
    env, config, rows = results["environment"], results["config"], results["rows"]
    lines = [
        f"Measured {env['date_utc']} on {env['hardware']} ({env['device']}, "
        f"{env['cpu_count']} cores, {env['torch_threads']} torch thread(s)), {env['dtype']}, "
        f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
        f"fastlstm {env['fastlstm']} ({env['git_commit']}).",
        f"Command: `{config['command']}`; medians of up to {config['repeats']} "
        f"interleaved calls after {config['warmup']} warmup" + _settle_words(config) + ".",
        "",
    ]
    header, cells, numeric = _table_layout(rows)
    header = tuple(h.replace(" x", " ×") for h in header)
    align = ["---:" if i in numeric else "---" for i in range(len(header))]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    ratios = headline_ratios(rows)
    if ratios:
        several = _several_dtypes(rows)
        dtype_head = " dtype |" if several else ""
        lines += [
            "",
            f"| comparison | shape |{dtype_head} mode | ratio | µs/step |",
            "|---|---|" + ("---|" if several else "") + "---|---:|---:|",
        ]
        lines += [
            f"| {r['comparison']} | {r['shape']} |"
            + (f" {r['dtype']} |" if several else "")
            + f" {r['mode']} | {_fmt_x(r['ratio'])[:-1]}× | {_fmt_us(r['us_per_step'])} |"
            for r in ratios
        ]
    return "\n".join(lines) + "\n"


def write_json(path: Path, environment: dict, config: dict, rows: Sequence[dict]) -> Path:
    """Write ``{"environment", "config", "headline", "rows"}`` as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "environment": environment,
        "config": config,
        "headline": headline_ratios(rows),
        "rows": list(rows),
    }
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def load_json(path: Path) -> dict:
    """Read a results file written by :func:`write_json`."""
    return json.loads(Path(path).read_text())


def write_csv(path: Path, rows: Sequence[dict], environment: dict | None = None) -> Path:
    """Write one CSV line per row; environment fields that identify the run are prepended."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    env_fields = ("date_utc", "machine", "hardware", "device", "dtype", "torch", "triton", "cuda")
    env = environment or {}
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*env_fields, *CSV_FIELDS])
        for r in rows:
            env_cells = [env.get(k, "") for k in env_fields]
            writer.writerow(env_cells + [_csv(r.get(k)) for k in CSV_FIELDS])
    return path


def _csv(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def plot_speedup(
    path: Path, rows: Sequence[dict], environment: dict, title: str | None = None
) -> Path:
    """Bar chart of speedup over nn.LSTM per shape (groups) and provider (bars), per mode.

    Uses matplotlib's Agg backend so it works without a display. Providers without a checked
    time on a shape leave a gap; the baseline's own bar (1.0) is drawn for reference.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    modes = [m for m in ("fwd", "fwd+bwd") if any(r["mode"] == m for r in rows)]
    cases = list(dict.fromkeys(_case(r) for r in rows))
    several = _several_dtypes(rows)
    shapes = [f"{shape} {dtype}" if several else shape for shape, dtype in cases]
    timed = {r["provider"] for r in rows if r["status"] == "ok" and r["speedup"]}
    # Canonical order, so a provider keeps its colour from one chart to the next.
    providers = [p for p in PROVIDERS if p in timed] + sorted(timed - set(PROVIDERS))
    by_key = _index(rows)
    fig_width = min(16.0, max(7.0, 1.1 * len(shapes) + 3))
    legend_cols = max(1, min(len(providers), int(fig_width / 1.9)))
    fig, axes = plt.subplots(
        len(modes),
        1,
        figsize=(fig_width, 3.4 * len(modes)),
        squeeze=False,
    )
    width = 0.8 / max(1, len(providers))
    cmap = plt.get_cmap("tab10")
    for ax, mode in zip(axes[:, 0], modes, strict=True):
        for j, provider in enumerate(providers):
            xs, ys = [], []
            for i, (shape, dtype) in enumerate(cases):
                r = by_key.get((shape, dtype, provider, mode))
                if r and r["status"] == "ok" and r["speedup"]:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(float(r["speedup"]))
            ax.bar(xs, ys, width, label=provider, color=cmap(j % 10))
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, rotation=15, ha="right", fontsize=8)
        ax.set_ylabel(f"{mode}: speedup vs nn.LSTM")
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.legend(
        *axes[0, 0].get_legend_handles_labels(),
        fontsize=7,
        ncol=legend_cols,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.965),
        frameon=False,
    )
    heading = title or (
        f"fastlstm bench: {environment.get('hardware')} ({environment.get('device')}, "
        f"{environment.get('dtype')}), torch {environment.get('torch')}, "
        f"{environment.get('date_utc')}"
    )
    fig.suptitle(heading, fontsize=9)
    fig.text(
        0.01,
        0.005,
        "higher is faster; variable-length shapes compare with nn.LSTM on the PackedSequence",
        fontsize=7,
    )
    legend_rows = -(-len(providers) // legend_cols)
    fig.tight_layout(rect=(0, 0.02, 1, 0.95 - 0.03 * legend_rows))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
