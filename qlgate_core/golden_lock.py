"""The golden-set lock: which files, cases and content the golden set is meant to hold.

An emptied ``critical.yaml``, one renamed to ``critical.YAML`` or moved into a hidden folder, a
deleted ``golden/test_*.py``: each leaves a smaller golden set that still looks whole. The lock
(``golden/golden.lock``, committed, written by ``python -m qlgate_pytest lock-golden``) records
every file of the set (``golden_tree``) with the sha256 of its content and, for a case file, the
id and content hash of each case, plus the golden-set hash reports carry. A gate run compares
the set it loaded with the lock and is red on any difference; rewriting the lock prints the
differences, so a reviewer sees vanished cases in the merge request.

Everything here takes and returns plain data, apart from the small readers and writers at the
end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qlgate_core.atomic import write_text_atomic
from qlgate_core.golden_tree import Kind, TreeFile

LOCK_VERSION = 1
LOCK_NAME = "golden.lock"
LOCK_COMMAND = "python -m qlgate_pytest lock-golden"
KINDS: tuple[Kind, ...] = ("cases", "python", "skipped")
_HEX64 = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class LockedFile:
    """One file of the set: its kind, content hash and (case files) case id -> case hash."""

    kind: Kind
    sha256: str
    cases: Mapping[str, str] | None = None  # None: not a case file, or one that cannot be read
    reason: str | None = None  # kind "skipped": why the collector leaves it out


@dataclass(frozen=True)
class GoldenLock:
    """Every file of a golden set by relative path, and the set's hash (``golden_sha256``)."""

    files: Mapping[str, LockedFile]
    golden_sha256: str
    version: int = LOCK_VERSION

    def case_homes(self) -> dict[str, str]:
        """Case id -> the file that holds it."""
        return {cid: rel for rel, f in self.files.items() for cid in (f.cases or {})}


DiffKind = Literal[
    "file_vanished",
    "file_added",
    "skipped_added",
    "file_changed",
    "cases_vanished",
    "cases_added",
    "cases_changed",
    "case_moved",
    "set_changed",
]


_ORDER: tuple[DiffKind, ...] = (
    "file_vanished",
    "cases_vanished",
    "case_moved",
    "cases_changed",
    "file_changed",
    "file_added",
    "cases_added",
    "skipped_added",
    "set_changed",
)


@dataclass(frozen=True)
class Difference:
    """One way the current golden set differs from its lock."""

    kind: DiffKind
    path: str
    file_kind: Kind = "cases"
    ids: tuple[str, ...] = ()
    detail: str = ""  # skip reason, move target, or what changed


@dataclass(frozen=True)
class LockCheck:
    """The gate's view of the lock: a problem that makes the run red, and notes to print."""

    problem: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


# -- building and comparing -------------------------------------------------------------------


def content_sha256(data: bytes) -> str:
    """sha256 of a file's bytes, with CRLF read as LF: a Windows checkout of the same commit
    (git autocrlf) must not look like an edit."""
    return hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()


def build_lock(
    tree: Sequence[TreeFile],
    sha256s: Mapping[str, str],
    cases: Mapping[str, Mapping[str, str] | None],
    golden_sha256: str,
) -> GoldenLock:
    """A lock from a scanned tree, each file's content hash (by ``rel``) and, per case file,
    case id -> case hash (None for a file that could not be loaded)."""
    files: dict[str, LockedFile] = {}
    for f in tree:
        # A case file that failed to load has no case table: None, never "empty".
        table = cases.get(f.rel) if f.kind == "cases" else None
        files[f.rel] = LockedFile(
            f.kind, sha256s[f.rel], None if table is None else dict(table), f.reason
        )
    return GoldenLock(dict(sorted(files.items())), golden_sha256)


def compare(locked: GoldenLock, current: GoldenLock) -> list[Difference]:
    """Every difference of ``current`` from ``locked``: losses first, then by path."""
    old_homes, new_homes = locked.case_homes(), current.case_homes()
    diffs: list[Difference] = []
    moved_from: dict[str, list[str]] = {}
    for cid in sorted(old_homes.keys() & new_homes.keys()):
        if old_homes[cid] != new_homes[cid]:
            moved_from.setdefault(old_homes[cid], []).append(cid)
    touched = {old_homes[c] for ids in moved_from.values() for c in ids}
    touched |= {new_homes[c] for ids in moved_from.values() for c in ids}
    for rel in sorted(locked.files.keys() | current.files.keys()):
        old, new = locked.files.get(rel), current.files.get(rel)
        if new is None:
            assert old is not None
            lost = tuple(c for c in old.cases or {} if c not in new_homes)
            diffs.append(Difference("file_vanished", rel, old.kind, lost))
        elif old is None:
            if new.kind == "skipped":
                diffs.append(Difference("skipped_added", rel, "skipped", detail=new.reason or ""))
            else:
                gained = tuple(c for c in new.cases or {} if c not in old_homes)
                unread = "cannot be read" if new.kind == "cases" and new.cases is None else ""
                diffs.append(Difference("file_added", rel, new.kind, gained, unread))
        elif old.sha256 != new.sha256 or old.kind != new.kind:
            found = _case_changes(rel, old, new, old_homes, new_homes)
            diffs += found
            if not found and rel not in touched:
                diffs.append(Difference("file_changed", rel, new.kind, detail=_why(old, new)))
        for cid in moved_from.get(rel, ()):
            now = new_homes[cid]
            changed = (locked.files[rel].cases or {}).get(cid) != (
                current.files[now].cases or {}
            ).get(cid)
            detail = now + (" (and its content changed)" if changed else "")
            diffs.append(Difference("case_moved", rel, "cases", (cid,), detail))
    if not diffs and locked.golden_sha256 != current.golden_sha256:
        detail = f"{locked.golden_sha256[:12]} -> {current.golden_sha256[:12]}"
        diffs.append(Difference("set_changed", "", detail=detail))
    # Losses first: a one-line reason shows its first differences in full.
    return sorted(diffs, key=lambda d: (_ORDER.index(d.kind), d.path))


