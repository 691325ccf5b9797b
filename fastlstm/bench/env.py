"""The environment record written with every benchmark run: hardware, versions, date, dtype."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

from fastlstm.runtime import triton_interpreting

__all__ = ["cpu_model", "environment", "machine_slug"]


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _git_commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted edits); None outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    commit = _git(root, "rev-parse", "--short", "HEAD")
    if not commit:
        return None
    # Uncommitted edits to the code mean the commit alone does not describe what ran; results
    # and docs are left out, since a benchmark run rewrites them itself.
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", "fastlstm", "kernels")
    return f"{commit}+dirty" if dirty else commit


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return getattr(triton, "__version__", "unknown")


def environment(device: torch.device | str, dtype: torch.dtype | str) -> dict[str, object]:
    """Everything needed to interpret a result: hardware, versions, threads, date, dtype(s)."""
    from fastlstm import __version__

    device = torch.device(device)
    record: dict[str, object] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),  # or the run's comma list of precisions
        "hardware": cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "fastlstm": __version__,
        "git_commit": _git_commit(),
        "triton_interpret": triton_interpreting(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        record["hardware"] = props.name
        record["gpu_name"] = props.name
        record["gpu_memory_bytes"] = props.total_memory
        record["gpu_capability"] = f"{props.major}.{props.minor}"
    record["machine"] = machine_slug(record)
    return record


def machine_slug(record: dict[str, object]) -> str:
    """A file-name-safe id of the machine, e.g. ``cpu-amd-epyc-2c`` or ``cuda-nvidia-h200``."""
    hardware = str(record.get("hardware", "unknown"))
    slug = re.sub(r"[^a-z0-9]+", "-", hardware.lower()).strip("-")
    if record.get("device") == "cpu":
        return f"cpu-{slug}-{record.get('cpu_count')}c"
    return f"{record.get('device')}-{slug}"
