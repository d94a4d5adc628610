"""A gate report as one self-contained HTML page (``--gate-html PATH``).

Verdict banner with every reason, the metrics table with the paired bootstrap CI, the rules
that applied, confusion matrices (baseline vs candidate), per-slice bars, the latency
distribution and the worst cases with both outputs. Plots are inline PNG data URIs and the page
declares a Content-Security-Policy that forbids loading anything else, so it renders the same
from a CI artefact store, an e-mail attachment or a laptop without network.

Everything shown comes from the report dict, so an old report re-renders identically. Case text
is model output (untrusted): Jinja's autoescaping keeps it text, never markup.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qlgate_core.atomic import write_text_atomic
from qlgate_pytest import plots

ROLES = ("baseline", "candidate")
NONE_LABEL = "(none)"
WORST = 20
_RUN_CELL = 400

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>qlgate {{ verdict }}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:16px;color:#1b1f24}
h2{margin-top:28px;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d0d7de;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
#verdict{padding:16px 20px;border-radius:8px;color:#fff}#verdict.pass{background:#1a7f37}
#verdict.fail{background:#cf222e}#verdict h1{margin:0 0 6px}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}.na{color:#57606a}
pre{white-space:pre-wrap;word-break:break-word;margin:0;max-width:380px}img{max-width:100%}
</style></head><body>
<section id="verdict" class="{{ 'pass' if passed else 'fail' }}">
<h1>{{ verdict }}</h1>
{% if reasons %}<ul id="reasons">{% for r in reasons %}<li>{{ r }}</li>{% endfor %}</ul>
{% else %}<p>Every rule of the gate passed.</p>{% endif %}
</section>
<section id="run"><h2>Run</h2><table>
{% for key, value in run %}<tr><th>{{ key }}</th><td>{{ value }}</td></tr>{% endfor %}
</table></section>
<section id="metrics"><h2>Metrics</h2><table>
<tr><th>metric</th><th>baseline</th><th>candidate</th><th>delta</th><th>CI</th></tr>
{% for row in metrics %}<tr><th>{{ row[0] }}</th>
{% for cell in row[1:] %}<td class="n">{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% if checks %}<h3>Rules</h3><table id="checks">
<tr><th>rule</th><th>result</th><th>detail</th></tr>
{% for c in checks %}<tr><td>{{ c.name }}</td><td class="{{ c.css }}">{{ c.result }}</td>
<td>{{ c.detail }}</td></tr>
{% endfor %}</table>{% endif %}
</section>
{% if confusion %}<section id="confusion"><h2>Confusion matrices</h2>
<img alt="confusion matrices, baseline vs candidate" src="{{ confusion }}"></section>{% endif %}
{% if slices %}<section id="slices"><h2>Per slice</h2>
<p>Each slice is judged by the metric that fits its shape: macro-F1 over its expected labels
when it expects two or more, recall when every case expects one label, pass rate for non-label
cases, accuracy for a mix.</p>
<table id="slice-table"><tr><th>slice</th><th>metric</th><th>n</th><th>baseline</th>
<th>candidate</th></tr>
{% for row in slice_rows %}<tr><td>{{ row[0] }}</td><td>{{ row[1] }}</td>
{% for cell in row[2:] %}<td class="n">{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
<img alt="per-slice metric" src="{{ slices }}"></section>{% endif %}
{% if latency %}<section id="latency"><h2>Latency</h2>
<img alt="latency distribution" src="{{ latency }}"></section>{% endif %}
<section id="worst"><h2>Worst cases ({{ worst|length }} of {{ n_cases }})</h2>
{% if worst %}<table>
<tr><th>case</th><th>why</th><th>expected</th><th>baseline</th><th>candidate</th></tr>
{% for w in worst %}<tr class="case"><td>{{ w.id }}<br><span class="na">{{ w.tags }}</span></td>
<td>{{ w.why }}</td><td><pre>{{ w.expected }}</pre></td>
<td><pre>{{ w.baseline }}</pre></td><td><pre>{{ w.candidate }}</pre></td></tr>
{% endfor %}</table>{% else %}<p>The candidate missed no case.</p>{% endif %}
</section></body></html>
"""


@functools.cache
def _template() -> Any:
    from jinja2 import Environment

    return Environment(autoescape=True, keep_trailing_newline=True).from_string(_TEMPLATE)


