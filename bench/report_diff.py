"""Compare two gate reports apart from timings and paths: the "same behaviour" check of a
restructuring (issue 19 item 7). Prints each differing key and exits 1 if any differ.

    python bench/report_diff.py BEFORE.json AFTER.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

# Keys whose values are measurements of time or speed, or locations on disk, or run metadata:
# they differ between any two runs and say nothing about the verdict.
VOLATILE = re.compile(
    r"(latency|_ms$|_s$|^ms$|seconds|tokens_per_s|tokens/s|throughput|wall|created_at|time|"
    r"load_s|path$|^dir$|^args$|^files$|^python$|^version$|^cleared$|^hits$|^misses$|"
    r"^writes$|^hit_rate$|^corrupt$|^write_errors$|^note$|^enabled$|^pid$|^host)",
)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if VOLATILE.search(str(key)):
                continue
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}[{i}]"))
        return out
    if isinstance(value, str) and ("/" in value and Path(value).is_absolute()):
        return {prefix: "<path>"}
    return {prefix: value}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    before, after = (_flatten(json.loads(Path(p).read_text(encoding="utf-8"))) for p in argv)
    keys = sorted(set(before) | set(after))
    diffs = [k for k in keys if before.get(k, "<absent>") != after.get(k, "<absent>")]
    for key in diffs:
        print(f"{key}: {before.get(key, '<absent>')!r} -> {after.get(key, '<absent>')!r}")
    print(f"{len(keys)} keys compared, {len(diffs)} differ (timings and paths left out)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
