"""Refresh every benchmark figure block in README.md and docs/*.md from its results file.

A block is ``<!-- results: PATH -->`` ... ``<!-- end results -->`` where PATH is a
``results.md`` written by ``fastlstm bench``; this replaces the block's body with the file,
so figures reach the docs without hand editing. ``tests/bench/test_docs_results.py`` fails
when a block and its file disagree. Usage: ``python benchmarks/update_docs.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- results: (\S+) -->\n)(.*?)(<!-- end results -->)", re.S)


def refresh(doc: Path) -> int:
    """Rewrite ``doc``'s result blocks in place; returns how many changed."""
    text = doc.read_text()
    changed = 0

    def body(match: re.Match) -> str:
        nonlocal changed
        source = ROOT / match.group(2)
        if not source.exists():
            raise SystemExit(f"{doc.name}: quotes {match.group(2)}, which does not exist")
        new = source.read_text().strip() + "\n"
        changed += new != match.group(3)
        return match.group(1) + new + match.group(4)

    updated = BLOCK.sub(body, text)
    if updated != text:
        doc.write_text(updated)
    return changed


def main() -> int:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if doc.exists() and (n := refresh(doc)):
            print(f"{doc.relative_to(ROOT)}: refreshed {n} block(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
