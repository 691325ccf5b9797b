"""Registers, spills and shared memory of every Triton LSTM binary a call can run, for sm_90.

Compile what runs. No GPU is needed and nothing is built by hand: for every configuration of
the grid the script calls the real launchers through the dispatcher's door
(``kernels.dispatch.launch_design``: ``batch.forward`` / ``backward``,
``persistent.persistent_forward`` / ``step_forward`` / ``persistent_backward`` /
``step_backward``) with CPU tensors of the real shapes (``T = 2``: ``T`` and ``B`` are
``do_not_specialize``, so the sequence length changes no binary), at the tiles the
dispatcher plans for an H200 (``launch.batch_config``; ``launch.persistent_config(launch.H200,
...)``, and a configuration ``launch.plan_why_not`` refuses is reported as refused, never
compiled). ``launch.launch``, the one door every launch goes through, is replaced in the
design modules by a function that calls the real one with a kernel whose ``[grid](...)``
is ``JITFunction.run(..., warmup=True)``: the launcher's own keyword arguments and launch
options, then the JIT's own binder, ``@triton.heuristics``, ``do_not_specialize``, pointer
divisibility and integer specialisation, cache key and ``triton.compile`` call. So each
binary is the one a GPU would build for that call, compiled for
``GPUTarget("cuda", 90, 32)`` under a stand-in active driver that has a target, a device
and a stream and nothing else (no launcher: ``warmup=True`` never launches, and the driver
could not). CPU tensors, freshly allocated, are 16-byte aligned like CUDA allocations (each
pointer is checked), so ``tt.divisibility = 16`` lands on the same arguments as on the GPU.

Registers, stack frame and spill bytes come from the ``ptxas -v`` report of Triton's own
ptxas run (its flags, e.g. ``--regAllocOptLevel=2`` in Triton 3.9, change register
allocation), captured by standing in for ``subprocess`` inside Triton's NVIDIA backend
(Triton 3.6 and 3.9 both run ``subprocess.run(ptxas ... -v, stderr=log)``);
``TRITON_ALWAYS_COMPILE=1``, since a cache hit would skip that run. Shared memory is the
compiled kernel's ``metadata.shared`` (plus any static ``smem`` ptxas reports), what the
driver checks against the per-block limit at launch.

The grid: ``B`` in {1, 64, 256, 1024, 4096} x ``H`` in {64, 128, 256, 512, 1024} x precision
{tf32, ieee (fp32 with ``torch.backends.cudnn.allow_tf32`` off), bf16, fp16} x lengths
{0, 1} x projection {0, ``H/4``} x reverse {0, 1} x design {batch, persistent, step},
forward and backward. Every input of a call is in the one dtype (autocast casts them all,
``fastlstm.direction.autocast_inputs``), except the fp32 ``gates`` and ``cs`` backward reads.
Both directions are compiled: ``REVERSE`` is a constexpr, so a bidirectional LSTM runs two
different binaries. Identical compiles are done once: a first pass runs every launcher with
a ``jit_cache_hook`` that records the JIT's cache key (specialisation and options) and skips
the compile; the second compiles each distinct (kernel, key) once, in ``--jobs`` processes,
by running the first configuration that launched it again. One line per configuration and
kernel::

    kernel=persistent_bwd design=persistent dtype=fp32 precision=tf32 B=64 H=256 proj=0
    lengths=1 reverse=0 regs=... spill_stores=0 spill_loads=0 stack=0 smem=...
    smem_limit=232448 smem_estimate=... warps=8 maxnreg=255 grid=32x4 tiles=16x8

(one line in the output; ``smem_estimate`` is ``PersistentConfig.smem_bytes``, ``-`` for the
batch-tiled design, which plans no shared memory), then a ``refused ...: reason`` line per
refused (design, precision, B, H, projection) and a ``summary`` line per design and H.
Exits 1 when a kernel spills at ``H <= --max-spill-hidden`` (512), when a compiled kernel's
shared memory exceeds the limit (232,448 bytes) or its configuration's estimate (the
chooser trusts the estimate, so it must be an upper bound), or when a compile fails. Spills
at ``H = 1024`` are reported but do not fail (at most 168 bytes per thread in
``results/kernel-resources/``).

    python3 benchmarks/kernel_resources.py --jobs 2          # the full grid
    python3 benchmarks/kernel_resources.py --hidden 256 --precision tf32,bf16 --design batch
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Before triton is imported: compile rather than interpret, and really compile (a cache
# hit would skip the ptxas run whose report this script reads), into a private cache.
os.environ["TRITON_INTERPRET"] = "0"
os.environ["TRITON_ALWAYS_COMPILE"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default of both versions
if "TRITON_CACHE_DIR" not in os.environ:  # the compiling processes inherit it
    _cache = tempfile.mkdtemp(prefix="kernel-resources-")
    os.environ["TRITON_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import argparse
import contextlib
import datetime
import multiprocessing
import re
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a plain checkout

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

from fastlstm.kernels import batch, dispatch, launch, persistent
from fastlstm.kernels.common import BackwardArgs, ForwardArgs

PRECISIONS: dict[str, tuple[torch.dtype, bool]] = {  # name: (dtype, cudnn.allow_tf32)
    "tf32": (torch.float32, True),
    "ieee": (torch.float32, False),
    "bf16": (torch.bfloat16, True),
    "fp16": (torch.float16, True),
}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
BATCHES = (1, 64, 256, 1024, 4096)
HIDDENS = (64, 128, 256, 512, 1024)
TARGET = launch.H200
SMEM_LIMIT = TARGET.smem_per_block
GPU_TARGET = GPUTarget("cuda", 90, 32)
STEPS = 2  # T: do_not_specialize, so any length builds the same binaries


@dataclass(frozen=True, order=True)
class Case:
    """One call of one launcher: a direction's forward or backward pass."""

    design: str
    precision: str
    batch: int
    hidden: int
    proj: int  # 0: no projection
    lengths: bool
    reverse: bool
    backward: bool

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision][0]

    def fields(self) -> str:
        return (
            f"design={self.design} dtype={DTYPE_NAMES[self.dtype]} precision={self.precision} "
            f"B={self.batch} H={self.hidden} proj={self.proj} lengths={int(self.lengths)} "
            f"reverse={int(self.reverse)}"
        )


