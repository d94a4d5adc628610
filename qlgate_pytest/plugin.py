"""pytest hooks of the qlgate gate. Nothing heavy is imported here; without ``--candidate`` (or
``--train-data`` or ``--endpoint``) the plugin registers its options, fixtures and one marker
and does nothing else.

What a gate run looks like to pytest:

- With no path arguments, the golden root (``--golden``, default ``golden/``) is collected
  instead of ``testpaths``, so ``pytest --candidate=DIR`` never runs the project's own tests.
- Each case is an item named by its id, marked with its tags (``-k``/``-m`` select slices).
- Outcomes: the candidate right -> **passed**; an ordinary miss -> **xfailed** with the
  reason (candidate, baseline, expected); a ``must_pass`` miss or an error -> **failed**.
  Misses are not failures because the aggregate decides: a CI that reads JUnit must not show
  red tests under a green gate, and the exit status, JUnit and the JSON report must agree.
- After the run (the controller, under xdist) the verdict is computed from the reports. It is
  emitted as one more test, ``qlgate::gate``: passed when green, failed with every reason when
  red. pytest counts that failure like any other, so a red gate exits 1 and JUnit carries the
  verdict as a testcase with properties (suite-level properties do not survive xdist).

Before any model is loaded, qlgate's own ``pytest_qlgate_preflight`` (``preflight_hook.py``)
checks the adapter from its files; each problem is a reason of a red verdict and nothing is
generated. Generations go through the content-addressed cache in ``.qlgate_cache/gen/``
(``gate_cache.py``; ``--no-gen-cache``, ``--clear-gen-cache``, ``--gen-cache-dir``), and the
engine is loaded only when a request misses it (``lazy_engine.py``).

pytest-xdist: each worker loads its own engine (one model copy per worker: ``-n K`` needs K
times the engine's memory) and computes the cases its items need; results and counters travel
on report properties and only the controller aggregates and decides, so ``-n 2`` gives the same
verdict and report as a serial run. Workers share the generation cache (entries are written
atomically). With several GPUs, ``--gate-device auto`` gives worker ``gwI`` the GPU ``I % N``
(``xdist_gpu.py``): run ``-n N`` for one worker per GPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from qlgate_core.errors import OptionError
from qlgate_pytest.options import GROUP, OPTIONS, GateOptions, resolve_options

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from qlgate_core.cases import GoldenCase
    from qlgate_pytest.driver import GenerationCache
    from qlgate_pytest.engines.base import EngineConfig
    from qlgate_pytest.session import GateSession


class GateHookSpecs:
    """Hooks other plugins (and later parts of qlgate) implement."""

    @pytest.hookspec
    def pytest_qlgate_preflight(
        self,
        config: pytest.Config,
        candidate: Path,
        base_model: Path,
        cases: list[GoldenCase],
    ) -> list[str] | None:
        """Check the candidate before any model is loaded; return one line per problem.

        Any problem turns the gate red and no generation runs.
        """

    @pytest.hookspec(firstresult=True)
    def pytest_qlgate_generation_cache(
        self,
        config: pytest.Config,
        engine_config: EngineConfig,
        engine_info: Mapping[str, Any],
    ) -> GenerationCache | None:
        """A cache between the driver and the engine (``driver.GenerationCache``); the first
        non-None answer is used (qlgate's own answers last). ``engine_info`` identifies the
        engine *before* it is loaded (``gate_cache.engine_identity``: name, factory, library
        versions), so that a fully cached run never loads the model."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(GateHookSpecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, "qlgate: evaluation gate for fine-tuned adapters")
    for spec in OPTIONS:
        # default=None: resolution must see whether the command line set a value at all.
        if spec.flag_only:
            group.addoption(
                spec.flag,
                dest=spec.dest,
                action="store_true",
                default=None,
                help=f"{spec.help} (env {spec.env}, ini {spec.ini})",
            )
        else:
            group.addoption(
                spec.flag,
                dest=spec.dest,
                default=None,
                metavar=spec.metavar,
                help=f"{spec.help} (env {spec.env}, ini {spec.ini})",
            )
        parser.addini(spec.ini, help=f"qlgate: {spec.help}", type="string", default="")


def _resolve(config: pytest.Config) -> GateOptions:
    cli = {spec.key: config.getoption(spec.dest) for spec in OPTIONS}
    ini = {spec.ini: str(config.getini(spec.ini) or "") for spec in OPTIONS}
    try:
        return resolve_options(
            cli,
            os.environ,
            ini,
            cwd=config.invocation_params.dir,
            rootdir=config.rootpath,
            ini_file=str(config.inipath) if config.inipath else "the ini file",
        )
    except OptionError as exc:
        raise pytest.UsageError(f"qlgate: {exc}") from None


def pytest_configure(config: pytest.Config) -> None:
    from qlgate_pytest import fixtures

    config.addinivalue_line(
        "markers",
        "qlgate_cases(tags=None, ids=None): golden cases a qlgate_case test is parametrised over",
    )
    config.pluginmanager.register(fixtures, "qlgate-fixtures")
    options = _resolve(config)
    if not options.active:
        return
    from qlgate_pytest import gate_cache, preflight_hook

    config.pluginmanager.register(preflight_hook, "qlgate-preflight")
    config.pluginmanager.register(gate_cache, "qlgate-gen-cache")
    from qlgate_pytest.session import GATE_KEY, GateSession

    gate = GateSession(config, options)
    if not gate.is_worker:
        _discard_stale_reports(options)
    config.stash[GATE_KEY] = gate
    # Registered as a plugin object so its pytest_runtest_logreport sees every report.
    config.pluginmanager.register(gate, "qlgate-session")
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        # A gate run collects the golden set, not the project's testpaths.
        config.args = [str(options.golden)]
        config.args_source = pytest.Config.ArgsSource.ARGS


_FORGERY_SEEN = pytest.StashKey[bool]()


def _discard_stale_reports(options: GateOptions) -> None:
    """Remove the reports a previous run left at this run's paths, before anything else runs.

    A run killed before it writes (SIGTERM, OOM, a CI timeout) would otherwise leave the last
    candidate's ``passed: true`` at the path a CI step reads next: a stale green.
    """
    from qlgate_pytest.report_writers import discard_existing

    problem = discard_existing(options)
    if problem is not None:
        raise pytest.UsageError(f"qlgate: {problem}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Where items run: refuse qlgate's result properties on any other item (``item_guard``),
    and send this process's engine and cache counters with every item's teardown, so requests
    a golden Python test makes through ``qlgate_engine`` are counted too."""
    report = yield
    gate = _gate(item.config)
    if gate is None:
        return report
    from qlgate_pytest.collect import GoldenItem
    from qlgate_pytest.item_guard import forgery_message, reserved_keys
    from qlgate_pytest.run_extras import RUN_PROPERTY

    if not isinstance(item, GoldenItem):
        forged = reserved_keys(report.user_properties)
        if forged:
            report.user_properties = [
                (k, v) for k, v in report.user_properties if k not in set(forged)
            ]
            if not item.stash.get(_FORGERY_SEEN, False):  # one failure per item, not per phase
                item.stash[_FORGERY_SEEN] = True
                report.outcome = "failed"
                report.longrepr = forgery_message(item.nodeid, forged)
    if report.when == "teardown":
        report.user_properties.append((RUN_PROPERTY, gate.run_stats()))
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """``--clear-gen-cache``: once, before any worker starts (on the controller under xdist)."""
    gate = _gate(session.config)
    if gate is None or gate.is_worker or not gate.options.clear_gen_cache:
        return
    from qlgate_pytest.gate_cache import cache_root
    from qlgate_pytest.gen_cache import GenCache

    removed = GenCache(cache_root(gate.options, session.config.rootpath)).clear()
    gate.cache_cleared = removed


def _gate(config: pytest.Config) -> GateSession | None:
    from qlgate_pytest.session import GATE_KEY

    return config.stash.get(GATE_KEY, None)


def pytest_report_header(config: pytest.Config) -> str | None:
    gate = _gate(config)
    if gate is None:
        return None
    o = gate.options
    if o.candidate is not None:
        what = str(o.candidate)
    elif o.endpoint is not None:
        what = f"served model {o.served_model} at {o.endpoint}"
    else:
        what = f"(trained from {o.train_data})"
    floor = "" if o.min_f1 is None else f", floor macro-F1 >= {o.min_f1:g}"
    return (
        f"qlgate: gating {what} against {o.baseline_describe()} on {o.golden} ({o.engine}{floor})"
    )


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    gate = _gate(parent.config)
    if gate is None or not gate.is_case_file(file_path):
        return None
    from qlgate_pytest.collect import GoldenFile

    return GoldenFile.from_parent(parent, path=file_path)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "qlgate_case" not in metafunc.fixturenames:
        return
    gate = _gate(metafunc.config)
    if gate is None:
        from qlgate_pytest.fixtures import INACTIVE

        skip = pytest.mark.skip(reason=INACTIVE)
        metafunc.parametrize("qlgate_case", [pytest.param(None, marks=skip, id="inactive")])
        return
    marker = metafunc.definition.get_closest_marker("qlgate_cases")
    tags = set(marker.kwargs.get("tags") or ()) if marker else set()
    ids = set(marker.kwargs.get("ids") or ()) if marker else set()
    cases = [
        c
        for c in gate.golden().cases
        if (not tags or tags & set(c.tags)) and (not ids or c.id in ids)
    ]
    gate.register_tags()
    metafunc.parametrize(
        "qlgate_case",
        [pytest.param(c, id=c.id, marks=[getattr(pytest.mark, t) for t in c.tags]) for c in cases],
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    gate = _gate(session.config)
    if gate is None or _is_xdist_controller(session.config):
        return
    from qlgate_pytest.collect import GoldenItem

    gate.selected_ids = {i.case.id for i in session.items if isinstance(i, GoldenItem)}


def _is_xdist_controller(config: pytest.Config) -> bool:
    return config.pluginmanager.has_plugin("dsession")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object | None) -> None:
    """xdist (controller): a worker went down. A crash is red even when xdist replaced the worker
    before it held any case (nothing lost): it was killed for a reason (often OOM), and the gate
    fails closed on any error rather than guessing whether the results are whole."""
    gate = _gate(node.config)
    if gate is None or not error:
        return
    worker = getattr(getattr(node, "gateway", None), "id", "?")
    gate.note_session_error(f"xdist worker {worker} crashed ({error}); the gate fails closed")


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    gate = _gate(session.config)
    if gate is None or session.config.option.collectonly:
        return (yield)
    collection_failed = (
        session.testsfailed and not session.config.option.continue_on_collection_errors
    )
    if session.items and not collection_failed and not _is_xdist_controller(session.config):
        # Train (with --train-data), load and generate before the first item, so none of it
        # is charged to (or captured by) a test; failures become every case's error.
        gate.prefetch(session.items)
    if gate.is_worker:
        return (yield)
    try:
        result = yield
    except Exception as exc:  # collection errors, -x, --maxfail: the verdict is still recorded
        _finish(session, gate, interrupted=f"the run stopped early: {exc}")
        raise
    _finish(session, gate)
    return result


def _finish(session: pytest.Session, gate: GateSession, interrupted: str | None = None) -> None:
    gate.decide(session, interrupted=interrupted)
    problem = gate.write_report()
    if problem is not None:
        gate.note_session_error(problem)
        gate.decide(session, interrupted=interrupted)
    _emit_gate_report(session, gate)


def _emit_gate_report(session: pytest.Session, gate: GateSession) -> None:
    """Report the verdict as the test ``qlgate::gate`` (see the module docstring)."""
    from qlgate_pytest.session import GATE_NODEID

    config = session.config
    report = gate.report or {}
    passed = bool(report.get("passed"))
    delta = report.get("delta") or {}
    properties: list[tuple[str, object]] = [
        ("qlgate_verdict", "PASS" if passed else "FAIL"),
        ("qlgate_reasons", json.dumps(report.get("reasons") or [])),
        ("qlgate_golden_sha256", str(report.get("golden_sha256"))),
        ("qlgate_delta", json.dumps(delta, default=str)),
    ]
    location = ("qlgate", None, "qlgate gate verdict")
    # Count the verdict as collected so progress ends at 100%, not above.
    session.testscollected += 1
    longrepr = "qlgate gate FAILED:\n" + "\n".join(f"  - {r}" for r in report.get("reasons", []))
    config.hook.pytest_runtest_logstart(nodeid=GATE_NODEID, location=location)
    for when in ("setup", "call", "teardown"):
        failed = when == "call" and not passed
        config.hook.pytest_runtest_logreport(
            report=pytest.TestReport(
                GATE_NODEID,
                location,
                {"qlgate": 1},
                "failed" if failed else "passed",
                longrepr if failed else None,
                when,
                user_properties=properties if when == "teardown" else (),
            )
        )
    config.hook.pytest_runtest_logfinish(nodeid=GATE_NODEID, location=location)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    gate = _gate(session.config)
    if gate is None:
        return
    try:
        if not gate.is_worker and gate.report is None and not session.config.option.collectonly:
            # Collection failed before the run loop (or it never ran): record a red verdict.
            gate.decide(session, interrupted=f"the gate did not run (pytest exit {exitstatus})")
            gate.write_report()
    finally:
        gate.close()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    gate = _gate(config)
    if gate is not None and config.option.collectonly and not gate.is_worker:
        terminalreporter.write_sep("=", "qlgate gate")
        terminalreporter.write_line(
            "qlgate: --collect-only: the gate did not run; there is no verdict and no report "
            "was written (the exit status says nothing about the candidate)"
        )
        return
    if gate is None or gate.report is None:
        return
    try:
        from qlgate_pytest.report import render_summary

        lines = render_summary(gate.report)
        terminalreporter.write_sep("=", "qlgate gate")
        for line in lines:
            terminalreporter.write_line(line)
        if gate.options.gate_report is not None:
            terminalreporter.write_line(f"report: {gate.options.gate_report}")
    except Exception as exc:  # the summary must never hide the verdict or the exit status
        terminalreporter.write_line(f"qlgate: cannot render the summary: {exc!r}")
