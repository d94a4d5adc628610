"""Fail-open paths of the plugin, closed (issue 20): forged case results, stale reports, report
paths that are not plain files, --collect-only, a gate asked for with the plugin disabled, and
engine use by golden Python tests that the report did not count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from qlgate_pytest.item_guard import case_item_mismatch, forgery_message, reserved_keys

Adapters = Any  # tests/gate/conftest.py's Adapters
REPO = Path(__file__).resolve().parents[2]
NON_INFERIOR = "--min-f1-gain=-1"


def _report(project: pytest.Pytester) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((project.path / "out" / "report.json").read_text())
    return data


# -- pure rules -------------------------------------------------------------------------------


def test_reserved_keys_are_found_once_in_order() -> None:
    """Only ``qlgate_*`` keys count as reserved, each named once."""
    props = [("qlgate_case", 1), ("mine", 2), ("qlgate_run", 3), ("qlgate_case", 4)]
    assert reserved_keys(props) == ["qlgate_case", "qlgate_run"]
    assert "qlgate_case" in forgery_message("golden/test_x.py::test_y", ["qlgate_case"])


@pytest.mark.parametrize(
    ("nodeid", "case_id", "ok"),
    [
        ("golden/core.yaml::c1", "c1", True),
        ("../repo/golden/core.yaml::c1", "c1", True),
        ("golden/test_forge.py::test_forge", "c1", False),
        ("golden/test_forge.py::test_forge[c1]", "c1", False),
        ("golden/core.yaml::c2", "c1", False),
        ("other/core.yaml::c1", "c1", False),
        ("c1", "c1", False),
    ],
)
def test_case_results_come_only_from_their_own_item(nodeid: str, case_id: str, ok: bool) -> None:
    """A case result is accepted only from the node ``<its case file>::<its id>``."""
    where = Path("/repo/golden/core.yaml")
    assert (case_item_mismatch(nodeid, case_id, where) is None) is ok


# -- forgery, end to end -----------------------------------------------------------------------

FORGER = '''
import json
import pytest

def test_forge(record_property, qlgate_session):
    """Replaces every case result with a perfect one."""
    for case in qlgate_session.golden().cases:
        payload = {"case_id": case.id}
        record_property("qlgate_case", json.dumps(payload))
'''


def test_a_golden_test_that_records_case_results_turns_the_gate_red(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """record_property("qlgate_case", ...) from a golden Python test is a forgery: red, named."""
    (gate_project.path / "golden" / "test_forge.py").write_text(FORGER, encoding="utf-8")
    result = gate_project.runpytest(
        f"--candidate={tiny_adapters.perturbed}", "--gate-report=out/report.json", NON_INFERIOR
    )
    assert result.ret == 1, result.stdout.str()
    report = _report(gate_project)
    assert report["passed"] is False
    joined = " ".join(report["reasons"])
    assert "test_forge" in joined and "reserved result properties (qlgate_case)" in joined


def test_forged_result_with_a_real_payload_is_refused_by_the_controller(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """A real case result replayed on another node's report is refused by the controller even
    when it got past the item-side check (here: a conftest hook adds it after that check)."""
    conftest = """
import pytest

SEEN = []

@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        if item.name == "test_other" and SEEN:  # replay a real result on another node
            report.user_properties.append(SEEN[0])
        else:
            SEEN.extend(p for p in report.user_properties if p[0] == "qlgate_case")
    return report
