"""Gate jobs: a bounded queue, one worker per device, one gate subprocess per job.

The gate runs exactly as CI runs it, ``python -m pytest GOLDEN --candidate=... --gate-report=...``
in a fresh process: the engine's memory is returned to the OS when the job ends, a crash takes
down one job and not the service, and the verdict is the report pytest wrote plus its exit
status. A worker owns one device (``CUDA_VISIBLE_DEVICES``), so each GPU evaluates one adapter
at a time; on CPU there is one worker.

Every accepted job ends ``approved``, ``rejected`` or ``failed`` with a message: a subprocess
that crashes, times out, writes no report or contradicts its report is a failed job, never a
lost one. A full queue refuses new jobs (:class:`QueueFull`) instead of growing without bound.

Every job is also a file (:mod:`~qlgate_pytest.service.store`), so a restarted service answers
for the jobs of the one before: finished ones with their verdicts, unfinished ones as failed
("the service restarted ..."). The gate runs under :mod:`~qlgate_pytest.service.reaper`, so no
gate process outlives its job or the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from qlgate_core.errors import QlgateError, ReportError
from qlgate_pytest.service import reaper
from qlgate_pytest.service.job import Job, JobSpec
from qlgate_pytest.service.metrics import ServiceMetrics
from qlgate_pytest.service.store import JobStore

# pytest's exit statuses other than 0 (passed) and 1 (gate red / tests failed).
_PYTEST_EXIT = {2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests collected"}
__all__ = ["GateRunner", "Job", "JobNotRecorded", "JobQueue", "JobSpec", "PytestGateRunner",
           "QueueFull", "verdict_of"]  # fmt: skip
_TAIL = 4000  # characters of the subprocess's output kept for a failure message
# The service's secret: a gate run needs no token, and its output may end up in a response.
_SCRUBBED_ENV = ("QLGATE_TOKEN",)
_LOG = logging.getLogger("qlgate.service")
# After SIGTERM the reaper kills the gate's group at once; this is only a bound on a hung reaper.
_REAPER_GRACE_S = 5.0
RESTARTED_RUNNING = "the service restarted while the job was running; submit it again"
RESTARTED_QUEUED = "the service restarted before the job started; submit it again"


class QueueFull(Exception):
    """The queue holds ``max_queued`` jobs already; the client should retry later."""


class JobNotRecorded(Exception):
    """The job could not be written to the state directory, so it was not accepted."""


class GateRunner(Protocol):
    """Builds the command that gates ``spec`` and writes its JSON report to ``report_path``.

    The command must exit 0 when the gate approves and 1 when it rejects, as pytest does."""

    def command(self, spec: JobSpec, report_path: Path) -> Sequence[str]: ...


@dataclass(frozen=True)
class PytestGateRunner:
    """The real gate: pytest with the qlgate plugin over the golden set directory."""

    python: str = sys.executable
    extra_args: tuple[str, ...] = ()

    def command(self, spec: JobSpec, report_path: Path) -> Sequence[str]:
        return [
            self.python, "-m", "pytest", str(spec.golden),
            f"--rootdir={spec.golden}",
            f"--candidate={spec.candidate}",
            f"--golden={spec.golden}",
            f"--gate-report={report_path}",
            "-p", "no:cacheprovider",
            "-q",
            *spec.options,
            *self.extra_args,
        ]  # fmt: skip


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Stop a job's reaper, which kills the gate's process group first; SIGKILL after a grace
    period in case the reaper itself hangs (the gate then dies by its parent-death signal)."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout=_REAPER_GRACE_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def _tail(text: str) -> str:
    return text if len(text) <= _TAIL else "..." + text[-_TAIL:]


def verdict_of(exit_code: int, report: Mapping[str, Any] | None, output: str) -> tuple[str, str]:
    """(status, message) from the gate process's exit status and its report (pure)."""
    if report is None:
        meaning = _PYTEST_EXIT.get(exit_code, f"exit status {exit_code}")
        return "failed", f"the gate wrote no report ({meaning}): {_tail(output.strip())}"
    reasons = [str(r) for r in report.get("reasons") or ()]
    if exit_code == 0 and report.get("passed") is True:
        return "approved", "gate passed: the candidate may ship"
    if exit_code == 1:
        if report.get("passed") is False:
            return "rejected", "gate failed: " + "; ".join(reasons or ["(no reason recorded)"])
        # The gate was green but pytest was red: a Python test in the golden set failed.
        return "rejected", f"tests in the golden set failed: {_tail(output.strip())}"
    meaning = _PYTEST_EXIT.get(exit_code, f"exit status {exit_code}")
    return "failed", (
        f"the gate exited {exit_code} ({meaning}) with a report saying passed="
        f"{report.get('passed')!r}: {_tail(output.strip())}"
    )


