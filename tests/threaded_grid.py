"""Run every program of a Triton-interpreter grid in its own thread.

Triton's interpreter (``TRITON_INTERPRET=1``) runs a grid's programs one after another, so a
grid barrier between programs can never complete there and the code that needs one (the
``persistent`` design of ``kernels/persistent.py``) is only ever interpreted with a single
program. :func:`threaded_grid` closes that gap for the duration of a ``with`` block:

- **One thread per program.** ``GridExecutor`` loops over the grid calling the rewritten
  kernel once per program id; the harness swaps in a subclass whose kernel records each id
  and, at the last one, starts one thread per program and joins them, all inside that loop
  (so the interpreter's patched ``triton.language`` is still in place). The builder's
  ``grid_idx`` and ``grid_dim``, which ``tl.program_id`` / ``tl.num_programs`` read, become
  thread-local, so each thread sees its own program id.
- **Atomics are atomic and let the others run.** Every ``atomic_*`` the interpreter executes
  takes one lock (the C++ helpers are already atomic under the GIL; the lock makes it
  explicit and independent of how a Triton version implements them) and is followed by a
  sleep: the GIL is released, so a program spinning on a counter lets the program it waits
  for make progress. The sleep backs off exponentially while a program's atomics keep
  returning the same value at the same address (it is polling and nothing changed), as a
  real spin loop would, so eight pollers do not starve the one program still computing.
- **Scheduling jitter.** At loads, stores and atomics a program sleeps a random short time
  with a given probability, from a random stream seeded per test, launch and program (the
  decisions are reproducible; the OS's thread scheduling is not). Programs can be started
  late by a fixed delay (``delays``) or held until every other program of the launch has
  finished (``late``: an ordering that makes a missing barrier lose its race every time).
- **Bounded.** A launch that runs past ``deadline`` seconds is aborted (every program raises
  at its next memory operation) and reported, so a broken barrier fails a test instead of
  hanging CI. An exception in one program aborts the others and is re-raised by the launch.
- **Thread-safe interpreter bookkeeping.** The interpreter's lazy per-function AST rewrite and
  its re-patching of ``triton.language`` at each device-function call iterate and mutate
  module globals; the harness serialises both under one lock.

Why this is faithful enough to test a grid barrier: programs really run concurrently and
interleave at every memory operation, so a program that reads a value before another program
has written it reads the stale (here NaN-poisoned) buffer, and a barrier that lets a program
through early is caught. What a GPU does that threads do not: memory here is sequentially
consistent (a store is visible to every thread at once; the interpreter's C++ load, store
and atomic helpers run holding the GIL, so one ``tl.load`` of a block is a snapshot), so the
harness cannot catch a missing ``release``/``acquire`` semantic, a stale L1 line (the
``.cg`` cache modifiers), or a missing ``tl.debug_barrier`` between the threads of one
program (a program is one thread here); nor does it model co-residency (every program always
gets a thread; a GPU grid larger than the machine would deadlock) or the real timing of
``SPIN_LIMIT`` polls. Those stay with the GPU tests.
"""

from __future__ import annotations

import contextlib
import inspect
import random
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field

from triton.runtime import interpreter as _interp

__all__ = ["GridAborted", "GridRun", "Launch", "threaded_grid"]

Program = tuple[int, int, int]

# Backoff after an atomic: base sleep, doubled per consecutive unchanged poll up to the cap.
_BACKOFF_BASE_S = 2e-5
_BACKOFF_CAP_S = 2e-3


class GridAborted(RuntimeError):
    """Raised inside a program when its launch was aborted (deadline, or another program
    raised first)."""