@dataclass(frozen=True)
class Launch:
    """What one launch of a case asked the JIT for."""

    label: str  # kernel= name: batch_fwd, step_bwd_proj, ...
    kernel: str  # the JITFunction, module.qualname
    key: str  # the JIT's own cache key: specialisation and options
    warps: int
    maxnreg: int | None
    grid: tuple[int, ...]


@dataclass(frozen=True)
class Resources:
    regs: int
    spill_stores: int
    spill_loads: int
    stack: int
    smem: int


class CompileOnlyDriver:
    """The active driver while the launchers run: all ``JITFunction.run(warmup=True)`` asks of
    a driver in Triton 3.6 and 3.9 (the current target, device and stream). Anything else,
    such as the ``utils`` or ``launcher_cls`` a launch would load a binary with, raises."""

    def get_current_target(self) -> GPUTarget:
        return GPU_TARGET

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def __getattr__(self, name: str):
        raise AttributeError(f"the compile-only driver cannot {name!r}: nothing is launched here")


class PtxasReports:
    """Stands in for ``subprocess`` inside Triton's NVIDIA backend and keeps the report of
    every ``ptxas -v`` it runs: the numbers of the cubin Triton really builds, with Triton's
    own ptxas flags."""

    def __init__(self, real) -> None:
        self._real = real
        self.logs: list[str] = []

    def __getattr__(self, name: str):
        return getattr(self._real, name)

    def run(self, cmd, *args, **kwargs):
        result = self._real.run(cmd, *args, **kwargs)
        log = kwargs.get("stderr")
        if "-v" in cmd and hasattr(log, "name"):
            with open(log.name) as f:
                self.logs.append(f.read())
        return result


def nvidia_backend():
    """Triton's NVIDIA compiler module, or None when this Triton has none."""
    try:
        from triton.backends.nvidia import compiler
    except ImportError:
        return None
    return compiler


def install() -> PtxasReports:
    """The stand-in driver and the ptxas recorder (idempotent); returns the recorder."""
    compiler = nvidia_backend()
    if compiler is None:
        raise SystemExit("this triton has no NVIDIA backend: nothing to compile for sm_90")
    driver.set_active(CompileOnlyDriver())
    if not isinstance(compiler.subprocess, PtxasReports):
        compiler.subprocess = PtxasReports(compiler.subprocess)
    return compiler.subprocess


