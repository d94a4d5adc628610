"""Nothing a gate job starts outlives the job or the service, even when the service is SIGKILLed.

The service never starts the gate directly: it starts this file as a script,
``python -I -S reaper.py SERVICE_PID -- COMMAND...`` (stdlib only, so it starts in
milliseconds), and the script runs the gate. Layers, each covering what the one before cannot:

1. The reaper asks the kernel for SIGTERM when its parent (the service thread that started it)
   dies (``prctl(PR_SET_PDEATHSIG)``), also on SIGKILL, which the service cannot handle itself.
   On SIGTERM, SIGINT or SIGHUP it SIGKILLs the gate's whole process group (pytest, engine
   workers) and exits. The service stops a job the same way: SIGTERM to the reaper.
2. The gate runs in its own process group with SIGKILL as *its* parent-death signal, so even a
   reaper killed outright takes the gate with it.
3. When the gate exits, whatever it left running in its group is killed before the reaper
   reports the gate's exit status as its own (a signal death is re-raised, so the service sees
   the same status it would have seen from the gate).
4. Every process of a job carries ``QLGATE_SERVICE_JOB=<job id>`` in its environment; a
   restarted service kills any process still carrying the id of a job it finds unfinished
   (:func:`kill_job_processes`), for a grandchild that left the group and outlived layers 1-3.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

JOB_ENV = "QLGATE_SERVICE_JOB"
SCRIPT = Path(__file__).resolve()
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    return bool(prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)


def command(service_pid: int, gate_command: Sequence[str]) -> list[str]:
    """The argv that runs ``gate_command`` under the reaper."""
    return [sys.executable, "-I", "-S", str(SCRIPT), str(service_pid), "--", *gate_command]


def _run(service_pid: int, gate_command: Sequence[str]) -> int:
    group: int | None = None

    def stop(signum: int, _frame: object) -> None:
        if group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        os._exit(128 + signum)

    for sig in _STOP_SIGNALS:
        signal.signal(sig, stop)
    parent_death_signal(signal.SIGTERM)
    if os.getppid() != service_pid:
        return 128 + signal.SIGTERM  # the service died before the death signal was armed
    gate = subprocess.Popen(
        list(gate_command),
        process_group=0,
        # Safe here: this process has one thread (the reason preexec_fn is not used in the
        # service, which has several).
        preexec_fn=lambda: parent_death_signal(signal.SIGKILL),
    )
    group = gate.pid
    # Wait without reaping: while the gate is a zombie its pid, which is its group's id, cannot
    # be reused, so the kill below reaches only what the gate itself left behind.
    os.waitid(os.P_PID, gate.pid, os.WEXITED | os.WNOWAIT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)
    code = gate.wait()
    group = None
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def kill_job_processes(job_ids: Collection[str], proc: Path = Path("/proc")) -> list[int]:
    """SIGKILL every process of this user whose environment names one of ``job_ids``; the
    pids killed. Bounded by the process table; a process that vanishes meanwhile is skipped."""
    if not job_ids or not proc.is_dir():
        return []
    markers = {f"{JOB_ENV}={job_id}".encode() for job_id in job_ids}
    killed = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # another user's process, or gone
            continue
        if markers.isdisjoint(environ.split(b"\0")):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(entry.name), signal.SIGKILL)
            killed.append(int(entry.name))
    return killed


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print("usage: reaper.py SERVICE_PID -- COMMAND...", file=sys.stderr)
        sys.exit(2)
    sys.exit(_run(int(sys.argv[1]), sys.argv[3:]))
