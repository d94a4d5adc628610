"""``keep_freed_memory``: curation's worker processes stop faulting in fresh pages for every
large temporary. Page faults are counted, not time, so the test is deterministic."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Temporaries of varying size (0.25-1.25 MiB-ish blocks of float64, as curation's numpy passes
# make), allocated and freed in turn; prints the page faults the loop took.
_LOOP = """
import resource, sys
import numpy as np
from training.heap import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(60):
    a = np.ones(((i * 7) % 5 + 1) << 18)
    b = np.ones(((i * 3) % 4 + 1) << 18)
    c = a[: min(len(a), len(b))] * 2
    del a, b, c
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are glibc's",
)


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _LOOP, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


@glibc
def test_freed_blocks_are_reused_rather_than_faulted_in_again() -> None:
    kept, default = _faults("keep"), _faults("default")
    # Measured: ~4k against ~39k; the default maps and unmaps most of these blocks.
    assert kept * 3 < default, (kept, default)


def test_it_reports_whether_it_could_act() -> None:
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    done = subprocess.run(
        [sys.executable, "-c", "from training.heap import keep_freed_memory as k; print(k())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == str(expected)
