"""The persistent design's grid barrier with real multi-program grids on the interpreter.

The interpreter runs a grid's programs one after another, so ``launch.persistent_config``
plans the persistent design with one program there and ``test_persistent.py`` never crosses
its grid barrier with several. Here every program runs in its own thread
(``tests/threaded_grid.py``: thread-local program ids, atomics that release the GIL, seeded
scheduling jitter) with 16-unit slices and 16-row tiles, so H = 40..128 and B = 20..40 give
3-8 slices x 1-3 batch tiles: the barrier must hold the programs of a tile together step by
step (two barriers per step with a projection), backward as well as forward.

- Every output and gradient against the reference at valid positions, with random
  scheduling jitter and, in one case, a program started late that the others must wait for;
  the dispatcher's barrier flags stay clean.
- A control: the grid barrier reduced to a CTA barrier, with one program held back until
  the others finish, must give wrong results (else the comparison could not bite).
- Timeouts with concurrent programs: NaN results, the flag read at the next call, which warns
  and falls back to the ``step`` design; a program that starts after the others timed out is
  let through by their later arrivals, and must still poison its results (it reads the
  error flag before deciding).

Every buffer the launchers allocate is NaN-poisoned (conftest.py), so a program that reads a
slice of ``h`` before its owner wrote it produces NaN. On a GPU the real barrier runs in
``test_persistent.py``'s gpu tests; this file skips there.
"""

from __future__ import annotations

import contextlib
import warnings
import zlib

import pytest
import torch
import triton
import triton.language as tl
from threaded_grid import threaded_grid
from triton.runtime import interpreter as _interp

from fastlstm.backends import reference
from fastlstm.kernels import (
    common,
    dispatch,
    launch,
    persistent,
    recurrence_backward,
    recurrence_forward,
)

from helpers import assert_close

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or not launch.interpreting(),
    reason="threads stand in for a GPU's programs only under TRITON_INTERPRET=1 without CUDA",
)

TILES = launch.PersistentConfig(block_b=16, block_hs=16, num_warps=4)
FWD, BWD = "_persistent_fwd_kernel", "_persistent_bwd_kernel"
PERSISTENT = frozenset({FWD, BWD})  # the step design's fallback launches run as usual


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """16 hidden units x 16 rows per program for both weight-stationary designs, instead of
    the interpreter's single persistent program."""
    monkeypatch.setattr(dispatch, "persistent_config", lambda *args: TILES)


@pytest.fixture(autouse=True)
def fresh_dispatcher(monkeypatch):
    """No remembered failures and no unread barrier flags from other tests."""
    monkeypatch.setattr(dispatch, "_FAILED", {})
    monkeypatch.setattr(dispatch, "_PENDING", [])


@pytest.fixture
def seed(request) -> int:
    """A jitter seed per test, stable across runs (reproducible scheduling decisions)."""
    return zlib.crc32(request.node.name.encode())


@triton.jit
def _cta_barrier_only(p_count, target, spin_limit, p_error, ok):
    """The bug the control plants: a CTA barrier where a grid barrier is needed."""
    tl.debug_barrier()
    return ok


@triton.jit
def _whoami(out, n_out):
    """Each program writes its ids and the grid's size (an atomic in between lets the other
    programs run)."""
    i, j = tl.program_id(0), tl.program_id(1)
    o = (i * tl.num_programs(1) + j) * 4
    tl.store(out + o, i)
    tl.atomic_add(n_out, 1)
    tl.store(out + o + 1, j)
    tl.store(out + o + 2, tl.num_programs(0))
    tl.store(out + o + 3, tl.num_programs(1))


def test_harness_gives_each_thread_its_program_id_and_restores_the_interpreter(seed):
    """The harness itself: a 3 x 2 grid in six threads sees six distinct program ids and the
    grid's size; leaving the block puts the interpreter back as it was."""
    before = (_interp.GridExecutor, _interp._patch_lang, _interp.InterpretedFunction.rewrite)
    out = torch.full((6, 4), -1, dtype=torch.int32)
    n_out = torch.zeros(1, dtype=torch.int32)
    with threaded_grid(seed) as run:
        _whoami[(3, 2)](out, n_out)
    assert [(x.kernel, x.grid, x.atomics) for x in run.launches] == [("_whoami", (3, 2, 1), 6)]
    expected = [[i, j, 3, 2] for i in range(3) for j in range(2)]
    assert out.tolist() == expected
    after = (_interp.GridExecutor, _interp._patch_lang, _interp.InterpretedFunction.rewrite)
    assert after == before
    builder = _interp.interpreter_builder
    assert "grid_idx" not in vars(type(builder)) and "grid_dim" not in vars(type(builder))
    assert not {"create_masked_load", "create_atomic_rmw"} & set(vars(builder))
    out.fill_(-1)
    _whoami[(3, 2)](out, n_out)  # sequential again, same results
    assert out.tolist() == expected and int(n_out) == 12


