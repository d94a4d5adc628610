"""A gate report as Prometheus text exposition (``--gate-prom PATH``).

The file is valid for the node-exporter textfile collector (name it ``*.prom``) and for a push
gateway (``curl --data-binary @gate.prom $PUSHGATEWAY/metrics/job/qlgate``). The exposition
itself is produced by ``prometheus_client`` so escaping, ordering and type lines follow the
format exactly; this module only decides which numbers the report contributes.

Metric names follow Prometheus conventions: base units (seconds), ``_info`` for a constant 1
carrying identifying labels, no ``_total`` on gauges. Every series carries ``golden`` (the first
12 hex digits of the golden-set hash) plus any labels the caller adds (e.g. ``model``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from qlgate_core.atomic import write_text_atomic

ROLES = ("candidate", "baseline")
QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


class _Family:
    """One gauge family whose samples share the report's constant labels."""

    def __init__(self, name: str, doc: str, labels: Iterable[str], const: Mapping[str, str]):
        self.const = dict(const)
        self.metric = GaugeMetricFamily(name, doc, labels=[*self.const, *labels])

    def add(self, value: Any, *label_values: str) -> None:
        number = _num(value)
        if number is not None:  # a metric the run could not compute is absent, not 0
            self.metric.add_metric([*self.const.values(), *label_values], number)


def _role_rows(report: Mapping[str, Any], role: str) -> list[Mapping[str, Any]]:
    rows = []
    for case in report.get("cases") or ():
        outcome = case.get(role) if isinstance(case, Mapping) else None
        if isinstance(outcome, Mapping):
            rows.append(outcome)
    return rows


def _latency_summary(report: Mapping[str, Any], const: Mapping[str, str]) -> Metric:
    """Per-role latency as a Prometheus summary: quantiles from the report, sum and count from
    the case rows (so rate(sum)/rate(count) over pushed runs gives a mean)."""
    name = "qlgate_latency_seconds"
    metric = Metric(name, "Per-request latency measured by the gate", "summary")
    metrics = report.get("metrics") or {}
    for role in ROLES:
        role_metrics = metrics.get(role)
        if not isinstance(role_metrics, Mapping):
            continue
        labels = {**const, "role": role}
        latency = role_metrics.get("latency_ms") or {}
        for quantile, key in QUANTILES:
            value = _num(latency.get(key))
            if value is not None:
                metric.add_sample(name, {**labels, "quantile": quantile}, value / 1000.0)
        rows = _role_rows(report, role)
        values = [v for v in (_num(r.get("latency_ms")) for r in rows) if v is not None]
        if values:
            metric.add_sample(name + "_sum", labels, sum(values) / 1000.0)
            metric.add_sample(name + "_count", labels, float(len(values)))
    return metric


def _timestamp(report: Mapping[str, Any]) -> float | None:
    created = (report.get("run") or {}).get("created_at")
    if not isinstance(created, str):
        return None
    try:
        return datetime.fromisoformat(created).timestamp()
    except ValueError:
        return None


