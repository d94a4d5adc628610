"""The JSON report: build, atomic write, strict load, baseline reuse, terminal summary."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from qlgate_core.errors import ReportError
from qlgate_pytest.gate import CaseResult, RoleResult, Selection, Thresholds, decide
from qlgate_pytest.report import (
    SCHEMA_VERSION,
    baseline_from_report,
    build_report,
    load_report,
    render_summary,
    require_same_golden,
    write_json_atomic,
)

if TYPE_CHECKING:
    from pathlib import Path

GOLDEN = "ab" * 32
LABELS = ("account", "billing", "returns", "shipping")


def _role(pred: str | None, expected: str, ms: float = 12.0) -> RoleResult:
    return RoleResult(
        output=f"Label: {pred}" if pred else "unsure",
        predicted=pred,
        correct=pred == expected,
        latency_ms=ms,
        output_tokens=3,
        label_scores={k: -1.0 - (k != pred) for k in LABELS},
    )


def _results() -> list[CaseResult]:
    out = []
    for i in range(40):
        e = LABELS[i % 4]
        cand = e if i % 10 else LABELS[(i + 1) % 4]  # wrong on 4 cases
        base = e if i % 3 else None  # wrong on 14 cases
        out.append(
            CaseResult(
                f"case-{i:02d}",
                ("core",) + (("edge",) if i % 5 == 0 else ()),
                i == 1,
                1.0,
                "label",
                e,
                _role(cand, e),
                _role(base, e, 8.0),
            )
        )
    return out


def _report(**thresholds: Any) -> dict[str, Any]:
    results = _results()
    verdict = decide(results, Thresholds(resamples=1_000, **thresholds), Selection(40, 40))
    return build_report(verdict, results, {"golden_sha256": GOLDEN, "candidate": "out/adapter"})


def test_report_has_the_contract_keys() -> None:
    """The stable keys of docs/CONTRACTS.md are present with the verdict's values."""
    r = _report()
    assert r["schema_version"] == SCHEMA_VERSION
    assert isinstance(r["passed"], bool)
    assert isinstance(r["reasons"], list)
    assert r["golden_sha256"] == GOLDEN
    assert 0 <= r["metrics"]["candidate"]["macro_f1"] <= 1
    assert 0 <= r["metrics"]["baseline"]["macro_f1"] <= 1
    assert r["metrics"]["candidate"]["latency_ms"]["p99"] == 12.0
    assert r["delta"]["ci_low"] <= r["delta"]["macro_f1"] <= r["delta"]["ci_high"]
    assert len(r["cases"]) == 40
    row = r["cases"][0]
    assert set(row) >= {"id", "tags", "must_pass", "expected", "error", "candidate", "baseline"}
    assert row["candidate"]["output"] and row["baseline"]["latency_ms"] == 8.0
    assert r["run"]["candidate"] == "out/adapter"
    assert r["thresholds"]["confidence"] == 0.95


def test_write_load_round_trip(tmp_path: Path) -> None:
    """A written report loads back equal, and no temp file is left beside it."""
    r = _report()
    path = tmp_path / "sub" / "gate.json"
    write_json_atomic(r, path)
    assert load_report(path) == json.loads(json.dumps(r))
    assert [p.name for p in path.parent.iterdir()] == ["gate.json"]


