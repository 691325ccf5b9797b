"""``fastlstm bench``: check and time every provider on a shape grid, print and save results."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import time
from pathlib import Path

import torch

from fastlstm.errors import CLIError

__all__ = ["add_parser", "run"]

# Timed calls every case gets even past --budget: fewer make a median at the mercy of one
# stall on a shared machine.
MIN_REPEATS = 5

DESCRIPTION = """\
Check each implementation against torch.nn.LSTM on the benchmark input, then time it forward
and forward+backward side by side, with peak memory. Prints a table of times and speedups
over nn.LSTM and writes results.json, results.csv, results.md and speedup.png into
--out (the first three after every shape, so a run cut short keeps what it measured).

The default is a quick grid (about a minute on a 2-core CPU, no GPU or data needed).
Shapes are written T<len>-B<batch>-I<input>-H<hidden>[-L<layers>][-bidir][-var<min len>];
var<n> draws lengths uniformly from n..T. Run with --list for the named shapes and grids.
The GPU check's kernel benchmark, which the design table is made from, is a grid of this
command: every pinned Triton design against cuDNN,

  fastlstm bench --shapes gpu --device cuda --dtype tf32,bfloat16,float32,float16
    --providers nn.LSTM-padded,nn.LSTM-control,fastlstm-triton-persistent,
                fastlstm-triton-step,fastlstm-triton-batch --compile-workers 12
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``bench`` subcommand on the ``fastlstm`` parser."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark fastlstm against torch.nn.LSTM (speedup table, JSON, CSV, chart)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument(
        "--shapes",
        default=None,
        metavar="LIST",
        help="comma-separated grid names, shape names or shape texts (default: quick)",
    )
    grid.add_argument(
        "--full",
        action="store_true",
        help="the full grid: PyTorch's RNN benchmark default, the classifier, the packed "
        "targets, small batches, long sequences (slow on a CPU)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--dtype",
        default="float32",
        metavar="LIST",
        help="comma-separated precisions: float32 (TF32 off, the default), tf32 (float32 "
        "with TF32 on for cuDNN, cuBLAS and the Triton kernels), bfloat16, float16, float64",
    )
    parser.add_argument(
        "--providers",
        default=None,
        metavar="LIST",
        help="comma-separated providers (default: all that run on the device; "
        "fastlstm-triton and its pinned designs only on CUDA)",
    )
    parser.add_argument(
        "--modes", default="fwd,fwd+bwd", metavar="LIST", help="fwd, fwd+bwd or both (default)"
    )
    parser.add_argument(
        "--repeats", type=int, default=50, help="most timed calls per case (default 50)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    parser.add_argument(
        "--budget",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="stop repeating a case after this many seconds per provider (settle calls "
        "included), once 5 calls are timed (default 1; 0 = always do --repeats)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument(
        "--compile-workers",
        type=int,
        default=0,
        metavar="N",
        help="first compile the Triton kernels of the grid in N processes (each provider "
        "fastlstm-triton* once per precision and shape; fills Triton's disk cache, so the "
        "run's own compiles become loads); default 0: compile on first use, one at a time",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("fastlstm-bench"),
        help="directory for results.json, results.csv, speedup.png (default ./fastlstm-bench)",
    )
    parser.add_argument(
        "--chart",
        type=Path,
        default=None,
        help="also copy the chart (OUT/speedup.png) to this path, e.g. for the docs",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress output (without a terminal it is one plain line per shape)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the named shapes, grids and providers and exit"
    )
    parser.set_defaults(func=run)
    return parser


def _listing() -> str:
    from fastlstm.bench.providers import PROVIDERS
    from fastlstm.bench.shapes import GRIDS, PRESETS

    lines = ["grids:"]
    lines += [f"  {name:<16} {', '.join(s.id for s in shapes)}" for name, shapes in GRIDS.items()]
    lines.append("shapes:")
    lines += [f"  {name:<16} {shape.id}" for name, shape in PRESETS.items()]
    lines.append("providers:")
    lines += [f"  {name:<19} {what}" for name, what in PROVIDERS.items()]
    return "\n".join(lines)


