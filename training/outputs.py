"""Scratch directories that outlive no run, and output failures as one-line errors.

Curation and training build their output in a hidden directory beside the target and rename it
into place. A run killed before the rename (SIGKILL, a power cut) cannot remove its directory,
so each one is named for its owner (``.NAME.staging-<pid>-<random>``) and held under an
``flock`` on the directory itself while the owner lives; the kernel drops the lock when the
process dies, however it dies. The next run beside it removes (``sweep_stale``) only
directories whose lock it can take *and* whose pid is gone: a live owner holds the lock, and
the pid covers the instant between ``mkdtemp`` and ``flock``. Directories of another naming (an
older qlgate, a user's) are never touched.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from training.errors import DataError, OutputError


class OwnedDir:
    """A scratch directory held under this process's lock until ``release``."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the directory, renamed or removed by now, is left as it is)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def owned_dir(parent: Path, prefix: str) -> OwnedDir:
    """A fresh ``parent/<prefix><pid>-<random>`` held under a lock; stale ones beside it of
    the same prefix are swept first."""
    sweep_stale(parent, prefix)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return OwnedDir(path, fd)


def sweep_stale(parent: Path, prefix: str, *, restore: Path | None = None) -> list[Path]:
    """Remove ``parent/<prefix><pid>-*`` directories whose owner is gone; returns them.

    With ``restore``, a stale directory holding ``restore.name`` while ``restore`` itself is
    missing is the previous output swapped out by a run that died mid-promotion: it is moved
    back rather than deleted."""
    shape = re.compile(re.escape(prefix) + r"(\d+)-[^/]+")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        match = shape.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if _owner_alive(path, int(match.group(1))):
            continue
        if restore is not None and (path / restore.name).is_dir() and not restore.exists():
            (path / restore.name).rename(restore)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _owner_alive(path: Path, pid: int) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return True  # cannot look: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True  # locked: its owner runs
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return pid_alive(pid)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_os_error(exc: OSError, out: Path) -> str:
    """``PATH: Read-only file system (EROFS); output OUT was not written``: the failing path
    (``out`` when the error names none, as a failed ``write`` does), the reason and its errno
    name, on one line."""
    name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    reason = (exc.strerror or str(exc) or type(exc).__name__).replace("\n", " ")
    where = exc.filename if exc.filename is not None else out
    code = f" ({name})" if name else ""
    return f"{where}: {reason}{code}; output {out} was not written"


@contextmanager
def output_errors(out: Path) -> Iterator[None]:
    """Turn an ``OSError`` (read-only or full disk, a symlink loop, no permission) into an
    ``OutputError`` whose message ``python -m training`` prints on one line."""
    try:
        yield
    except OSError as exc:
        raise OutputError(describe_os_error(exc, out)) from None


def check_output_path(out: Path) -> None:
    """Refuse an output path that is a symlink loop or a dangling symlink up front: the final
    rename would fail on it only after all the work."""
    try:
        out.stat()
    except FileNotFoundError:
        if out.is_symlink():
            target = out.readlink()
            raise OutputError(f"output {out} is a symlink to nothing ({target})") from None
    except OSError as exc:
        raise OutputError(describe_os_error(exc, out)) from None


def refuse_input_inside_output(path: Path, out: Path, what: str) -> None:
    """An input inside the output directory would be deleted when the output is replaced."""
    real_in = os.path.realpath(path)
    real_out = os.path.realpath(out)
    if real_in == real_out or real_in.startswith(real_out.rstrip(os.sep) + os.sep):
        raise DataError(
            f"{what} {path} is inside the output directory {out}, which the run replaces "
            "(the input would be deleted); move it or choose another --out"
        )