def make_problem(T, B, H, P, lens, seed_=0):
    """Inputs of one recurrence and cotangents for its backward."""
    g = torch.Generator().manual_seed(seed_)
    R = P or H
    xp = torch.randn(T, B, 4 * H, generator=g)
    w_hh = torch.randn(4 * H, R, generator=g) * H**-0.5
    w_hr = torch.randn(P, H, generator=g) * H**-0.5 if P else None
    h0, c0 = torch.randn(B, R, generator=g), torch.randn(B, H, generator=g)
    lengths = None
    if lens:  # random, with a length-1 row and a full-length row
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0], lengths[-1] = 1, T
    cot = (torch.randn(T, B, R, generator=g), torch.randn(B, R, generator=g))
    return (xp, w_hh, w_hr, h0, c0, lengths), (*cot, torch.randn(B, H, generator=g))


def check_forward(fwd, ref, lengths, T, B) -> None:
    for name, a, e in zip(("out", "h_n", "c_n"), fwd[:3], ref[:3], strict=True):
        assert_close(a, e, name)
    valid = torch.ones(T, B, 1, dtype=torch.bool)
    if lengths is not None:
        valid = (torch.arange(T)[:, None] < lengths)[..., None]
    for name, a, e in zip(("gates", "cs"), fwd[3:], ref[3:], strict=True):
        assert_close(a, torch.where(valid, e, 0.0), name)


def check_backward(bwd, ref_bwd) -> None:
    for name, a, e in zip(("d_xp", "d_h0", "d_c0"), bwd[:3], ref_bwd[:3], strict=True):
        assert_close(a, e, name)
    assert (bwd[3] is None) == (ref_bwd[3] is None)
    if ref_bwd[3] is not None:
        assert_close(bwd[3], ref_bwd[3], "d_hs")


@contextlib.contextmanager
def warns_barrier_timeout():
    """Expect the dispatcher's warning that retires the persistent design."""
    with pytest.warns(RuntimeWarning, match=r"'persistent'.*grid barrier timed out"):
        # pytest.warns records every warning and re-emits the others past pyproject's
        # filters: keep ignoring Triton 3.6's interpreter DeprecationWarnings (numpy 2.x).
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="triton")
        yield


def assert_barrier_flags_clean() -> None:
    """No barrier timed out: every unread flag is 0 and no design was retired."""
    assert dispatch._PENDING, "the persistent launch registered no barrier flag"
    assert [int(flag[0]) for _, flag, _ in dispatch._PENDING] == [0] * len(dispatch._PENDING)
    assert dispatch._FAILED == {}


# (T, B, H, P, lengths, reverse, delayed program). 16-unit slices and 16-row tiles: H = 64 is
# four slices, H = 40 and 48 three (H = 40: the last partly masked); B = 20 two tiles (the
# second partly masked), B = 40 three. With P = 24 over three slices the projection slices
# are 16 columns (the third slice has none); P = 40 over four: 16, 16, 8 masked, none. The
# delayed program starts 0.3 s late, so the others of its tile certainly wait for it.
CASES = [
    pytest.param(5, 20, 64, 0, True, True, None, id="T5-B20-H64-lens-rev"),
    pytest.param(6, 40, 40, 24, True, False, None, id="T6-B40-H40-P24-lens"),
    pytest.param(4, 20, 64, 40, False, True, None, id="T4-B20-H64-P40-rev"),
    pytest.param(5, 40, 48, 0, False, False, (1, 2), id="T5-B40-H48-delayed"),
]