def ptxas_version() -> str:
    compiler = nvidia_backend()
    try:
        return compiler.get_ptxas(GPU_TARGET.arch).version
    except TypeError:  # a Triton whose get_ptxas() takes no architecture
        return compiler.get_ptxas().version


def jit_function(kernel) -> triton.runtime.jit.JITFunction:
    # A @triton.heuristics (or autotune) wrapper holds the JITFunction in .fn.
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def kernel_label(kernel, kernel_args: dict) -> str:
    """``batch_fwd``, ``persistent_bwd``, ``step_fwd_cell``, ``step_bwd_proj``, ..."""
    name = jit_function(kernel).fn.__name__.strip("_").removesuffix("_kernel")
    if name.startswith("step_"):
        name += "_proj" if kernel_args["PROJ_PHASE"] else "_cell"
    return name


def refusal(case: Case) -> str | None:
    """Why the dispatcher would not run this case's design on an H200 (None: it would)."""
    if case.design == "batch":
        return None
    with allow_tf32(PRECISIONS[case.precision][1]):
        return launch.plan_why_not(
            TARGET, case.design, case.dtype, case.batch, case.hidden, case.proj
        )


def smem_estimate(case: Case) -> int | None:
    """``PersistentConfig.smem_bytes`` of the case's tiles: what the chooser trusts."""
    if case.design == "batch":
        return None
    return planned_config(case).smem_bytes(case.hidden, case.proj, case.dtype.itemsize)


