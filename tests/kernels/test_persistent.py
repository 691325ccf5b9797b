"""The weight-stationary kernels (``kernels/persistent.py``): both designs, every output.

Without CUDA the kernels run through Triton's interpreter: the ``step`` design with forced
16-unit hidden slices and 16-row batch tiles (H = 40 and B = 20 give several slices, tiles
and masked lanes), the ``persistent`` design with the single program the interpreter can
run (a multi-program grid barrier cannot complete when programs run one after another).
Every buffer the launchers allocate is NaN-poisoned. ``test_compile_for_sm90`` compiles
every kernel for an H200 without a GPU and fails on register spills.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fastlstm.backends import reference
from fastlstm.kernels import launch, lstm, persistent

from helpers import assert_close

DESIGNS = ["persistent", "step"]


@pytest.fixture(autouse=True)
def poison_persistent_buffers(monkeypatch):
    """NaN-fill every data buffer of the weight-stationary launchers too."""

    def nan_empty(*shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(persistent, "_empty", nan_empty)


REAL_CONFIG = persistent.persistent_config


@pytest.fixture(autouse=True)
def small_step_tiles(monkeypatch):
    """16 hidden units and 16 batch rows per program for the step design, so that the small
    shapes here walk several slices and tiles; the persistent design keeps its own config."""
    tiny = persistent.PersistentConfig(block_b=16, block_hs=16, num_warps=4)
    real = persistent.persistent_config

    def config(*args, design="persistent", **kwargs):
        return tiny if design == "step" else real(*args, design=design, **kwargs)

    monkeypatch.setattr(persistent, "persistent_config", config)


def make_lengths(T: int, B: int, device) -> torch.Tensor:
    """Random lengths with a length-1 row and a full-length row."""
    lengths = torch.randint(1, T + 1, (B,), device=device)
    lengths[0] = 1
    lengths[-1] = T
    return lengths


def valid_mask(lengths, T, B, device) -> torch.Tensor:
    if lengths is None:
        return torch.ones(T, B, 1, dtype=torch.bool, device=device)
    return (torch.arange(T, device=device)[:, None] < lengths)[..., None]


# (T, B, H, P, lengths, reverse); P = 0 means no projection. H = 40 is three 16-unit slices
# (the last one partly masked), B = 20 two 16-row tiles; P = 24 over three slices gives
# 16-column projection slices, the third slice has none.
CASES = [
    pytest.param(5, 20, 40, 0, True, True, id="T5-B20-H40-lens-rev"),
    pytest.param(6, 20, 40, 24, True, False, id="T6-B20-H40-P24-lens"),
    pytest.param(4, 3, 20, 9, False, True, id="T4-B3-H20-P9-rev"),
    pytest.param(7, 3, 40, 0, False, False, id="T7-B3-H40"),
    pytest.param(1, 1, 20, 0, False, False, id="T1-B1-H20"),
]


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize(("T", "B", "H", "P", "lens", "reverse"), CASES)
def test_primitives_match_reference(T, B, H, P, lens, reverse, design, device):
    """Outputs, final states, saved gates/cells and every gradient of the recurrence,
    against the reference primitives with the same contract (random cotangents)."""
    R = P or H
    xp = torch.randn(T, B, 4 * H, device=device)
    w_hh = torch.randn(4 * H, R, device=device) * H**-0.5
    w_hr = torch.randn(P, H, device=device) * H**-0.5 if P else None
    h0, c0 = torch.randn(B, R, device=device), torch.randn(B, H, device=device)
    lengths = make_lengths(T, B, device) if lens else None
    fwd = persistent.persistent_forward(xp, w_hh, w_hr, h0, c0, lengths, reverse, design=design)
    ref = reference.recurrence_forward(xp, w_hh, w_hr, h0, c0, lengths, reverse)
    for name, a, e in zip(("out", "h_n", "c_n"), fwd[:3], ref[:3], strict=True):
        assert_close(a, e, name)
    valid = valid_mask(lengths, T, B, device)
    for name, a, e in zip(("gates", "cs"), fwd[3:], ref[3:], strict=True):
        assert a.dtype == torch.float32
        assert_close(a, torch.where(valid, e, 0.0), name)
    # Interchangeable with the batch-tiled design's saved tensors (same layout, same values).
    batch = lstm.batch_forward(xp, w_hh, w_hr, h0, c0, lengths, reverse)
    assert_close(fwd[3], batch[3], "gates vs batch design")
    assert_close(fwd[4], batch[4], "cs vs batch design")

    d_out, d_hn, d_cn = torch.randn_like(fwd[0]), torch.randn_like(h0), torch.randn_like(c0)
    bwd = persistent.persistent_backward(
        d_out, d_hn, d_cn, w_hh, w_hr, c0, fwd[3], fwd[4], lengths, reverse, design=design
    )
    ref_bwd = reference.recurrence_backward(
        d_out, d_hn, d_cn, w_hh, w_hr, c0, ref[3], ref[4], lengths, reverse
    )
    for name, a, e in zip(("d_xp", "d_h0", "d_c0"), bwd[:3], ref_bwd[:3], strict=True):
        assert a.dtype == torch.float32
        assert_close(a, e, name)
    assert (bwd[3] is None) == (ref_bwd[3] is None)
    if P:
        assert_close(bwd[3], ref_bwd[3], "d_hs")


@pytest.mark.parametrize("block_hs", [4, 8], ids=["HS4", "HS8"])
def test_step_narrow_slices_and_chunked_sums(block_hs, device, monkeypatch):
    """The narrow slices the GPU configs pick without a projection (4 or 8 units: the four
    interleaved gates are the dot's 16 or 32 columns), and the backward's partial sums read
    2 slices per chunk, so that a last chunk is partly masked (H = 20: 5 or 3 slices)."""
    narrow = persistent.PersistentConfig(block_b=16, block_hs=block_hs, num_warps=4)
    monkeypatch.setattr(persistent, "persistent_config", lambda *a, **k: narrow)
    monkeypatch.setattr(persistent.PersistentConfig, "block_ns", lambda self, h, c: 2)
    T, B, H = 5, 20, 20
    xp = torch.randn(T, B, 4 * H, device=device)
    w_hh = torch.randn(4 * H, H, device=device) * H**-0.5
    h0, c0 = torch.randn(B, H, device=device), torch.randn(B, H, device=device)
    lengths = make_lengths(T, B, device)
    fwd = persistent.persistent_forward(xp, w_hh, None, h0, c0, lengths, True, design="step")
    ref = reference.recurrence_forward(xp, w_hh, None, h0, c0, lengths, True)
    for name, a, e in zip(("out", "h_n", "c_n"), fwd[:3], ref[:3], strict=True):
        assert_close(a, e, name)
    d_out, d_hn, d_cn = torch.randn_like(fwd[0]), torch.randn_like(h0), torch.randn_like(c0)
    bwd = persistent.persistent_backward(
        d_out, d_hn, d_cn, w_hh, None, c0, fwd[3], fwd[4], lengths, True, design="step"
    )
    ref_bwd = reference.recurrence_backward(
        d_out, d_hn, d_cn, w_hh, None, c0, ref[3], ref[4], lengths, True
    )
    for name, a, e in zip(("d_xp", "d_h0", "d_c0"), bwd[:3], ref_bwd[:3], strict=True):
        assert_close(a, e, name)


@pytest.mark.parametrize("design", DESIGNS)
def test_fp16_within_tolerance(design, device):
    """Half weights and inputs with fp32 state/accumulation, against fp32 on the same values."""
    T, B, H = 5, 20, 40
    xp = torch.randn(T, B, 4 * H, device=device).half()
    w_hh = (torch.randn(4 * H, H, device=device) * H**-0.5).half()
    h0, c0 = torch.randn(B, H, device=device).half(), torch.randn(B, H, device=device).half()
    lengths = make_lengths(T, B, device)
    fwd = persistent.persistent_forward(xp, w_hh, None, h0, c0, lengths, True, design=design)
    assert fwd[0].dtype == fwd[1].dtype == fwd[2].dtype == torch.float16
    ref = reference.recurrence_forward(
        xp.float(), w_hh.float(), None, h0.float(), c0.float(), lengths, True
    )
    for name, a, e in zip(("out", "h_n", "c_n"), fwd[:3], ref[:3], strict=True):
        assert_close(a.float(), e, name, atol=1e-2, rtol=1e-2)
    d_out, d_hn, d_cn = (
        torch.randn_like(ref[0]),
        torch.randn_like(ref[1]),
        torch.randn_like(c0.float()),
    )
    bwd = persistent.persistent_backward(
        d_out.half(), d_hn.half(), d_cn.half(), w_hh, None, c0, fwd[3], fwd[4], lengths, True,
        design=design,
    )  # fmt: skip
    ref_bwd = reference.recurrence_backward(
        d_out.half().float(), d_hn.half().float(), d_cn.half().float(), w_hh.float(), None,
        c0.float(), ref[3], ref[4], lengths, True,
    )  # fmt: skip
    for name, a, e in zip(("d_xp", "d_h0", "d_c0"), bwd[:3], ref_bwd[:3], strict=True):
        assert_close(a, e, name, atol=2e-2, rtol=2e-2)


@pytest.fixture
def through_design(monkeypatch):
    """Force one design for ``lstm_direction`` (``FASTLSTM_TRITON_DESIGN``, the switch the
    dispatcher reads) and count the launcher calls, so that a dispatch that ignores the
    switch fails instead of silently testing the batch-tiled kernels."""
    calls = []
    forward, backward = persistent.persistent_forward, persistent.persistent_backward

    def fwd(*args, design):
        calls.append(("fwd", design))
        return forward(*args, design=design)

    def bwd(*args, design):
        calls.append(("bwd", design))
        return backward(*args, design=design)

    def use(design: str) -> list[tuple[str, str]]:
        monkeypatch.setenv("FASTLSTM_TRITON_DESIGN", design)
        monkeypatch.setattr(persistent, "persistent_forward", fwd)
        monkeypatch.setattr(persistent, "persistent_backward", bwd)
        return calls

    return use


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize(
    ("T", "B", "I", "H", "P"),
    [
        pytest.param(5, 20, 6, 40, 0, id="T5-B20-H40-packed-bidir"),
        pytest.param(4, 3, 5, 20, 9, id="T4-B3-H20-P9-packed-bidir"),
    ],
)
def test_bidirectional_matches_nn_lstm(T, B, I, H, P, design, device, through_design):
    """Drop-in promise: nn.LSTM on a PackedSequence with the same weights, every gradient."""
    calls = through_design(design)
    lstm_ref = nn.LSTM(I, H, proj_size=P, bidirectional=True).to(device)
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    h0 = torch.randn(2, B, P or H, device=device, requires_grad=True)
    c0 = torch.randn(2, B, H, device=device, requires_grad=True)
    lengths = make_lengths(T, B, device)
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    out_packed, (h_n, c_n) = lstm_ref(packed, (h0, c0))
    out, _ = pad_packed_sequence(out_packed, total_length=T)
    expected = (out, h_n, c_n)

    outs, hs, cs = [], [], []
    for d, suffix in enumerate(("", "_reverse")):
        o, h, c = lstm.lstm_direction(
            x,
            getattr(lstm_ref, f"weight_ih_l0{suffix}"),
            getattr(lstm_ref, f"weight_hh_l0{suffix}"),
            getattr(lstm_ref, f"bias_ih_l0{suffix}"),
            getattr(lstm_ref, f"bias_hh_l0{suffix}"),
            getattr(lstm_ref, f"weight_hr_l0{suffix}", None),
            h0[d],
            c0[d],
            lengths,
            reverse=d == 1,
        )
        outs.append(o)
        hs.append(h)
        cs.append(c)
    actual = (torch.cat(outs, -1), torch.stack(hs), torch.stack(cs))
    for name, a, e in zip(("out", "h_n", "c_n"), actual, expected, strict=True):
        assert_close(a, e, name)
    inputs = {"x": x, "h0": h0, "c0": c0, **dict(lstm_ref.named_parameters())}
    cot = [torch.randn_like(e) for e in expected]
    g_actual = torch.autograd.grad(actual, list(inputs.values()), cot)
    g_expected = torch.autograd.grad(expected, list(inputs.values()), cot)
    for name, a, e in zip(inputs, g_actual, g_expected, strict=True):
        assert_close(a, e, f"d_{name}")
    assert calls.count(("fwd", design)) == 2 and calls.count(("bwd", design)) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize(
    ("T", "B", "H", "P", "dtype"),
    [
        pytest.param(33, 70, 256, 0, torch.float32, id="T33-B70-H256-fp32"),
        pytest.param(17, 64, 512, 0, torch.bfloat16, id="T17-B64-H512-bf16"),
        pytest.param(21, 9, 200, 72, torch.float32, id="T21-B9-H200-P72-fp32"),
    ],
)
def test_real_grids_on_gpu(T, B, H, P, dtype, design, monkeypatch):
    """The GPU configs (many slices, a real grid barrier) against the reference, lengths and
    reverse included, and bitwise the same twice (the fixed-order backward reduction)."""
    monkeypatch.setattr(persistent, "persistent_config", REAL_CONFIG)
    device = torch.device("cuda")
    R = P or H
    xp = torch.randn(T, B, 4 * H, device=device).to(dtype)
    w_hh = (torch.randn(4 * H, R, device=device) * H**-0.5).to(dtype)
    w_hr = (torch.randn(P, H, device=device) * H**-0.5).to(dtype) if P else None
    h0, c0 = torch.randn(B, R, device=device).to(dtype), torch.randn(B, H, device=device).to(dtype)
    lengths = make_lengths(T, B, device)
    tol = 2e-2 if dtype == torch.float32 else 6e-2  # TF32 / bf16 against exact fp32
    fwd = persistent.persistent_forward(xp, w_hh, w_hr, h0, c0, lengths, True, design=design)
    f32 = [None if t is None else t.float() for t in (xp, w_hh, w_hr, h0, c0)]
    ref = reference.recurrence_forward(*f32, lengths, True)
    for name, a, e in zip(("out", "h_n", "c_n"), fwd[:3], ref[:3], strict=True):
        assert_close(a.float(), e, name, atol=tol, rtol=tol)
    d_out = torch.randn_like(ref[0])
    d_hn, d_cn = torch.randn_like(ref[1]), torch.randn_like(ref[2])
    args = (d_out.to(dtype), d_hn.to(dtype), d_cn.to(dtype), w_hh, w_hr, c0, fwd[3], fwd[4])
    bwd = persistent.persistent_backward(*args, lengths, True, design=design)
    again = persistent.persistent_backward(*args, lengths, True, design=design)
    ref_bwd = reference.recurrence_backward(
        d_out, d_hn, d_cn, f32[1], f32[2], f32[4], fwd[3], fwd[4], lengths, True
    )
    for name, a, b, e in zip(
        ("d_xp", "d_h0", "d_c0"), bwd[:3], again[:3], ref_bwd[:3], strict=True
    ):
        assert torch.equal(a, b), f"{name} differs between two identical runs"
        assert_close(a, e, name, atol=tol, rtol=tol)


def test_barrier_timeout_raises_clear_error(monkeypatch):
    """A barrier that can never complete (its counter pre-loaded far below the target)
    sets the error flag after a bounded spin, and the launcher raises, for both passes."""
    if not launch.interpreting() and not torch.cuda.is_available():
        pytest.skip("needs the interpreter or a GPU")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def stuck(n, device):
        sync = torch.full((n,), -(10**6), dtype=torch.int32, device=device)
        sync[-1] = 0
        return sync

    monkeypatch.setattr(persistent, "_sync_buffer", stuck)
    monkeypatch.setattr(persistent, "SPIN_LIMIT", 3)
    T, B, H = 3, 2, 16
    xp = torch.randn(T, B, 4 * H, device=device)
    w_hh = torch.randn(4 * H, H, device=device) * 0.2
    h0, c0 = torch.zeros(B, H, device=device), torch.zeros(B, H, device=device)
    with pytest.raises(RuntimeError, match=r"grid barrier timed out.*FASTLSTM_TRITON_DESIGN=step"):
        persistent.persistent_forward(xp, w_hh, None, h0, c0, None, False, design="persistent")
    gates, cs = torch.rand(T, B, 4 * H, device=device), torch.rand(T, B, H, device=device)
    with pytest.raises(RuntimeError, match="grid barrier timed out in the backward pass"):
        persistent.persistent_backward(
            torch.randn(T, B, H, device=device), h0, c0, w_hh, None, c0, gates, cs, None, False,
            design="persistent",
        )  # fmt: skip


def test_unsupported_reasons_are_named():
    cpu = torch.device("cpu")
    reason = persistent.persistent_unsupported_reason
    assert "unknown design 'warp'" in reason("warp", cpu, torch.float32, 4, 16, 0)
    assert "float64" in reason("step", cpu, torch.float64, 4, 16, 0)
    cfg = persistent.PersistentConfig(block_b=16, block_hs=4, num_warps=4)
    # B = 1024 in 16-row tiles needs 64 x 16 programs: more than an H200's 132 SMs.
    msg = persistent._config_reason("persistent", cfg, 1024, 64, 0, 4, "tf32", 132)
    assert "co-resident" in msg and "132 SMs" in msg
    assert persistent._config_reason("step", cfg, 1024, 64, 0, 4, "tf32", 132) is None
    big = persistent.PersistentConfig(block_b=16, block_hs=64, num_warps=8)
    assert "shared memory" in persistent._config_reason("step", big, 64, 1024, 0, 4, "tf32", 132)
    wide = persistent.PersistentConfig(block_b=16, block_hs=16, num_warps=8)
    assert "exact fp32" in persistent._config_reason("step", wide, 64, 512, 0, 4, "ieee", 132)
    with pytest.raises(RuntimeError, match="cannot run this call: unknown design"):
        persistent.persistent_forward(
            torch.zeros(1, 1, 64), torch.zeros(64, 16), None, torch.zeros(1, 16),
            torch.zeros(1, 16), None, False, design="warp",
        )  # fmt: skip


def test_config_fits_an_h200():
    """The configs ``auto`` can pick at B = 64 fit one program per SM, and H <= 512 is served
    by both designs in bf16 and TF32 fp32 (the resident slice fits shared memory)."""
    for hidden in (64, 128, 256, 512):
        for elem in (4, 2):
            for proj in (0, hidden // 2):
                cfg = persistent._gpu_config(64, hidden, proj, elem, 132)
                n_h, n_b = cfg.grid(64, hidden)
                assert n_h * n_b <= 132, (hidden, elem, proj, cfg)
                assert cfg.block_hs * n_h >= hidden and cfg.block_b * n_b >= 64
                assert cfg.block_hs >= (16 if proj else 4)
                for design in DESIGNS:
                    reason = persistent._config_reason(
                        design, cfg, 64, hidden, proj, elem, "tf32", 132
                    )
                    assert reason is None, (hidden, elem, proj, reason)


# Compiles every build of resource_cases() in a subprocess (TRITON_INTERPRET=1 replaces the
# JIT at import time), runs the ptxas Triton uses for sm_90 with -v, prints one line per
# build and exits non-zero on a spill or on more shared memory than an sm_90 block may use.
COMPILE_SCRIPT = r"""
import inspect, multiprocessing, os, re, subprocess, sys, tempfile
from concurrent.futures import ProcessPoolExecutor
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend, get_ptxas
from triton.compiler import ASTSource
from fastlstm.kernels import persistent

SMEM_LIMIT = 227 * 1024
# The flags Triton's own ptxas call passes (this Triton adds a register-allocation
# workaround for ptxas 13), so that the numbers are those of the launched kernels.
PTXAS_FLAGS = ["-lineinfo", "-v"]
if "--regAllocOptLevel=2" in inspect.getsource(CUDABackend.make_cubin):
    PTXAS_FLAGS.append("--regAllocOptLevel=2")
VARIANTS = ((False, False), (True, True))  # (lengths, projection)


def builds():
    hiddens = tuple(int(h) for h in sys.argv[1].split(","))
    dtypes = tuple(getattr(torch, d) for d in sys.argv[2].split(","))
    return persistent.resource_cases(hiddens, dtypes, variants=VARIANTS)


def measure(i):
    b = builds()[i]
    names = b.kernel.arg_names
    signature = {n: b.signature.get(n, "constexpr") for n in names}
    constexprs = {(names.index(k),): v for k, v in b.constexprs.items()}
    compiled = triton.compile(
        ASTSource(b.kernel, signature, constexprs=constexprs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": b.num_warps, "num_stages": b.num_stages, "maxnreg": b.maxnreg},
    )
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(compiled.asm["ptx"])
        log = subprocess.run(
            [get_ptxas(90).path, *PTXAS_FLAGS, "--gpu-name=sm_90a", path, "-o", path + ".o"],
            capture_output=True, text=True, check=True,
        ).stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    stores = int(re.search(r"(\d+) bytes spill stores", log).group(1))
    loads = int(re.search(r"(\d+) bytes spill loads", log).group(1))
    smem = compiled.metadata.shared
    f = b.fields
    line = (f"kernel={b.name} dtype={b.dtype} prec={f['precision']} H={b.hidden} "
            f"proj={f['proj']} lengths={f['lengths']} BLOCK_HS={f['BLOCK_HS']} "
            f"BLOCK_B={f['BLOCK_B']} grid={f['grid']} warps={b.num_warps} regs={regs} "
            f"smem={smem} spill_stores={stores} spill_loads={loads}")
    return line, ((stores or loads) and b.hidden <= 512) or smem > SMEM_LIMIT


if __name__ == "__main__":
    bad = []
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1), mp_context=ctx) as pool:
        for line, failed in pool.map(measure, range(len(builds()))):
            print(line, flush=True)
            if failed:
                bad.append(line)
    if bad:
        print("FAILED:\n" + "\n".join(bad))
        sys.exit(1)
"""


@pytest.mark.parametrize(
    ("hiddens", "dtypes"),
    [
        pytest.param("128,256,512", "float32,bfloat16", id="H128-H512-fp32-bf16"),
        pytest.param("128,256,512", "float16", id="H128-H512-fp16", marks=pytest.mark.slow),
        pytest.param(
            "64,1024", "float32,bfloat16,float16", id="H64-H1024-all", marks=pytest.mark.slow
        ),
    ],
)
def test_compile_for_sm90_without_spills(hiddens, dtypes):
    """Both designs, forward and backward, at the settings the config picks for B = 64 on an
    H200 (fp32 with TF32 and exact dots where served), with and without lengths and
    projection: they compile for sm_90, never spill at H <= 512 and fit shared memory."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except ImportError:
        pytest.skip("this triton has no NVIDIA backend")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT, hiddens, dtypes],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(result.stdout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert result.stdout.count("kernel=persistent_fwd") >= 2
