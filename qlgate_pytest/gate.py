"""The verdict: per-case outcomes of candidate and baseline in, PASS/FAIL with every reason out.

Pure: no pytest, no engine. The rule (issue 5 item 5, issue 6 item 2, issue 20 item 7) is that
the gate is red whenever it cannot show the candidate is good. Cases come in families
(``gate_metrics``: ``label`` -> macro-F1, ``pass_rate`` -> pass rate of the other scorers), each
with its own paired bootstrap interval and its own check:

- the primary family (``label`` when present, else ``pass_rate``), check ``gain``: the CI lower
  bound of candidate - baseline must lie strictly above ``min_f1_gain`` (shown better);
- a ``pass_rate`` family beside label cases, check ``pass_rate``: the CI lower bound of the
  pass-rate difference must lie strictly above ``-max_pass_rate_drop`` (shown not worse by more
  than the margin). Demanding it be shown *better* too would make a set with a few generation
  cases red for ever: a handful of cases cannot show a gain, but a regression still shows;
- ``min_f1`` (drift mode) is a floor on every family's metric.

Every other check (latency budget, slice drops, must_pass cases, errors, partial selection, the
"adapter was applied" canary) can only turn it red.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping  # noqa: TC003, RUF100 (pydantic resolves RoleResult's fields at run time)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qlgate_pytest.gate_metrics import (
    _NO_DELTA,
    FAMILY_METRIC,
    METRIC_NAMES,
    _delta,
    _primary_metric,
    _role,
    _slices,
    describe_slice_metric,
    families,
    role_metrics,
    slice_quality,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

# Log-likelihoods of the same model on the same prompt can move by ~1e-6..1e-5 between batch
# layouts in fp32; a trained adapter moves them by far more. Below this the roles are "equal".
CANARY_ATOL = 1e-4
# Reasons list at most this many case ids; the report's rows hold the rest.
_MAX_IDS = 10


@dataclass(frozen=True)
class RoleResult:
    """One engine role (candidate or baseline) on one case."""

    output: str
    predicted: str | None
    correct: bool
    latency_ms: float
    output_tokens: int
    label_scores: Mapping[str, float] | None = None  # rank mode: label -> log-likelihood


@dataclass(frozen=True)
class CaseResult:
    """Both roles' outcomes on one golden case."""

    case_id: str
    tags: tuple[str, ...]
    must_pass: bool
    weight: float
    scorer: str
    expected: str  # the label / expected text (json_schema: the schema as JSON)
    candidate: RoleResult | None
    baseline: RoleResult | None
    error: str | None = None  # any error for this case -> gate red


@dataclass(frozen=True)
class Thresholds:
    """What the candidate must show; mirrors the ``--min-f1-gain`` etc. options."""

    min_f1_gain: float = 0.0
    confidence: float = 0.95
    max_pass_rate_drop: float = 0.05  # non-inferiority margin of a secondary pass_rate family
    max_p99_ms: float | None = None
    max_slice_drop: float | None = None
    min_f1: float | None = None  # absolute floor (drift mode; no baseline needed)
    allow_partial: bool = False
    resamples: int = 10_000
    seed: int = 0


@dataclass(frozen=True)
class Selection:
    """How much of the golden set ran, and errors that belong to no single case."""

    selected: int
    total: int
    errors: tuple[str, ...] = ()
    preflight: tuple[str, ...] = ()  # problems found before generation: one reason each


@dataclass(frozen=True)
class Check:
    """One rule of the verdict: passed (True/False) or not applicable (None), and why."""

    name: str
    passed: bool | None
    detail: str


@dataclass(frozen=True)
class Verdict:
    """The gate's decision. ``checks`` and ``thresholds`` (additions to the contract, with
    defaults) let the report show each rule's outcome and limit."""

    passed: bool
    reasons: tuple[str, ...]
    metrics: Mapping[str, Any]
    delta: Mapping[str, Any]
    checks: tuple[Check, ...] = field(default=())
    thresholds: Mapping[str, Any] = field(default_factory=dict)


# --- transport between xdist workers and the controller -----------------------------------


@functools.cache
def _case_adapter() -> Any:
    from pydantic import TypeAdapter  # pydantic only at this I/O boundary

    return TypeAdapter(CaseResult)


def case_result_to_json(r: CaseResult) -> str:
    """One CaseResult as JSON for ``report.user_properties``."""
    data: bytes = _case_adapter().dump_json(r)
    return data.decode()


def case_result_from_json(s: str) -> CaseResult:
    """Inverse of :func:`case_result_to_json`; raises pydantic's ValidationError on bad input."""
    result: CaseResult = _case_adapter().validate_json(s)
    return result


