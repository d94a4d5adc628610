"""Terminal summary of a gate report: one table, the reasons, the worst cases.

Rendered from the report dict (not from live objects) so the summary always shows exactly
what the JSON records, and an old report can be re-rendered. Never raises on a missing key:
the terminal summary is the last thing pytest prints and must not hide the verdict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

_WORST = 10
# metric, baseline, candidate, delta, CI, threshold, result
Row = tuple[str, str, str, str, str, str, str]
_HEADER: Row = ("metric", "baseline", "candidate", "delta", "CI", "threshold", "result")


def _num(x: Any, digits: int = 3, signed: bool = False) -> str:
    if not isinstance(x, int | float) or isinstance(x, bool):
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _result(checks: Mapping[str, Any], name: str) -> str:
    passed = checks.get(name)
    return "-" if passed is None else ("PASS" if passed else "FAIL")


def _get(m: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(m, dict):
            return None
        m = m.get(k)
    return m


_NAMES = {"macro_f1": "macro-F1", "pass_rate": "pass rate", "accuracy": "accuracy"}
_FAMILY_WORDS = {"label": "label", "pass_rate": "non-label"}


def _family_rows(report: Mapping[str, Any]) -> list[Row]:
    """One row per case family: its metric, interval, threshold and check (``gate.py``)."""
    metrics = report.get("metrics") or {}
    delta = report.get("delta") or {}
    t = report.get("thresholds") or {}
    checks = {c.get("name"): c.get("passed") for c in report.get("checks") or []}
    cand, base = metrics.get("candidate"), metrics.get("baseline")
    primary = metrics.get("primary_metric") or "macro_f1"
    conf = delta.get("confidence")
    level = f"{conf:.0%} " if isinstance(conf, float) else ""
    fams = _get(cand, "families") or {}
    if not fams:  # a report from before families: its one primary metric
        fams = {"label" if primary == "macro_f1" else "pass_rate": {"metric": primary}}
    rows: list[Row] = []
    for fam, info in fams.items():
        metric = info.get("metric") or primary
        d = _get(delta, "families", fam) or (delta if metric == primary else {})
        is_primary = metric == primary
        low, high = _num(d.get("ci_low"), signed=True), _num(d.get("ci_high"), signed=True)
        ci = f"{level}[{low}, {high}]" if d.get("ci_low") is not None else "-"
        if base is None:
            limit = "-"
        elif is_primary:
            limit = f"gain > {_num(t.get('min_f1_gain'))}"
        else:
            limit = f"drop < {_num(t.get('max_pass_rate_drop'))}"
        n = info.get("n")
        label = f"{_NAMES.get(metric, metric)} ({_FAMILY_WORDS.get(fam, fam)}" + (
            f", n={n})" if n is not None else ")"
        )
        rows.append(
            (
                label,
                _num(_get(base, metric)),
                _num(_get(cand, metric)),
                _num(d.get("delta", d.get("primary")), signed=True),
                ci,
                limit,
                _result(checks, "gain" if is_primary else fam),
            )
        )
        if t.get("min_f1") is not None:
            floor = "floor" if is_primary else f"floor_{fam}"
            rows.append(
                (
                    f"{_NAMES.get(metric, metric)} floor",
                    "-",
                    _num(_get(cand, metric)),
                    "-",
                    "-",
                    f">= {_num(t['min_f1'])}",
                    _result(checks, floor),
                )
            )
    return rows


def _rows(report: Mapping[str, Any]) -> list[Row]:
    metrics = report.get("metrics") or {}
    delta = report.get("delta") or {}
    t = report.get("thresholds") or {}
    checks = {c.get("name"): c.get("passed") for c in report.get("checks") or []}
    cand, base = metrics.get("candidate"), metrics.get("baseline")
    rows = _family_rows(report)
    rows.append(
        (
            "accuracy (all cases)",
            _num(_get(base, "accuracy")),
            _num(_get(cand, "accuracy")),
            _num(delta.get("accuracy"), signed=True),
            "-",
            "-",
            "-",
        )
    )
    for q in ("p50", "p95", "p99"):
        b, c = _get(base, "latency_ms", q), _get(cand, "latency_ms", q)
        diff = c - b if isinstance(b, float) and isinstance(c, float) else None
        limit = t.get("max_p99_ms") if q == "p99" else None
        rows.append(
            (
                f"latency {q} ms",
                _num(b, 1),
                _num(c, 1),
                _num(diff, 1, signed=True),
                "-",
                f"<= {_num(limit, 1)}" if limit is not None else "-",
                _result(checks, "p99") if q == "p99" else "-",
            )
        )
    rows.append(
        (
            "tokens/s",
            _num(_get(base, "tokens_per_s"), 1),
            _num(_get(cand, "tokens_per_s"), 1),
            "-",
            "-",
            "-",
            "-",
        )
    )
    rows += _slice_rows(cand, base, t)
    mp = [c for c in report.get("cases") or [] if c.get("must_pass")]
    if mp:
        ok = sum(1 for c in mp if _get(c, "candidate", "correct"))
        ok_b = sum(1 for c in mp if _get(c, "baseline", "correct"))
        rows.append(
            (
                "must_pass",
                f"{ok_b}/{len(mp)}" if base is not None else "-",
                f"{ok}/{len(mp)}",
                "-",
                "-",
                "all",
                _result(checks, "must_pass"),
            )
        )
    if "canary" in checks:
        rows.append(("adapter applied", "-", "-", "-", "-", "differs", _result(checks, "canary")))
    return rows


def _slice_name(values: Any) -> str:
    metric = _get(values, "metric")
    label = _get(values, "label")
    if metric == "recall" and label is not None:
        return f"recall of {label!r}"
    return _NAMES.get(str(metric), str(metric or "metric"))


def _slice_rows(cand: Any, base: Any, t: Mapping[str, Any]) -> list[Row]:
    """One row per slice in the slice's own metric; roles are compared only in the same one."""
    rows: list[Row] = []
    limit = t.get("max_slice_drop")
    for tag, c in (_get(cand, "per_slice") or {}).items():
        b = _get(base, "per_slice", tag)
        same = b is not None and _get(b, "metric") == _get(c, "metric")
        cv, bv = _get(c, "value"), _get(b, "value") if same else None
        diff = cv - bv if isinstance(cv, float) and isinstance(bv, float) else None
        verdict = "-"
        if limit is not None and diff is not None:
            verdict = "FAIL" if -diff > limit else "PASS"
        rows.append(
            (
                f"slice {tag} {_slice_name(c)} (n={_get(c, 'n')})",
                _num(bv),
                _num(cv),
                _num(diff, signed=True),
                "-",
                f"drop <= {_num(limit)}" if limit is not None else "-",
                verdict,
            )
        )
    return rows


