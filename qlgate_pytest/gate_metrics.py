"""Metrics of one role over per-case outcomes, and the paired delta between the roles.

Pure functions behind :func:`qlgate_pytest.gate.decide`: quality (macro-F1, accuracy, weighted
and not), per-slice quality, latency and throughput, and the paired bootstrap + McNemar delta.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from qlgate_pytest import stats

if TYPE_CHECKING:
    from qlgate_pytest.gate import CaseResult, RoleResult, Thresholds

__all__ = ["role_metrics"]


def _role(case: CaseResult, role: str) -> RoleResult:
    outcome = case.candidate if role == "candidate" else case.baseline
    assert outcome is not None
    return outcome


def _primary_metric(cases: Sequence[CaseResult]) -> str:
    """macro-F1 is defined only for label cases; any other scorer makes accuracy primary."""
    return "macro_f1" if cases and all(c.scorer == "label" for c in cases) else "accuracy"


def _quality(cases: Sequence[CaseResult], role: str, primary: str) -> dict[str, Any]:
    outs = [_role(c, role) for c in cases]
    weights = [c.weight for c in cases]
    labelled = [(c, o) for c, o in zip(cases, outs, strict=True) if c.scorer == "label"]
    mf1 = (
        stats.macro_f1(
            [c.expected for c, _ in labelled],
            [o.predicted for _, o in labelled],
            [c.weight for c, _ in labelled],
        )
        if labelled
        else None
    )
    acc = stats.accuracy([o.correct for o in outs], weights)
    out: dict[str, Any] = {
        "primary": mf1 if primary == "macro_f1" else acc,
        "macro_f1": mf1,
        "accuracy": acc,
        "n": len(cases),
    }
    if len(set(weights)) > 1:
        out["macro_f1_unweighted"] = (
            stats.macro_f1([c.expected for c, _ in labelled], [o.predicted for _, o in labelled])
            if labelled
            else None
        )
        out["accuracy_unweighted"] = stats.accuracy([o.correct for o in outs])
    return out


def _slices(cases: Sequence[CaseResult]) -> dict[str, list[CaseResult]]:
    by_tag: dict[str, list[CaseResult]] = {}
    for c in cases:
        for tag in dict.fromkeys(c.tags):
            by_tag.setdefault(tag, []).append(c)
    return dict(sorted(by_tag.items()))


def role_metrics(cases: Sequence[CaseResult], role: str, primary: str) -> dict[str, Any]:
    """Quality, per-slice quality, latency and throughput of one role over ``cases``."""
    outs = [_role(c, role) for c in cases]
    metrics: dict[str, Any] = {"primary_metric": primary, **_quality(cases, role, primary)}
    metrics["n_cases"] = metrics.pop("n")
    metrics["per_slice"] = {
        tag: _quality(members, role, primary) for tag, members in _slices(cases).items()
    }
    latencies = [o.latency_ms for o in outs]
    metrics["latency_ms"] = stats.latency_summary(latencies)
    tokens = sum(o.output_tokens for o in outs)
    seconds = sum(latencies) / 1000.0
    # Summed per-request time, so under batching this is per-request speed, not engine throughput.
    metrics["tokens_per_s"] = tokens / seconds if seconds > 0 else None
    metrics["output_tokens"] = tokens
    return metrics


def _delta(paired: Sequence[CaseResult], primary: str, t: Thresholds) -> dict[str, Any]:
    cand = [_role(c, "candidate") for c in paired]
    base = [_role(c, "baseline") for c in paired]
    weights = [c.weight for c in paired]
    if primary == "macro_f1":
        ci = stats.paired_bootstrap_macro_f1(
            [c.expected for c in paired],
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
    cq = _quality(paired, "candidate", primary)
    bq = _quality(paired, "baseline", primary)
    test = stats.mcnemar_exact([o.correct for o in cand], [o.correct for o in base])
    return {
        "primary_metric": primary,
        "primary": ci.delta,
        "macro_f1": None if cq["macro_f1"] is None else cq["macro_f1"] - bq["macro_f1"],
        "accuracy": cq["accuracy"] - bq["accuracy"],
        "ci_low": ci.ci_low,
        "ci_high": ci.ci_high,
        "confidence": ci.confidence,
        "resamples": ci.resamples,
        "seed": ci.seed,
        "mcnemar_p": test.p_value,
        "b": test.b,
        "c": test.c,
        "n_paired": len(paired),
    }


# Without a baseline the delta keeps its keys (the report's shape is stable) with None values.
_NO_DELTA: Mapping[str, Any] = dict.fromkeys(
    [
        "primary_metric",
        "primary",
        "macro_f1",
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
)
