"""The gate service under faults: restarts, a SIGKILLed service, and hostile slow clients.

Every server here is real (uvicorn on 127.0.0.1, the service's own protocol and limits) and
every wait is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qlgate_pytest.service import reaper
from qlgate_pytest.service.app import ServiceConfig, create_app
from qlgate_pytest.service.jobs import RESTARTED_QUEUED, RESTARTED_RUNNING
from qlgate_pytest.service.server import server_config
from qlgate_pytest.service.store import JobStore

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "fault-token-" + "y" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _gone(pid: int) -> bool:
    """The process has exited (a zombie awaiting its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_gone(pids: list[int], seconds: float = 15.0) -> list[int]:
    """The pids still alive after waiting up to ``seconds``."""
    deadline = time.monotonic() + seconds
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if not _gone(p)]
        time.sleep(0.05)
    return alive


def _wait_for_file(path: Path, proc: subprocess.Popen[Any] | None, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return path.read_text()
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited early: {proc.communicate()[0]}")
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {seconds} s")


def _config(service_dirs: Any, state_dir: Path, **overrides: Any) -> ServiceConfig:
    values: dict[str, Any] = {
        "golden_root": service_dirs.golden_root,
        "model_roots": (service_dirs.model_root,),
        "token": TOKEN,
        "work_dir": service_dirs.model_root.parent,
        "state_dir": state_dir,
        "job_timeout_s": 60.0,
        **overrides,
    }
    return ServiceConfig(**values)


@contextlib.contextmanager
def _serve(app: Any, **limits: Any) -> Iterator[tuple[str, int]]:
    """Run ``app`` under the service's own server config in a thread; yield (url, port)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app, port=port, log_level="error", **limits))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


# --- item 17: job state survives a restart ------------------------------------------------


def test_restart_reports_unfinished_jobs_failed_and_keeps_finished_ones(
    service_dirs: Any, tmp_path: Path
) -> None:
    """Jobs a previous process left queued or running are answered as failed with the reason
    after a restart; a job it finished keeps its verdict; none is an 'unknown job'."""
    state = tmp_path / "state"
    with _serve(create_app(_config(service_dirs, state), runner=service_dirs.runner)) as (url, _):
        done = httpx.post(f"{url}/evaluate", json={"model_path": "approve",
                          "golden_set_id": "support"}, headers=AUTH, timeout=60)  # fmt: skip
        assert done.status_code == 200, done.text
    finished_id = done.json()["job_id"]
    # What a SIGKILLed process leaves behind: records still saying queued / running.
    store = JobStore(state)
    spec = {"candidate": str(service_dirs.model_root / "approve"),
            "golden": str(service_dirs.golden_root / "support"), "options": []}  # fmt: skip
    for job_id, status in (("00000000000000a1", "running"), ("00000000000000a2", "queued")):
        store.save({"id": job_id, "spec": spec, "status": status, "submitted_at": time.time(),
                    "started_at": None, "finished_at": None, "exit_code": None,
                    "message": status, "report": None, "pid": None})  # fmt: skip
    (store.dir / "00000000000000a3.json").write_text("{not json")

    with _serve(create_app(_config(service_dirs, state), runner=service_dirs.runner)) as (url, _):
        running = httpx.get(f"{url}/jobs/00000000000000a1", headers=AUTH).json()
        queued = httpx.get(f"{url}/jobs/00000000000000a2", headers=AUTH).json()
        finished = httpx.get(f"{url}/jobs/{finished_id}", headers=AUTH).json()
        corrupt = httpx.get(f"{url}/jobs/00000000000000a3", headers=AUTH)
    assert running["status"] == "failed" and running["message"] == RESTARTED_RUNNING
    assert "restarted while the job was running" in running["message"]
    assert queued["status"] == "failed" and queued["message"] == RESTARTED_QUEUED
    assert finished["status"] == "approved" and finished["report"]["passed"] is True
    assert corrupt.status_code == 404
    assert (store.dir / "00000000000000a3.json.corrupt").is_file()
    on_disk = json.loads(store.path("00000000000000a1").read_text())
    assert on_disk["status"] == "failed"


def test_graceful_stop_records_running_job_as_failed(service_dirs: Any, tmp_path: Path) -> None:
    """A job running when the service stops cleanly is killed and recorded as failed, so the
    next process answers for it."""
    state = tmp_path / "state"
    app = create_app(_config(service_dirs, state), runner=service_dirs.runner)
    with _serve(app) as (url, _):
        r = httpx.post(f"{url}/evaluate", params={"async": "true"}, headers=AUTH,
                       json={"model_path": "slow", "golden_set_id": "support"})  # fmt: skip
        job_id = r.json()["job_id"]
        for _ in range(200):
            if httpx.get(f"{url}/jobs/{job_id}", headers=AUTH).json()["status"] == "running":
                break
            time.sleep(0.05)
    record = json.loads(JobStore(state).path(job_id).read_text())
    assert record["status"] == "failed" and "shut down" in record["message"]


# A service in its own process, built from the same pieces as `serve` (create_app and the
# service's server config), whose gate starts a grandchild and records both pids.
_SERVICE = """
import sys, uvicorn
from dataclasses import dataclass
from pathlib import Path
from qlgate_pytest.service.app import ServiceConfig, create_app
from qlgate_pytest.service.server import server_config

golden, models, state, pids, port = sys.argv[1:6]
GATE = '''
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-I", "-S", "-c", "import time; time.sleep(300)"])
open(sys.argv[1] + ".tmp", "w").write(f"{os.getpid()} {child.pid}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
'''

@dataclass(frozen=True)
class Runner:
    def command(self, spec, report_path):
        return [sys.executable, "-I", "-S", "-c", GATE, pids]

config = ServiceConfig(golden_root=Path(golden), model_roots=(Path(models),),
                       token="%s", state_dir=Path(state), job_timeout_s=600.0)
uvicorn.Server(server_config(create_app(config, runner=Runner()), port=int(port),
                             log_level="warning")).run()
"""


def _start_service_process(service_dirs: Any, state: Path, pids: Path, port: int) -> Any:
    args = [str(service_dirs.golden_root), str(service_dirs.model_root), str(state), str(pids)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", _SERVICE % TOKEN, *args, str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_listening(port: int, proc: subprocess.Popen[str], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "service did not start"
            time.sleep(0.1)


def test_sigkilled_service_takes_its_gate_processes_with_it(
    service_dirs: Any, tmp_path: Path, unused_port: int
) -> None:
    """SIGKILL of the service ends the running gate and the process the gate started (bounded
    wait); a service restarted on the same state reports that job failed, not unknown."""
    state, pids = tmp_path / "state", tmp_path / "gate.pids"
    proc = _start_service_process(service_dirs, state, pids, unused_port)
    gate_pid = grandchild_pid = None
    try:
        _wait_listening(unused_port, proc)
        url = f"http://127.0.0.1:{unused_port}"
        r = httpx.post(f"{url}/evaluate", params={"async": "true"}, headers=AUTH,
                       json={"model_path": "approve", "golden_set_id": "support"})  # fmt: skip
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        gate_pid, grandchild_pid = map(int, _wait_for_file(pids, proc, 60).split())
        assert not _gone(gate_pid) and not _gone(grandchild_pid)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert _wait_gone([gate_pid, grandchild_pid]) == []
    finally:
        for pid in (gate_pid, grandchild_pid):
            if pid is not None and not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)

    port2 = _free_port()
    again = _start_service_process(service_dirs, state, tmp_path / "unused.pids", port2)
    try:
        _wait_listening(port2, again)
        body = httpx.get(f"http://127.0.0.1:{port2}/jobs/{job_id}", headers=AUTH).json()
    finally:
        again.terminate()
        again.communicate(timeout=60)
    assert body["status"] == "failed" and body["message"] == RESTARTED_RUNNING


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_reaper_passes_exit_status_and_kills_leftovers(tmp_path: Path) -> None:
    """The reaper exits with the gate's status (a signal death too) and kills what the gate
    left running in its process group once the gate exits."""
    pid_file = tmp_path / "left.pid"
    gate = textwrap.dedent(f"""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", "import time; time.sleep(300)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        sys.exit(3)
    """)
    done = subprocess.run(reaper.command(os.getpid(), [sys.executable, "-I", "-S", "-c", gate]),
                          timeout=60)  # fmt: skip
    assert done.returncode == 3
    assert _wait_gone([int(pid_file.read_text())]) == []
    killed = subprocess.run(
        reaper.command(os.getpid(), [sys.executable, "-I", "-S", "-c",
                                     "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]),
        timeout=60,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGTERM


def test_gate_dies_with_a_reaper_killed_outright(tmp_path: Path) -> None:
    """SIGKILL of the reaper itself (no chance to clean up) still ends the gate, by the gate's
    own parent-death signal."""
    pid_file = tmp_path / "gate.pid"
    gate = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    proc = subprocess.Popen(reaper.command(os.getpid(), [sys.executable, "-I", "-S", "-c", gate]))
    try:
        gate_pid = int(_wait_for_file(pid_file, proc, 30))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=15)
        assert _wait_gone([gate_pid]) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=15)


def test_restart_sweep_kills_processes_marked_with_an_unfinished_job(tmp_path: Path) -> None:
    """A process carrying QLGATE_SERVICE_JOB of an unfinished job is killed at restart; one of
    another job is left alone."""
    sleeper = [sys.executable, "-I", "-S", "-c", "import time; time.sleep(300)"]
    mine = subprocess.Popen(sleeper, env={reaper.JOB_ENV: "00000000000000b1"})
    other = subprocess.Popen(sleeper, env={reaper.JOB_ENV: "00000000000000b2"})
    try:
        # Give both a moment to exec, so /proc shows their own environment.
        time.sleep(0.3)
        assert mine.pid in reaper.kill_job_processes(["00000000000000b1"])
        assert mine.wait(timeout=15) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for p in (mine, other):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=15)


# --- item 18: slow clients are cut off -------------------------------------------------------

LIMITS = {"header_timeout_s": 0.5, "body_timeout_s": 0.5, "keep_alive_timeout_s": 5}


@pytest.fixture
def limited(service_dirs: Any, tmp_path: Path) -> Iterator[int]:
    """A live service with 0.5 s header and body deadlines; yields its port."""
    app = create_app(_config(service_dirs, tmp_path / "state"), runner=service_dirs.runner)
    with _serve(app, **LIMITS) as (_, port):
        yield port


def _read_until_closed(sock: socket.socket, seconds: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took (bounded)."""
    start = time.monotonic()
    sock.settimeout(seconds)
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - start


def test_unfinished_headers_get_408_and_are_closed(limited: int) -> None:
    """A slowloris connection whose headers never end is answered 408 and closed at the
    header deadline."""
    with socket.create_connection(("127.0.0.1", limited), timeout=10) as sock:
        sock.sendall(b"POST /evaluate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n")
        data, took = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b"request headers not received within 0.5 s" in data
    assert took < 5


def test_trickled_headers_do_not_extend_the_deadline(limited: int) -> None:
    """Headers sent a byte every 0.1 s are cut off at the deadline, not kept alive by each
    byte."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: " + b"a" * 40
    with socket.create_connection(("127.0.0.1", limited), timeout=10) as sock:
        start = time.monotonic()
        closed = False
        for byte in request:  # 90 bytes at 0.1 s: 9 s if never cut off
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.1)
            sock.setblocking(False)
            try:
                if sock.recv(65536):
                    closed = True
                    break
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
        took = time.monotonic() - start
    assert closed and took < 5, took


def test_connection_that_sends_nothing_is_closed(limited: int) -> None:
    """A connection that never sends a byte is closed at the header deadline (silently)."""
    with socket.create_connection(("127.0.0.1", limited), timeout=10) as sock:
        data, took = _read_until_closed(sock)
    assert data == b"" and took < 5


def test_slow_body_gets_408_and_is_closed(limited: int) -> None:
    """Headers announcing a body that never fully arrives: 408 at the body deadline, closed."""
    head = (
        b"POST /evaluate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 200\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", limited), timeout=10) as sock:
        sock.sendall(head + b'{"model_path": ')
        data, took = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 Request Timeout"), data
    assert b"request body not received within 0.5 s" in data
    assert took < 5
    metrics = httpx.get(f"http://127.0.0.1:{limited}/metrics", headers=AUTH).text
    assert 'route="/evaluate",status="408"} 1.0' in metrics


def test_deadlines_leave_normal_and_keep_alive_requests_alone(limited: int) -> None:
    """A complete request is answered; the same connection idle for longer than the header
    deadline (but within keep-alive) still serves the next request."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", limited), timeout=10) as sock:
        sock.sendall(request)
        first = _read_response(sock)
        time.sleep(1.2)
        sock.sendall(request)
        second = _read_response(sock)
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200"), second


def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (headers, then Content-Length bytes of body): a response
    may arrive in several segments, and the next read must start at the next response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
         if line.lower().startswith(b"content-length:")),
        0,
    )  # fmt: skip
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body