@contextlib.contextmanager
def allow_tf32(allow: bool) -> Iterator[None]:
    """``torch.backends.cudnn.allow_tf32`` set for a block: it picks the fp32 dot precision."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def _empty(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    t = torch.empty(*shape, dtype=dtype)
    if t.data_ptr() % 16:
        raise RuntimeError("a CPU tensor is not 16-byte aligned: the specialisation would differ")
    return t


def planned_config(case: Case) -> launch.BatchConfig | launch.PersistentConfig:
    """The tiles the dispatcher plans for ``case`` on an H200."""
    if case.design == "batch":
        return launch.batch_config(case.batch, case.hidden, case.proj)
    return launch.persistent_config(
        TARGET, case.design, case.dtype, case.batch, case.hidden, case.proj
    )


def call_launcher(case: Case, cfg=None) -> None:
    """Run the launcher the dispatcher would run for ``case`` (``launch.launch`` replaced),
    at the planned tiles or at ``cfg``."""
    T, B, H, proj, dt = STEPS, case.batch, case.hidden, case.proj, case.dtype
    P = proj or H
    w_hh = _empty(4 * H, P, dtype=dt)
    w_hr = _empty(P, H, dtype=dt) if proj else None
    c0 = torch.zeros(B, H, dtype=dt)
    lengths = torch.full((B,), T, dtype=torch.int64) if case.lengths else None
    rev = case.reverse
    cfg = cfg or planned_config(case)
    with allow_tf32(PRECISIONS[case.precision][1]):
        if not case.backward:
            xp = _empty(T, B, 4 * H, dtype=dt)
            h0 = torch.zeros(B, P, dtype=dt)
            fwd = ForwardArgs(xp, w_hh, w_hr, h0, c0, lengths, rev)
            dispatch.launch_design(case.design, "forward", fwd, cfg, cooperative=True)
            return
        bwd = BackwardArgs(
            _empty(T, B, P, dtype=dt),  # d_out
            torch.zeros(B, P, dtype=dt),  # d_hn
            torch.zeros(B, H, dtype=dt),  # d_cn
            w_hh,
            w_hr,
            c0,
            _empty(T, B, 4 * H, dtype=torch.float32),  # gates
            _empty(T, B, H, dtype=torch.float32),  # cs
            lengths,
            rev,
        )
        dispatch.launch_design(case.design, "backward", bwd, cfg, cooperative=True)


class Compiler:
    """Replaces ``launch.launch`` in the design modules: each launch becomes
    ``JITFunction.run(warmup=True)`` through the real ``launch.launch``.

    ``wanted`` None: plan only, every compile is skipped by the ``jit_cache_hook`` after the
    JIT has computed its cache key, which is recorded. Else the keys to compile (each once).
    """

    def __init__(self, reports: PtxasReports, wanted: set[tuple[str, str]] | None) -> None:
        self.reports = reports
        self.wanted = wanted
        self.launches: list[Launch] = []
        self.compiled: dict[tuple[str, str], Resources | str] = {}
        self.binaries: dict[tuple[str, str], object] = {}  # kept only with keep_binaries
        self.keep_binaries = False
        self._seen: tuple[str, str] | None = None

    def hook(self, *, key, fn, **_) -> bool:
        """``knobs.runtime.jit_cache_hook``: called with the JIT's key before it compiles;
        True skips the compile."""
        ident = (f"{fn.module}.{fn.name}", key)
        self._seen = ident
        if self.wanted is None:
            return True
        return ident not in self.wanted or ident in self.compiled

    def launch(self, kernel, grid, **launch_args) -> None:
        jit = jit_function(kernel)
        results = []

        class Warmup:
            def __getitem__(self, g):
                return lambda **kw: results.append(kernel.run(grid=g, warmup=True, **kw))

        self._seen = None
        logs = len(self.reports.logs)
        launch.launch(Warmup(), grid, **launch_args)
        ident = self._seen
        if ident is None:  # a cache hit: compiled by an earlier launch of this process
            return
        self.launches.append(
            Launch(
                kernel_label(kernel, launch_args),
                ident[0],
                ident[1],
                launch_args["num_warps"],
                launch_args.get("maxnreg"),
                tuple(grid),
            )
        )
        binary = results[-1] if results else None
        if binary is None:
            return
        new = self.reports.logs[logs:]
        if len(new) != 1:
            self.compiled[ident] = f"expected one ptxas -v report, got {len(new)}"
        else:
            self.compiled[ident] = parse_resources(binary, new[0])
        if self.keep_binaries:
            self.binaries[ident] = binary
        # Free the binary: a later launch with this key is skipped by the hook.
        for caches in jit.device_caches.values():
            caches[0].pop(ident[1], None)

    def run(self, case: Case, cfg=None) -> list[Launch]:
        """The launches of one case (in plan mode: all of them), at the planned tiles or
        ``cfg``."""
        self.launches = []
        modules = (batch, persistent)
        saved = knobs.runtime.jit_cache_hook
        knobs.runtime.jit_cache_hook = self.hook
        for m in modules:
            m.launch = self.launch
        try:
            call_launcher(case, cfg)
        finally:
            for m in modules:
                m.launch = launch.launch
            knobs.runtime.jit_cache_hook = saved
        return self.launches


def parse_resources(binary, log: str) -> Resources | str:
    regs = re.search(r"Used (\d+) registers", log)
    frame = re.search(
        r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log
    )
    if regs is None or frame is None:
        return f"unreadable ptxas -v report: {log[-500:]!r}"
    static_smem = re.search(r"(\d+) bytes smem", log)
    smem = binary.metadata.shared + (int(static_smem.group(1)) if static_smem else 0)
    stack, stores, loads = (int(v) for v in frame.groups())
    return Resources(int(regs.group(1)), stores, loads, stack, smem)


def compile_case(case: Case, cfg=None, keep_binaries: bool = False) -> Compiler:
    """Compile every distinct kernel of one case in this process, at the planned tiles or
    ``cfg`` (tests, and a quick look at other tiles): ``.compiled`` maps each
    ``(kernel, key)`` of ``.launches`` to its :class:`Resources` (or an error)."""
    reports = install()
    planner = Compiler(reports, None)
    keys = {(launch_.kernel, launch_.key) for launch_ in planner.run(case, cfg)}
    compiler = Compiler(reports, keys)
    compiler.keep_binaries = keep_binaries
    compiler.run(case, cfg)
    # One launch per binary (the step design launches each of its kernels T times).
    unique = {(launch_.kernel, launch_.key): launch_ for launch_ in planner.launches}
    compiler.launches = list(unique.values())
    return compiler


def _worker_init() -> None:
    install()
    torch.set_num_threads(1)


def _compile_unit(unit: tuple[Case, list[tuple[str, str]]]) -> dict:
    case, keys = unit
    compiler = Compiler(install(), set(keys))
    try:
        compiler.run(case)
    except Exception as err:  # a compile error: every key of the case still due fails
        return {k: f"{type(err).__name__}: {str(err)[-500:]}" for k in keys} | compiler.compiled
    missing = {
        k: "not compiled by its case's second run" for k in keys if k not in compiler.compiled
    }
    return compiler.compiled | missing


def cases(args) -> Iterable[Case]:
    for design in args.design:
        for precision in args.precision:
            for H in args.hidden:
                for B in args.batch:
                    for proj in args.proj:
                        for lengths in args.lengths:
                            for reverse in args.reverse:
                                for backward in (False, True):
                                    yield Case(
                                        design, precision, B, H, H // 4 if proj else 0,
                                        bool(lengths), bool(reverse), backward,
                                    )  # fmt: skip


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def _names(choices: Iterable[str]):
    choices = tuple(choices)

    def parse(value: str) -> list[str]:
        names = [v.strip() for v in value.split(",") if v.strip()]
        for name in names:
            if name not in choices:
                raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(choices)}")
        return names

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--design", type=_names(launch.DESIGNS), default=list(launch.DESIGNS))
    parser.add_argument("--precision", type=_names(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--batch", type=_ints, default=list(BATCHES))
    parser.add_argument("--hidden", type=_ints, default=list(HIDDENS))
    parser.add_argument("--lengths", type=_ints, default=[0, 1], help="0 and/or 1")
    parser.add_argument("--proj", type=_ints, default=[0, 1], help="0: none, 1: proj_size H/4")
    parser.add_argument("--reverse", type=_ints, default=[0, 1], help="0 and/or 1")
    parser.add_argument("--max-spill-hidden", type=int, default=512)
    parser.add_argument("--jobs", type=int, default=1, help="compiling processes")
    parser.add_argument(
        "--dry-run", action="store_true", help="count the distinct binaries, compile nothing"
    )
    return parser.parse_args(argv)


def _row(label: str, case: Case, launch_: Launch | None, res, estimate: int | None) -> str:
    est = "-" if estimate is None else estimate
    head = f"kernel={label} {case.fields()}"
    if not isinstance(res, Resources):
        return f"{head} error={str(res).splitlines()[0] if res else 'missing'}"
    tiles = ""
    if launch_ is not None:
        grid = "x".join(str(g) for g in launch_.grid)
        tiles = f" warps={launch_.warps} maxnreg={launch_.maxnreg} grid={grid}"
    return (
        f"{head} regs={res.regs} spill_stores={res.spill_stores} "
        f"spill_loads={res.spill_loads} stack={res.stack} smem={res.smem} "
        f"smem_limit={SMEM_LIMIT} smem_estimate={est}{tiles}"
    )


def _failures(case: Case, res, estimate: int | None, max_spill_hidden: int) -> list[str]:
    if not isinstance(res, Resources):
        return ["compile"]
    why = []
    if (res.spill_stores or res.spill_loads) and case.hidden <= max_spill_hidden:
        why.append("spill")
    if res.smem > SMEM_LIMIT:
        why.append("smem>limit")
    if estimate is not None and res.smem > estimate:
        why.append("smem>estimate")
    return why


def _tiles(case: Case) -> str:
    c = planned_config(case)
    if case.design == "batch":
        return f"{c.block_b}x{c.block_h}x{c.block_k}"
    return f"{c.block_b}x{c.block_hs}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    reports = install()
    print(
        f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}: "
        f"{sys.executable} benchmarks/kernel_resources.py {shlex.join(argv or sys.argv[1:])} "
        f"at {_commit()}\n"
        f"# triton {triton.__version__}, ptxas {ptxas_version()}, torch {torch.__version__}; "
        f"target sm_90 ({TARGET.name}: {TARGET.sms} SMs, {SMEM_LIMIT} bytes of shared "
        f"memory per block); T={STEPS}",
        flush=True,
    )

    # Pass 1: every launch of every case, with the JIT's cache key; nothing is compiled.
    planner = Compiler(reports, None)
    refused: dict[tuple, str] = {}
    planned: list[tuple[Case, list[Launch]]] = []
    for case in cases(args):
        reason = refusal(case)
        if reason is not None:
            refused.setdefault(
                (case.design, case.precision, case.batch, case.hidden, case.proj), reason
            )
            continue
        by_label: dict[str, Launch] = {}
        for launch_ in planner.run(case):
            seen = by_label.setdefault(launch_.label, launch_)
            if seen.key != launch_.key:
                raise RuntimeError(f"two binaries for {launch_.label} in one call: {case}")
        planned.append((case, list(by_label.values())))
    first: dict[tuple[str, str], Case] = {}
    for case, launches in planned:
        for launch_ in launches:
            first.setdefault((launch_.kernel, launch_.key), case)
    units: dict[Case, list[tuple[str, str]]] = defaultdict(list)
    for ident, case in first.items():
        units[case].append(ident)
    n_rows = sum(len(launches) for _, launches in planned)
    print(
        f"# {len(planned)} launcher calls, {n_rows} (call, kernel) rows, {len(first)} distinct "
        f"binaries; {len(refused)} (design, precision, B, H, proj) refused by plan_why_not",
        flush=True,
    )
    if args.dry_run:
        return 0

    # Pass 2: each distinct binary once, the largest hidden sizes first.
    todo = sorted(units.items(), key=lambda u: (-u[0].hidden, u[0]))
    results: dict[tuple[str, str], Resources | str] = {}
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, context, initializer=_worker_init) as pool:
            for i, done in enumerate(pool.map(_compile_unit, todo), 1):
                results.update(done)
                _progress(i, len(todo), started)
    else:
        for i, unit in enumerate(todo, 1):
            results.update(_compile_unit(unit))
            _progress(i, len(todo), started)

    failures: list[str] = []
    summary: dict[tuple[str, int], list] = defaultdict(list)
    for case, launches in sorted(planned, key=lambda p: _order(p[0])):
        estimate = smem_estimate(case)
        for launch_ in sorted(launches, key=lambda x: x.label):
            res = results.get((launch_.kernel, launch_.key))
            text = _row(launch_.label, case, launch_, res, estimate) + f" tiles={_tiles(case)}"
            print(text)
            summary[(case.design, case.hidden)].append((case, res, estimate))
            why = _failures(case, res, estimate, args.max_spill_hidden)
            if why:
                failures.append(f"{','.join(why)}: {text}")
    for (design, precision, B, H, proj), reason in sorted(refused.items()):
        print(f"refused design={design} precision={precision} B={B} H={H} proj={proj}: {reason}")
    print_summary(summary)
    print(
        f"# {n_rows} rows, {len(first)} binaries compiled for sm_90 in "
        f"{time.monotonic() - started:.0f} s; {len(failures)} failures (spill at H <= "
        f"{args.max_spill_hidden}, shared memory over the limit or the estimate, compile)",
        flush=True,
    )
    for text in failures:
        print(f"FAIL {text}", file=sys.stderr)
    return 1 if failures else 0


def _order(case: Case) -> tuple:
    return (case.design, case.precision, case.hidden, case.batch, case.proj, case.lengths,
            case.reverse, case.backward)  # fmt: skip


def _commit() -> str:
    """The checkout's commit, ``+`` when ``kernels/`` has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return run.stdout.strip() if run.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "(no git)"
    return head + ("+" if git("status", "--porcelain", "--", "kernels") else "")


