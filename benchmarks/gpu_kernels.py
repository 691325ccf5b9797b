"""GPU benchmark of the fused Triton LSTM kernels against cuDNN ``nn.LSTM`` (same run).

One direction of one layer, the kernels' unit of work, timed three ways on the same
weights: cuDNN (``nn.LSTM``), the Triton kernels (``fastlstm.kernels.lstm_direction``) and
autograd through a per-timestep Python loop. Forward (no grad) and forward+backward (random
cotangents for out, h_n and c_n; gradients for x and all weights). Variable lengths compare
with ``nn.LSTM`` on a ``PackedSequence`` (pack and unpack included: that is what a user
pays). Before timing, every shape is checked against cuDNN; a shape that disagrees is
reported as a mismatch and gets no ratio.

Writes ``kernels.json`` and ``kernels.md`` to ``--out``; ``--sweep`` instead times the kernels
under alternative launch settings (``sweep.json``), data for tuning ``kernels/launch.py``.
Ratios are cuDNN time / provider time, so above 1 means faster than cuDNN.
Usage: ``python benchmarks/gpu_kernels.py --out DIR``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fastlstm.kernels import can_serve, lstm_direction

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Largest difference from cuDNN, relative to each tensor's largest magnitude (outputs,
# final states and every gradient), before a ratio is withheld as a mismatch.
AGREEMENT = {"fp32": 1e-3, "bf16": 1e-1, "fp16": 2e-2}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.float().abs().max().clamp_min(1.0)
    return ((actual.float() - expected.float()).abs().max() / scale).item()


@dataclass(frozen=True)
class Shape:
    T: int
    B: int
    I: int
    H: int
    dtype: str
    varlen: bool = False
    loop: bool = False  # also time autograd through a per-timestep Python loop

    @property
    def name(self) -> str:
        lens = "-varlen" if self.varlen else ""
        return f"T{self.T}-B{self.B}-I{self.I}-H{self.H}-{self.dtype}{lens}"


SHAPES = [
    Shape(256, 64, 128, 128, "fp32", loop=True),
    Shape(256, 64, 128, 128, "bf16", loop=True),
    Shape(256, 64, 256, 256, "fp32"),
    Shape(256, 64, 256, 256, "bf16"),
    Shape(100, 64, 512, 512, "fp32"),
    Shape(100, 64, 512, 512, "bf16"),
    Shape(512, 64, 256, 256, "fp32", varlen=True),
    Shape(512, 64, 256, 256, "bf16", varlen=True),
]


# A smoke-test list for the CPU interpreter (--tiny): same code paths, seconds to run.
TINY_SHAPES = [
    Shape(6, 3, 8, 16, "fp32", loop=True),
    Shape(9, 4, 8, 20, "fp32", varlen=True),
]


def time_ms(fn: Callable[[], object], warmup: int, repeats: int, device) -> dict[str, float]:
    """Median and quartiles of ``repeats`` calls, each bracketed by CUDA events on a GPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"ms": statistics.median(times), "ms_q1": q[0], "ms_q3": q[2], "repeats": repeats}


def python_loop_lstm(x, lstm: nn.LSTM):
    """Autograd through a per-timestep loop: the baseline a hand-written LSTM gets."""
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    xp = torch.matmul(x, w_ih.t()) + lstm.bias_ih_l0 + lstm.bias_hh_l0  # [T, B, 4H]
    B, H = x.shape[1], lstm.hidden_size
    h = x.new_zeros(B, H)
    c = x.new_zeros(B, H)
    outs = []
    for t in range(x.shape[0]):
        i, f, g, o = (xp[t] + h @ w_hh.t()).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs), h.unsqueeze(0), c.unsqueeze(0)


