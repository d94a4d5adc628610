"""``--endpoint`` through the plugin: a real HTTP server on 127.0.0.1, started here, speaks the
part of the OpenAI API that the ``openai`` engine needs from a generic server
(``/v1/chat/completions``; ``/tokenize`` answers 404 as on a non-vLLM server, so ranking falls
back to a short answer). It routes each ticket to a label by keyword, so its macro-F1 on the
golden set below is fixed and below 1.

This tests the plugin's plumbing (options, roles, the floor, the report, exit codes); the
engine against a real ``vllm serve`` is tests/engines/test_openai_engine.py (opt-in).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx  # noqa: F401 - imported before pytester's module snapshot (see conftest.py)
import pytest

import qlgate_pytest.engines.openai_engine  # noqa: F401 - idem

# Keyword -> label; the first keyword found in the ticket wins, else "account".
ROUTES = (("charge", "billing"), ("refund", "billing"), ("parcel", "shipping"),
          ("deliver", "shipping"), ("send", "returns"), ("return", "returns"))  # fmt: skip

CASES = [
    ("bill-1", "I was charged twice for one order.", "billing"),
    ("bill-2", "Where is my refund for the cancelled order?", "billing"),
    ("ship-1", "Where is my parcel? It is a week late.", "shipping"),
    ("ship-2", "The courier did not deliver on Monday.", "shipping"),
    ("ret-1", "How do I send the shoes back?", "returns"),
    # The rule gets these two wrong, on purpose: macro-F1 < 1.
    ("ret-2", "The parcel arrived broken, I want to give it back.", "returns"),
    ("acct-1", "I cannot log in to my account.", "account"),
    ("acct-2", "Please change the e-mail address of my profile; I was charged for it.", "account"),
]


def route(ticket: str) -> str:
    lowered = ticket.lower()
    return next((label for key, label in ROUTES if key in lowered), "account")


class Served:
    """What the server saw: the model name of every chat completion, and the other paths."""

    def __init__(self) -> None:
        self.models: list[str] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with served.lock:
                served.paths.append(self.path)
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            with served.lock:
                served.models.append(str(body["model"]))
            ticket = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
            # A different served model (the baseline) answers "account" always.
            text = route(ticket) if body["model"] == "cand" else "account"
            self._send(
                200,
                {
                    "choices": [{"message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": len(ticket.split()), "completion_tokens": 1},
                    "model": body["model"],
                },
            )

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    """The test server on a free port of 127.0.0.1; yields its ``/v1`` URL."""
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def project(pytester: pytest.Pytester, golden_writer: Callable[..., Path]) -> pytest.Pytester:
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\njunit_family = 'xunit1'\n")
    golden_writer(pytester.path, [{"id": i, "prompt": p, "expected": e} for i, p, e in CASES])
    return pytester


def expected_macro_f1() -> float:
    """The keyword rule's macro-F1 over the four labels, computed here independently."""
    labels = sorted({e for _, _, e in CASES})
    scores = []
    for label in labels:
        pairs = [(route(p), e) for _, p, e in CASES]
        tp = sum(1 for got, want in pairs if got == want == label)
        fp = sum(1 for got, want in pairs if got == label != want)
        fn = sum(1 for got, want in pairs if want == label != got)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores)


def run(project: pytest.Pytester, url: str, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    result = project.runpytest(
        f"--endpoint={url}", "--served-model=cand", "--gate-report=out/r.json", *args
    )
    report: dict[str, Any] = json.loads((project.path / "out" / "r.json").read_text())
    return result, report


def test_floor_above_the_live_f1_is_red_and_at_it_green(
    project: pytest.Pytester, server: tuple[str, Served]
) -> None:
    """Drift mode: only the candidate role is asked, never the cache; the floor decides."""
    url, served = server
    achieved = expected_macro_f1()
    assert 0.3 < achieved < 0.95  # the golden set is built so the rule is imperfect

    result, report = run(project, url, "--min-f1=0.95")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert report["passed"] is False
    assert report["metrics"]["candidate"]["macro_f1"] == pytest.approx(achieved)
    assert report["metrics"]["baseline"] is None
    floor = [r for r in report["reasons"] if "floor" in r]
    assert floor and "is below the floor 0.950" in floor[0], report["reasons"]
    assert len(report["reasons"]) == 1, report["reasons"]
    assert set(served.models) == {"cand"}  # no baseline role ran
    # Every case plus the warm-up probe reached the server: nothing came from a cache.
    assert len(served.models) == len(CASES) + 1
    assert report["cache"]["enabled"] is False and report["cache"]["hits"] == 0
    assert report["run"]["engine"]["engine"] == "openai"
    assert report["run"]["engine"]["rank_method"] == "generate"
    assert report["run"]["candidate"] is None
    result.stdout.fnmatch_lines([f"qlgate: gating served model cand at {url} *"])

    # Run again: the endpoint is asked again (no cache); a floor at the achieved F1 passes.
    served.models.clear()
    result, report = run(project, url, f"--min-f1={achieved!r}")
    assert result.ret == pytest.ExitCode.OK, report["reasons"]
    assert report["passed"] is True
    assert len(served.models) == len(CASES) + 1
    checks = {c["name"]: c["passed"] for c in report["checks"]}
    assert checks["floor"] is True and "gain" not in checks
    assert report["thresholds"]["min_f1"] == pytest.approx(achieved)


def test_baseline_model_runs_the_baseline_role(
    project: pytest.Pytester, server: tuple[str, Served]
) -> None:
    """With --baseline-model the endpoint serves both roles and the gain check applies."""
    url, served = server
    result, report = run(project, url, "--baseline-model=base", "--min-f1=0.1")
    assert set(served.models) == {"cand", "base"}
    assert report["metrics"]["baseline"] is not None
    assert report["metrics"]["candidate"]["macro_f1"] == pytest.approx(expected_macro_f1())
    assert report["run"]["baseline"] == "served model base"
    assert (result.ret == pytest.ExitCode.OK) == report["passed"]


def test_endpoint_with_a_local_engine_is_a_usage_error(
    project: pytest.Pytester, server: tuple[str, Served]
) -> None:
    """--endpoint with --engine hf exits 4 naming both options; nothing is sent."""
    url, served = server
    result = project.runpytest(f"--endpoint={url}", "--served-model=cand", "--engine=hf")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: qlgate: --endpoint (from command line*--engine*"])
    assert served.paths == []
