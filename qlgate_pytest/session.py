"""The state of one gate run: golden set, engine, per-case outcomes, verdict and report.

One :class:`GateSession` lives in ``config.stash[GATE_KEY]`` while the gate is active. It is
used from two sides, which under pytest-xdist are different processes:

- where items run (the only process without xdist, a worker with it): it loads the golden set,
  the engine (once), and runs the driver for every needed case on the first request;
- where reports arrive (the controller): it collects :class:`CaseResult`s from
  ``report.user_properties``, decides, and writes the report.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from qlgate_pytest.engines.base import Engine, EngineConfig, Role
from qlgate_pytest.errors import QlgateError, ReportError
from qlgate_pytest.options import GateOptions

if TYPE_CHECKING:
    # pydantic models: imported when the gate is active, never by an inert plugin.
    from qlgate_pytest.cases import GoldenCase, GoldenSet

GATE_KEY = pytest.StashKey["GateSession"]()
CASE_PROPERTY = "qlgate_case"
GATE_NODEID = "qlgate::gate"


@dataclasses.dataclass(frozen=True)
class BaseModelChoice:
    """The base model to load, and why this one."""

    spec: str
    path: Path
    reason: str


def base_model_for(adapter: Path, override: str | None) -> BaseModelChoice:
    """``--base-model``, else the adapter's provenance, else its adapter_config, else embedded."""
    from training.errors import ModelResolutionError
    from training.models import resolve

    if override:
        return BaseModelChoice(override, resolve(override).path, "--base-model")
    try:
        record = json.loads((adapter / "qlgate-provenance.json").read_text(encoding="utf-8"))
        spec, path = str(record["base_model"]["spec"]), Path(record["base_model"]["path"])
        try:
            return BaseModelChoice(spec, resolve(spec).path, "adapter provenance")
        except ModelResolutionError:
            if (path / "config.json").is_file():
                return BaseModelChoice(spec, path, "adapter provenance (recorded path)")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        name = config.get("base_model_name_or_path")
        if isinstance(name, str) and name:
            return BaseModelChoice(name, resolve(name).path, "adapter_config.json")
    except (OSError, ValueError, ModelResolutionError):
        pass
    return BaseModelChoice("embedded", resolve("embedded").path, "default (embedded model)")