@pytest.mark.parametrize(("T", "B", "H", "P", "lens", "reverse", "delayed"), CASES)
def test_concurrent_programs_match_reference(T, B, H, P, lens, reverse, delayed, seed):
    """Forward and backward with every program in its own thread and random scheduling
    jitter: outputs, final states, saved gates and cells, every gradient."""
    args, (d_out, d_hn, d_cn) = make_problem(T, B, H, P, lens)
    _, w_hh, w_hr, _, c0, lengths = args
    delays = {delayed: 0.3} if delayed else {}
    with threaded_grid(seed, delays=delays, kernels=PERSISTENT) as run:
        fwd = recurrence_forward(*args, reverse, designs=("persistent",))
        assert_barrier_flags_clean()
        bwd = recurrence_backward(
            d_out, d_hn, d_cn, w_hh, w_hr, c0, fwd[3], fwd[4], lengths, reverse,
            designs=("persistent",),
        )  # fmt: skip
        assert_barrier_flags_clean()
    n_slices, n_tiles = TILES.grid(B, H)
    assert n_slices * n_tiles >= 8
    for kernel in (FWD, BWD):
        (threaded,) = run.of(kernel)
        assert threaded.grid == (n_slices, n_tiles, 1)
        assert threaded.atomics > 0
        if delayed:
            assert threaded.stalls > 0, "no program waited for the delayed one"

    ref = reference.recurrence_forward(*args, reverse)
    check_forward(fwd, ref, lengths, T, B)
    ref_bwd = reference.recurrence_backward(
        d_out, d_hn, d_cn, w_hh, w_hr, c0, ref[3], ref[4], lengths, reverse
    )
    check_backward(bwd, ref_bwd)


@pytest.mark.parametrize("which", ["forward", "backward"])
def test_control_without_grid_barrier_fails(which, seed, monkeypatch):
    """The same comparison with the grid barrier reduced to a CTA barrier, and program (0, 0)
    held until every other program has finished: the others read its slice of the state
    before it was written (NaN-poisoned), so the results must be wrong. Were they right, the
    tests above could not tell a working barrier from a missing one."""
    T, B, H, P, lens, reverse = 5, 20, 64, 0, True, True
    args, (d_out, d_hn, d_cn) = make_problem(T, B, H, P, lens)
    _, w_hh, w_hr, _, c0, lengths = args
    ref = reference.recurrence_forward(*args, reverse)
    monkeypatch.setattr(persistent, "_grid_barrier", _cta_barrier_only)
    syncs = []
    real_counters = persistent._barrier_counters

    def counters(n_tiles, device):
        syncs.append(real_counters(n_tiles, device))
        return syncs[-1]

    monkeypatch.setattr(persistent, "_barrier_counters", counters)
    with threaded_grid(seed, late=[(0, 0)], kernels=PERSISTENT) as run:
        if which == "forward":
            fwd = recurrence_forward(*args, reverse, designs=("persistent",))
        else:
            bwd = recurrence_backward(
                d_out, d_hn, d_cn, w_hh, w_hr, c0, ref[3], ref[4], lengths, reverse,
                designs=("persistent",),
            )  # fmt: skip
    (threaded,) = run.launches
    assert threaded.programs >= 8
    # The kernel looked _grid_barrier up at run time and got the replacement: nobody arrived
    # at a barrier counter, and nobody waited (the real barrier would have held every other
    # program of tile 0 until the held-back one started).
    (sync,) = syncs
    assert (sync[:-1] == 0).all() and threaded.stalls == 0
    with pytest.raises(AssertionError, match=r"non-finite value|max abs error"):
        if which == "forward":
            check_forward(fwd, ref, lengths, T, B)
        else:
            ref_bwd = reference.recurrence_backward(
                d_out, d_hn, d_cn, w_hh, w_hr, c0, ref[3], ref[4], lengths, reverse
            )
            check_backward(bwd, ref_bwd)


def _stuck_counters(monkeypatch):
    """Barrier counters that start far below their targets: every program's first wait times
    out on its own, whatever the others do."""

    def counters(n_tiles, device):
        sync = torch.full((n_tiles + 1,), -(10**6), dtype=torch.int32, device=device)
        sync[-1] = 0
        return sync

    monkeypatch.setattr(persistent, "_barrier_counters", counters)


def _pass(which, args, grads, reverse):
    """``call(designs)`` running the forward or backward pass of the problem (backward over
    the reference's saved gates and cells), and the reference results to compare with."""
    _, w_hh, w_hr, _, c0, lengths = args
    ref = reference.recurrence_forward(*args, reverse)
    if which == "forward":
        return lambda designs: recurrence_forward(*args, reverse, designs=designs), ref
    saved = (w_hh, w_hr, c0, ref[3], ref[4], lengths, reverse)
    ref_bwd = reference.recurrence_backward(*grads, *saved)
    return lambda designs: recurrence_backward(*grads, *saved, designs=designs), ref_bwd


