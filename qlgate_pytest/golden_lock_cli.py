"""``python -m qlgate_pytest lock-golden``: write the golden-set lock, printing what changed.

    python -m qlgate_pytest lock-golden                  # golden/ -> golden/golden.lock
    python -m qlgate_pytest lock-golden --check          # compare only: exit 1 on a difference
    python -m qlgate_pytest lock-golden --golden sets/support --lock sets/support.lock

The lock (``golden_lock.py``) records every file of the golden set with its content hash and,
per case file, each case's id and hash. A gate run whose golden set differs from it is red, so
after adding, editing or removing cases run this, read what it prints (vanished cases first)
and commit the lock with the change: the reviewer sees the same lines in the lock's diff.
Exit status: 0 written or up to date, 1 ``--check`` found a difference, 2 the golden set has
broken files (a broken set is never locked).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qlgate_core.errors import QlgateError
from qlgate_core.golden_lock import (
    Difference,
    GoldenLock,
    LockFileError,
    compare,
    dumps,
    lock_path_for,
    read_lock,
    render,
    write_lock,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument(
        "--golden",
        type=Path,
        default=Path("golden"),
        metavar="PATH",
        help="golden case directory or file (default: golden/)",
    )
    parser.add_argument(
        "--lock",
        type=Path,
        default=None,
        metavar="PATH",
        help="the lock file (default: golden.lock in the golden directory), as --golden-lock",
    )
    parser.add_argument(
        "--check", action="store_true", help="only compare with the lock: exit 1 on a difference"
    )


def run(args: argparse.Namespace) -> int:
    from qlgate_core.cases import load_golden_set

    golden: Path = args.golden
    if not golden.exists():
        raise QlgateError(f"--golden {golden}: does not exist")
    lock = lock_path_for(golden, args.lock)
    loaded = load_golden_set(golden, lock=lock, allow_unlocked=True)
    broken = [str(e) for path, e in loaded.errors.items() if path != lock]
    if broken:
        for line in broken:
            print(f"error: {line}")
        print(f"error: {len(broken)} broken file(s) under {golden}: fix them, then lock the set")
        return 2
    current = loaded.current_lock()
    old = _old_lock(lock)
    diffs = None if old is None else compare(old, current)
    for line in _describe(lock, current, old, diffs):
        print(line)
    if args.check:
        if old is not None and not diffs:
            return 0
        print(f"run `python -m qlgate_pytest lock-golden --golden {golden}` to rewrite the lock")
        return 1
    text = dumps(current)
    if lock.exists() and _read_text(lock) == text:
        print(f"{lock} is up to date")
        return 0
    write_lock(current, lock)
    cases = len(current.case_homes())
    print(f"wrote {lock}: {len(current.files)} file(s), {cases} case(s); commit it with the change")
    return 0


def _old_lock(lock: Path) -> GoldenLock | None:
    if not lock.exists():
        return None
    try:
        return read_lock(lock)
    except LockFileError as exc:
        print(f"the lock {lock} cannot be read ({exc}): every file is listed as new")
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _describe(
    lock: Path, current: GoldenLock, old: GoldenLock | None, diffs: list[Difference] | None
) -> list[str]:
    """What a reviewer must see: vanished cases first, then every difference, skipped files."""
    lines: list[str] = []
    if old is None or diffs is None:
        lines.append(f"no usable lock at {lock}: the golden set as it is now")
        for rel, f in current.files.items():
            what = f"{len(f.cases or {})} case(s)" if f.kind == "cases" else f.kind
            lines.append(f"  + {rel}: {what}")
    elif not diffs:
        lines.append(f"the golden set matches {lock}")
    else:
        vanished = [
            (d.path, cid)
            for d in diffs
            if d.kind in ("file_vanished", "cases_vanished")
            for cid in d.ids
        ]
        if vanished:
            lines.append(f"WARNING: {len(vanished)} case(s) vanished from the golden set:")
            lines += [f"  - {cid} (was in {rel})" for rel, cid in vanished]
        lines.append(f"{len(diffs)} difference(s) from {lock}:")
        lines += [f"  * {render(d)}" for d in diffs]
    skipped = [(rel, f.reason) for rel, f in current.files.items() if f.kind == "skipped"]
    if skipped:
        lines.append(f"the collector skips {len(skipped)} file(s): they are never run as cases")
        lines += [f"  ! {rel}: {reason}" for rel, reason in skipped]
    return lines
