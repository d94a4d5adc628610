"""One gate job: what to run (:class:`JobSpec`) and its state (:class:`Job`), with the JSON
record :mod:`~qlgate_pytest.service.store` keeps of both."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class JobSpec:
    """One gate run: candidate, golden set, and extra gate options (``--flag=value``)."""

    candidate: Path
    golden: Path
    options: tuple[str, ...] = ()
    # Further directories the gate reads, confined again when the job starts (prepare).
    baseline_adapter: Path | None = None
    base_model_dir: Path | None = None

    def to_json(self) -> dict[str, Any]:
        def text(p: Path | None) -> str | None:
            return None if p is None else str(p)

        return {
            "candidate": str(self.candidate),
            "golden": str(self.golden),
            "options": list(self.options),
            "baseline_adapter": text(self.baseline_adapter),
            "base_model_dir": text(self.base_model_dir),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobSpec:
        def path(key: str) -> Path | None:
            value = data.get(key)
            return None if value is None else Path(str(value))

        return cls(
            candidate=Path(str(data["candidate"])),
            golden=Path(str(data["golden"])),
            options=tuple(str(o) for o in data.get("options") or ()),
            baseline_adapter=path("baseline_adapter"),
            base_model_dir=path("base_model_dir"),
        )


@dataclass
class Job:
    """A job's mutable state; only the event loop thread touches it."""

    id: str
    spec: JobSpec
    submitted_at: float
    status: str = "queued"
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    message: str = "queued"
    report: dict[str, Any] | None = None
    pid: int | None = None  # the reaper's, while the gate runs
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.status in ("approved", "rejected", "failed")

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "spec": self.spec.to_json(),
            "status": self.status,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "exit_code": self.exit_code,
            "message": self.message,
            "report": self.report,
            "pid": self.pid,
        }

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> Job:
        def number(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        report = data.get("report")
        exit_code = data.get("exit_code")
        job = cls(
            id=str(data["id"]),
            spec=JobSpec.from_json(data["spec"]),
            submitted_at=float(data["submitted_at"]),
            status=str(data["status"]),
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            exit_code=None if exit_code is None else int(exit_code),
            message=str(data.get("message") or ""),
            report=report if isinstance(report, dict) else None,
            pid=None if data.get("pid") is None else int(data["pid"]),
        )
        if job.finished:
            job.done.set()
        return job
