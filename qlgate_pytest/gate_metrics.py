"""Metrics of one role over per-case outcomes, and the paired delta between the roles.

Pure functions behind :func:`qlgate_pytest.gate.decide`. Cases fall into **families** by scorer,
and each family has the metric that means something for it; one never silently replaces another:

- ``label`` (scorer ``label``): macro-F1 over the label cases;
- ``pass_rate`` (``exact``, ``contains``, ``absent``, ``regex``, ``json_schema``): the
  (weighted) share of those cases that pass. One family for all of them: each scorer is a
  pass/fail test of one answer, so their pass rates add up meaningfully, and a family of a few
  cases per scorer would give intervals too wide to show anything.

The primary family is ``label`` when the set has label cases, else ``pass_rate``. Each family
present gets its own paired bootstrap interval (``delta.families``); the top-level delta keys
(``primary``, ``ci_low``, ``ci_high``) are the primary family's.

Slices get a metric chosen by their shape (:func:`slice_shape`), the same for both roles, so a
slice check compares like with like: macro-F1 over the slice's expected labels when it expects
two or more, recall (= accuracy) when every case expects one label, pass rate for non-label
slices, accuracy (share of cases right) for a slice mixing label and non-label cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from qlgate_core import stats

if TYPE_CHECKING:
    from qlgate_pytest.gate import CaseResult, RoleResult, Thresholds

__all__ = ["FAMILIES", "METRIC_NAMES", "family_of", "role_metrics", "slice_shape"]

FAMILIES = ("label", "pass_rate")
FAMILY_METRIC: Mapping[str, str] = {"label": "macro_f1", "pass_rate": "pass_rate"}
METRIC_NAMES: Mapping[str, str] = {
    "macro_f1": "macro-F1",
    "pass_rate": "pass rate",
    "recall": "recall",
    "accuracy": "accuracy",
}


def _role(case: CaseResult, role: str) -> RoleResult:
    outcome = case.candidate if role == "candidate" else case.baseline
    assert outcome is not None
    return outcome


def family_of(case: CaseResult) -> str:
    return "label" if case.scorer == "label" else "pass_rate"


def families(cases: Sequence[CaseResult]) -> dict[str, list[CaseResult]]:
    """The families present in ``cases``, primary first."""
    out: dict[str, list[CaseResult]] = {f: [] for f in FAMILIES}
    for c in cases:
        out[family_of(c)].append(c)
    return {f: members for f, members in out.items() if members}


def primary_family(cases: Sequence[CaseResult]) -> str:
    return next(iter(families(cases)), "label")


def _primary_metric(cases: Sequence[CaseResult]) -> str:
    """macro-F1 when the set has label cases, else the pass rate of its other cases."""
    return FAMILY_METRIC[primary_family(cases)]


def _macro(cases: Sequence[CaseResult], role: str, weighted: bool, over_expected: bool) -> float:
    return stats.macro_f1(
        [c.expected for c in cases],
        [_role(c, role).predicted for c in cases],
        [c.weight for c in cases] if weighted else None,
        over_expected=over_expected,
    )


def _share(cases: Sequence[CaseResult], role: str, weighted: bool) -> float:
    weights = [c.weight for c in cases] if weighted else None
    return stats.accuracy([_role(c, role).correct for c in cases], weights)


def _quality(cases: Sequence[CaseResult], role: str, primary: str) -> dict[str, Any]:
    fams = families(cases)
    labelled, others = fams.get("label", []), fams.get("pass_rate", [])
    mf1 = _macro(labelled, role, True, False) if labelled else None
    rate = _share(others, role, True) if others else None
    out: dict[str, Any] = {
        "primary": mf1 if primary == "macro_f1" else rate,
        "macro_f1": mf1,
        "pass_rate": rate,
        "accuracy": _share(cases, role, True),
        "n": len(cases),
    }
    if len({c.weight for c in cases}) > 1:
        out["macro_f1_unweighted"] = _macro(labelled, role, False, False) if labelled else None
        out["pass_rate_unweighted"] = _share(others, role, False) if others else None
        out["accuracy_unweighted"] = _share(cases, role, False)
    return out


def _slices(cases: Sequence[CaseResult]) -> dict[str, list[CaseResult]]:
    by_tag: dict[str, list[CaseResult]] = {}
    for c in cases:
        for tag in dict.fromkeys(c.tags):
            by_tag.setdefault(tag, []).append(c)
    return dict(sorted(by_tag.items()))


def slice_shape(cases: Sequence[CaseResult]) -> tuple[str, str | None]:
    """(metric, label) for a slice: see the module docstring. ``label`` names the one expected
    label of a ``recall`` slice. Macro-F1 of a one-label slice would average in an F1 of 0 for
    every other label the model ever predicted there, so more recall could read as a drop."""
    fams = families(cases)
    if "label" not in fams:
        return "pass_rate", None
    if "pass_rate" in fams:
        return "accuracy", None
    expected = sorted({c.expected for c in cases})
    return ("recall", expected[0]) if len(expected) == 1 else ("macro_f1", None)


def slice_quality(cases: Sequence[CaseResult], role: str) -> dict[str, Any]:
    """A slice's own metric (``metric``, ``value``; ``primary`` repeats ``value``) beside its
    macro-F1 over its expected labels, its share of correct cases and its size."""
    metric, label = slice_shape(cases)
    labelled = families(cases).get("label", [])
    mf1 = _macro(labelled, role, True, True) if labelled else None
    acc = _share(cases, role, True)
    value = mf1 if metric == "macro_f1" else acc
    correct = sum(1 for c in cases if _role(c, role).correct)
    return {
        "metric": metric,
        "label": label,
        "value": value,
        "primary": value,
        "macro_f1": mf1,
        "accuracy": acc,
        "correct": correct,
        "n": len(cases),
    }


def describe_slice_metric(metric: str, label: str | None) -> str:
    """The slice metric in words, e.g. ``recall of 'positive'``."""
    if metric == "recall" and label is not None:
        return f"recall of {label!r}"
    return METRIC_NAMES.get(metric, metric)


def role_metrics(cases: Sequence[CaseResult], role: str, primary: str) -> dict[str, Any]:
    """Quality per family, per-slice quality, latency and throughput of one role over ``cases``."""
    outs = [_role(c, role) for c in cases]
    metrics: dict[str, Any] = {"primary_metric": primary, **_quality(cases, role, primary)}
    metrics["n_cases"] = metrics.pop("n")
    metrics["families"] = {
        fam: {
            "metric": FAMILY_METRIC[fam],
            "value": _quality(members, role, FAMILY_METRIC[fam])["primary"],
            "n": len(members),
        }
        for fam, members in families(cases).items()
    }
    metrics["per_slice"] = {
        tag: slice_quality(members, role) for tag, members in _slices(cases).items()
    }
    latencies = [o.latency_ms for o in outs]
    metrics["latency_ms"] = stats.latency_summary(latencies)
    tokens = sum(o.output_tokens for o in outs)
    seconds = sum(latencies) / 1000.0
    # Summed per-request time, so under batching this is per-request speed, not engine throughput.
    metrics["tokens_per_s"] = tokens / seconds if seconds > 0 else None
    metrics["output_tokens"] = tokens
    return metrics


def _family_delta(fam: str, members: Sequence[CaseResult], t: Thresholds) -> dict[str, Any]:
    cand = [_role(c, "candidate") for c in members]
    base = [_role(c, "baseline") for c in members]
    weights = [c.weight for c in members]
    if fam == "label":
        ci = stats.paired_bootstrap_macro_f1(
            [c.expected for c in members],
            [o.predicted for o in cand],
            [o.predicted for o in base],
            weights,
            resamples=t.resamples,
            confidence=t.confidence,
            seed=t.seed,
        )
    else:
        ci = stats.paired_bootstrap_accuracy(
            [o.correct for o in cand],
            [o.correct for o in base],
            weights,
            resamples=t.resamples,
            confidence=t.confidence,
            seed=t.seed,
        )
    metric = FAMILY_METRIC[fam]
    return {
        "metric": metric,
        "n": len(members),
        "candidate": _quality(members, "candidate", metric)["primary"],
        "baseline": _quality(members, "baseline", metric)["primary"],
        "delta": ci.delta,
        "ci_low": ci.ci_low,
        "ci_high": ci.ci_high,
    }


def _delta(paired: Sequence[CaseResult], primary: str, t: Thresholds) -> dict[str, Any]:
    by_family = {fam: _family_delta(fam, m, t) for fam, m in families(paired).items()}
    main = by_family[primary_family(paired)]
    cq = _quality(paired, "candidate", primary)
    bq = _quality(paired, "baseline", primary)

    def diff(key: str) -> float | None:
        c, b = cq[key], bq[key]
        return None if c is None or b is None else float(c - b)

    test = stats.mcnemar_exact(
        [_role(c, "candidate").correct for c in paired],
        [_role(c, "baseline").correct for c in paired],
    )
    return {
        "primary_metric": primary,
        "primary": main["delta"],
        "macro_f1": diff("macro_f1"),
        "pass_rate": diff("pass_rate"),
        "accuracy": diff("accuracy"),
        "ci_low": main["ci_low"],
        "ci_high": main["ci_high"],
        "confidence": t.confidence,
        "resamples": t.resamples,
        "seed": t.seed,
        "mcnemar_p": test.p_value,
        "b": test.b,
        "c": test.c,
        "n_paired": len(paired),
        "families": by_family,
    }


# Without a baseline the delta keeps its keys (the report's shape is stable) with None values.
_NO_DELTA: Mapping[str, Any] = {
    **dict.fromkeys(
        [
            "primary_metric",
            "primary",
            "macro_f1",
            "pass_rate",
            "accuracy",
            "ci_low",
            "ci_high",
            "confidence",
            "resamples",
            "seed",
            "mcnemar_p",
            "b",
            "c",
            "n_paired",
        ]
    ),
    "families": {},
}
