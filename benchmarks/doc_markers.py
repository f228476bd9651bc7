"""Benchmarks write their tables into docs/ between two HTML comments, keeping the prose around.

<!-- begin -->
...replaced on every run...
<!-- end -->
"""

from __future__ import annotations

from pathlib import Path


def replace_between(path: Path, begin: str, end: str, body: str) -> None:
    """Put ``body`` between the markers ``begin`` and ``end`` of ``path`` (both kept); a missing
    marker stops the run with a message naming the file and the markers."""
    text = path.read_text()
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start < 0 or stop < 0:
        raise SystemExit(f"{path}: no {begin} ... {end} markers to put the table between")
    path.write_text(text[: start + len(begin)] + "\n" + body + "\n" + text[stop:])