# --- metrics ------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ids(cases: Sequence[CaseResult]) -> str:
    shown = ", ".join(c.case_id for c in cases[:_MAX_IDS])
    more = len(cases) - _MAX_IDS
    return shown + (f" and {more} more" if more > 0 else "")


def _differs(a: RoleResult, b: RoleResult) -> bool:
    if a.output != b.output:
        return True
    if a.label_scores is None or b.label_scores is None:
        # Without scores on both sides equality of outputs is all we can see; only claim
        # "not applied" from evidence, so a one-sided score table counts as different.
        return a.label_scores is not b.label_scores
    if a.label_scores.keys() != b.label_scores.keys():
        return True
    return any(
        not math.isclose(a.label_scores[k], b.label_scores[k], rel_tol=0.0, abs_tol=CANARY_ATOL)
        for k in a.label_scores
    )


# --- the decision -------------------------------------------------------------------------


def _label(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def _integrity(results: Sequence[CaseResult], t: Thresholds, sel: Selection) -> list[Check]:
    """Checks that the run is complete and error-free, before any metric is trusted."""
    checks = [Check("preflight", False, problem) for problem in sel.preflight]
    errored = [r for r in results if r.error is not None]
    no_candidate = [r for r in results if r.error is None and r.candidate is None]
    problems = (
        [f"{len(sel.errors)} session error(s): {'; '.join(sel.errors[:3])}"] if sel.errors else []
    )
    if errored:
        first = "; ".join(f"{r.case_id}: {r.error}" for r in errored[:3])
        problems.append(f"{len(errored)} case(s) errored ({first})")
    if no_candidate:
        problems.append(
            f"{len(no_candidate)} case(s) have no candidate outcome: {_ids(no_candidate)}"
        )
    if len(results) < sel.selected:
        problems.append(f"only {len(results)} of {sel.selected} selected cases reported a result")
    checks.append(Check("errors", not problems, "; ".join(problems) or "no errors"))
    if sel.selected < sel.total:
        ok = t.allow_partial
        detail = f"partial selection: {sel.selected} of {sel.total} golden cases selected" + (
            " (allowed)" if ok else "; a partial run cannot pass unless partial runs are allowed"
        )
        checks.append(Check("selection", ok, detail))
    else:
        checks.append(Check("selection", True, f"whole golden set ({sel.total} cases)"))
    return checks


def _gain_checks(primary: str, t: Thresholds, delta: Mapping[str, Any], level: str) -> list[Check]:
    """One check per family with a paired interval: ``gain`` for the primary family, a
    non-inferiority check named after each other family."""
    checks = []
    for fam, d in (delta.get("families") or {}).items():
        name = _label(d["metric"])
        low, high, gain = d["ci_low"], d["ci_high"], d["delta"]
        if d["metric"] == primary:
            ok = low > t.min_f1_gain
            verb = "exceeds" if ok else "does not exceed"
            detail = f"{name} gain {gain:.3f} ({level} CI {low:.3f}..{high:.3f}) {verb}"
            checks.append(Check("gain", ok, f"{detail} the required {t.min_f1_gain:.3f}"))
            continue
        margin = t.max_pass_rate_drop
        ok = low > -margin
        verb = "within" if ok else "not within"
        detail = (
            f"{name} of the {d['n']} non-label case(s) changed {gain:+.3f} ({level} CI "
            f"{low:+.3f}..{high:+.3f}): {verb} the allowed drop {margin:.3f} "
            f"(CI lower bound must be above {-margin:+.3f})"
        )
        checks.append(Check(fam, ok, detail))
    return checks


def _comparison(
    valid: Sequence[CaseResult],
    paired: Sequence[CaseResult],
    primary: str,
    t: Thresholds,
    delta: Mapping[str, Any],
    candidate: Mapping[str, Any],
) -> list[Check]:
    """Checks against the baseline (one per family) and the absolute floor (every family)."""
    checks: list[Check] = []
    unpaired = [c for c in valid if c.baseline is None]
    if paired and unpaired:
        detail = f"{len(unpaired)} case(s) have no baseline outcome: {_ids(unpaired)}"
        checks.append(Check("baseline", False, detail))
    if paired:
        checks += _gain_checks(primary, t, delta, f"{t.confidence * 100:g}%")
        applied = any(_differs(_role(c, "candidate"), _role(c, "baseline")) for c in paired)
        detail = (
            "candidate outputs differ from the baseline's"
            if applied
            else f"candidate outputs and label log-likelihoods equal the baseline's on all "
            f"{len(paired)} cases: the adapter was not applied (or equals the baseline)"
        )
        checks.append(Check("canary", applied, detail))
    if t.min_f1 is not None:
        for fam in families(valid):
            metric = FAMILY_METRIC[fam]
            value = candidate[metric]
            ok = value >= t.min_f1
            verb = "meets" if ok else "is below"
            detail = f"candidate {_label(metric)} {value:.3f} {verb} the floor {t.min_f1:.3f}"
            checks.append(Check("floor" if metric == primary else f"floor_{fam}", ok, detail))
    elif not paired:
        detail = "no baseline outcomes and no min_f1 floor: nothing shows the candidate is good"
        checks.append(Check("baseline", False, detail))
    return checks


def _slice_check(paired: Sequence[CaseResult], limit: float) -> Check:
    """Each slice against its own metric (``gate_metrics.slice_shape``), the same for both
    roles, so a drop is a drop in something that means something for that slice."""
    drops = []
    for tag, members in _slices(paired).items():
        c, b = slice_quality(members, "candidate"), slice_quality(members, "baseline")
        if b["value"] - c["value"] > limit:
            name = describe_slice_metric(c["metric"], c["label"])
            drops.append(
                f"slice {tag!r} {name} dropped {b['value'] - c['value']:.3f} "
                f"({b['value']:.3f} -> {c['value']:.3f}), more than the allowed {limit:.3f}"
            )
    detail = "; ".join(drops) or f"no slice dropped more than {limit:.3f}"
    return Check("slices", not drops, detail)


def _budgets(
    valid: Sequence[CaseResult],
    paired: Sequence[CaseResult],
    t: Thresholds,
    candidate: Mapping[str, Any],
) -> list[Check]:
    """Latency budget, slice regressions and must_pass cases."""
    checks: list[Check] = []
    if t.max_p99_ms is not None:
        p99 = candidate["latency_ms"]["p99"]
        ok = p99 is not None and p99 <= t.max_p99_ms
        verb = "within" if ok else "exceeds"
        detail = f"candidate p99 latency {_fmt(p99, 1)} ms {verb} the budget {t.max_p99_ms:.1f} ms"
        checks.append(Check("p99", ok, detail))
    if t.max_slice_drop is not None:
        if not paired:
            checks.append(Check("slices", None, "slice drops not checked: no baseline"))
        else:
            checks.append(_slice_check(paired, t.max_slice_drop))
    critical = [c for c in valid if c.must_pass]
    missed = [c for c in critical if not _role(c, "candidate").correct]
    if critical:
        detail = (
            f"{len(missed)} of {len(critical)} must_pass case(s) missed by the candidate: "
            f"{_ids(missed)}"
            if missed
            else f"all {len(critical)} must_pass cases pass"
        )
        checks.append(Check("must_pass", not missed, detail))
    return checks


def decide(results: Sequence[CaseResult], thresholds: Thresholds, selection: Selection) -> Verdict:
    """Apply the gate's rule to per-case outcomes; every failing check becomes a reason."""
    t = thresholds
    partial = selection.selected < selection.total
    base_metrics: dict[str, Any] = {
        "n_cases": len(results),
        "selected": selection.selected,
        "total": selection.total,
        "partial": partial,
        "primary_metric": None,
        "families": {},
        "candidate": None,
        "baseline": None,
    }
    if not results:
        reason = "no cases were run: an empty selection cannot pass"
        failed = (*(Check("preflight", False, p) for p in selection.preflight),)
        failed += (Check("errors", False, reason),)
        limits = dataclasses.asdict(t)
        reasons = (*selection.preflight, reason)
        return Verdict(False, reasons, base_metrics, dict(_NO_DELTA), failed, limits)
    valid = [r for r in results if r.error is None and r.candidate is not None]
    paired = [r for r in valid if r.baseline is not None]
    checks = _integrity(results, t, selection)
    primary = _primary_metric(valid)
    present = {fam: len(members) for fam, members in families(valid).items()}
    metrics = {**base_metrics, "primary_metric": primary, "families": present}
    delta: Mapping[str, Any] = dict(_NO_DELTA)
    if valid:
        metrics["candidate"] = role_metrics(valid, "candidate", primary)
        if paired:
            metrics["baseline"] = role_metrics(paired, "baseline", primary)
            delta = _delta(paired, primary, t)
        checks += _comparison(valid, paired, primary, t, delta, metrics["candidate"])
        checks += _budgets(valid, paired, t, metrics["candidate"])
    reasons = tuple(c.detail for c in checks if c.passed is False)
    return Verdict(not reasons, reasons, metrics, delta, tuple(checks), dataclasses.asdict(t))


def with_reasons(verdict: Verdict, check: str, reasons: Sequence[str]) -> Verdict:
    """``verdict`` with one more failed check per reason (rules decided outside ``decide``,
    such as ``--max-flip-rate`` on the robustness slice); any reason makes it red."""
    if not reasons:
        return verdict
    return dataclasses.replace(
        verdict,
        passed=False,
        reasons=(*verdict.reasons, *reasons),
        checks=(*verdict.checks, *(Check(check, False, r) for r in reasons)),
    )