class GateSession:
    """See the module docstring. Methods never let engine failures escape as tracebacks."""

    def __init__(self, config: pytest.Config, options: GateOptions) -> None:
        self.config = config
        self.options = options
        self.is_worker = hasattr(config, "workerinput")
        self._golden: GoldenSet | None = None
        self._tags_registered = False
        self._engine: Engine | None = None
        self._engine_error: str | None = None
        self._engine_meta: dict[str, Any] = {}
        self._engine_config: EngineConfig | None = None
        self._candidate: Path | None = None
        self._base: BaseModelChoice | None = None
        self._outcomes: dict[str, Any] = {}  # case id -> CaseResult, computed here
        self.reported: dict[str, Any] = {}  # case id -> CaseResult, from reports
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

    # -- golden set -------------------------------------------------------------------------

    def golden(self) -> GoldenSet:
        if self._golden is None:
            from qlgate_pytest.cases import load_golden_set

            self._golden = load_golden_set(self.options.golden)
        return self._golden

    def is_case_file(self, path: Path) -> bool:
        from qlgate_pytest.cases import CASE_SUFFIXES

        root = self.options.golden
        if path.suffix not in CASE_SUFFIXES:
            return False
        return path == root or (root.is_dir() and path.is_relative_to(root))

    def register_tags(self) -> None:
        """Declare every tag as a marker so ``--strict-markers`` accepts the case items."""
        if self._tags_registered:
            return
        known = {line.split(":")[0].split("(")[0].strip() for line in self.config.getini("markers")}
        for tag in sorted(self.golden().tags - known):
            self.config.addinivalue_line("markers", f"{tag}: golden-set slice (qlgate tag)")
        self._tags_registered = True

    # -- candidate, base model, engine -------------------------------------------------------

    def candidate_dir(self) -> Path:
        """The adapter to gate; with ``--train-data`` it is trained (or reused) first."""
        if self._candidate is None:
            if self.options.candidate is not None:
                self._candidate = self.options.candidate
            else:
                from qlgate_pytest.harness_train import trained_adapter

                assert self.options.train_data is not None
                self._candidate = trained_adapter(
                    self.options.train_data,
                    self.options.train_config,
                    cache_root=self.config.rootpath / ".qlgate_cache" / "trained",
                    base_model=self.options.base_model,
                    log=self._log,
                )
        return self._candidate

    def base_model(self) -> BaseModelChoice:
        if self._base is None:
            self._base = base_model_for(self.candidate_dir(), self.options.base_model)
        return self._base

    def _log(self, message: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"qlgate: {message}")
        else:
            reporter.write_line(f"qlgate: {message}")

    def engine_roles(self) -> tuple[Role, ...]:
        return ("candidate",) if self.options.baseline.kind == "report" else ROLES_BOTH

    def engine(self) -> Engine:
        """The session's engine, loaded (and warmed up) on first use; failures raise QlgateError."""
        if self._engine is not None:
            return self._engine
        if self._engine_error is not None:
            raise QlgateError(self._engine_error)
        try:
            self._engine = self._load_engine()
        except Exception as exc:
            self._engine_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise QlgateError(self._engine_error) from exc
        return self._engine

    def _load_engine(self) -> Engine:
        from qlgate_pytest.engines.registry import get_engine_factory

        opts = self.options
        candidate = self.candidate_dir()
        base = self.base_model()
        problems = [
            p
            for batch in self.config.hook.pytest_qlgate_preflight(
                config=self.config,
                candidate=candidate,
                base_model=base.path,
                cases=self.golden().cases,
            )
            for p in (batch or [])
        ]
        if problems:
            raise QlgateError("preflight failed: " + "; ".join(problems))
        adapters: dict[Role, Path | None] = {"candidate": candidate}
        if opts.baseline.kind != "report":
            adapters["baseline"] = opts.baseline.path if opts.baseline.kind == "adapter" else None
        config = EngineConfig(
            base_model=base.path,
            adapters=adapters,
            device=opts.device,
            dtype=opts.dtype,
            batch_size=opts.batch_size,
            seed=opts.seed,
        )
        self._log(
            f"loading engine {opts.engine!r}: base {base.spec} ({base.reason}), "
            f"candidate {candidate}"
        )
        engine = get_engine_factory(opts.engine)(config)
        engine.warm_up()
        self._engine_meta = dict(engine.describe())
        self._engine_config = config
        return engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    # -- outcomes ---------------------------------------------------------------------------

    def outcome(self, case: GoldenCase, items: Sequence[pytest.Item]) -> Any:
        """The CaseResult of ``case``; the first call runs every case ``items`` need at once."""
        if case.id not in self._outcomes:
            wanted = {c.id: c for c in needed_cases(items)}
            wanted.setdefault(case.id, case)
            self._run([c for cid, c in wanted.items() if cid not in self._outcomes])
        return self._outcomes[case.id]

    def _run(self, cases: Sequence[GoldenCase]) -> None:
        from qlgate_pytest.driver import case_result, run_cases

        baseline = self._baseline_outcomes()
        try:
            engine = self.engine()
        except QlgateError as exc:
            message = f"engine {self.options.engine!r} unavailable: {exc}"
            for case in cases:
                self._outcomes[case.id] = case_result(case, None, None, [message])
            return
        cache = None
        if self._engine_config is not None:
            cache = self.config.hook.pytest_qlgate_generation_cache(
                config=self.config, engine_config=self._engine_config, engine_info=self._engine_meta
            )
        results = run_cases(
            engine, cases, roles=self.engine_roles(), baseline_outcomes=baseline, cache=cache
        )
        self._outcomes.update(results)

    def _baseline_outcomes(self) -> Mapping[str, Any] | None:
        if self.baseline_report is None:
            return None
        from qlgate_pytest.report import baseline_from_report, require_same_golden

        try:
            require_same_golden(self.baseline_report, self.golden().sha256)
        except ReportError as exc:
            self.note_session_error(f"baseline report {self.options.baseline.path} refused: {exc}")
            return {}
        return baseline_from_report(self.baseline_report)

    def note_session_error(self, message: str) -> None:
        if message not in self.session_errors:
            self.session_errors.append(message)

    def prefetch(self, items: Sequence[pytest.Item]) -> None:
        """Run every case the items need now (before the first item), in one driver call."""
        cases = [c for c in needed_cases(items) if c.id not in self._outcomes]
        if cases:
            self._run(list({c.id: c for c in cases}.values()))

    # -- the controller side ----------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Hook (this object is a registered plugin): collect results where reports arrive."""
        if not self.is_worker:
            self.record(report)

    def record(self, report: pytest.TestReport) -> None:
        """Take a case's result (or a non-case failure) from a report, on the controller."""
        from qlgate_pytest.gate import case_result_from_json

        if report.nodeid == GATE_NODEID:
            return
        payloads = [v for k, v in report.user_properties if k == CASE_PROPERTY]
        for payload in payloads:
            result = case_result_from_json(str(payload))
            self.reported[result.case_id] = result
        if report.failed and not payloads:
            self.other_failures.append(f"{report.nodeid} failed ({report.when})")

    def decide(self, session: pytest.Session, interrupted: str | None = None) -> Any:
        """The verdict over everything reported, and the report dict (kept on ``self``)."""
        from qlgate_pytest.gate import Selection, Thresholds, decide
        from qlgate_pytest.report import build_report

        golden = self.golden()
        if self.options.baseline.kind == "report":
            self._baseline_outcomes()  # records a golden-set mismatch here too (xdist controller)
        errors = [interrupted] if interrupted else []
        errors += [str(e) for e in golden.errors.values()] + self.session_errors
        errors += [f"test {f}" for f in self.other_failures]
        selected = self.selected_ids if self.selected_ids is not None else set(self.reported)
        total = len(golden.ids)
        results = [self.reported[cid] for cid in sorted(self.reported)]
        opts = self.options
        thresholds = Thresholds(
            min_f1_gain=opts.min_f1_gain,
            confidence=opts.confidence,
            max_p99_ms=opts.max_p99_ms,
            max_slice_drop=opts.max_slice_drop,
            allow_partial=opts.allow_partial,
            seed=opts.seed,
        )
        selection = Selection(len(selected | set(self.reported)), total, tuple(errors))
        verdict = decide(results, thresholds, selection)
        missing = [e for e in errors if not any(e in r for r in verdict.reasons)]
        if missing and not results:
            # decide() reports an empty run as just "no cases were run"; the cause (a broken
            # case file, an interrupted run) is the reason a user needs first.
            verdict = dataclasses.replace(verdict, reasons=(*missing, *verdict.reasons))
        self.verdict = verdict
        self.report = build_report(verdict, results, self.meta(session))
        return verdict

    def meta(self, session: pytest.Session) -> dict[str, Any]:
        golden = self.golden()
        base = self._base
        return {
            "golden_sha256": golden.sha256,
            "golden": {"path": str(golden.root), "files": [str(p) for p in golden.files]},
            "candidate": None if self._candidate is None else str(self._candidate),
            "baseline": self.options.baseline.describe(),
            "base_model": None
            if base is None
            else {"spec": base.spec, "path": str(base.path), "reason": base.reason},
            "engine": self._engine_meta or {"engine": self.options.engine},
            "options": self.options.public(),
            "pytest": {
                "version": pytest.__version__,
                "args": list(self.config.invocation_params.args),
            },
            "python": sys.version.split()[0],
        }

    def write_report(self) -> str | None:
        """Write every report asked for (JSON, HTML, Prometheus, case table); the error text of
        the first that failed. The JSON report is the authoritative one and is written first."""
        if self.report is None:
            return None
        for path, writer in self._report_writers():
            if path is None:
                continue
            try:
                writer(self.report, path)
            except ImportError as exc:
                return f"cannot write {path}: {exc} (pip install 'qlgate[report]')"
            except (OSError, ValueError, QlgateError) as exc:
                return f"cannot write the gate report {path}: {exc}"
        return None

    def _report_writers(
        self,
    ) -> list[tuple[Path | None, Callable[[Mapping[str, Any], Path], None]]]:
        # Imported lazily: matplotlib and pandas are an optional extra and slow to import.
        def html(report: Mapping[str, Any], path: Path) -> None:
            from qlgate_pytest.html_report import write_html_report

            write_html_report(report, path)

        def prom(report: Mapping[str, Any], path: Path) -> None:
            from qlgate_pytest.prometheus import write_prometheus

            write_prometheus(report, path)

        def cases(report: Mapping[str, Any], path: Path) -> None:
            from qlgate_pytest.cases_export import write_cases_table

            write_cases_table(report, path)

        from qlgate_pytest.report import write_json_atomic

        opts = self.options
        return [
            (opts.gate_report, write_json_atomic),
            (opts.gate_html, html),
            (opts.gate_prom, prom),
            (opts.gate_cases, cases),
        ]


ROLES_BOTH: tuple[Role, ...] = ("candidate", "baseline")


def needed_cases(items: Sequence[pytest.Item]) -> list[GoldenCase]:
    """Cases that the selected items will ask for: case items and ``qlgate_case`` parameters."""
    from qlgate_pytest.cases import GoldenCase

    out: list[GoldenCase] = []
    for item in items:
        case = getattr(item, "case", None)
        if isinstance(case, GoldenCase):
            out.append(case)
            continue
        callspec = getattr(item, "callspec", None)
        param = None if callspec is None else callspec.params.get("qlgate_case")
        if isinstance(param, GoldenCase):
            out.append(param)
    return out