def bench_shape(shape: Shape, warmup: int, repeats: int, dev: torch.device) -> list[dict]:
    dtype = DTYPES[shape.dtype]
    torch.manual_seed(0)
    lstm = nn.LSTM(shape.I, shape.H).to(dev, dtype)
    x = torch.randn(shape.T, shape.B, shape.I, device=dev, dtype=dtype, requires_grad=True)
    lengths = None
    if shape.varlen:
        lengths = torch.randint(min(32, shape.T), shape.T + 1, (shape.B,), device=dev)
        lengths[0] = shape.T
    lengths_cpu = None if lengths is None else lengths.cpu()
    zeros = torch.zeros(shape.B, shape.H, device=dev, dtype=dtype)
    params = list(lstm.parameters())

    def run_cudnn():
        if lengths is None:
            out, (h, c) = lstm(x)
            return out, h, c
        packed = pack_padded_sequence(x, lengths_cpu, enforce_sorted=False)
        out, (h, c) = lstm(packed)
        return pad_packed_sequence(out, total_length=shape.T)[0], h, c

    def run_triton():
        out, h, c = lstm_direction(
            x, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0,
            None, zeros, zeros, lengths,
        )  # fmt: skip
        return out, h.unsqueeze(0), c.unsqueeze(0)

    providers = {"cudnn": run_cudnn, "triton": run_triton}
    if shape.loop:
        providers["python-loop"] = lambda: python_loop_lstm(x, lstm)

    ref = run_cudnn()
    cot = [torch.randn_like(t) for t in ref]
    ref_grads = torch.autograd.grad(ref, [x, *params], cot)
    rows: list[dict] = []
    errors: dict[str, float] = {}
    for name, fn in providers.items():
        outs = fn()
        g = torch.autograd.grad(outs, [x, *params], cot)
        pairs = [*zip(outs, ref, strict=True), *zip(g, ref_grads, strict=True)]
        errors[name] = max(rel_err(a, b) for a, b in pairs)

        def fwd(fn=fn):
            with torch.no_grad():
                fn()

        def fwd_bwd(fn=fn):
            torch.autograd.grad(fn(), [x, *params], cot)

        for mode, call in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            n = max(3, repeats // 4) if name == "python-loop" else repeats
            timing = time_ms(call, warmup, n, dev)
            row = {"shape": shape.name, **asdict(shape), "mode": mode, "provider": name}
            rows.append({**row, "max_rel_err_vs_cudnn": errors[name], **timing})
    base = {r["mode"]: r["ms"] for r in rows if r["provider"] == "cudnn"}
    for r in rows:
        agrees = r["max_rel_err_vs_cudnn"] <= AGREEMENT[shape.dtype]
        r["agrees_with_cudnn"] = agrees
        r["speedup_vs_cudnn"] = base[r["mode"]] / r["ms"] if agrees else None
    return rows


def environment(device: torch.device) -> dict[str, str]:
    import triton

    env = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = props.name
        env["capability"] = f"{props.major}.{props.minor}"
        env["sm_count"] = str(props.multi_processor_count)
    else:
        env["gpu"] = f"none ({platform.processor() or 'cpu'}, Triton interpreter)"
    return {
        **env,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": str(torch.version.cuda),
        "cudnn": str(torch.backends.cudnn.version()),
        "python": platform.python_version(),
        "tf32_matmul": str(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": str(torch.backends.cudnn.allow_tf32),
    }


def markdown(env: dict[str, str], rows: list[dict], tests: str) -> str:
    lines = [
        "# fastlstm Triton kernels vs cuDNN nn.LSTM",
        "",
        ", ".join(f"{k}: {v}" for k, v in env.items()) + f", kernel tests: {tests}",
        "",
        "One layer, one direction. Speedup = cuDNN ms / provider ms (same run); above 1 is "
        "faster than cuDNN. Varlen: cuDNN on a PackedSequence (pack + unpack included), "
        "Triton on padded input + lengths.",
        "",
        "| shape | mode | provider | ms (median) | q1-q3 | speedup vs cuDNN | max rel err |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        speed = "mismatch" if r["speedup_vs_cudnn"] is None else f"{r['speedup_vs_cudnn']:.2f}x"
        if tests != "passed":
            speed = f"withheld (kernel tests {tests})"
        lines.append(
            f"| {r['shape']} | {r['mode']} | {r['provider']} | {r['ms']:.3f} | "
            f"{r['ms_q1']:.3f}-{r['ms_q3']:.3f} | {speed} | {r['max_rel_err_vs_cudnn']:.2e} |"
        )
    return "\n".join(lines) + "\n"


def sweep(shapes: list[Shape], warmup: int, repeats: int, device: torch.device) -> list[dict]:
    """Forward+backward time of the kernels under alternative launch settings.

    Data for tuning ``kernels/launch.py`` (not part of the default check): each setting
    replaces ``recurrence_config`` for the whole call.
    """
    from fastlstm.kernels import launch
    from fastlstm.kernels import lstm as lstm_module

    default = lstm_module.recurrence_config
    rows = []
    for shape in shapes:
        dtype = DTYPES[shape.dtype]
        torch.manual_seed(0)
        lstm = nn.LSTM(shape.I, shape.H).to(device, dtype)
        x = torch.randn(shape.T, shape.B, shape.I, device=device, dtype=dtype, requires_grad=True)
        params = list(lstm.parameters())
        base = default(shape.B, shape.H, shape.H, dtype)
        for block_h in (32, 64, 128):
            for num_warps in (4, 8):
                for num_stages in (1, 2):
                    cfg = launch.RecurrenceConfig(
                        base.block_b, block_h, base.block_k, num_warps, num_stages
                    )
                    lstm_module.recurrence_config = lambda *a, cfg=cfg, **k: cfg

                    def call(x=x, params=params):
                        out = lstm_direction(x, *params)
                        torch.autograd.grad(out[0].float().sum(), [x, *params])

                    try:
                        timing = time_ms(call, warmup, repeats, device)
                    except Exception as err:  # a setting that does not compile or fit
                        timing = {"error": repr(err)[:300]}
                    finally:
                        lstm_module.recurrence_config = default
                    row = {"shape": shape.name, **asdict(cfg), "default": cfg == base, **timing}
                    rows.append(row)
                    print(f"  sweep {row}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tests", default="not run", help="result of the kernel tests")
    parser.add_argument("--only", default="", help="run only shapes whose name contains this")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu with TRITON_INTERPRET=1")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (interpreter smoke test)")
    parser.add_argument(
        "--sweep", action="store_true", help="time alternative launch settings (sweep.json)"
    )
    parser.add_argument(
        "--tf32", action="store_true", help="let cuDNN, cuBLAS and the kernels use TF32 for fp32"
    )
    args = parser.parse_args(argv)
    # PyTorch lets cuDNN use TF32 by default while the kernels' fp32 dots are exact by
    # default: compare like with like (both exact, or both TF32 with --tf32).
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_kernels: needs a CUDA device", file=sys.stderr)
        return 2
    probe = torch.zeros(1, 1, 1, device=device)
    reason = can_serve(probe, torch.zeros(4, 1, device=device))
    if reason is not None:
        print(f"gpu_kernels: the kernels cannot run here: {reason}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    shapes = [
        s for s in (TINY_SHAPES if args.tiny else SHAPES) if not args.only or args.only in s.name
    ]
    if args.sweep:
        rows = sweep([s for s in shapes if not s.varlen], args.warmup, args.repeats, device)
        (args.out / "sweep.json").write_text(
            json.dumps({"environment": env, "rows": rows}, indent=1)
        )
        return 0
    rows: list[dict] = []
    for shape in shapes:
        print(f"gpu_kernels: {shape.name}", flush=True)
        first = len(rows)
        try:
            rows.extend(bench_shape(shape, args.warmup, args.repeats, device))
        except Exception as err:  # one failing shape must not hide the others' numbers
            print(f"gpu_kernels: {shape.name} failed: {err!r}", file=sys.stderr, flush=True)
            rows.append({"shape": shape.name, "error": repr(err)})
        for r in rows[first:]:
            if "ms" in r:
                print(f"  {r['mode']:8s} {r['provider']:12s} {r['ms']:9.3f} ms", flush=True)
        # Written after every shape, so a run cut short still leaves its results.
        ok_rows = [r for r in rows if "ms" in r]
        (args.out / "kernels.json").write_text(
            json.dumps({"environment": env, "tests": args.tests, "rows": rows}, indent=1)
        )
        (args.out / "kernels.md").write_text(markdown(env, ok_rows, args.tests))
    ok_rows = [r for r in rows if "ms" in r]
    print((args.out / "kernels.md").read_text())
    failed = len(ok_rows) != len(rows) or any(not r["agrees_with_cudnn"] for r in ok_rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