def _table(rows: list[Row]) -> list[str]:
    widths = [max(len(r[i]) for r in [_HEADER, *rows]) for i in range(len(_HEADER))]
    return [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in [_HEADER, *rows]
    ]


def _shown(role: Any) -> str:
    if not isinstance(role, dict):
        return "-"
    text = role.get("predicted") or role.get("output") or ""
    text = " ".join(str(text).split())
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text!r} ({'right' if role.get('correct') else 'wrong'})"


def worst_cases(report: Mapping[str, Any], limit: int = _WORST) -> list[dict[str, Any]]:
    """Rows where the candidate is wrong: regressions (baseline right) first, then must_pass
    misses, then misses both roles share; errored rows lead, since they alone turn it red."""

    def rank(row: dict[str, Any]) -> int:
        if row.get("error"):
            return 0
        if _get(row, "baseline", "correct"):
            return 1
        return 2 if row.get("must_pass") else 3

    bad = [
        r
        for r in report.get("cases") or []
        if r.get("error") or not _get(r, "candidate", "correct")
    ]
    return sorted(bad, key=rank)[:limit]


def _rate(rates: Any, role: str) -> str:
    r = _get(rates, role)
    if not isinstance(r, dict):
        return "-"
    bound = f", upper {_num(r['upper'])}" if r.get("upper") is not None else ""
    return f"{_num(r.get('rate'))} ({r.get('flips')}/{r.get('total')}{bound})"


