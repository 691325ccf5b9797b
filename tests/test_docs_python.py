"""Every ```python block in README.md and docs/*.md runs as written.

A block that needs something CI cannot give it (the IMDB data, a GPU) is preceded by a line
``<!-- doc-test: skip (reason) -->``; it is reported as skipped with that reason.
"""

from __future__ import annotations

import linecache
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:<!-- doc-test: skip \((?P<skip>[^)]*)\) -->\n)?```python\n(?P<src>.*?)```", re.S
)
BLOCKS = [
    pytest.param(m["src"], m["skip"], id=f"{path.name}-{k}")
    for path in DOCS
    for k, m in enumerate(BLOCK.finditer(path.read_text()))
]


@pytest.mark.parametrize(("source", "skip"), BLOCKS)
def test_python_block_runs(source: str, skip: str | None, monkeypatch):
    if skip:
        pytest.skip(skip)
    # The block runs as a module whose source inspect can find, as a reader's script would:
    # torch.jit.script reads the source of the classes it compiles.
    filename = "<doc example>"
    module = types.ModuleType("__doc_example__")
    module.__file__ = filename
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(
        linecache.cache, filename, (len(source), None, source.splitlines(True), filename)
    )
    exec(compile(source, filename, "exec"), module.__dict__)
