"""Process-wide switches read from the environment, each parsed in one place.

A leaf module (no imports from the rest of fastlstm), so that the kernels, the backend
registry and the benchmark can all ask the same question the same way.
"""

from __future__ import annotations

import os

__all__ = ["triton_interpreting"]


def triton_interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``).

    Triton reads the variable when it is first imported, so set it before that.
    """
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
