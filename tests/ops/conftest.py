"""Fixtures for the operations tests: gate reports built by the real pure core.

Reports come from ``gate.decide`` + ``report.build_report`` over synthetic per-case outcomes, so
they have exactly the contract's shape without loading a model or running the plugin.
"""

from __future__ import annotations

import contextlib
import copy
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qlgate_pytest.gate import CaseResult, RoleResult, Selection, Thresholds, decide
from qlgate_pytest.report import build_report, write_json_atomic
from qlgate_pytest.service.app import ServiceConfig, create_app
from qlgate_pytest.service.jobs import JobSpec
from training.sample_task import LABELS

GOLDEN_SHA = "ab" * 32
TAGS = ("core", "edge", "hard_negative", "long")
# Model output is untrusted text; one case carries markup to prove the HTML page escapes it.
HOSTILE_OUTPUT = "<script>document.title='pwned'</script><b>billing</b>"

ReportFactory = Callable[..., dict[str, Any]]


def _role(label: str, right: bool, i: int, slow: float) -> RoleResult:
    predicted = label if right else LABELS[(LABELS.index(label) + 1) % len(LABELS)]
    output = predicted if i % 7 else f"I think this is about {predicted}."
    return RoleResult(
        output=output,
        predicted=predicted,
        correct=right,
        latency_ms=slow * (20.0 + (i * 37) % 50),
        output_tokens=1 + i % 3,
        label_scores={lab: (-0.5 if lab == predicted else -3.0 - i % 5) for lab in LABELS},
    )


def synthetic_cases(
    n: int = 40, *, candidate_miss_every: int = 10, baseline_miss_every: int = 2
) -> list[CaseResult]:
    """``n`` label cases; the candidate misses every ``candidate_miss_every``-th, the baseline
    every ``baseline_miss_every``-th."""
    cases = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        cand = _role(label, i % candidate_miss_every != 1, i, slow=1.2)
        base = _role(label, i % baseline_miss_every != 1, i, slow=1.0)
        if i == 3:
            cand = RoleResult(HOSTILE_OUTPUT, "billing", label == "billing", 25.0, 9, None)
        cases.append(
            CaseResult(
                case_id=f"case-{i:03d}",
                tags=(TAGS[i % len(TAGS)],) + (("critical",) if i % 13 == 0 else ()),
                must_pass=i % 13 == 0,
                weight=1.0,
                scorer="label",
                expected=label,
                candidate=cand,
                baseline=base,
            )
        )
    return cases


def build(cases: list[CaseResult], **thresholds: Any) -> dict[str, Any]:
    """A report dict exactly as the plugin writes it, from per-case outcomes."""
    t = Thresholds(resamples=400, **thresholds)
    verdict = decide(cases, t, Selection(len(cases), len(cases)))
    meta = {
        "golden_sha256": GOLDEN_SHA,
        "candidate": "/adapters/candidate",
        "baseline": "base model",
        "engine": "hf",
        "created_at": "2025-01-02T03:04:05+00:00",
    }
    return build_report(verdict, cases, meta)


@pytest.fixture
def make_report() -> ReportFactory:
    """Factory: ``make_report(passing=True)`` -> a contract-shaped report dict."""

    def factory(passing: bool = True, n: int = 40, **thresholds: Any) -> dict[str, Any]:
        if passing:
            cases = synthetic_cases(n)
        else:
            cases = synthetic_cases(n, candidate_miss_every=2, baseline_miss_every=10)
        return build(cases, **thresholds)

    return factory


@pytest.fixture(scope="session")
def _reports() -> dict[bool, dict[str, Any]]:
    # The bootstrap makes a report take ~0.3 s; build each kind once per session.
    return {
        True: build(synthetic_cases()),
        False: build(synthetic_cases(candidate_miss_every=2, baseline_miss_every=10)),
    }


@pytest.fixture
def passing_report(_reports: dict[bool, dict[str, Any]]) -> dict[str, Any]:
    report = copy.deepcopy(_reports[True])
    assert report["passed"], report["reasons"]
    return report


@pytest.fixture
def failing_report(_reports: dict[bool, dict[str, Any]]) -> dict[str, Any]:
    report = copy.deepcopy(_reports[False])
    assert not report["passed"]
    return report


@pytest.fixture
def report_file(tmp_path: Path, passing_report: dict[str, Any]) -> Path:
    path = tmp_path / "gate-report.json"
    write_json_atomic(passing_report, path)
    return path