@pytest.mark.parametrize("which", ["forward", "backward"])
def test_timeout_poisons_results_and_falls_back(which, seed, monkeypatch):
    """Every program of an 8-program grid (two barriers per step: a projection) times out
    concurrently: every result is NaN, the flag is set, and the next call warns, falls back
    to the step design and matches the reference."""
    T, B, H, P, lens, reverse = 4, 20, 64, 40, True, True
    args, grads = make_problem(T, B, H, P, lens)
    call, expected = _pass(which, args, grads, reverse)
    _stuck_counters(monkeypatch)
    monkeypatch.setattr(persistent, "SPIN_LIMIT", 3)
    with threaded_grid(seed, kernels=PERSISTENT) as run:
        results = call(("persistent",))
        (threaded,) = run.launches
        assert threaded.programs >= 8
        assert [int(flag[0]) for _, flag, _ in dispatch._PENDING] == [1]
        names = ("out", "h_n", "c_n") if which == "forward" else ("d_xp", "d_h0", "d_c0", "d_hs")
        for name, t in zip(names, results, strict=False):
            assert torch.isnan(t).all(), f"{name}: finite values after a barrier timeout"
        with warns_barrier_timeout():
            fallback = call(("persistent", "step"))
    assert len(run.launches) == 1, "the retired persistent design was launched again"
    assert dispatch._PENDING == []
    if which == "forward":
        check_forward(fallback, expected, args[5], T, B)
    else:
        check_backward(fallback, expected)


@pytest.mark.parametrize("which", ["forward", "backward"])
def test_late_program_after_timeouts(which, seed, monkeypatch):
    """One tile of eight slices; slice 3 starts only after the other seven have timed out
    waiting for it and finished. Those seven poison their results; the flag is read at the
    next call, which warns and falls back to the step design. The buffers start as zeros, as
    stale memory on a GPU holds finite values: only the kernel's poisoning makes NaN here."""
    T, B, H, P, lens, reverse = 4, 16, 128, 0, False, False
    late = 3
    args, grads = make_problem(T, B, H, P, lens)
    call, expected = _pass(which, args, grads, reverse)
    monkeypatch.setattr(persistent, "SPIN_LIMIT", 8)
    with (
        monkeypatch.context() as m,
        threaded_grid(seed, late=[(late, 0)], kernels=PERSISTENT) as run,
    ):
        m.setattr(common, "empty", lambda *shape, dtype, device: torch.zeros(shape, dtype=dtype))
        results = call(("persistent",))
    (threaded,) = run.launches
    assert threaded.grid == (8, 1, 1)
    assert [int(flag[0]) for _, flag, _ in dispatch._PENDING] == [1]
    # Per result, which of its last-dimension columns the late program owns: hidden unit
    # col % H of out/h_n/c_n, d_xp (gate-major) and d_c0; d_h0 sums every slice's partials.
    if which == "forward":
        named = dict(zip(("out", "h_n", "c_n"), results[:3], strict=True))
    else:
        named = {"d_xp": results[0], "d_c0": results[2]}
        assert torch.isnan(results[1]).all(), "d_h0: a timed-out program's partials were summed"
    for name, t in named.items():
        mine = torch.arange(t.shape[-1]) % H // TILES.block_hs == late
        assert torch.isnan(t[..., ~mine]).all(), f"{name}: a timed-out program left values"
    with warns_barrier_timeout():
        fallback = call(("persistent", "step"))
    if which == "forward":
        check_forward(fallback, expected, args[5], T, B)
    else:
        check_backward(fallback, expected)

    # The late program never times out itself: the others kept arriving after their
    # timeouts, so every count it waits for is already reached. Its slice would hold values
    # computed from the state the others left (plausible garbage) unless it reads the error
    # flag they set before deciding whether to poison: it must.
    finite = [
        name
        for name, t in named.items()
        if torch.isfinite(t[..., torch.arange(t.shape[-1]) % H // TILES.block_hs == late]).any()
    ]
    assert not finite, f"the late program left finite garbage in {', '.join(finite)}"