def report_metrics(
    report: Mapping[str, Any], labels: Mapping[str, str] | None = None
) -> list[Metric]:
    """The metric families a report contributes, with ``labels`` on every series."""
    golden = str(report.get("golden_sha256") or "unknown")[:12]
    const = {"golden": golden, **(labels or {})}
    metrics = report.get("metrics") or {}
    delta = report.get("delta") or {}

    def family(name: str, doc: str, *label_names: str) -> _Family:
        return _Family(name, doc, label_names, const)

    passed = family("qlgate_gate_passed", "1 if the gate approved the candidate, else 0")
    passed.add(bool(report.get("passed")))
    info = family("qlgate_report_info", "Constant 1; labels identify the report", "schema_version")
    info.add(1, str(report.get("schema_version")))
    stamp = family("qlgate_report_timestamp_seconds", "When the report was created (unix time)")
    stamp.add(_timestamp(report))
    reasons = family("qlgate_gate_reasons", "Number of reasons the gate gave for failing")
    reasons.add(len(report.get("reasons") or ()))

    f1 = family("qlgate_macro_f1", "Macro-F1 over label cases", "role")
    rate = family("qlgate_pass_rate", "Share of non-label cases that pass (weighted)", "role")
    acc = family("qlgate_accuracy", "Share of cases scored correct (weighted)", "role")
    tps = family("qlgate_tokens_per_second", "Generated tokens per request-second", "role")
    slice_f1 = family("qlgate_slice_macro_f1", "Macro-F1 of one tag slice", "role", "slice")
    slice_acc = family("qlgate_slice_accuracy", "Accuracy of one tag slice", "role", "slice")
    slice_value = family(
        "qlgate_slice_value", "A tag slice's own metric (chosen by its shape; see the metric "
        "label), as the slice check compares it", "role", "slice", "metric",
    )  # fmt: skip
    outcome = family("qlgate_cases", "Cases by role and outcome", "role", "outcome")
    for role in ROLES:
        role_metrics = metrics.get(role)
        if not isinstance(role_metrics, Mapping):
            continue
        f1.add(role_metrics.get("macro_f1"), role)
        rate.add(role_metrics.get("pass_rate"), role)
        acc.add(role_metrics.get("accuracy"), role)
        tps.add(role_metrics.get("tokens_per_s"), role)
        for tag, values in sorted((role_metrics.get("per_slice") or {}).items()):
            slice_f1.add(values.get("macro_f1"), role, tag)
            slice_acc.add(values.get("accuracy"), role, tag)
            if values.get("metric"):
                slice_value.add(values.get("value"), role, tag, str(values["metric"]))
        rows = _role_rows(report, role)
        right = sum(1 for r in rows if r.get("correct") is True)
        outcome.add(right, role, "correct")
        outcome.add(len(rows) - right, role, "incorrect")

    counts = family("qlgate_golden_cases", "Golden cases: total, selected, run, errored", "kind")
    counts.add(metrics.get("total"), "total")
    counts.add(metrics.get("selected"), "selected")
    counts.add(len(report.get("cases") or ()), "run")
    errored = sum(1 for c in report.get("cases") or () if isinstance(c, Mapping) and c.get("error"))
    counts.add(errored, "errored")

    gain = family("qlgate_delta", "Candidate minus baseline, with its bootstrap CI", "metric")
    for key in ("primary", "macro_f1", "pass_rate", "accuracy", "ci_low", "ci_high"):
        gain.add(delta.get(key), key)
    by_family = family(
        "qlgate_family_delta", "Candidate minus baseline per case family, with that family's "
        "own bootstrap CI", "family", "metric", "value",
    )  # fmt: skip
    for name, values in sorted((delta.get("families") or {}).items()):
        if isinstance(values, Mapping):
            for key in ("delta", "ci_low", "ci_high"):
                by_family.add(values.get(key), name, str(values.get("metric")), key)
    p_value = family("qlgate_mcnemar_p_value", "Exact McNemar p-value, candidate vs baseline")
    p_value.add(delta.get("mcnemar_p"))

    check = family("qlgate_check_passed", "1/0 per verdict rule that applied", "check")
    for row in report.get("checks") or ():
        if isinstance(row, Mapping) and isinstance(row.get("passed"), bool):
            check.add(row["passed"], str(row.get("name")))

    flips = _flip_family(report, family)
    families = [
        passed, info, stamp, reasons, f1, rate, acc, tps, slice_f1, slice_acc, slice_value,
        outcome, counts, gain, by_family, p_value, check, flips,
    ]  # fmt: skip
    return [f.metric for f in families] + [_latency_summary(report, const)]


def _flip_family(report: Mapping[str, Any], family: Any) -> _Family:
    """Flip rates of the robustness slice (``--perturb``): the rate and its upper confidence
    bound, which ``--max-flip-rate`` is checked against."""
    flips: _Family = family(
        "qlgate_flip_rate", "Share of perturbed answers that changed, and its upper confidence "
        "bound", "role", "scope", "bound",
    )  # fmt: skip
    robust = report.get("robustness")
    if not isinstance(robust, Mapping):
        return flips
    scopes = [("overall", robust.get("overall"))]
    scopes += [(f"slice:{k}", v) for k, v in sorted((robust.get("by_slice") or {}).items())]
    for scope, roles in scopes:
        for role, values in sorted((roles or {}).items()):
            if isinstance(values, Mapping):
                flips.add(values.get("rate"), role, scope, "observed")
                flips.add(values.get("upper"), role, scope, "upper")
    return flips


class _ReportCollector:
    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> Iterator[Metric]:
        # Empty families would print bare HELP/TYPE lines; they carry no information.
        yield from (f for f in self._families if f.samples)


def render_prometheus(report: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> str:
    """The report's metrics in the Prometheus text format (version 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ReportCollector(report_metrics(report, labels)))
    return generate_latest(registry).decode("utf-8")


def write_prometheus(
    report: Mapping[str, Any], path: Path, labels: Mapping[str, str] | None = None
) -> None:
    """Write the report's metrics to ``path`` atomically (textfile collectors read mid-write)."""
    write_text_atomic(Path(path), render_prometheus(report, labels))
