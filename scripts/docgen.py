"""What the doc generators share: write a generated page, or check that it is fresh."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def write_or_check(target: Path, text: str, script: str, description: str | None) -> int:
    """``--check``: 1 (and one line on stderr) if ``target`` is not ``text``, else 0;
    without it, write ``text`` to ``target``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args()
    if args.check:
        if not target.exists() or target.read_text() != text:
            print(f"{target.name} is stale: run python scripts/{script}", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0
