"""Compare the tables of two run directories byte for byte (refactors must not change a number).

    python scripts/compare_runs.py BEFORE_DIR AFTER_DIR [--tables units,summary,...]

Exit 0 when every table is identical, 1 when one differs (the first differing line of each is
printed), 2 when a table is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TABLES = ("units", "summary", "notes", "checkpoints", "aggregate")


def first_difference(a: list[str], b: list[str]) -> str:
    """The first line where two tables differ, or how their lengths differ."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"line {i + 1}:\n  - {x[:200]}\n  + {y[:200]}"
    return f"{len(a)} lines vs {len(b)} lines"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tables", default=",".join(TABLES), help="comma-separated table names")
    args = parser.parse_args()
    status = 0
    for name in args.tables.split(","):
        paths = [d / f"{name}.csv" for d in (args.before, args.after)]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            print(f"{name}.csv: missing in {', '.join(missing)}")
            return 2
        a, b = (p.read_bytes() for p in paths)
        if a == b:
            print(f"{name}.csv: identical ({len(a)} bytes)")
        else:
            status = 1
            print(f"{name}.csv: DIFFERS, {first_difference(a.decode().splitlines(), b.decode().splitlines())}")
    return status


if __name__ == "__main__":
    sys.exit(main())
