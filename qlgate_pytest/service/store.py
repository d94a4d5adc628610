"""Job state on disk, so a restarted service still knows every job it accepted.

One JSON file per job, ``<state dir>/jobs/<job id>.json``, replaced atomically on every change
of state (queued, running, finished), so a crash at any instant leaves each file either its old
or its new self. A file that cannot be read as a job of this version is moved aside to
``<name>.corrupt`` with the reason in the log, never silently dropped or half-trusted.

On start-up a job found ``queued`` or ``running`` belongs to a process that is gone; it is
marked ``failed`` rather than run again: its client's connection died with that process, its
adapter may have been retrained since, and a job that took the service down (out of memory)
would take it down again on every restart. The client resubmits; the verdict it then gets is
for the files as they are.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlgate_core.atomic import write_text_atomic

SCHEMA_VERSION = 1
_JOB_FILE = re.compile(r"^[0-9a-f]{16}\.json$")
_LOG = logging.getLogger("qlgate.service")


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: everything :class:`~qlgate_pytest.service.jobs.Job` holds but its
    in-memory event."""

    data: Mapping[str, Any]

    @property
    def id(self) -> str:
        return str(self.data["id"])


class JobStore:
    """The job files under ``root / "jobs"``."""

    def __init__(self, root: Path):
        self.dir = Path(root) / "jobs"

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def save(self, record: Mapping[str, Any]) -> None:
        body = {"schema_version": SCHEMA_VERSION, **record}
        write_text_atomic(self.path(str(record["id"])), json.dumps(body, allow_nan=False))

    def delete(self, job_id: str) -> None:
        self.path(job_id).unlink(missing_ok=True)

    def load(self) -> Iterator[JobRecord]:
        """Every readable job, oldest first; unreadable files are moved aside."""
        if not self.dir.is_dir():
            return iter(())
        records = []
        for path in sorted(self.dir.iterdir()):
            if not _JOB_FILE.match(path.name):
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                problem = _problem(data, path.stem)
            except (OSError, ValueError) as exc:
                problem = f"unreadable: {exc}"
            if problem:
                _LOG.warning("job file %s %s; moved to %s.corrupt", path, problem, path.name)
                path.replace(path.with_name(path.name + ".corrupt"))
                continue
            records.append(JobRecord(data))
        records.sort(key=lambda r: float(r.data["submitted_at"]))
        return iter(records)


def _problem(data: Any, stem: str) -> str | None:
    if not isinstance(data, dict):
        return "is not a JSON object"
    if data.get("schema_version") != SCHEMA_VERSION:
        return f"has schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}"
    if data.get("id") != stem:
        return f"has id {data.get('id')!r}, not its file name"
    for key, kinds in (("status", str), ("submitted_at", (int, float)), ("spec", dict)):
        if not isinstance(data.get(key), kinds):
            return f"has no valid {key!r}"
    return None