def _progress(i: int, n: int, started: float) -> None:
    if i == n or i % 25 == 0:
        elapsed = time.monotonic() - started
        print(f"[{i}/{n} cases compiled, {elapsed:.0f} s]", file=sys.stderr, flush=True)


def print_summary(summary: dict[tuple[str, int], list]) -> None:
    """Per design and H: rows, max registers, rows that spill, the largest spill and stack,
    the largest shared memory and the smallest margin to the estimate."""
    for (design, H), rows in sorted(summary.items()):
        ok = [(c, r, e) for c, r, e in rows if isinstance(r, Resources)]
        if not ok:
            continue
        spilling = [r for _, r, _ in ok if r.spill_stores or r.spill_loads]
        margins = [e - r.smem for _, r, e in ok if e is not None]
        print(
            f"summary design={design} H={H} rows={len(rows)} "
            f"max_regs={max(r.regs for _, r, _ in ok)} spilling={len(spilling)} "
            f"max_spill_stores={max((r.spill_stores for r in spilling), default=0)} "
            f"max_spill_loads={max((r.spill_loads for r in spilling), default=0)} "
            f"max_stack={max(r.stack for _, r, _ in ok)} "
            f"max_smem={max(r.smem for _, r, _ in ok)} "
            f"min_estimate_margin={min(margins) if margins else '-'}"
        )


if __name__ == "__main__":
    sys.exit(main())
