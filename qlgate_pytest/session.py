"""The state of one gate run: golden set, engine, per-case outcomes, verdict and report.

One :class:`GateSession` lives in ``config.stash[GATE_KEY]`` while the gate is active. It is
used from two sides, which under pytest-xdist are different processes:

- where items run (the only process without xdist, a worker with it): it loads the golden set,
  runs preflight, and runs the driver for every needed case on the first request, through the
  generation cache and a lazy engine (loaded only if a request misses the cache);
- where reports arrive (the controller): it collects :class:`CaseResult`s, flip-rate rows and
  per-worker counters from ``report.user_properties``, decides, and writes the report.

Preflight runs on both sides (it reads files only): on the item side it stops generation, on
the controller it names each finding as a reason of the verdict.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from qlgate_core.errors import ReportError
from qlgate_pytest.base_model import BaseModelChoice
from qlgate_pytest.engines.base import EngineConfig
from qlgate_pytest.options import GateOptions
from qlgate_pytest.session_items import ItemSide

if TYPE_CHECKING:
    # pydantic models: imported when the gate is active, never by an inert plugin.
    from qlgate_core.cases import GoldenCase, GoldenSet
    from qlgate_pytest.gen_cache import GenCache
    from qlgate_pytest.lazy_engine import LazyEngine
    from qlgate_pytest.perturb import RobustnessCase
    from qlgate_pytest.preflight import Finding

GATE_KEY = pytest.StashKey["GateSession"]()
CASE_PROPERTY = "qlgate_case"
GATE_NODEID = "qlgate::gate"


class GateSession(ItemSide):
    """See the module docstring. Methods never let engine failures escape as tracebacks."""

    def __init__(self, config: pytest.Config, options: GateOptions) -> None:
        self.config = config
        self.options = options
        self.is_worker = hasattr(config, "workerinput")
        self._golden: GoldenSet | None = None
        self._tags_registered = False
        self._engine: LazyEngine | None = None
        self._engine_error: str | None = None
        self._engine_config: EngineConfig | None = None
        self._blockers: list[str] | None = None  # preflight problems; None: not run yet
        self._cache_asked = False
        self._driver_cache: Any = None
        self.preflight_findings: list[Finding] | None = None  # set by the preflight hook
        self.gen_cache: GenCache | None = None  # set by qlgate's generation cache hook
        self.cache_note: str | None = None
        self.robustness: dict[str, RobustnessCase] = {}  # computed here
        self.reported_robustness: dict[str, RobustnessCase] = {}  # from reports
        self.worker_stats: dict[str, dict[str, Any]] = {}  # worker -> last counters seen
        self.worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.cache_cleared: int | None = None  # entries removed by --clear-gen-cache
        self._candidate: Path | None = None
        self._base: BaseModelChoice | None = None
        self._outcomes: dict[str, Any] = {}  # case id -> CaseResult, computed here
        self.reported: dict[str, Any] = {}  # case id -> CaseResult, from reports
        self._case_index: dict[str, tuple[GoldenCase, Path]] | None = None
        self._reported_by: dict[str, tuple[str, str]] = {}  # case id -> (node id, payload)
        self.other_failures: list[str] = []
        self.session_errors: list[str] = []
        self.selected_ids: set[str] | None = None
        self.verdict: Any = None
        self.report: dict[str, Any] | None = None
        self.baseline_report: dict[str, Any] | None = None
        if options.baseline.kind == "report" and options.baseline.path is not None:
            from qlgate_pytest.report import load_report

            try:
                self.baseline_report = load_report(options.baseline.path)
            except ReportError as exc:
                source = options.sources.get("baseline", "--baseline")
                raise pytest.UsageError(f"qlgate: --baseline (from {source}): {exc}") from None

    # -- the controller side ----------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Hook (this object is a registered plugin): collect results where reports arrive."""
        if not self.is_worker:
            self.record(report)

    def record(self, report: pytest.TestReport) -> None:
        """Take a case's result (or a non-case failure) from a report, on the controller."""
        import json

        from qlgate_pytest.gate import case_result_from_json
        from qlgate_pytest.perturb import robustness_case_from_json
        from qlgate_pytest.run_extras import ROBUSTNESS_PROPERTY, RUN_PROPERTY

        if report.nodeid == GATE_NODEID:
            return
        payloads = [v for k, v in report.user_properties if k == CASE_PROPERTY]
        for payload in payloads:
            result = case_result_from_json(str(payload))
            if self._reported_by.get(result.case_id) == (report.nodeid, str(payload)):
                continue  # the same item's later phase (teardown) repeats its properties
            problem = self._foreign_result(report.nodeid, result)
            if problem is not None:
                self.note_session_error(problem)
                continue
            self.reported[result.case_id] = result
            self._reported_by[result.case_id] = (report.nodeid, str(payload))
        for key, value in report.user_properties:
            if key == ROBUSTNESS_PROPERTY:
                row = robustness_case_from_json(str(value))
                self.reported_robustness[row.case_id] = row
            elif key == RUN_PROPERTY:
                stats = json.loads(str(value))
                self.worker_stats[str(stats.get("worker"))] = stats
        if report.failed and not payloads:
            self.other_failures.append(f"{report.nodeid} failed ({report.when}){_why(report)}")

    def _foreign_result(self, nodeid: str, result: Any) -> str | None:
        """Why a reported case result is not taken (see ``item_guard``); None: it is."""
        from qlgate_pytest.item_guard import case_item_mismatch

        case, where = self._case_homes().get(result.case_id, (None, None))
        problem = case_item_mismatch(nodeid, result.case_id, where)
        if problem is None and case is not None:
            claimed = (result.must_pass, tuple(result.tags), result.weight)
            if claimed != (case.must_pass, tuple(case.tags), case.weight):
                problem = (
                    f"{nodeid} reported case {case.id} with must_pass/tags/weight {claimed}, "
                    f"but its golden file says {(case.must_pass, tuple(case.tags), case.weight)}"
                )
        if problem is None and result.case_id in self.reported:
            problem = f"case {result.case_id} was reported twice (again by {nodeid})"
        return None if problem is None else f"forged or duplicate case result: {problem}"

    def _case_homes(self) -> dict[str, tuple[GoldenCase, Path]]:
        """Case id -> the golden case and the file that holds it (built once)."""
        if self._case_index is None:
            self._case_index = {
                c.id: (c, path) for path, cases in self.golden().files.items() for c in cases
            }
        return self._case_index

    def decide(self, session: pytest.Session, interrupted: str | None = None) -> Any:
        """The verdict over everything reported, and the report dict (kept on ``self``)."""
        from qlgate_pytest.gate import Selection, Thresholds, decide, with_reasons
        from qlgate_pytest.report import build_report

        golden = self.golden()
        blockers = self.blockers()  # on the xdist controller, preflight runs here
        errors = [interrupted] if interrupted else []
        if not golden.cases and not golden.errors:
            errors.append(f"the golden set {golden.root} holds no cases: nothing can be shown")
        errors += [str(e) for e in golden.errors.values()] + self.session_errors
        errors += [f"test {f}" for f in self.other_failures]
        selected = self.selected_ids if self.selected_ids is not None else set(self.reported)
        total = len(golden.ids)
        results = [self.reported[cid] for cid in sorted(self.reported)]
        opts = self.options
        thresholds = Thresholds(
            min_f1_gain=opts.min_f1_gain,
            confidence=opts.confidence,
            max_pass_rate_drop=opts.max_pass_rate_drop,
            max_p99_ms=opts.max_p99_ms,
            max_slice_drop=opts.max_slice_drop,
            min_f1=opts.min_f1,
            allow_partial=opts.allow_partial,
            seed=opts.seed,
        )
        selection = Selection(
            len(selected | set(self.reported)), total, tuple(errors), preflight=tuple(blockers)
        )
        verdict = decide(results, thresholds, selection)
        robustness, flips = self._robustness(selected)
        if flips:
            verdict = with_reasons(verdict, "robustness", flips)
        missing = [e for e in errors if not any(e in r for r in verdict.reasons)]
        if missing and not results:
            # decide() reports an empty run as just "no cases were run"; the cause (a broken
            # case file, an interrupted run) is the reason a user needs first.
            verdict = dataclasses.replace(verdict, reasons=(*missing, *verdict.reasons))
        self.verdict = verdict
        self.report = build_report(verdict, results, self.meta(session), self.extras(robustness))
        return verdict

    def _robustness(self, selected: set[str]) -> tuple[dict[str, Any] | None, list[str]]:
        from qlgate_pytest.run_extras import robustness_section

        rows = self.reported_robustness or self.robustness
        kept = [rows[cid] for cid in sorted(rows) if cid in selected or not selected]
        opts = self.options
        return robustness_section(kept, opts.perturb, opts.max_flip_rate, opts.confidence)

    def extras(self, robustness: dict[str, Any] | None) -> dict[str, Any]:
        """Report sections beside the verdict (see ``run_extras.py``)."""
        import json

        from qlgate_pytest.gate_cache import cache_root
        from qlgate_pytest.run_extras import (
            cache_section,
            engine_load_section,
            preflight_section,
        )

        stats = list(self.worker_stats.values())
        if not stats and self._engine is not None:
            stats = [json.loads(self.run_stats())]
        cache = cache_section(stats, str(cache_root(self.options, self.config.rootpath)))
        cache["cleared"] = self.cache_cleared
        return {
            "preflight": preflight_section(self.preflight_findings),
            "cache": cache,
            "engine_load": engine_load_section(stats),
            "robustness": robustness,
        }

    def meta(self, session: pytest.Session) -> dict[str, Any]:
        from qlgate_pytest.adapter_record import adapter_records

        golden = self.golden()
        base = self._base
        engine = self._engine_describe()
        baseline = self.options.baseline
        roles = {
            "candidate": self._candidate,
            "baseline": baseline.path if baseline.kind == "adapter" else None,
        }
        return {
            "golden_sha256": golden.sha256,
            "golden": {"path": str(golden.root), "files": [str(p) for p in golden.files]},
            "candidate": None if self._candidate is None else str(self._candidate),
            "baseline": self.options.baseline_describe(),
            "base_model": None
            if base is None
            else {"spec": base.spec, "path": str(base.path), "reason": base.reason},
            # Every engine's adapter identity (config + weights + ...): what deploy checks.
            "adapters": adapter_records(roles, engine),
            "engine": engine,
            "options": self.options.public(),
            "pytest": {
                "version": pytest.__version__,
                "args": list(self.config.invocation_params.args),
            },
            "python": sys.version.split()[0],
        }

    def _engine_describe(self) -> dict[str, Any]:
        """The loaded engine's ``describe()`` (here, or as a worker reported it)."""
        described: list[dict[str, Any]] = [
            s["describe"] for s in self.worker_stats.values() if s.get("describe")
        ]
        loaded = [d for d in described if d.get("loaded") is not False]
        if self._engine is not None:
            return dict(self._engine.describe())
        if loaded or described:
            return dict((loaded or described)[0])
        return {"engine": self.options.engine}

    def write_report(self) -> str | None:
        """Write every report asked for (JSON first); the error text of the first that failed."""
        if self.report is None:
            return None
        from qlgate_pytest.report_writers import write_reports

        return write_reports(self.report, self.options)


def _why(report: pytest.TestReport) -> str:
    """The one-line cause of a failed report (an xdist worker crash arrives as plain text)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = getattr(crash, "message", None) if crash is not None else None
    if text is None and isinstance(report.longrepr, str):
        text = report.longrepr
    line = str(text or "").strip().splitlines()[0] if text else ""
    return f": {line[:200]}" if line else ""