"""
    golden = gate_project.path / "golden"
    (golden / "conftest.py").write_text(conftest, encoding="utf-8")
    (golden / "test_other.py").write_text("def test_other():\n    pass\n", encoding="utf-8")
    result = gate_project.runpytest(
        f"--candidate={tiny_adapters.perturbed}", "--gate-report=out/report.json", NON_INFERIOR
    )
    text = result.stdout.str()
    assert result.ret == 1, text
    reasons = " ".join(_report(gate_project)["reasons"])
    assert "forged or duplicate case result" in reasons, reasons


# -- stale reports and report paths ------------------------------------------------------------


def test_collect_only_says_no_gate_ran_and_removes_the_old_report(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """--co with a candidate: a clear line that no gate ran, and no report left to misread."""
    old = gate_project.path / "out" / "report.json"
    old.parent.mkdir()
    old.write_text('{"passed": true}\n', encoding="utf-8")
    result = gate_project.runpytest(
        f"--candidate={tiny_adapters.perturbed}", "--gate-report=out/report.json", "--co"
    )
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*--collect-only: the gate did not run; there is no verdict*"])
    assert not old.exists()


@pytest.mark.parametrize("kind", ["symlink", "directory", "device"])
def test_a_report_path_that_is_not_a_plain_file_is_a_usage_error(
    gate_project: pytest.Pytester, tiny_adapters: Adapters, kind: str
) -> None:
    """--gate-report at a symlink, a directory or a device node: exit 4, nothing replaced."""
    target = gate_project.path / "elsewhere.json"
    target.write_text("keep me\n", encoding="utf-8")
    path = gate_project.path / "report.json"
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path("/dev/null")
    result = gate_project.runpytest(
        f"--candidate={tiny_adapters.perturbed}", f"--gate-report={path}", NON_INFERIOR
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert "--gate-report" in result.stderr.str()
    assert target.read_text(encoding="utf-8") == "keep me\n"
    if kind == "symlink":
        assert path.is_symlink()


@pytest.mark.slow
def test_a_killed_gate_leaves_no_passing_report(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """SIGTERM mid-run: the previous candidate's passing report is gone, not left to be read."""
    out = gate_project.path / "out"
    out.mkdir()
    report = out / "report.json"
    report.write_text('{"passed": true, "candidate": "previous"}\n', encoding="utf-8")
    started = gate_project.path / "started"
    (gate_project.path / "golden" / "test_slow.py").write_text(
        "import pathlib, time\n"
        "def test_slow(qlgate_session):\n"
        f"    pathlib.Path({str(started)!r}).write_text('x')\n"
        "    time.sleep(120)\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", f"--candidate={tiny_adapters.perturbed}",
         f"--gate-report={report}", NON_INFERIOR, "-p", "no:cacheprovider"],
        cwd=gate_project.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert started.exists(), "the gate never reached the golden Python test"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not report.exists() or json.loads(report.read_text())["passed"] is False


# -- the plugin disabled, engine counters ------------------------------------------------------


@pytest.mark.parametrize("how", [["-p", "no:qlgate"], ["-p", "no:qlgate", "--co"]])
def test_a_gate_asked_for_by_environment_with_the_plugin_disabled_is_an_error(
    how: list[str],
) -> None:
    """QLGATE_CANDIDATE with -p no:qlgate: the root conftest makes it a usage error, not exit 0."""
    env = {**os.environ, "QLGATE_CANDIDATE": "outputs/adapter"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *how, "-q", "tests/gate/test_stats.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "QLGATE_CANDIDATE asks for a qlgate gate, but the qlgate plugin is not loaded" in (
        proc.stderr
    )


def test_engine_use_by_a_golden_python_test_is_counted(
    gate_project: pytest.Pytester, tiny_adapters: Adapters, golden_locker: Any
) -> None:
    """All cases cached, a golden Python test loads the engine: the report says it was loaded."""
    args = (f"--candidate={tiny_adapters.perturbed}", "--gate-report=out/report.json")
    assert gate_project.runpytest(*args, NON_INFERIOR).ret == 0
    (gate_project.path / "golden" / "test_engine.py").write_text(
        "from qlgate_pytest.driver import rank_request\n"
        "def test_engine(qlgate_engine, qlgate_session):\n"
        "    case = next(c for c in qlgate_session.golden().cases if c.effective_mode == 'rank')\n"
        "    assert qlgate_engine.rank('candidate', [rank_request(case)])[0].error is None\n",
        encoding="utf-8",
    )
    golden_locker(gate_project.path)  # a new golden test file is a change the lock records
    result = gate_project.runpytest(*args, NON_INFERIOR)
    assert result.ret == 0, result.stdout.str()
    load = _report(gate_project)["engine_load"]
    assert load["loaded"] is True and load["engine_requests"]["rank"] >= 1, load