def test_failed_write_keeps_the_previous_report(tmp_path: Path) -> None:
    """A report that cannot be serialised raises ReportError and leaves the old file intact."""
    path = tmp_path / "gate.json"
    write_json_atomic({"schema_version": SCHEMA_VERSION, "ok": 1}, path)
    with pytest.raises(ReportError, match="not serialisable"):
        write_json_atomic({"bad": float("nan")}, path)
    assert json.loads(path.read_text())["ok"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["gate.json"]


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    """A report of another schema version is refused with the file and field named."""
    r = _report()
    r["schema_version"] = SCHEMA_VERSION + 1
    path = tmp_path / "old.json"
    write_json_atomic(r, path)
    with pytest.raises(ReportError, match=r"old\.json: field 'schema_version'"):
        load_report(path)


def test_unreadable_reports_name_the_problem(tmp_path: Path) -> None:
    """Missing file, broken JSON (with its line) and a bad row field each raise ReportError."""
    with pytest.raises(ReportError, match="cannot read report"):
        load_report(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "schema_version": 1,\n  oops\n}')
    with pytest.raises(ReportError, match=r"broken\.json:3: not valid JSON"):
        load_report(broken)
    r = _report()
    r["cases"][2]["candidate"]["correct"] = "maybe"
    bad = tmp_path / "bad.json"
    write_json_atomic(r, bad)
    with pytest.raises(ReportError, match=r"cases\.2\.candidate\.correct"):
        load_report(bad)


def test_golden_hash_must_match() -> None:
    """A baseline report of another golden set is refused; the same set is accepted."""
    r = _report()
    require_same_golden(r, GOLDEN)
    with pytest.raises(ReportError, match="golden_sha256"):
        require_same_golden(r, "cd" * 32)


def test_baseline_from_report_reuses_candidate_outcomes(tmp_path: Path) -> None:
    """A previous report's candidate outcomes become this run's baseline, errored rows left out."""
    results = _results()
    results[3] = CaseResult(**{**results[3].__dict__, "error": "timeout"})
    verdict = decide(results, Thresholds(resamples=500), Selection(40, 40))
    path = tmp_path / "prev.json"
    write_json_atomic(build_report(verdict, results, {"golden_sha256": GOLDEN}), path)
    baseline = baseline_from_report(load_report(path))
    assert len(baseline) == 39
    assert "case-03" not in baseline
    assert baseline["case-00"] == results[0].candidate


def test_gate_against_a_report_baseline_of_itself_is_red(tmp_path: Path) -> None:
    """Gating the same outcomes against their own report trips the canary: nothing changed."""
    results = _results()
    path = tmp_path / "prev.json"
    verdict = decide(results, Thresholds(resamples=500), Selection(40, 40))
    write_json_atomic(build_report(verdict, results, {"golden_sha256": GOLDEN}), path)
    baseline = baseline_from_report(load_report(path))
    again = [CaseResult(**{**c.__dict__, "baseline": baseline[c.case_id]}) for c in results]
    v = decide(again, Thresholds(resamples=500), Selection(40, 40))
    assert not v.passed
    assert any("adapter was not applied" in r for r in v.reasons)


def test_summary_shows_table_reasons_and_worst_cases_regressions_first() -> None:
    """The summary has the verdict, a metric table, every reason and regressions listed first."""
    r = _report(max_p99_ms=5.0, max_slice_drop=0.0)
    lines = render_summary(r)
    text = "\n".join(lines)
    assert lines[0].startswith("qlgate: FAIL")
    header = next(line for line in lines if line.startswith("metric"))
    for col in ("baseline", "candidate", "delta", "CI", "threshold", "result"):
        assert col in header
    assert "macro-F1" in text and "latency p99 ms" in text and "slice edge" in text
    for reason in r["reasons"]:
        assert reason in text
    assert "exceeds the budget 5.0 ms" in text
    worst = lines[lines.index(next(x for x in lines if x.startswith("worst cases"))) + 1 :]
    # case-10/20 regressed (baseline right); case-00/30 are wrong for both roles.
    assert [w.split()[0].rstrip(":") for w in worst] == ["case-10", "case-20", "case-00", "case-30"]


def test_summary_survives_an_empty_or_partial_report() -> None:
    """A report with nothing in it still renders a verdict line instead of raising."""
    assert render_summary({})[0].startswith("qlgate: FAIL")
    empty = build_report(decide([], Thresholds(), Selection(0, 0)), [], {"golden_sha256": None})
    assert any("no cases" in line for line in render_summary(empty))


def test_summary_names_what_leakage_and_flip_rates_rest_on() -> None:
    """The summary states the leakage check's status line and each flip rate's upper bound."""
    r = _report()
    status = "checked 3 golden prompt(s) against /d"
    r["preflight"] = {"ran": True, "findings": [], "leakage": status}
    r["robustness"] = {
        "perturbations_per_case": 3, "cases": 4, "max_flip_rate": 0.2, "confidence": 0.95,
        "overall": {"candidate": {"rate": 2 / 12, "flips": 2, "total": 12, "upper": 0.4841}},
        "by_slice": {},
    }  # fmt: skip
    text = "\n".join(render_summary(r))
    assert "preflight leakage: checked 3 golden prompt(s) against /d" in text
    assert "upper = 95% confidence bound; gate: candidate upper <= 0.200" in text
    assert "overall: - -> 0.167 (2/12, upper 0.484)" in text