class JobQueue:
    """Accepts jobs up to ``max_queued`` waiting, runs them one per device, keeps results."""

    def __init__(
        self,
        runner: GateRunner,
        *,
        devices: Sequence[str | None],
        max_queued: int,
        timeout_s: float,
        metrics: ServiceMetrics,
        work_dir: Path | None = None,
        keep_finished: int = 1000,
        env: Mapping[str, str] | None = None,
        store: JobStore | None = None,
        prepare: Callable[[JobSpec], None] | None = None,
    ):
        if not devices:
            raise ValueError("at least one device (None for CPU) is needed")
        self.runner = runner
        self.devices = tuple(devices)
        self.max_queued = max_queued
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.work_dir = work_dir
        self.keep_finished = keep_finished
        self._env = dict(os.environ if env is None else env)
        self.store = store
        # Called as each job starts; a QlgateError fails the job (paths re-confined, since
        # files may have changed while it waited).
        self.prepare = prepare
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queue: asyncio.Queue[Job] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._running = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queued)
        self._recover()
        self._workers = [
            asyncio.create_task(self._work(device), name=f"qlgate-worker-{device or 'cpu'}")
            for device in self.devices
        ]

    async def stop(self) -> None:
        """Stop the workers (killing running gates) and fail every job not yet finished."""
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        for job in list(self._jobs.values()):
            if not job.finished:
                self._finish(job, "failed", "the service shut down before the job finished")

    def _recover(self) -> None:
        """Load the jobs of earlier runs; fail (and kill what is left of) unfinished ones."""
        if self.store is None:
            return
        self.store.ensure()
        unfinished = []
        for record in self.store.load():
            try:
                job = Job.from_record(record.data)
            except (KeyError, TypeError, ValueError) as exc:
                _LOG.warning("job file %s: %r; ignored", record.id, exc)
                continue
            self._jobs[job.id] = job
            if not job.finished:
                unfinished.append(job)
        killed = reaper.kill_job_processes([job.id for job in unfinished])
        if killed:
            _LOG.warning("killed %d process(es) left by unfinished jobs: %s", len(killed), killed)
        for job in unfinished:
            message = RESTARTED_RUNNING if job.status == "running" else RESTARTED_QUEUED
            # Not counted in this process's metrics: it neither accepted nor ran the job.
            job.status, job.message, job.finished_at, job.pid = "failed", message, time.time(), None
            self._save(job)
            job.done.set()
        self._evict()

    def _save(self, job: Job) -> None:
        if self.store is None:
            return
        try:
            self.store.save(job.to_record())
        except (OSError, ValueError) as exc:
            # The in-memory state stays right; only a restart would lose this change.
            _LOG.warning("cannot record job %s: %s", job.id, exc)

    # -- submitting and reading ----------------------------------------------------------------

    @property
    def queued(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    @property
    def running(self) -> int:
        return self._running

    def submit(self, spec: JobSpec) -> Job:
        if self._queue is None:
            raise RuntimeError("JobQueue.start() was not awaited (the app's lifespan did not run)")
        job = Job(id=secrets.token_hex(8), spec=spec, submitted_at=time.time())
        if self._queue.full():
            self.metrics.queue_full.inc()
            raise QueueFull(f"{self.max_queued} jobs are already waiting")
        if self.store is not None:
            # Recorded before it is accepted: a job the client was told about is never lost.
            try:
                self.store.save(job.to_record())
            except (OSError, ValueError) as exc:
                raise JobNotRecorded(f"cannot record the job in {self.store.dir}: {exc}") from exc
        self._queue.put_nowait(job)
        self._jobs[job.id] = job
        self.metrics.jobs_submitted.inc()
        self.metrics.queued.set(self.queued)
        self._evict()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def _evict(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.finished]
        for job_id in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job_id]
            if self.store is not None:
                self.store.delete(job_id)

    # -- running -------------------------------------------------------------------------------

    async def _work(self, device: str | None) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            self.metrics.queued.set(self.queued)
            try:
                await self._run(job, device)
            except asyncio.CancelledError:
                self._finish(job, "failed", "the service shut down while the job ran")
                raise
            except Exception as exc:  # a worker must survive any one job
                self._finish(job, "failed", f"internal error running the gate: {exc!r}")
            finally:
                self._queue.task_done()

    def _child_env(self, device: str | None) -> dict[str, str]:
        env = {k: v for k, v in self._env.items() if k not in _SCRUBBED_ENV}
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        # One device per worker: the gate in this process sees only its GPU (or none on CPU).
        env["CUDA_VISIBLE_DEVICES"] = device if device is not None else ""
        return env

    async def _run(self, job: Job, device: str | None) -> None:
        if self.prepare is not None:
            try:
                self.prepare(job.spec)
            except QlgateError as exc:
                self._finish(job, "failed", f"refused when the job started: {exc}")
                return
        job.status, job.started_at, job.message = "running", time.time(), "running"
        self._save(job)
        self._running += 1
        self.metrics.running.set(self._running)
        tmp = Path(tempfile.mkdtemp(prefix=f"qlgate-job-{job.id}-", dir=self.work_dir))
        try:
            report_path = tmp / "gate-report.json"
            command = list(self.runner.command(job.spec, report_path))
            env = {**self._child_env(device), reaper.JOB_ENV: job.id}
            code, output = await self._spawn(job, command, tmp, env)
            if code is None:
                self._finish(job, "failed", f"the gate exceeded the {self.timeout_s:g} s limit")
                return
            job.exit_code = code
            report = None
            if report_path.exists():
                from qlgate_pytest.report import load_report

                try:
                    report = load_report(report_path)
                except ReportError as exc:
                    self._finish(job, "failed", f"the gate's report is unusable: {exc}")
                    return
            job.report = report
            status, message = verdict_of(code, report, output)
            self._finish(job, status, message)
        finally:
            self._running -= 1
            self.metrics.running.set(self._running)
            shutil.rmtree(tmp, ignore_errors=True)

    async def _spawn(
        self, job: Job, command: list[str], cwd: Path, env: Mapping[str, str]
    ) -> tuple[int | None, str]:
        """Run ``command`` under the reaper; (exit status, output), or (None, output) when it
        timed out."""
        proc = await asyncio.create_subprocess_exec(
            *reaper.command(os.getpid(), command),
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Its own session: a Ctrl-C in the service's terminal reaches the service, which
            # stops the job through the reaper, not the gate directly.
            start_new_session=True,
        )
        job.pid = proc.pid
        self._save(job)
        try:
            stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=self.timeout_s)
        except TimeoutError:
            await _kill(proc)
            return None, ""
        except asyncio.CancelledError:
            await _kill(proc)
            raise
        code = proc.returncode if proc.returncode is not None else -1
        return code, stdout.decode("utf-8", errors="replace")

    def _finish(self, job: Job, status: str, message: str) -> None:
        if job.finished:
            return
        job.status, job.message, job.finished_at = status, message, time.time()
        job.pid = None
        self._save(job)
        self.metrics.jobs_finished.labels(status).inc()
        started = job.started_at or job.submitted_at
        self.metrics.job_seconds.labels(status).observe(job.finished_at - started)
        job.done.set()
