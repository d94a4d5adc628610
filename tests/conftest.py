"""Test-wide settings: fully offline, one torch thread per process (2-core machines)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["pytester"]

# Hypothesis' per-example deadline is a timed assertion: on a shared 2-core machine a GC pause or
# a busy neighbour turns it into a flaky failure that says nothing about correctness. Speed is
# measured by the benchmarks under bench/ instead.
from hypothesis import settings  # noqa: E402

settings.register_profile("qlgate", deadline=None)
settings.load_profile("qlgate")
