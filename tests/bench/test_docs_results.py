"""Benchmark figures in the docs are the tool's own output, verbatim.

Convention: a figure block in README.md or docs/*.md sits between
``<!-- results: PATH -->`` and ``<!-- end results -->``, where PATH (relative to the
repository root) is a ``results.md`` written by ``fastlstm bench``; the block must equal
that file, which names the machine, the date and the command that produced it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"<!-- results: (\S+) -->\n(.*?)<!-- end results -->", re.S)

BLOCKS = [
    pytest.param(path, m.group(1), m.group(2), id=f"{path.name}-{m.group(1)}")
    for path in DOCS
    if path.exists()
    for m in BLOCK.finditer(path.read_text())
]


@pytest.mark.parametrize(("doc", "source", "text"), BLOCKS)
def test_doc_figures_match_their_results_file(doc: Path, source: str, text: str):
    path = ROOT / source
    assert path.exists(), f"{doc.name} quotes {source}, which does not exist"
    assert text.strip() == path.read_text().strip(), (
        f"{doc.name}: the block quoting {source} differs from the file; paste the file again"
    )
    assert "Command: `fastlstm bench" in text


def test_update_docs_refreshes_a_stale_block(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("update_docs", ROOT / "benchmarks/update_docs.py")
    update_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(update_docs)
    source = next((ROOT / "results").glob("*/*/results.md"), None)
    if source is None:
        pytest.skip("no committed results.md to quote")
    rel = source.relative_to(ROOT).as_posix()
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n<!-- results: {rel} -->\nstale\n<!-- end results -->\nend\n")
    assert update_docs.refresh(doc) == 1
    match = BLOCK.search(doc.read_text())
    assert match and match.group(2).strip() == source.read_text().strip()
    assert doc.read_text().startswith("intro\n") and doc.read_text().endswith("end\n")
    assert update_docs.refresh(doc) == 0
