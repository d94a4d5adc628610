"""Prometheus text exposition of a gate report: parseable, complete, and the numbers of the
report itself, written atomically for the node-exporter textfile collector."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qlgate_pytest.prometheus import render_prometheus, write_prometheus

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
# The exposition format's grammar for one sample line (name, optional labels, value).
_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? \S+$')


def _samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "golden"))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_exposition_parses_and_every_line_is_well_formed(passing_report: dict[str, Any]) -> None:
    """The official parser accepts it, each sample line matches the grammar, it ends in \\n."""
    text = render_prometheus(passing_report)
    assert text.endswith("\n")
    families = list(text_string_to_metric_families(text))
    assert len({f.name for f in families}) == len(families)  # no family twice
    for line in text.splitlines():
        assert line.startswith("# ") or _SAMPLE.match(line), line


def test_values_are_the_reports_numbers(passing_report: dict[str, Any]) -> None:
    """F1, p99 (in seconds), pass/fail, case counts and the CI come from the report."""
    s = _samples(render_prometheus(passing_report))
    m = passing_report["metrics"]
    assert s[("qlgate_gate_passed", ())] == 1.0
    assert s[("qlgate_macro_f1", (("role", "candidate"),))] == pytest.approx(
        m["candidate"]["macro_f1"]
    )
    assert s[("qlgate_macro_f1", (("role", "baseline"),))] == pytest.approx(
        m["baseline"]["macro_f1"]
    )
    p99 = m["candidate"]["latency_ms"]["p99"] / 1000
    assert s[
        ("qlgate_latency_seconds", (("quantile", "0.99"), ("role", "candidate")))
    ] == pytest.approx(p99)
    assert s[("qlgate_latency_seconds_count", (("role", "candidate"),))] == 40
    assert s[("qlgate_golden_cases", (("kind", "run"),))] == 40
    assert s[("qlgate_delta", (("metric", "ci_low"),))] == pytest.approx(
        passing_report["delta"]["ci_low"]
    )
    correct = sum(1 for c in passing_report["cases"] if c["candidate"]["correct"])
    assert s[("qlgate_cases", (("outcome", "correct"), ("role", "candidate")))] == correct


def test_failed_gate_exports_zero_and_its_reasons(failing_report: dict[str, Any]) -> None:
    """A red gate exports passed 0, the number of reasons and each failing rule as 0."""
    s = _samples(render_prometheus(failing_report))
    assert s[("qlgate_gate_passed", ())] == 0.0
    assert s[("qlgate_gate_reasons", ())] == len(failing_report["reasons"])
    assert s[("qlgate_check_passed", (("check", "gain"),))] == 0.0


def test_caller_labels_and_golden_hash_on_every_series(passing_report: dict[str, Any]) -> None:
    """Labels given by the caller and the golden hash prefix appear on every sample."""
    text = render_prometheus(passing_report, {"model": 'sup"port\\v2'})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels["model"] == 'sup"port\\v2'
            assert sample.labels["golden"] == "ab" * 6


def test_missing_metrics_are_absent_not_zero(passing_report: dict[str, Any]) -> None:
    """A run without a baseline exports no baseline series rather than fake zeros."""
    passing_report["metrics"]["baseline"] = None
    for case in passing_report["cases"]:
        case["baseline"] = None
    s = _samples(render_prometheus(passing_report))
    assert not any(dict(labels).get("role") == "baseline" for _, labels in s)
    assert ("qlgate_macro_f1", (("role", "candidate"),)) in s


def test_families_slices_and_flip_bounds_are_exported(passing_report: dict[str, Any]) -> None:
    """Each family's delta and CI, each slice's own metric (by name) and the flip rate with
    its upper bound come out as labelled series."""
    passing_report["delta"]["families"]["pass_rate"] = {
        "metric": "pass_rate", "n": 3, "candidate": 1.0, "baseline": 0.5, "delta": 0.5,
        "ci_low": 0.1, "ci_high": 0.9,
    }  # fmt: skip
    passing_report["robustness"] = {
        "overall": {"candidate": {"rate": 2 / 12, "upper": 0.484, "flips": 2, "total": 12}},
        "by_slice": {"core": {"baseline": {"rate": 0.0, "upper": 0.6}}},
    }
    s = _samples(render_prometheus(passing_report))
    label = passing_report["delta"]["families"]["label"]
    key = (("family", "label"), ("metric", "macro_f1"), ("value", "ci_low"))
    assert s[("qlgate_family_delta", key)] == pytest.approx(label["ci_low"])
    key = (("family", "pass_rate"), ("metric", "pass_rate"), ("value", "ci_high"))
    assert s[("qlgate_family_delta", key)] == 0.9
    core = passing_report["metrics"]["candidate"]["per_slice"]["core"]
    key = (("metric", core["metric"]), ("role", "candidate"), ("slice", "core"))
    assert s[("qlgate_slice_value", key)] == pytest.approx(core["value"])
    key = (("bound", "upper"), ("role", "candidate"), ("scope", "overall"))
    assert s[("qlgate_flip_rate", key)] == 0.484
    key = (("bound", "upper"), ("role", "baseline"), ("scope", "slice:core"))
    assert s[("qlgate_flip_rate", key)] == 0.6


def test_write_replaces_the_file_atomically(tmp_path: Path, passing_report: dict[str, Any]) -> None:
    """Writing leaves exactly one complete *.prom file, readable by other users."""
    path = tmp_path / "textfile" / "qlgate.prom"
    write_prometheus(passing_report, path)
    write_prometheus(passing_report, path)
    assert [p.name for p in path.parent.iterdir()] == ["qlgate.prom"]
    assert path.stat().st_mode & 0o044 == 0o044
    assert path.read_text() == render_prometheus(passing_report)
