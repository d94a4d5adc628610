"""The report sections beside the verdict: preflight findings, generation cache and engine load
counters (summed over pytest-xdist workers), and flip rates of the robustness slice.

Workers send their counters with every item's teardown report (``user_properties``, key
``qlgate_run``, added by the plugin so golden Python tests' engine use counts too); counters only
grow, so the controller keeps the last one per worker and sums over workers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qlgate_pytest.perturb import RobustnessCase
    from qlgate_pytest.preflight import Finding

RUN_PROPERTY = "qlgate_run"
ROBUSTNESS_PROPERTY = "qlgate_robustness"
_CACHE_COUNTERS = ("hits", "misses", "corrupt", "writes", "write_errors")


def preflight_section(findings: Sequence[Finding] | None) -> dict[str, Any]:
    """``{ran, findings, leakage}``; ``leakage`` says in one line what the leakage check rests on
    (or why it did not run), so a green gate never hides an unchecked leakage."""
    if findings is None:
        return {"ran": False, "findings": [], "leakage": "not run: preflight did not run"}
    rows = [{"reason": f.reason, "severity": f.severity, "message": f.message} for f in findings]
    return {"ran": True, "findings": rows, "leakage": leakage_status(findings)}


def leakage_status(findings: Sequence[Finding]) -> str:
    """``checked ...`` / ``unchecked (allowed by --allow-unchecked-leakage): ...`` /
    ``unchecked: ...`` / ``not run: ...`` from the preflight findings."""
    by_reason = {f.reason: f for f in findings}
    checked, unchecked = by_reason.get("leakage_checked"), by_reason.get("leakage_unchecked")
    changed = by_reason.get("dataset_changed")
    if changed is not None and changed.severity == "error":
        return f"unchecked: {changed.message}"
    if checked is not None:
        caveat = "; against data that is not the data trained on (allowed)" if changed else ""
        leaks = "; near-duplicates found (red)" if "leakage" in by_reason else ""
        return checked.message + caveat + leaks
    if unchecked is not None:
        allowed = unchecked.severity != "error"
        prefix = "unchecked (allowed by --allow-unchecked-leakage)" if allowed else "unchecked"
        return f"{prefix}: {unchecked.message}"
    if "provenance_missing" in by_reason:
        return f"unchecked: {by_reason['provenance_missing'].message}"
    if any(f.severity == "error" for f in findings):
        return "not run: an earlier preflight error stopped the checks"
    return "not run: no golden prompts, or the adapter was not checked"


def worker_stats(
    worker: str,
    engine: Mapping[str, Any] | None,
    describe: Mapping[str, Any] | None,
    cache: Mapping[str, Any] | None,
) -> str:
    """One worker's counters as the JSON a case report carries."""
    return json.dumps(
        {"worker": worker, "engine": engine, "describe": describe, "cache": cache}, default=str
    )


def cache_section(stats: Sequence[Mapping[str, Any]], directory: str | None) -> dict[str, Any]:
    caches = [s["cache"] for s in stats if s.get("cache")]
    out: dict[str, Any] = {"dir": directory, "enabled": None, "note": None}
    out.update(dict.fromkeys(_CACHE_COUNTERS, 0))
    for cache in caches:
        for key in _CACHE_COUNTERS:
            out[key] += int(cache.get(key) or 0)
        out["enabled"] = bool(cache.get("enabled")) if out["enabled"] is None else out["enabled"]
        out["note"] = out["note"] or cache.get("note")
    lookups = out["hits"] + out["misses"]
    out["hit_rate"] = out["hits"] / lookups if lookups else None
    return out


def engine_load_section(stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    engines = [s["engine"] for s in stats if s.get("engine")]
    times = [e["load_s"] for e in engines if e.get("load_s") is not None]
    requests = {"generate": 0, "rank": 0}
    for e in engines:
        for kind in requests:
            requests[kind] += int((e.get("requests") or {}).get(kind) or 0)
    return {
        "workers": len(stats),
        "loaded": any(e.get("loaded") for e in engines),
        "workers_loaded": sum(1 for e in engines if e.get("loaded")),
        "load_s": max(times) if times else None,
        "engine_requests": requests,
    }


def robustness_section(
    cases: Sequence[RobustnessCase],
    perturb: int,
    max_flip_rate: float | None,
    confidence: float = 0.95,
) -> tuple[dict[str, Any] | None, list[str]]:
    """The report's ``robustness`` section and the ``--max-flip-rate`` violations, judged on
    each flip rate's upper confidence bound at the gate's ``confidence``."""
    if perturb <= 0:
        return None, []
    from qlgate_pytest.perturb import flip_rate_violations, flip_rates, flip_report_to_json

    report = flip_rates(cases)
    section: dict[str, Any] = {
        "perturbations_per_case": perturb,
        "cases": len(cases),
        "max_flip_rate": max_flip_rate,
        "confidence": confidence,
        **flip_report_to_json(report, confidence),
    }
    reasons = (
        [] if max_flip_rate is None else flip_rate_violations(report, max_flip_rate, confidence)
    )
    return section, reasons