def _fmt(value: Any, digits: int = 3, signed: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _role_metrics(report: Mapping[str, Any], role: str) -> Mapping[str, Any]:
    value = (report.get("metrics") or {}).get(role)
    return value if isinstance(value, Mapping) else {}


_NAMES = {"macro_f1": "macro-F1", "pass_rate": "pass rate", "accuracy": "accuracy"}


def metric_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(metric, baseline, candidate, delta, CI) rows: one per case family with that family's
    own bootstrap interval (macro-F1 for label cases, pass rate for the others), then accuracy
    over all cases (no interval: nothing is gated on it), latency and throughput."""
    base, cand = _role_metrics(report, "baseline"), _role_metrics(report, "candidate")
    delta = report.get("delta") or {}
    primary = delta.get("primary_metric") or (report.get("metrics") or {}).get("primary_metric")
    confidence = delta.get("confidence")
    ci_label = f"{confidence:.0%} " if isinstance(confidence, float) else ""
    families = delta.get("families") or {}
    by_metric = {f.get("metric"): f for f in families.values() if isinstance(f, Mapping)}
    rows = []
    for key in ("macro_f1", "pass_rate", "accuracy"):
        if key == "pass_rate" and cand.get(key) is None and base.get(key) is None:
            continue
        fam = by_metric.get(key) or (delta if key == primary and not by_metric else {})
        ci = (
            f"{ci_label}{_fmt(fam.get('ci_low'), signed=True)} .. "
            f"{_fmt(fam.get('ci_high'), signed=True)}"
            if key != "accuracy" and fam.get("ci_low") is not None
            else ""
        )
        name = _NAMES[key] + (" (all cases)" if key == "accuracy" else "")
        rows.append(
            (name, _fmt(base.get(key)), _fmt(cand.get(key)), _fmt(delta.get(key), signed=True), ci)
        )
    for q in ("p50", "p95", "p99"):
        b = (base.get("latency_ms") or {}).get(q)
        c = (cand.get("latency_ms") or {}).get(q)
        diff = c - b if isinstance(b, int | float) and isinstance(c, int | float) else None
        rows.append((f"latency {q} (ms)", _fmt(b, 1), _fmt(c, 1), _fmt(diff, 1, True), ""))
    rows.append(
        ("tokens/s", _fmt(base.get("tokens_per_s"), 1), _fmt(cand.get("tokens_per_s"), 1), "", "")
    )
    p = delta.get("mcnemar_p")
    rows.append(("cases", str(base.get("n_cases", "-")), str(cand.get("n_cases", "-")), "",
                 f"McNemar p = {_fmt(p, 4)}" if p is not None else ""))  # fmt: skip
    return rows


def _predicted(outcome: Mapping[str, Any] | None) -> str | None:
    if not outcome:
        return None
    value = outcome.get("predicted")
    return NONE_LABEL if value is None else str(value)


def confusion(report: Mapping[str, Any]) -> tuple[list[str], dict[str, list[list[int]]]]:
    """Labels and one count matrix per role (rows expected, columns predicted), over the label
    cases that role answered. Unlabelled answers count in a ``(none)`` column."""
    cases = [c for c in report.get("cases") or () if c.get("scorer") == "label"]
    roles = [r for r in ROLES if any(c.get(r) for c in cases)]
    seen = {str(c.get("expected")) for c in cases}
    seen |= {p for c in cases for r in roles if (p := _predicted(c.get(r))) is not None}
    labels = sorted(seen - {NONE_LABEL}) + ([NONE_LABEL] if NONE_LABEL in seen else [])
    index = {label: i for i, label in enumerate(labels)}
    matrices: dict[str, list[list[int]]] = {}
    for role in roles:
        matrix = [[0] * len(labels) for _ in labels]
        for c in cases:
            predicted = _predicted(c.get(role))
            if predicted is not None:
                matrix[index[str(c.get("expected"))]][index[predicted]] += 1
        matrices[role] = matrix
    return labels, matrices


def _slice_metric(values: Mapping[str, Any]) -> str:
    metric = str(values.get("metric") or "")
    if metric == "recall" and values.get("label") is not None:
        return f"recall of {values['label']!r}"
    return _NAMES.get(metric, metric or "-")


def slice_values(report: Mapping[str, Any]) -> tuple[str, list[str], dict[str, list[float | None]]]:
    """Each tag slice's own metric per role: (axis label, slices, role -> values). A slice's
    metric follows its shape (``gate_metrics.slice_shape``), so the tick names it."""
    per_role = {r: _role_metrics(report, r).get("per_slice") or {} for r in ROLES}
    tags = sorted({tag for values in per_role.values() for tag in values})
    values = {
        role: [(per_role[role].get(tag) or {}).get("value") for tag in tags]
        for role in ROLES
        if per_role[role]
    }
    shown = per_role["candidate"] or per_role["baseline"]
    ticks = [f"{tag}\n{_slice_metric(shown.get(tag) or {})}" for tag in tags]
    return "slice metric", ticks, values


def slice_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(slice, metric, n, baseline, candidate) for the per-slice table."""
    per_role = {r: _role_metrics(report, r).get("per_slice") or {} for r in ROLES}
    rows = []
    for tag, cand in sorted(per_role["candidate"].items()):
        base = per_role["baseline"].get(tag) or {}
        same = base.get("metric") == cand.get("metric")
        rows.append(
            (
                tag,
                _slice_metric(cand),
                str(cand.get("n", "-")),
                _fmt(base.get("value")) if same else "-",
                _fmt(cand.get("value")),
            )
        )
    return rows


def _why(case: Mapping[str, Any]) -> tuple[int, str]:
    """Severity rank (lower is worse) and the reason a case is listed."""
    if case.get("error"):
        return 0, f"error: {case['error']}"
    base = case.get("baseline") or {}
    if case.get("must_pass"):
        return 1, "must_pass case missed"
    if base.get("correct") is True:
        return 2, "regression: the baseline was right"
    if base:
        return 3, "both wrong"
    return 4, "candidate wrong (no baseline)"


def worst_cases(report: Mapping[str, Any], limit: int = WORST) -> list[dict[str, str]]:
    """Errored or candidate-missed cases, worst first (errors, must_pass, regressions, ...)."""
    bad = [
        c
        for c in report.get("cases") or ()
        if c.get("error") or not (c.get("candidate") or {}).get("correct", False)
    ]
    ranked = sorted(bad, key=lambda c: (_why(c)[0], -float(c.get("weight") or 1), str(c.get("id"))))
    out = []
    for case in ranked[:limit]:
        cand, base = case.get("candidate") or {}, case.get("baseline") or {}
        out.append(
            {
                "id": str(case.get("id")),
                "tags": ", ".join(case.get("tags") or ()),
                "why": _why(case)[1],
                "expected": str(case.get("expected")),
                "candidate": _answer(cand),
                "baseline": _answer(base),
            }
        )
    return out


def _answer(outcome: Mapping[str, Any]) -> str:
    if not outcome:
        return "-"
    mark = "right" if outcome.get("correct") else "wrong"
    return f"[{mark}, predicted {_predicted(outcome)}]\n{outcome.get('output', '')}"


def _run_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = [("golden set sha256", str(report.get("golden_sha256")))]
    for key, value in (report.get("run") or {}).items():
        if isinstance(value, str | int | float | bool) or value is None:
            text = str(value)
        else:
            # Nested run details (engine, options, versions) as compact JSON, cut to stay readable.
            text = json.dumps(value, sort_keys=True, default=str)
            text = text if len(text) <= _RUN_CELL else text[: _RUN_CELL - 3] + "..."
        rows.append((str(key), text))
    return rows


def _checks(report: Mapping[str, Any]) -> list[dict[str, str]]:
    out = []
    for row in report.get("checks") or ():
        passed = row.get("passed")
        result, css = (
            ("PASS", "ok") if passed else ("FAIL", "bad") if passed is False else ("n/a", "na")
        )
        out.append({"name": str(row.get("name")), "result": result, "css": css,
                    "detail": str(row.get("detail", ""))})  # fmt: skip
    return out


def _latencies(report: Mapping[str, Any]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for role in ROLES:
        values = [
            float(o["latency_ms"])
            for c in report.get("cases") or ()
            if isinstance(o := c.get(role), Mapping)
            and isinstance(o.get("latency_ms"), int | float)
        ]
        if values:
            out[role] = values
    return out


def render_html(report: Mapping[str, Any]) -> str:
    """The whole page as a string."""
    labels, matrices = confusion(report)
    metric, slices, values = slice_values(report)
    latencies = _latencies(report)
    p99 = {r: (_role_metrics(report, r).get("latency_ms") or {}).get("p99") for r in latencies}
    passed = bool(report.get("passed"))
    return str(
        _template().render(
            passed=passed,
            verdict="PASS: candidate approved" if passed else "FAIL: candidate rejected",
            reasons=list(report.get("reasons") or ()),
            run=_run_rows(report),
            metrics=metric_rows(report),
            checks=_checks(report),
            confusion=plots.confusion_matrices(labels, matrices) if matrices else None,
            slice_rows=slice_rows(report),
            slices=plots.slice_bars(slices, values, metric) if slices and values else None,
            latency=plots.latency_histogram(latencies, p99) if latencies else None,
            worst=worst_cases(report),
            n_cases=len(report.get("cases") or ()),
        )
    )


def write_html_report(report: Mapping[str, Any], path: Path) -> None:
    """Write the page to ``path`` atomically."""
    write_text_atomic(Path(path), render_html(report))