def _resolve_device(text: str) -> torch.device:

    try:
        device = torch.device(text)
    except RuntimeError:
        raise CLIError(f"--device: cannot read {text!r}; expected cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"--device: {text!r} is not supported; expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError("--device cuda: no CUDA device is available (torch.cuda.is_available())")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(
                f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return device


def _resolve_precisions(text: str) -> list:
    from fastlstm.bench.runner import resolve_precisions

    names = [d.strip() for d in text.split(",") if d.strip()]
    try:
        return resolve_precisions(names)
    except ValueError as err:
        raise CLIError(f"--dtype: {err}") from None


def _resolve_providers(text: str | None, device: torch.device) -> list[str]:
    from fastlstm.bench.providers import PROVIDERS, default_providers, provider_why_not

    if text is None:
        return list(default_providers(device))
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise CLIError(f"--providers: empty list; expected some of {', '.join(PROVIDERS)}")
    for name in names:
        if name not in PROVIDERS:
            known = ", ".join(PROVIDERS)
            raise CLIError(f"--providers: unknown {name!r}; expected some of {known}")
        why_not = provider_why_not(name, device)
        if why_not is not None:
            raise CLIError(f"--providers: {name} cannot run on {device}: {why_not}")
    return list(dict.fromkeys(names))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by the parsed ``args``; returns the exit code."""
    from fastlstm.bench.env import environment
    from fastlstm.bench.precompile import precompile, precompiled_providers
    from fastlstm.bench.report import (
        UNSTEADY_SPREAD,
        format_headline,
        format_markdown,
        format_table,
        headline_ratios,
        load_json,
        plot_speedup,
        unsteady,
        write_csv,
        write_json,
    )
    from fastlstm.bench.runner import MODES, RunConfig, run_benchmarks
    from fastlstm.bench.shapes import parse_shapes
    from fastlstm.bench.timing import SETTLE_CALLS, SETTLE_S
    from fastlstm.runtime import steady_cpu_allocator

    if args.list:
        print(_listing())
        return 0
    spec = "full" if args.full else (args.shapes or "quick")
    try:
        shapes = parse_shapes(spec)
    except ValueError as err:
        raise CLIError(f"--shapes: {err}") from None
    device = _resolve_device(args.device)
    precisions = _resolve_precisions(args.dtype)
    dtype_names = ",".join(p.name for p in precisions)
    providers = _resolve_providers(args.providers, device)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise CLIError(f"--modes: got {args.modes!r}; expected a comma list of {', '.join(MODES)}")
    if args.repeats < 1:
        raise CLIError(f"--repeats: expected at least 1, got {args.repeats}")
    if args.compile_workers < 0:
        raise CLIError(f"--compile-workers: expected 0 or more, got {args.compile_workers}")
    if args.warmup < 0:
        raise CLIError(f"--warmup: expected 0 or more, got {args.warmup}")
    if args.budget < 0:
        raise CLIError(f"--budget: expected 0 or more seconds, got {args.budget}")
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads: expected at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out: {args.out} exists and is not a directory")

    config = RunConfig(
        warmup=args.warmup,
        repeats=args.repeats,
        min_repeats=min(MIN_REPEATS, args.repeats),
        budget_s=args.budget or None,
        memory=not args.no_memory,
    )
    env = environment(device, dtype_names)
    print(
        f"fastlstm bench: {len(shapes)} shape(s) x {len(providers)} provider(s), {', '.join(modes)}"
        f" on {env['hardware']} ({device}, {dtype_names}, {env['torch_threads']} threads)",
        flush=True,
    )
    _warn_if_busy(device)
    start = time.perf_counter()
    command = _canonical_command(args, spec)
    if args.compile_workers and precompiled_providers(providers):
        report = precompile(shapes, providers, device, precisions, args.compile_workers)
        print(report.describe(), flush=True)

    def run_config() -> dict[str, object]:
        return {
            "shapes": [s.id for s in shapes],
            "dtypes": [p.name for p in precisions],
            "providers": providers,
            "modes": modes,
            "warmup": config.warmup,
            "settle": SETTLE_CALLS,
            "settle_s": SETTLE_S,
            "repeats": config.repeats,
            "min_repeats": config.min_repeats,
            "budget_s": config.budget_s,
            "memory": config.memory,
            "memory_method": _memory_method(device),
            "compile_workers": args.compile_workers,
            "cpu_allocator": steady_cpu_allocator() if device.type == "cpu" else None,
            "seed": config.seed,
            "elapsed_s": round(time.perf_counter() - start, 1),
            "command": command,
        }

    def save(rows: list[dict[str, object]]) -> list[Path]:
        json_path = write_json(args.out / "results.json", env, run_config(), rows)
        csv_path = write_csv(args.out / "results.csv", rows, env)
        md_path = args.out / "results.md"
        md_path.write_text(format_markdown(load_json(json_path)))
        return [json_path, csv_path, md_path]

    rows = run_benchmarks(
        shapes,
        providers,
        device,
        precisions,
        modes,
        config,
        progress=not args.no_progress,
        on_case=save,
    )
    elapsed = time.perf_counter() - start

    print()
    print(format_table(rows))
    ratios = headline_ratios(rows)
    headline = format_headline(ratios)
    if headline:
        print("\nratios measured side by side in this run (time of the second / the first):")
        print(headline)
    shaky = sum(unsteady(r) for r in ratios)
    if shaky:
        print(
            f"warning: {shaky} ratio(s) marked unsteady: a timing's interquartile range exceeds "
            f"{UNSTEADY_SPREAD:.0%} of its median, so its median may differ from run to run. "
            "On a CPU this is typical of multi-threaded ops on a machine with few cores; "
            "rerun with --threads 1, or on an idle machine."
        )
    failed = [r for r in rows if r["status"] in ("check failed", "error")]

    written = [*save(rows), plot_speedup(args.out / "speedup.png", rows, env)]
    chart_path = written[-1]
    if args.chart is not None:
        args.chart.parent.mkdir(parents=True, exist_ok=True)
        written.append(Path(shutil.copyfile(chart_path, args.chart)))
    names = ", ".join(str(p) for p in written[:-1])
    print(f"\nwrote {names} and {written[-1]} ({elapsed:.0f} s)")
    if failed:
        names = sorted({f"{r['provider']} on {r['shape']}" for r in failed})
        print(f"no speedup reported for {len(names)} failing case(s): {'; '.join(names)}")
        return 1
    return 0


def _warn_if_busy(device: torch.device) -> None:
    """Say so when other processes already load the CPU: timings will be noisy.

    With more runnable processes than cores, a multi-threaded torch op can stall at every
    parallel region waiting for a descheduled thread (seen as 1000x slowdowns on small ops);
    one thread per benchmark keeps the ratios meaningful there.
    """
    if device.type != "cpu" or not hasattr(os, "getloadavg"):
        return
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores - 0.5 and torch.get_num_threads() > 1:
        print(
            f"warning: the CPU is already busy (load {load:.1f} on {cores} cores); times will "
            "be noisy and multi-threaded ops may stall; consider --threads 1",
            flush=True,
        )


def _canonical_command(args: argparse.Namespace, spec: str) -> str:
    """The command line that reproduces this run's settings (recorded in results.json)."""
    dtypes = ",".join(d.strip() for d in args.dtype.split(",") if d.strip())
    parts = ["fastlstm", "bench", "--shapes", spec, "--device", args.device, "--dtype", dtypes]
    if args.providers:
        parts += ["--providers", args.providers]
    parts += ["--modes", args.modes, "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    parts += ["--budget", f"{args.budget:g}"]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    if args.no_memory:
        parts.append("--no-memory")
    if args.compile_workers:
        parts += ["--compile-workers", str(args.compile_workers)]
    parts += ["--out", str(args.out)]
    if args.chart is not None:
        parts += ["--chart", str(args.chart)]
    return shlex.join(parts)


def _memory_method(device: torch.device) -> str:
    from fastlstm.bench.timing import MEMORY_METHODS

    return MEMORY_METHODS[device.type]