def _case_changes(
    rel: str,
    old: LockedFile,
    new: LockedFile,
    old_homes: Mapping[str, str],
    new_homes: Mapping[str, str],
) -> list[Difference]:
    if old.cases is None or new.cases is None:
        return []
    out: list[Difference] = []
    vanished = tuple(c for c in old.cases if c not in new.cases and c not in new_homes)
    added = tuple(c for c in new.cases if c not in old.cases and c not in old_homes)
    changed = tuple(c for c in old.cases if c in new.cases and old.cases[c] != new.cases[c])
    for kind, ids in (
        ("cases_vanished", vanished),
        ("cases_added", added),
        ("cases_changed", changed),
    ):
        if ids:
            out.append(Difference(kind, rel, "cases", ids))  # type: ignore[arg-type]
    return out


def _why(old: LockedFile, new: LockedFile) -> str:
    hashes = f"sha256 {old.sha256[:12]} -> {new.sha256[:12]}"
    if new.kind == "cases" and new.cases is None:
        return f"{hashes}; it cannot be read now (see its error)"
    if new.kind == "cases" and old.cases is not None:
        return f"{hashes}; no case differs: comments, order or formatting"
    return hashes


def _ids(ids: Sequence[str], limit: int | None) -> str:
    shown = list(ids if limit is None else ids[:limit])
    more = len(ids) - len(shown)
    return ", ".join(shown) + (f" (+{more} more)" if more else "")


def render(diff: Difference, limit: int | None = None) -> str:
    """One line naming the file and the case ids (at most ``limit`` of them)."""
    n, ids, p = len(diff.ids), _ids(diff.ids, limit), diff.path
    if diff.kind == "file_vanished":
        if diff.file_kind == "python":
            return f"{p}: golden test file vanished (its checks no longer run)"
        if diff.file_kind == "skipped":
            return f"{p}: file vanished (the collector skipped it)"
        if not diff.ids:
            return f"{p}: case file vanished (its cases moved to other files)"
        return f"{p}: case file vanished, and with it {n} case(s): {ids}"
    if diff.kind == "file_added":
        if diff.file_kind == "python":
            return f"{p}: golden test file not in the lock"
        if diff.detail:
            return f"{p}: case file not in the lock ({diff.detail})"
        return f"{p}: case file not in the lock, with {n} new case(s): {ids}"
    if diff.kind == "skipped_added":
        return f"{p}: not in the lock, and the collector skips it ({diff.detail})"
    if diff.kind == "file_changed":
        return f"{p}: content changed ({diff.detail})"
    if diff.kind == "case_moved":
        return f"{p}: case {ids} moved to {diff.detail}"
    if diff.kind == "set_changed":
        return (
            f"the golden-set hash changed ({diff.detail}) though no file did: the case "
            "schema's defaults changed"
        )
    verb = {"cases_vanished": "vanished", "cases_added": "added", "cases_changed": "changed"}
    return f"{p}: {n} case(s) {verb[diff.kind]}: {ids}"