@dataclass
class Launch:
    """One threaded launch: the kernel, its grid, and what its programs did.

    ``stalls`` counts atomics that returned the same value at the same address as the
    program's previous atomic, with no load or store in between: polls that saw no progress,
    i.e. a program waiting for another one. A barrier that never made anyone wait proves
    nothing; one with stalls did synchronise concurrent programs.
    """

    kernel: str
    grid: Program
    atomics: int = 0
    stalls: int = 0
    seconds: float = 0.0

    @property
    def programs(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


@dataclass
class GridRun:
    """The settings of a :func:`threaded_grid` block and the launches it threaded."""

    seed: int
    jitter: float
    max_sleep: float
    delays: dict[Program, float]
    late: frozenset[Program]
    deadline: float
    kernels: frozenset[str] | None
    launches: list[Launch] = field(default_factory=list)

    def of(self, kernel: str) -> list[Launch]:
        """The threaded launches of ``kernel`` (its function name)."""
        return [launch for launch in self.launches if launch.kernel == kernel]


class _Worker:
    """Per-thread state of one running program."""

    def __init__(self, launch: Launch, rng: random.Random, abort: threading.Event):
        self.launch = launch
        self.rng = rng
        self.abort = abort
        self.last_atomic: tuple | None = None
        self.unchanged = 0
        self.in_atomic = False  # an atomic's own loads and stores are part of it


class _GridState(threading.local):
    idx: Program | None = None
    dim: Program | None = None
    worker: _Worker | None = None


_TLS = _GridState()
_ATOMIC_LOCK = threading.Lock()
_INTERP_LOCK = threading.RLock()
_ACTIVE = threading.Lock()  # one threaded_grid block at a time


def _program(p: tuple[int, ...]) -> Program:
    return (*p, 0, 0, 0)[:3]  # type: ignore[return-value]


def _thread_local(name: str, tls_name: str) -> property:
    """A data descriptor that shadows the builder instance's attribute ``name``: each thread
    reads and writes its own value, falling back to the instance's for a thread that never
    set one."""

    def get(self):
        value = getattr(_TLS, tls_name)
        return self.__dict__.get(name) if value is None else value

    def set_(self, value):
        setattr(_TLS, tls_name, value)

    return property(get, set_)


def _handles_key(args: tuple, result) -> tuple:
    data = [getattr(a, "data", a) for a in (*args, result)]
    return tuple(d.tobytes() if hasattr(d, "tobytes") else repr(d) for d in data)


def _memory_hook(run: GridRun, original, atomic: bool):
    """Wrap one of the builder's memory operations with the harness's scheduling."""

    def hooked(*args, **kwargs):
        worker = _TLS.worker
        if worker is None or worker.in_atomic:  # not a threaded program, or inside an atomic
            return original(*args, **kwargs)
        if worker.abort.is_set():
            raise GridAborted("the launch was aborted")
        if run.jitter and worker.rng.random() < run.jitter:
            time.sleep(worker.rng.uniform(0.0, run.max_sleep))
        if not atomic:
            worker.unchanged = 0
            worker.last_atomic = None
            return original(*args, **kwargs)
        with _ATOMIC_LOCK:
            worker.in_atomic = True
            try:
                result = original(*args, **kwargs)
            finally:
                worker.in_atomic = False
            worker.launch.atomics += 1
            key = _handles_key(args, result)
            if key == worker.last_atomic:
                worker.unchanged += 1
                worker.launch.stalls += 1
            else:
                worker.unchanged = 0
            worker.last_atomic = key
        # Release the GIL after every atomic, longer while polling finds nothing new.
        backoff = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** min(worker.unchanged, 16))
        time.sleep(backoff * worker.rng.uniform(0.5, 1.0))
        return result

    return hooked


def _run_programs(run: GridRun, fn, args: dict, dim: Program) -> None:
    """Run every program of ``dim`` in its own thread and wait for all of them."""
    launch = Launch(fn.__name__, dim)
    run.launches.append(launch)
    n_launch = len(run.launches)
    programs = [(x, y, z) for x in range(dim[0]) for y in range(dim[1]) for z in range(dim[2])]
    late = [p for p in programs if p in run.late]
    abort = threading.Event()
    others_done = threading.Event()
    lock = threading.Lock()
    pending_early = [len(programs) - len(late)]
    first_error: list[tuple[Program, BaseException]] = []

    def body(idx: Program) -> None:
        rng = random.Random(f"{run.seed}:{n_launch}:{fn.__name__}:{idx}")
        _TLS.idx, _TLS.dim = idx, dim
        _TLS.worker = _Worker(launch, rng, abort)
        try:
            if idx in run.late:
                while not others_done.wait(0.05):
                    if abort.is_set():
                        raise GridAborted("the launch was aborted")
            if run.delays.get(idx):
                time.sleep(run.delays[idx])
            fn(**args)
        except BaseException as err:
            with lock:
                if not abort.is_set():
                    first_error.append((idx, err))
                abort.set()
        finally:
            _TLS.worker = _TLS.idx = _TLS.dim = None
            if idx not in run.late:
                with lock:
                    pending_early[0] -= 1
                    if pending_early[0] == 0:
                        others_done.set()

    if pending_early[0] == 0:
        others_done.set()
    threads = [
        threading.Thread(target=body, args=(p,), name=f"program{p}", daemon=True) for p in programs
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, run.deadline - (time.monotonic() - start)))
    stuck = [p for p, t in zip(programs, threads, strict=True) if t.is_alive()]
    if stuck:
        abort.set()
        for t in threads:
            t.join(10.0)
    launch.seconds = time.monotonic() - start
    if first_error:
        raise first_error[0][1]
    if stuck:
        raise TimeoutError(
            f"{fn.__name__} grid {dim}: programs {stuck} still running after "
            f"{run.deadline:g} s (a barrier that never completes?); aborted"
        )


