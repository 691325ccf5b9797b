"""Errors shared by the command-line front ends (a leaf module: imports nothing of fastlstm)."""

from __future__ import annotations

__all__ = ["CLIError"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2, no traceback."""
