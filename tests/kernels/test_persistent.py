"""The weight-stationary kernels (``kernels/persistent.py``): both designs, every output.

Without CUDA the kernels run through Triton's interpreter: the ``step`` design with forced
16-unit hidden slices and 16-row batch tiles (H = 40 and B = 20 give several slices, tiles
and masked lanes), the ``persistent`` design with the single program the interpreter runs
one after another (``test_grid_barrier.py`` runs its real multi-program grids, each program
in its own thread). Every buffer the launchers allocate is NaN-poisoned (conftest.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fastlstm.backends import reference
from fastlstm.kernels import dispatch, launch, persistent, recurrence_backward, recurrence_forward

from helpers import assert_close, triton_direction

DESIGNS = ["persistent", "step"]
REAL_CONFIG = launch.persistent_config


@pytest.fixture(autouse=True)
def small_step_tiles(monkeypatch):
    """16 hidden units and 16 batch rows per program for the step design, so that the small
    shapes here walk several slices and tiles; the persistent design keeps its own config."""
    tiny = launch.PersistentConfig(block_b=16, block_hs=16, num_warps=4)

    def config(target, design, *args):
        return tiny if design == "step" else REAL_CONFIG(target, design, *args)

    monkeypatch.setattr(dispatch, "persistent_config", config)


@pytest.fixture(autouse=True)
def fresh_dispatcher(monkeypatch):
    """Each test starts with no remembered launch failures and no unread barrier flags."""
    monkeypatch.setattr(dispatch, "_FAILED", {})
    monkeypatch.setattr(dispatch, "_PENDING", [])


def forward(design, *args):
    return recurrence_forward(*args, designs=(design,))


def backward(design, *args):
    return recurrence_backward(*args, designs=(design,))


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
    fwd = forward(design, xp, w_hh, w_hr, h0, c0, lengths, reverse)
    ref = reference.recurrence_forward(xp, w_hh, w_hr, h0, c0, lengths, reverse)
    for name, a, e in zip(("out", "h_n", "c_n"), fwd[:3], ref[:3], strict=True):
        assert_close(a, e, name)
    valid = valid_mask(lengths, T, B, device)
    for name, a, e in zip(("gates", "cs"), fwd[3:], ref[3:], strict=True):
        assert a.dtype == torch.float32
        assert_close(a, torch.where(valid, e, 0.0), name)
    # Interchangeable with the batch-tiled design's saved tensors (same layout, same values).
    batch = forward("batch", xp, w_hh, w_hr, h0, c0, lengths, reverse)
    assert_close(fwd[3], batch[3], "gates vs batch design")
    assert_close(fwd[4], batch[4], "cs vs batch design")

    d_out, d_hn, d_cn = torch.randn_like(fwd[0]), torch.randn_like(h0), torch.randn_like(c0)
    bwd = backward(design, d_out, d_hn, d_cn, w_hh, w_hr, c0, fwd[3], fwd[4], lengths, reverse)
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
    narrow = launch.PersistentConfig(block_b=16, block_hs=block_hs, num_warps=4)
    monkeypatch.setattr(dispatch, "persistent_config", lambda *args: narrow)
    monkeypatch.setattr(launch.PersistentConfig, "block_ns", lambda self, h, c: 2)
    T, B, H = 5, 20, 20
    xp = torch.randn(T, B, 4 * H, device=device)
    w_hh = torch.randn(4 * H, H, device=device) * H**-0.5
    h0, c0 = torch.randn(B, H, device=device), torch.randn(B, H, device=device)
    lengths = make_lengths(T, B, device)
    fwd = forward("step", xp, w_hh, None, h0, c0, lengths, True)
    ref = reference.recurrence_forward(xp, w_hh, None, h0, c0, lengths, True)
    for name, a, e in zip(("out", "h_n", "c_n"), fwd[:3], ref[:3], strict=True):
        assert_close(a, e, name)
    d_out, d_hn, d_cn = torch.randn_like(fwd[0]), torch.randn_like(h0), torch.randn_like(c0)
    bwd = backward("step", d_out, d_hn, d_cn, w_hh, None, c0, fwd[3], fwd[4], lengths, True)
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
    fwd = forward(design, xp, w_hh, None, h0, c0, lengths, True)
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
    bwd = backward(
        design, d_out.half(), d_hn.half(), d_cn.half(), w_hh, None, c0, fwd[3], fwd[4],
        lengths, True,
    )  # fmt: skip
    ref_bwd = reference.recurrence_backward(
        d_out.half().float(), d_hn.half().float(), d_cn.half().float(), w_hh.float(), None,
        c0.float(), ref[3], ref[4], lengths, True,
    )  # fmt: skip
    for name, a, e in zip(("d_xp", "d_h0", "d_c0"), bwd[:3], ref_bwd[:3], strict=True):
        assert_close(a, e, name, atol=2e-2, rtol=2e-2)


@pytest.fixture
def launched_designs(monkeypatch) -> list[tuple[str, str]]:
    """``(pass, design)`` of every weight-stationary launcher call, so that a dispatch that
    ignores the pinned design fails instead of silently testing another one."""
    calls = []
    for name in ("persistent_forward", "persistent_backward", "step_forward", "step_backward"):
        real = getattr(persistent, name)
        design, kind = name.split("_")
        tag = ("fwd" if kind == "forward" else "bwd", design)

        def spy(*args, _real=real, _tag=tag, **kwargs):
            calls.append(_tag)
            return _real(*args, **kwargs)

        monkeypatch.setattr(persistent, name, spy)
    return calls


@pytest.mark.parametrize("design", DESIGNS)
@pytest.mark.parametrize(
    ("T", "B", "I", "H", "P"),
    [
        pytest.param(5, 20, 6, 40, 0, id="T5-B20-H40-packed-bidir"),
        pytest.param(4, 3, 5, 20, 9, id="T4-B3-H20-P9-packed-bidir"),
    ],
)
def test_bidirectional_matches_nn_lstm(T, B, I, H, P, design, device, launched_designs):
    """Drop-in promise: nn.LSTM on a PackedSequence with the same weights, every gradient."""
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
        o, h, c = triton_direction(
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
            design=design,
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
    calls = launched_designs
    assert calls.count(("fwd", design)) == 2 and calls.count(("bwd", design)) == 2, calls
    assert len(calls) == 4, calls


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
    monkeypatch.setattr(dispatch, "persistent_config", REAL_CONFIG)
    device = torch.device("cuda")
    R = P or H
    xp = torch.randn(T, B, 4 * H, device=device).to(dtype)
    w_hh = (torch.randn(4 * H, R, device=device) * H**-0.5).to(dtype)
    w_hr = (torch.randn(P, H, device=device) * H**-0.5).to(dtype) if P else None
    h0, c0 = torch.randn(B, R, device=device).to(dtype), torch.randn(B, H, device=device).to(dtype)
    lengths = make_lengths(T, B, device)
    tol = 2e-2 if dtype == torch.float32 else 6e-2  # TF32 / bf16 against exact fp32
    fwd = forward(design, xp, w_hh, w_hr, h0, c0, lengths, True)
    f32 = [None if t is None else t.float() for t in (xp, w_hh, w_hr, h0, c0)]
    ref = reference.recurrence_forward(*f32, lengths, True)
    for name, a, e in zip(("out", "h_n", "c_n"), fwd[:3], ref[:3], strict=True):
        assert_close(a.float(), e, name, atol=tol, rtol=tol)
    d_out = torch.randn_like(ref[0])
    d_hn, d_cn = torch.randn_like(ref[1]), torch.randn_like(ref[2])
    args = (d_out.to(dtype), d_hn.to(dtype), d_cn.to(dtype), w_hh, w_hr, c0, fwd[3], fwd[4])
    bwd = backward(design, *args, lengths, True)
    again = backward(design, *args, lengths, True)
    ref_bwd = reference.recurrence_backward(
        d_out, d_hn, d_cn, f32[1], f32[2], f32[4], fwd[3], fwd[4], lengths, True
    )
    for name, a, b, e in zip(
        ("d_xp", "d_h0", "d_c0"), bwd[:3], again[:3], ref_bwd[:3], strict=True
    ):
        assert torch.equal(a, b), f"{name} differs between two identical runs"
        assert_close(a, e, name, atol=tol, rtol=tol)


def _stuck_barrier(monkeypatch):
    """Barrier counters that start far below their targets, and a short spin: every wait
    times out."""

    def counters(n_tiles, device):
        sync = torch.full((n_tiles + 1,), -(10**6), dtype=torch.int32, device=device)
        sync[-1] = 0
        return sync

    monkeypatch.setattr(persistent, "_barrier_counters", counters)
    monkeypatch.setattr(persistent, "SPIN_LIMIT", 3)


def test_barrier_timeout_poisons_results_and_retires_the_design(monkeypatch, device):
    """A barrier that never completes: the results are NaN (never plausible garbage), the
    flag is read at the next call without a sync, and that call falls back to the next
    design with one warning; the design is not tried again for that configuration."""
    _stuck_barrier(monkeypatch)
    T, B, H = 3, 2, 16
    xp = torch.randn(T, B, 4 * H, device=device)
    w_hh = torch.randn(4 * H, H, device=device) * 0.2
    h0, c0 = torch.randn(B, H, device=device), torch.randn(B, H, device=device)
    args = (xp, w_hh, None, h0, c0, None, False)
    for t in forward("persistent", *args)[:3]:
        assert torch.isnan(t).all(), t
    with pytest.warns(RuntimeWarning, match=r"'persistent'.*grid barrier timed out"):
        out = recurrence_forward(*args, designs=("persistent", "step"))
    ref = reference.recurrence_forward(*args)
    assert_close(out[0], ref[0], "out after the fallback")
    assert dispatch._PENDING == []
    calls = []
    monkeypatch.setattr(persistent, "persistent_forward", lambda *a, **k: calls.append(a))
    recurrence_forward(*args, designs=("persistent", "step"))
    assert calls == [], "a retired design was launched again"

    gates, cs = ref[3], ref[4]
    d_out = torch.randn(T, B, H, device=device)
    grads = backward("persistent", d_out, h0, c0, w_hh, None, c0, gates, cs, None, False)
    for t in grads[:3]:
        assert torch.isnan(t).all(), t


def test_design_limits_are_named():
    cpu = torch.device("cpu")
    assert "unknown kernel design 'warp'" in launch.why_not(cpu, torch.float32, 16, design="warp")
    assert "float64" in launch.why_not(cpu, torch.float64, 16, design="step")
    h200 = launch.H200
    torch.backends.cudnn.allow_tf32 = True  # restored by the exact_fp32 fixture
    # B = 20000 needs 157 tiles of 128 rows (the widest) even with all of H per program.
    msg = launch.plan_why_not(h200, "persistent", torch.float32, 20000, 64, 0)
    assert "co-resident" in msg and "132 SMs" in msg
    assert launch.plan_why_not(h200, "step", torch.float32, 20000, 64, 0) is None
    torch.backends.cudnn.allow_tf32 = False  # restored by the exact_fp32 fixture
    assert "exact fp32" in launch.plan_why_not(h200, "step", torch.float32, 8, 512, 0)
    small = launch.Target("small GPU", sms=132, smem_per_block=48 * 1024, capability=(9, 0))
    msg = launch.plan_why_not(small, "step", torch.bfloat16, 64, 1024, 0)
    assert "shared memory" in msg and "49,152 bytes" in msg


@pytest.mark.parametrize("tf32", [True, False], ids=["tf32", "ieee"])
def test_configs_fit_an_h200(tf32):
    """The configs at the batches and hidden sizes the table covers: one program per SM for
    the persistent design, every hidden unit and row covered, the shared-memory estimate
    within the limit, and H <= 512 served in bf16 and TF32 fp32 at B = 64."""
    torch.backends.cudnn.allow_tf32 = tf32  # restored by the exact_fp32 fixture
    for batch in (1, 64, 256, 1024, 4096):
        for hidden in (64, 128, 256, 512, 1024):
            for dtype in (torch.float32, torch.bfloat16):
                for proj in (0, hidden // 4):
                    for design in DESIGNS:
                        cfg = REAL_CONFIG(launch.H200, design, dtype, batch, hidden, proj)
                        n_h, n_b = cfg.grid(batch, hidden)
                        assert cfg.block_hs * n_h >= hidden and cfg.block_b * n_b >= batch
                        reason = launch.plan_why_not(
                            launch.H200, design, dtype, batch, hidden, proj
                        )
                        if reason is not None:
                            continue
                        elem = torch.empty((), dtype=dtype).element_size()
                        assert cfg.smem_bytes(hidden, proj, elem) <= launch.H200.smem_per_block
                        if design == "persistent":
                            assert n_h * n_b <= launch.H200.sms
    for hidden in (128, 256, 512):
        for dtype in (torch.float32, torch.bfloat16):
            for design in DESIGNS:
                if dtype == torch.float32 and not tf32:
                    continue
                assert launch.plan_why_not(launch.H200, design, dtype, 64, hidden, 0) is None