class _DeferredKernel:
    """Stands in for the rewritten kernel in ``GridExecutor``'s program loop: each call only
    records that the loop reached a program id; the last id runs the whole grid in threads.

    It carries the kernel's signature (the executor binds the launch arguments against it)
    and globals (the executor patches the ``triton.language`` modules it finds there)."""

    def __init__(self, run: GridRun, fn):
        self.run, self.fn = run, fn
        self.__signature__ = inspect.signature(fn)
        self.__name__ = fn.__name__
        self.__globals__ = fn.__globals__

    def __call__(self, **kernel_args):
        builder = _interp.interpreter_builder
        dim = tuple(builder.grid_dim)
        if tuple(builder.grid_idx) == tuple(d - 1 for d in dim):
            _run_programs(self.run, self.fn, kernel_args, dim)


def _executor_class(run: GridRun, base: type) -> type:
    class ThreadedGridExecutor(base):
        """``GridExecutor`` that runs the selected kernels' programs in threads."""

        def __init__(self, fn, *args, **kwargs):
            super().__init__(fn, *args, **kwargs)
            if run.kernels is None or fn.__name__ in run.kernels:
                self.fn = _DeferredKernel(run, fn)

    return ThreadedGridExecutor


@contextlib.contextmanager
def threaded_grid(
    seed: int = 0,
    *,
    jitter: float = 0.05,
    max_sleep: float = 5e-4,
    delays: Mapping[tuple[int, ...], float] | None = None,
    late: Collection[tuple[int, ...]] = (),
    deadline: float = 60.0,
    kernels: Collection[str] | None = None,
) -> Iterator[GridRun]:
    """Within the block, interpreter launches run each program in its own thread.

    Args:
        seed: seeds every program's jitter stream (with the launch number and program id).
        jitter: probability of a random sleep before each load, store and atomic.
        max_sleep: the longest such sleep, in seconds.
        delays: program id (``(x, y)`` or ``(x, y, z)``) -> seconds it starts late.
        late: program ids that start only once every other program has finished.
        deadline: seconds a launch may run before it is aborted with ``TimeoutError``.
        kernels: names of the kernels to thread; None threads every launch, the others run
            sequentially as usual.

    Yields the :class:`GridRun` that records each threaded :class:`Launch`. Everything it
    patches is restored on exit.
    """
    if not _ACTIVE.acquire(blocking=False):
        raise RuntimeError("threaded_grid blocks do not nest")
    run = GridRun(
        seed=seed,
        jitter=jitter,
        max_sleep=max_sleep,
        delays={_program(p): s for p, s in (delays or {}).items()},
        late=frozenset(_program(p) for p in late),
        deadline=deadline,
        kernels=None if kernels is None else frozenset(kernels),
    )
    builder = _interp.interpreter_builder
    builder_cls = type(builder)
    try:
        with contextlib.ExitStack() as undo:

            def patch(obj, name, value):
                had = name in vars(obj)
                old = vars(obj).get(name)
                setattr(obj, name, value)
                undo.callback(lambda: setattr(obj, name, old) if had else delattr(obj, name))

            # Seed the launching thread's values from the instance so nothing changes for it.
            _TLS.idx = getattr(builder, "grid_idx", None)
            _TLS.dim = getattr(builder, "grid_dim", None)

            def forget_launcher_grid():
                _TLS.idx = _TLS.dim = None

            undo.callback(forget_launcher_grid)
            patch(builder_cls, "grid_idx", _thread_local("grid_idx", "idx"))
            patch(builder_cls, "grid_dim", _thread_local("grid_dim", "dim"))
            patch(_interp, "GridExecutor", _executor_class(run, _interp.GridExecutor))

            patch_lang, rewrite = _interp._patch_lang, _interp.InterpretedFunction.rewrite

            def locked_patch_lang(fn):
                with _INTERP_LOCK:
                    return patch_lang(fn)

            def locked_rewrite(self):
                with _INTERP_LOCK:
                    return rewrite(self)

            patch(_interp, "_patch_lang", locked_patch_lang)
            patch(_interp.InterpretedFunction, "rewrite", locked_rewrite)

            # create_load / create_store go through the masked versions in every version;
            # Triton >= 3.7 adds atomic load/store (atomic_poll is a loop of loads: unlocked).
            for name in ("create_masked_load", "create_masked_store"):
                patch(builder, name, _memory_hook(run, getattr(builder, name), atomic=False))
            for name in ("create_atomic_rmw", "create_atomic_cas"):
                patch(builder, name, _memory_hook(run, getattr(builder, name), atomic=True))
            for name in ("create_atomic_load", "create_atomic_store"):
                if hasattr(builder, name):
                    patch(builder, name, _memory_hook(run, getattr(builder, name), atomic=True))
            yield run
    finally:
        _ACTIVE.release()
