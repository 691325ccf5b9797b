"""The harness measures no difference where there is none.

``nn.LSTM-control`` is a second, independent copy of a shape's ``nn.LSTM`` baseline, so its
speedup must read 1.00x. The quick grid (``fastlstm bench``'s default) once read fastlstm at
0.63-0.78x of the very op it runs, because each provider was timed in the state the previous
provider left behind; here the control runs right after a heavy provider (the reference's
thousands of small tensors) and the baseline after a light one, which is where that bias
showed. A biased harness reads off on every attempt, with steady timings; noise on a busy
shared machine may put one attempt off, so a shape out of tolerance is measured again, up
to three times in all. An attempt whose timings spread widely (``unsteady``: the host was
busy in bursts) is no evidence either way and is repeated without counting, up to
``MAX_TRIES`` measurements; a machine too noisy for any steady attempt skips the shape.
"""

from __future__ import annotations

import pytest
import torch

from fastlstm.bench.providers import CONTROL, baseline_for
from fastlstm.bench.report import headline_ratios, unsteady
from fastlstm.bench.runner import RunConfig, run_benchmarks
from fastlstm.bench.shapes import GRIDS, Shape

TOLERANCE = 0.10
ATTEMPTS = 3
MAX_TRIES = 6
# Cheap cases run up to 41 rounds; slow ones stop at the budget, after at least 15.
CONFIG = RunConfig(warmup=1, repeats=41, min_repeats=15, budget_s=0.3, memory=False)


def _control_ratios(shape: Shape) -> list[dict[str, object]]:
    """The control's headline ratios (one per mode): ``ratio`` and ``spread``."""
    providers = ["fastlstm-reference", CONTROL, baseline_for(shape)]
    rows = run_benchmarks([shape], providers, config=CONFIG, progress=False)
    assert all(r["status"] == "ok" for r in rows), [(r["provider"], r["detail"]) for r in rows]
    ratios = [r for r in headline_ratios(rows) if r["provider"] == CONTROL]
    assert [r["mode"] for r in ratios] == ["fwd", "fwd+bwd"]
    return ratios


@pytest.fixture
def one_thread():
    """One torch thread: on a loaded machine, parallel regions stall on busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("shape", GRIDS["quick"], ids=lambda s: s.id)
def test_control_reads_one_on_every_quick_shape(shape: Shape, one_thread):
    readings, steady = [], 0
    for _ in range(MAX_TRIES):
        ratios = _control_ratios(shape)
        readings.append({r["mode"]: (round(r["ratio"], 3), round(r["spread"], 2)) for r in ratios})
        if any(unsteady(r) for r in ratios):
            continue
        if all(abs(r["ratio"] - 1.0) <= TOLERANCE for r in ratios):
            return
        steady += 1
        if steady == ATTEMPTS:
            break
    seen = f"{CONTROL} vs its identical baseline on {shape.id}, (ratio, spread): {readings}"
    if steady == 0:
        pytest.skip(f"the machine is too busy for a steady measurement: {seen}")
    pytest.fail(seen)