# --- the gate service: a fast real runner and a live server ----------------------------------

TOKEN = "test-token-" + "x" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# A real subprocess that behaves like the gate: sleeps, writes a report (copied from a template,
# stamped with when it ran), exits 0 (approve) or 1 (reject); "crash" writes nothing and exits 3.
_FAKE_GATE = """
import json, os, pathlib, sys, time
template, out, code, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
start = time.time()
time.sleep(delay)
if template != "-":
    report = json.loads(pathlib.Path(template).read_text())
    report["run"]["job_started"] = start
    report["run"]["job_finished"] = time.time()
    report["run"]["options"] = sys.argv[5:]
    report["run"]["device"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    pathlib.Path(out).write_text(json.dumps(report))
else:
    print("E   boom: the engine crashed", flush=True)
sys.exit(code)
"""


@dataclass(frozen=True)
class FakeGateRunner:
    """GateRunner whose command is a fast python subprocess; the candidate directory's name
    (approve, reject, crash, slow) picks what it does."""

    passing: Path
    failing: Path
    delay_s: float = 0.0
    slow_s: float = 30.0

    def command(self, spec: JobSpec, report_path: Path) -> Sequence[str]:
        kind = spec.candidate.name
        template, code, delay = {
            "approve": (self.passing, 0, self.delay_s),
            "reject": (self.failing, 1, self.delay_s),
            "crash": ("-", 3, self.delay_s),
            "slow": (self.passing, 0, self.slow_s),
        }.get(kind, (self.passing, 0, self.delay_s))
        # -I -S: stdlib only, no site-packages scan, so a fake gate starts in milliseconds.
        args = [str(template), str(report_path), str(code), str(delay), *spec.options]
        return [sys.executable, "-I", "-S", "-c", _FAKE_GATE, *args]


@dataclass(frozen=True)
class ServiceDirs:
    golden_root: Path
    model_root: Path
    outside: Path
    runner: FakeGateRunner


@pytest.fixture
def service_dirs(
    tmp_path: Path, passing_report: dict[str, Any], failing_report: dict[str, Any]
) -> ServiceDirs:
    """Golden root with set 'support', model root with adapters approve/reject/crash/slow, an
    adapter outside every root, and report templates for the fake gate."""
    golden = tmp_path / "golden-root"
    (golden / "support").mkdir(parents=True)
    (golden / "support" / "cases.jsonl").write_text("{}\n")
    models = tmp_path / "models"
    for name in ("approve", "reject", "crash", "slow"):
        (models / name).mkdir(parents=True)
        (models / name / "adapter_config.json").write_text("{}")
    outside = tmp_path / "outside" / "adapter"
    outside.mkdir(parents=True)
    (outside / "adapter_config.json").write_text("{}")
    templates = tmp_path / "templates"
    templates.mkdir()
    write_json_atomic(passing_report, templates / "pass.json")
    write_json_atomic(failing_report, templates / "fail.json")
    runner = FakeGateRunner(templates / "pass.json", templates / "fail.json")
    return ServiceDirs(golden, models, outside, runner)


def make_config(dirs: ServiceDirs, **overrides: Any) -> ServiceConfig:
    values: dict[str, Any] = {
        "golden_root": dirs.golden_root,
        "model_roots": (dirs.model_root,),
        "token": TOKEN,
        "devices": (None,),
        "max_queued": 8,
        "job_timeout_s": 60.0,
        "work_dir": dirs.model_root.parent,
        **overrides,
    }
    return ServiceConfig(**values)


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn on 127.0.0.1 (free port) in a thread; yield its URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", backlog=1024)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


ServiceStarter = Callable[..., contextlib.AbstractContextManager[str]]


@pytest.fixture
def start_service(service_dirs: ServiceDirs) -> ServiceStarter:
    """Factory: ``with start_service(max_queued=1, runner=...) as url`` runs a live service."""

    def start(runner: Any = None, **overrides: Any) -> contextlib.AbstractContextManager[str]:
        app = create_app(
            make_config(service_dirs, **overrides), runner=runner or service_dirs.runner
        )
        return live_server(app)

    return start


@pytest.fixture
def service(start_service: ServiceStarter) -> Iterator[str]:
    """A live service (fake gate runner, token auth) on 127.0.0.1; yields its base URL."""
    with start_service() as url:
        yield url


@pytest.fixture
def auth() -> dict[str, str]:
    """Headers carrying the test service's bearer token."""
    return dict(AUTH)


@pytest.fixture
def unused_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