def _extras(report: Mapping[str, Any]) -> list[str]:
    """Cache and engine counters, robustness flip rates and preflight warnings."""
    lines: list[str] = []
    cache, load = report.get("cache"), report.get("engine_load")
    if isinstance(cache, dict) and isinstance(load, dict):
        if cache.get("enabled") is False:
            state = "off" + (f" ({cache['note']})" if cache.get("note") else "")
        else:
            state = f"{cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses"
            if cache.get("corrupt"):
                state += f", {cache['corrupt']} corrupt entries rewritten"
        requests = load.get("engine_requests") or {}
        n = sum(int(v or 0) for v in requests.values())
        engine = (
            f"engine loaded in {_num(load.get('load_s'), 1)} s, {n} requests"
            if load.get("loaded")
            else f"engine not loaded, {n} requests"
        )
        lines.append(f"generation cache: {state}; {engine}")
    robust = report.get("robustness")
    if isinstance(robust, dict):
        conf = robust.get("confidence")
        bound = f"; upper = {conf:.0%} confidence bound" if isinstance(conf, float) else ""
        limit = robust.get("max_flip_rate")
        rule = f"; gate: candidate upper <= {_num(limit)}" if limit is not None else ""
        lines.append(
            f"robustness ({robust.get('perturbations_per_case')} perturbations x "
            f"{robust.get('cases')} label cases), flip rate baseline -> candidate{bound}{rule}:"
        )
        scopes = [("overall", robust.get("overall"))]
        scopes += [(f"slice {k}", v) for k, v in (robust.get("by_slice") or {}).items()]
        for scope, rates in scopes:
            lines.append(f"  {scope}: {_rate(rates, 'baseline')} -> {_rate(rates, 'candidate')}")
    preflight = report.get("preflight")
    if isinstance(preflight, dict):
        if preflight.get("leakage"):
            lines.append(f"preflight leakage: {preflight['leakage']}")
        for f in preflight.get("findings") or []:
            if f.get("severity") == "warning":
                lines.append(f"preflight warning [{f.get('reason')}]: {f.get('message')}")
    return lines


def render_summary(report: Mapping[str, Any]) -> list[str]:
    """The terminal summary lines for one gate report."""
    metrics = report.get("metrics") or {}
    verdict = "PASS" if report.get("passed") else "FAIL"
    scope = f"{metrics.get('n_cases', 0)} cases"
    if metrics.get("partial"):
        scope += f", partial: {metrics.get('selected')} of {metrics.get('total')} selected"
    lines = [f"qlgate: {verdict} ({scope})"]
    if metrics.get("candidate") is not None:
        lines += _table(_rows(report))
    delta = report.get("delta") or {}
    if delta.get("mcnemar_p") is not None:
        lines.append(
            f"McNemar exact p = {delta['mcnemar_p']:.4g} (candidate-only right b = {delta['b']}, "
            f"baseline-only right c = {delta['c']})"
        )
    lines += _extras(report)
    reasons = report.get("reasons") or []
    if reasons:
        lines.append("reasons:")
        lines += [f"  - {r}" for r in reasons]
    worst = worst_cases(report)
    if worst:
        n_bad = len(worst_cases(report, limit=len(report.get("cases") or [])))
        lines.append(f"worst cases ({len(worst)} of {n_bad} where the candidate is wrong):")
        for row in worst:
            tags = f" [{', '.join(row.get('tags') or [])}]" if row.get("tags") else ""
            if row.get("error"):
                lines.append(f"  {row.get('id')}{tags}: error: {row['error']}")
                continue
            lines.append(
                f"  {row.get('id')}{tags}: expected {str(row.get('expected'))[:40]!r}; "
                f"candidate {_shown(row.get('candidate'))}, baseline {_shown(row.get('baseline'))}"
            )
    return lines
