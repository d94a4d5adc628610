"""The gate report: the authoritative, versioned JSON record of one gate run.

A report is also an input: ``--baseline REPORT.json`` gates a new candidate against the
per-case outcomes of an earlier one. So loading is strict: another schema version or another
golden set is refused rather than compared, and a malformed row names its field.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from qlgate_core.errors import ReportError
from qlgate_pytest.gate import RoleResult
from qlgate_pytest.summary import render_summary

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from qlgate_pytest.gate import CaseResult, Verdict

__all__ = [
    "SCHEMA_VERSION",
    "baseline_from_report",
    "build_report",
    "load_report",
    "render_summary",
    "require_same_golden",
    "write_json_atomic",
]

# Bump on any change a reader of an older report would misread; load_report refuses others.
SCHEMA_VERSION = 1


def _role_row(r: RoleResult | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        "output": r.output,
        "predicted": r.predicted,
        "correct": r.correct,
        "latency_ms": r.latency_ms,
        "output_tokens": r.output_tokens,
        "label_scores": None if r.label_scores is None else dict(r.label_scores),
    }


def _case_row(c: CaseResult) -> dict[str, Any]:
    return {
        "id": c.case_id,
        "tags": list(c.tags),
        "must_pass": c.must_pass,
        "weight": c.weight,
        "scorer": c.scorer,
        "expected": c.expected,
        "error": c.error,
        "candidate": _role_row(c.candidate),
        "baseline": _role_row(c.baseline),
    }


def build_report(
    verdict: Verdict,
    results: Sequence[CaseResult],
    meta: Mapping[str, Any],
    extras: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict. ``meta`` carries ``golden_sha256`` and whatever
    describes the run (candidate, baseline, engine, base model, versions); it lands under
    ``run`` apart from the golden hash, which is a top-level key. ``extras`` are further
    top-level sections (``preflight``, ``cache``, ``engine_load``, ``robustness``)."""
    run = {k: v for k, v in meta.items() if k != "golden_sha256"}
    run.setdefault("created_at", datetime.now(UTC).isoformat(timespec="seconds"))
    return {
        "schema_version": SCHEMA_VERSION,
        "passed": verdict.passed,
        "reasons": list(verdict.reasons),
        "golden_sha256": meta.get("golden_sha256"),
        "run": run,
        "thresholds": dict(verdict.thresholds),
        "checks": [
            {"name": c.name, "passed": c.passed, "detail": c.detail} for c in verdict.checks
        ],
        "metrics": dict(verdict.metrics),
        "delta": dict(verdict.delta),
        "cases": [_case_row(c) for c in results],
        **dict(extras or {}),
    }


def write_json_atomic(obj: Mapping[str, Any], path: Path) -> None:
    """Write ``obj`` as JSON so readers see the old file or the new one, never half of one."""
    path = Path(path)
    try:
        # allow_nan=False: NaN is not JSON, and a report other tools cannot parse is no report.
        text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as exc:
        raise ReportError(f"{path}: report is not serialisable as JSON: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- reading ------------------------------------------------------------------------------


class _RoleRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output: str
    predicted: str | None
    correct: bool
    latency_ms: float
    output_tokens: int
    label_scores: dict[str, float] | None = None


class _CaseRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    tags: list[str]
    must_pass: bool
    weight: float
    scorer: str
    expected: str
    error: str | None
    candidate: _RoleRow | None
    baseline: _RoleRow | None


class _Report(BaseModel):
    # Only what a reader relies on is checked; newer optional keys do not break old readers.
    model_config = ConfigDict(extra="allow")

    schema_version: int
    passed: bool
    reasons: list[str]
    golden_sha256: str | None
    cases: list[_CaseRow]


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"field {where!r}: {err['msg']}{more}"


def load_report(path: Path) -> dict[str, Any]:
    """A report written by this schema version; ReportError names the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{path}: cannot read report: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path}: a report is a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ReportError(
            f"{path}: field 'schema_version': report schema version {version!r}, this qlgate "
            f"reads version {SCHEMA_VERSION}; re-run the gate to produce a current report"
        )
    try:
        _Report.model_validate(data)
    except ValidationError as exc:
        raise ReportError(f"{path}: {_first_error(exc)}") from exc
    return data


def require_same_golden(report: Mapping[str, Any], golden_sha256: str) -> None:
    """Refuse a baseline report made on another golden set: its outcomes are not paired."""
    theirs = report.get("golden_sha256")
    if theirs != golden_sha256:
        raise ReportError(
            f"field 'golden_sha256': the baseline report was made on golden set {theirs!r}, this "
            f"run's golden set is {golden_sha256!r}; outcomes on different cases cannot be paired"
        )


def baseline_from_report(report: Mapping[str, Any]) -> dict[str, RoleResult]:
    """case id -> that report's candidate outcome, to serve as this run's baseline.

    Rows that errored or have no candidate outcome are left out; the gate then reports those
    cases as lacking a baseline, so nothing is compared silently against a hole.
    """
    try:
        rows = [_CaseRow.model_validate(row) for row in report.get("cases", [])]
    except ValidationError as exc:
        raise ReportError(f"baseline report: cases: {_first_error(exc)}") from exc
    out: dict[str, RoleResult] = {}
    for row in rows:
        if row.error is not None or row.candidate is None:
            continue
        c = row.candidate
        out[row.id] = RoleResult(
            output=c.output,
            predicted=c.predicted,
            correct=c.correct,
            latency_ms=c.latency_ms,
            output_tokens=c.output_tokens,
            label_scores=c.label_scores,
        )
    return out
