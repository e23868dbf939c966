"""Benchmarks of nvp-live (quality and speed); results go to BENCHMARKS.md."""

from __future__ import annotations

import json
from pathlib import Path


def publish(table: str, rows: list[dict], json_path: Path | None, markdown: Path | None) -> None:
    """Print a benchmark's Markdown table; write its rows as JSON and append the table to a file if asked."""
    print(table)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(rows, indent=1))
    if markdown is not None:
        with open(markdown, "a", encoding="utf-8") as fh:
            fh.write("\n" + table)
