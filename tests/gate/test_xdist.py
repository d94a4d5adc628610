"""pytest-xdist: ``-n 2`` gives the same verdict and report as a serial run.

Workers compute outcomes, the controller aggregates: per-case outcomes, metrics, reasons and the
golden hash must match; only timings and host details may differ. The parallel run has both
workers writing one cold generation cache at the same time, and must still agree and leave no
corrupt entry behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

Adapters = Any
TIMING_KEYS = {"latency_ms", "tokens_per_s"}


def _strip(value: Any) -> Any:
    """``value`` without timing fields (latencies differ from run to run)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "passed": report["passed"],
        "reasons": report["reasons"],
        "golden_sha256": report["golden_sha256"],
        "checks": report["checks"],
        "metrics": _strip(report["metrics"]),
        "delta": report["delta"],
        "cases": _strip(report["cases"]),
        "robustness": report["robustness"],
    }


def run(project: pytest.Pytester, adapter: Path, name: str, *args: str) -> dict[str, Any]:
    result = project.runpytest_subprocess(
        f"--candidate={adapter}",
        f"--gate-report=out/{name}.json",
        "--min-f1-gain=-1",
        "--perturb=1",
        "-p",
        "no:randomly",
        *args,
    )
    report: dict[str, Any] = json.loads((project.path / "out" / f"{name}.json").read_text())
    assert result.ret == (0 if report["passed"] else 1), result.stdout.str()
    return report


@pytest.mark.slow
def test_xdist_gives_the_serial_verdict_and_report(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    serial = run(gate_project, tiny_adapters.perturbed, "serial", "--no-gen-cache")
    # both workers write one cold generation cache at the same time
    parallel = run(gate_project, tiny_adapters.perturbed, "xdist", "-n", "2")
    assert comparable(parallel) == comparable(serial)
    assert parallel["engine_load"]["workers"] == 2
    assert parallel["run"]["engine"]["engine"] == "hf"  # a worker's describe(), not a stub
    assert parallel["cache"]["writes"] > 0
    assert parallel["cache"]["corrupt"] == 0 and parallel["cache"]["write_errors"] == 0
