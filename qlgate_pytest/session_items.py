"""The item side of a gate session: golden set, preflight, the lazy engine and the driver run.

This is where items run (the only process without xdist, each worker with it). Split from
``session.py`` (which adds the controller side) to keep each file about one concern; the
attributes it uses are set by :class:`~qlgate_pytest.session.GateSession`'s ``__init__``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from qlgate_core.errors import QlgateError, ReportError
from qlgate_pytest.base_model import BaseModelChoice, base_model_for
from qlgate_pytest.engines.base import Engine, EngineConfig, Role
from qlgate_pytest.options import GateOptions

if TYPE_CHECKING:
    from qlgate_core.cases import GoldenCase, GoldenSet
    from qlgate_pytest.gen_cache import GenCache
    from qlgate_pytest.lazy_engine import LazyEngine
    from qlgate_pytest.perturb import RobustnessCase

ROLES_BOTH: tuple[Role, ...] = ("candidate", "baseline")


class ItemSide:
    """Golden set, candidate, preflight, engine and outcomes (see the module docstring)."""

    config: pytest.Config
    options: GateOptions
    baseline_report: dict[str, Any] | None
    session_errors: list[str]
    robustness: dict[str, RobustnessCase]
    gen_cache: GenCache | None
    cache_note: str | None
    worker: str
    _golden: GoldenSet | None
    _tags_registered: bool
    _engine: LazyEngine | None
    _engine_error: str | None
    _engine_config: EngineConfig | None
    _candidate: Path | None
    _base: BaseModelChoice | None
    _blockers: list[str] | None
    _outcomes: dict[str, Any]
    _driver_cache: Any  # the generation cache hook's answer (a driver.GenerationCache or None)
    _cache_asked: bool

    # -- golden set -------------------------------------------------------------------------

    def golden(self) -> GoldenSet:
        if self._golden is None:
            from qlgate_core.cases import load_golden_set
            from qlgate_core.golden_lock import lock_path_for

            opts = self.options
            # Checked against its lock (red on any difference; golden_lock.py), whole even
            # when -k selects a part.
            self._golden = load_golden_set(
                opts.golden,
                lock=lock_path_for(opts.golden, opts.golden_lock),
                allow_unlocked=opts.allow_unlocked_golden,
            )
            for note in self._golden.notes:
                self._log(note)
        return self._golden

    def is_case_file(self, path: Path) -> bool:
        from qlgate_core.golden_tree import is_case_path

        return is_case_path(self.options.golden, path)

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
            if self.options.endpoint is not None:
                raise QlgateError(
                    f"no adapter directory: this run gates the endpoint {self.options.endpoint}"
                )
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
        """The roles the engine runs: a baseline from a report, or an endpoint without a
        baseline model (drift mode: gated on ``--min-f1`` alone), leaves only the candidate."""
        opts = self.options
        if opts.baseline.kind == "report":
            return ("candidate",)
        if opts.endpoint is not None and opts.baseline_model is None:
            return ("candidate",)
        return ROLES_BOTH

    def engine(self) -> LazyEngine:
        """The session's engine: a :class:`LazyEngine` that loads (and warms up) the model on the
        first request that misses the cache. Failures to configure it raise QlgateError."""
        if self._engine is not None:
            return self._engine
        if self._engine_error is not None:
            raise QlgateError(self._engine_error)
        try:
            self._engine = self._lazy_engine()
        except Exception as exc:
            self._engine_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise QlgateError(self._engine_error) from exc
        return self._engine

    def loaded_engine(self) -> Engine:
        """The real engine, loaded now (the ``qlgate_engine`` fixture: team tests may call any
        method of it); preflight problems refuse it like they refuse generation."""
        if self.blockers():
            raise QlgateError("not loaded: preflight failed: " + "; ".join(self.blockers()))
        from qlgate_pytest.lazy_engine import CountedEngine

        try:
            lazy = self.engine()
            lazy.engine()  # load now: a load failure fails the fixture, not a later call
            return CountedEngine(lazy)
        except QlgateError:
            raise
        except Exception as exc:
            raise QlgateError(f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc

    def engine_config(self) -> EngineConfig:
        if self._engine_config is None and self.options.endpoint is not None:
            # A live endpoint: no local model, adapter or base; the engine reads extra only.
            self._engine_config = EngineConfig(
                base_model=Path(),
                adapters={},
                batch_size=self.options.batch_size,
                seed=self.options.seed,
                extra=self.options.engine_extra(),
            )
        if self._engine_config is None:
            opts = self.options
            adapters: dict[Role, Path | None] = {"candidate": self.candidate_dir()}
            if opts.baseline.kind != "report":
                adapters["baseline"] = (
                    opts.baseline.path if opts.baseline.kind == "adapter" else None
                )
            self._engine_config = EngineConfig(
                base_model=self.base_model().path,
                adapters=adapters,
                device=opts.device,
                dtype=opts.dtype,
                batch_size=opts.batch_size,
                seed=opts.seed,
                extra=opts.engine_extra(),
            )
        return self._engine_config

    def _lazy_engine(self) -> LazyEngine:
        from qlgate_core.errors import EngineError
        from qlgate_pytest.engines.registry import get_engine_factory
        from qlgate_pytest.gate_cache import engine_identity
        from qlgate_pytest.lazy_engine import LazyEngine
        from qlgate_pytest.xdist_gpu import worker_device

        opts = self.options
        config = self.engine_config()
        static = engine_identity(opts.engine)
        if opts.endpoint is not None:
            models = {"candidate": opts.served_model}
            if opts.baseline_model is not None:
                models["baseline"] = opts.baseline_model
            static.update(endpoint=opts.endpoint, models=models)
            what = f"endpoint {opts.endpoint}, served model {opts.served_model}"
        else:
            base = self.base_model()
            what = f"base {base.spec} ({base.reason}), candidate {config.adapters['candidate']}"

        def load() -> Engine:
            device = worker_device(config.device)
            where = "" if opts.endpoint is not None else f", device {device}"
            self._log(f"loading engine {opts.engine!r}: {what}{where}")
            try:
                return get_engine_factory(opts.engine)(dataclasses.replace(config, device=device))
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}".splitlines()[0]
                raise EngineError(f"engine {opts.engine!r} unavailable: {text}") from exc

        return LazyEngine(opts.engine, static, load)

    # -- preflight ---------------------------------------------------------------------------

    def blockers(self) -> list[str]:
        """Problems found before any generation (preflight hooks, a refused baseline report);
        any of them means nothing is generated. Computed once per process."""
        if self._blockers is None:
            self._blockers = self._preflight()
        return self._blockers

    def _preflight(self) -> list[str]:
        problems: list[str] = []
        if self.options.baseline.kind == "report":
            refused = self._baseline_refusal()
            if refused is not None:
                problems.append(refused)
        if self.options.endpoint is not None:
            # No adapter files to check: the endpoint serves whatever it serves. Whether it
            # answers at all is the engine's warm-up, an error of every case when it fails.
            return problems
        try:
            candidate = self.candidate_dir()
            base = self.base_model()
            answers = self.config.hook.pytest_qlgate_preflight(
                config=self.config,
                candidate=candidate,
                base_model=base.path,
                cases=self.golden().cases,
            )
        except Exception as exc:  # preflight must fail closed, with a reason, never a traceback
            return [*problems, f"preflight could not run: {type(exc).__name__}: {exc}"]
        problems += [p for batch in answers for p in (batch or [])]
        return problems

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
        from qlgate_pytest.driver import Deadline, case_result, run_all

        blockers = self.blockers()
        if blockers:
            codes = [b.split("]")[0] + "]" if b.startswith("preflight [") else b for b in blockers]
            message = "not run: " + "; ".join(codes)[:300] + " (see the gate's reasons)"
            for case in cases:
                self._outcomes[case.id] = case_result(case, None, None, [message])
            return
        baseline = self._baseline_outcomes()
        try:
            engine = self.engine()
        except QlgateError as exc:
            message = f"engine {self.options.engine!r} unavailable: {exc}"
            for case in cases:
                self._outcomes[case.id] = case_result(case, None, None, [message])
            return
        if not self._cache_asked and self.options.endpoint is not None:
            # A live deployment must be asked every time: its answers are what drift is.
            self._cache_asked = True
            self.cache_note = "generation cache off: a live endpoint is asked every time"
        if not self._cache_asked:  # asked once: its counters span the run
            self._cache_asked = True
            self._driver_cache = self.config.hook.pytest_qlgate_generation_cache(
                config=self.config,
                engine_config=self.engine_config(),
                engine_info=engine.describe(),
            )
        cache = self._driver_cache
        opts = self.options
        output = run_all(
            engine,
            cases,
            roles=self.engine_roles(),
            baseline_outcomes=baseline,
            cache=cache,
            perturb=opts.perturb,
            seed=opts.seed,
            deadline=Deadline(opts.request_timeout, opts.batch_size, before=engine.engine),
        )
        self._outcomes.update(output.results)
        self.robustness.update(output.robustness)

    def run_stats(self) -> str:
        """This process's engine and cache counters, as a case report carries them."""
        from qlgate_pytest.run_extras import worker_stats

        engine = self._engine
        cache: dict[str, Any] | None = None
        if self.gen_cache is not None:
            cache = dict(self.gen_cache.stats())
        elif self.cache_note is not None:
            cache = {"enabled": False, "note": self.cache_note}
        return worker_stats(
            self.worker,
            None if engine is None else engine.stats(),
            None if engine is None else dict(engine.describe()),
            cache,
        )

    def _baseline_refusal(self) -> str | None:
        from qlgate_pytest.report import require_same_golden

        if self.baseline_report is None:
            return None
        try:
            require_same_golden(self.baseline_report, self.golden().sha256)
        except ReportError as exc:
            return f"baseline report {self.options.baseline.path} refused: {exc}"
        return None

    def _baseline_outcomes(self) -> Mapping[str, Any] | None:
        if self.baseline_report is None:
            return None
        from qlgate_pytest.report import baseline_from_report

        if self._baseline_refusal() is not None:
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


def needed_cases(items: Sequence[pytest.Item]) -> list[GoldenCase]:
    """Cases that the selected items will ask for: case items and ``qlgate_case`` parameters."""
    from qlgate_core.cases import GoldenCase

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