def check(
    current: GoldenLock,
    lock_path: Path,
    *,
    root: Path,
    allow_unlocked: bool,
    skipped: Iterable[TreeFile] = (),
) -> LockCheck:
    """The gate's comparison of ``current`` with the lock at ``lock_path`` (read here)."""
    where = f" --lock {_shown(lock_path)}" if lock_path != lock_path_for(root) else ""
    fix = f"`{LOCK_COMMAND} --golden {_shown(root)}{where}`"
    skipped_note = _skipped_note(root, list(skipped))
    if not lock_path.exists():
        if allow_unlocked:
            note = (
                f"golden-set lock check off: no lock at {lock_path}, and --allow-unlocked-golden "
                f"lets the run go on; create one with {fix}"
            )
            return LockCheck(None, (note, *skipped_note))
        return LockCheck(
            f"no golden-set lock: without it a vanished or emptied case file goes unnoticed; "
            f"create it with {fix} and commit it (or pass --allow-unlocked-golden)"
        )
    try:
        locked = read_lock(lock_path)
    except LockFileError as exc:
        return LockCheck(f"cannot be used: {exc}; rewrite it with {fix}")
    diffs = compare(locked, current)
    if not diffs:
        return LockCheck(None, tuple(skipped_note))
    empty = "; it holds no cases now" if not current.case_homes() else ""
    lines = "; ".join(render(d, limit=8) for d in diffs)
    return LockCheck(
        f"the golden set differs from this lock ({len(diffs)} difference(s){empty}): {lines}. "
        f"If that is intended, run {fix} and commit the lock so a reviewer sees the change"
    )


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when under it: the command to paste."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _skipped_note(root: Path, skipped: Sequence[TreeFile]) -> list[str]:
    if not skipped:
        return []
    named = "; ".join(f"{f.rel} ({f.reason})" for f in skipped[:5])
    more = f" (+{len(skipped) - 5} more)" if len(skipped) > 5 else ""
    return [f"the collector skips {len(skipped)} file(s) under {root}: {named}{more}"]


# -- the lock file ----------------------------------------------------------------------------


class LockFileError(ValueError):
    """A lock file that cannot be read: the message names the field at fault."""


def lock_path_for(golden: Path, override: Path | None = None) -> Path:
    """Where the lock of ``golden`` lives: ``override``, else ``<dir>/golden.lock`` for a
    directory, else ``<file>.lock`` beside a single case file."""
    if override is not None:
        return override
    if golden.is_file():
        return golden.with_name(golden.name + ".lock")
    return golden / LOCK_NAME


def lock_to_json(lock: GoldenLock) -> dict[str, Any]:
    files: dict[str, Any] = {}
    for rel, f in sorted(lock.files.items()):
        row: dict[str, Any] = {"kind": f.kind, "sha256": f.sha256}
        if f.kind == "cases":
            row["cases"] = None if f.cases is None else dict(sorted(f.cases.items()))
        if f.reason is not None:
            row["reason"] = f.reason
        files[rel] = row
    return {
        "comment": f"golden-set lock: rewrite with `{LOCK_COMMAND}` and review what it prints",
        "version": lock.version,
        "golden_sha256": lock.golden_sha256,
        "files": files,
    }


def dumps(lock: GoldenLock) -> str:
    """The lock file's text: sorted keys, one field a line, so a diff reads well in review."""
    return json.dumps(lock_to_json(lock), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def loads(text: str) -> GoldenLock:
    """Parse a lock file's text; a problem raises :class:`LockFileError` naming the field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LockFileError(f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise LockFileError("expected a JSON object")
    version = data.get("version")
    if version != LOCK_VERSION:
        raise LockFileError(f"field 'version': {version!r} is not {LOCK_VERSION}, the version read")
    unknown = sorted(set(data) - {"comment", "version", "golden_sha256", "files"})
    if unknown:
        raise LockFileError(f"field {unknown[0]!r}: unknown key")
    golden_sha = _hash(data.get("golden_sha256"), "golden_sha256")
    rows = data.get("files")
    if not isinstance(rows, dict):
        raise LockFileError("field 'files': expected an object of path -> file")
    return GoldenLock({str(rel): _file(str(rel), row) for rel, row in rows.items()}, golden_sha)


def _file(rel: str, row: object) -> LockedFile:
    where = f"files.{rel}"
    if not isinstance(row, dict):
        raise LockFileError(f"field {where!r}: expected an object")
    unknown = sorted(set(row) - {"kind", "sha256", "cases", "reason"})
    if unknown:
        raise LockFileError(f"field '{where}.{unknown[0]}': unknown key")
    kind = row.get("kind")
    if kind not in KINDS:
        raise LockFileError(f"field '{where}.kind': {kind!r} is not one of {', '.join(KINDS)}")
    cases = row.get("cases")
    if cases is not None:
        if not isinstance(cases, dict):
            raise LockFileError(f"field '{where}.cases': expected an object of id -> sha256")
        cases = {str(k): _hash(v, f"{where}.cases.{k}") for k, v in cases.items()}
    reason = row.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise LockFileError(f"field '{where}.reason': expected a string")
    return LockedFile(kind, _hash(row.get("sha256"), f"{where}.sha256"), cases, reason)


def _hash(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX64:
        raise LockFileError(f"field {where!r}: {value!r} is not a sha256 hex digest")
    return value


def read_lock(path: Path) -> GoldenLock:
    """The lock at ``path``; an unreadable or malformed file raises :class:`LockFileError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LockFileError(f"cannot read: {exc}") from None
    return loads(text)


def write_lock(lock: GoldenLock, path: Path) -> None:
    """Write the lock atomically: a crash leaves the old lock, never half of a new one."""
    write_text_atomic(path, dumps(lock))
