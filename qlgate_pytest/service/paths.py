"""Confinement of client-supplied paths to the directories the operator configured.

A request names an adapter (``model_path``) and a golden set (``golden_set_id``); both must stay
inside the configured roots however they are spelled. The rules, in order:

1. NUL bytes and ``..`` components are refused outright (400), even where they would land back
   inside a root: a path that climbs is a mistake or a probe, never a need.
2. An absolute path must lie lexically under a root; a relative one is taken under each root in
   turn. Outside every root: 403, before the file system is touched, so a client learns nothing
   about what exists elsewhere.
3. The path is resolved following symlinks; a missing path is 404, and a resolved path outside
   every root (a symlink pointing out) is 403.
4. A directory the gate will read (adapter, golden set, base model) must hold no symlink, at
   any depth, that resolves outside the roots (:func:`confine_tree`): the gate opens the files
   inside, so a confined directory with ``adapter_model.safetensors -> /elsewhere`` is an escape.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qlgate_core.errors import QlgateError

GOLDEN_SET_ID = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
# A directory the service confines entry by entry; past this many entries it is refused rather
# than walked for seconds per request (a model or adapter has tens of files, a golden set with
# its generation cache a few thousand).
MAX_TREE_ENTRIES = 200_000
_GOLDEN_SET_RE = re.compile(GOLDEN_SET_ID)


class RequestRejected(QlgateError):
    """A request the service refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Root:
    """A configured root as given (made absolute) and as resolved, so a path spelled through
    either form (e.g. ``/tmp`` vs ``/private/tmp``) is recognised."""

    given: Path
    resolved: Path

    @classmethod
    def of(cls, path: Path) -> Root:
        given = Path(os.path.normpath(path.expanduser().absolute()))
        resolved = given.resolve(strict=True)
        if not resolved.is_dir():
            raise NotADirectoryError(f"{path} is not a directory")
        return cls(given, resolved)

    def contains_lexically(self, path: Path) -> bool:
        return path.is_relative_to(self.given) or path.is_relative_to(self.resolved)

    def contains(self, resolved: Path) -> bool:
        return resolved.is_relative_to(self.resolved)


def _check_spelling(raw: str, field: str) -> Path:
    if not raw or "\x00" in raw:
        raise RequestRejected(400, f"{field}: empty or contains a NUL byte")
    path = Path(raw)
    if ".." in path.parts:
        raise RequestRejected(400, f"{field}: {raw!r} contains '..'; give a path inside a root")
    return path


def confine(raw: str, roots: Sequence[Root], *, field: str = "model_path") -> Path:
    """The resolved path ``raw`` names inside one of ``roots``; RequestRejected otherwise."""
    path = _check_spelling(raw, field)
    if path.is_absolute():
        candidates = [path] if any(r.contains_lexically(path) for r in roots) else []
        if not candidates:
            raise RequestRejected(403, f"{field}: {raw!r} is outside the configured roots")
    else:
        candidates = [r.given / path for r in roots]
    escaped = False
    for candidate in candidates:
        try:
            resolved = candidate.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, RuntimeError) as exc:  # symlink loop, permission
            raise RequestRejected(400, f"{field}: {raw!r} cannot be resolved: {exc}") from None
        if any(r.contains(resolved) for r in roots):
            return resolved
        escaped = True
    if escaped:
        raise RequestRejected(403, f"{field}: {raw!r} resolves outside the configured roots")
    raise RequestRejected(404, f"{field}: {raw!r} does not exist under the configured roots")


def golden_set_dir(golden_set_id: str, golden_root: Root) -> Path:
    """The golden set directory ``golden_set_id`` names under ``golden_root``; 404 if none."""
    if not _GOLDEN_SET_RE.match(golden_set_id):
        raise RequestRejected(422, f"golden_set_id: {golden_set_id!r} is not a valid set name")
    try:
        path = confine(golden_set_id, [golden_root], field="golden_set_id")
    except RequestRejected as exc:
        # Whether a set is missing or a symlink points out, the client only learns "unknown".
        raise RequestRejected(404, f"unknown golden set {golden_set_id!r}") from exc
    if not path.is_dir():
        raise RequestRejected(404, f"unknown golden set {golden_set_id!r}")
    return path


def adapter_dir(raw: str, roots: Sequence[Root], *, field: str = "model_path") -> Path:
    """A confined peft adapter directory (has ``adapter_config.json``)."""
    path = confine(raw, roots, field=field)
    if not (path / "adapter_config.json").is_file():
        raise RequestRejected(400, f"{field}: {raw!r} is not an adapter (no adapter_config.json)")
    return path


def confine_tree(path: Path, roots: Sequence[Root], *, field: str) -> None:
    """RequestRejected (403) when any symlink under the directory ``path`` resolves outside
    ``roots`` (a dangling one by where it would point); 400 past :data:`MAX_TREE_ENTRIES`
    entries. Regular files and directories under a confined directory are inside it already:
    only links can point out. A link to a directory inside a root is followed, since the gate
    reads through it and that directory's own links count too."""
    seen = 0
    stack = [path.resolve()]
    visited: set[Path] = set()
    while stack:
        current = stack.pop()
        if current in visited:
            continue
        visited.add(current)
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            raise RequestRejected(400, f"{field}: cannot list {current}: {exc}") from None
        for entry in entries:
            seen += 1
            if seen > MAX_TREE_ENTRIES:
                raise RequestRejected(
                    400, f"{field}: {path} holds more than {MAX_TREE_ENTRIES} entries"
                )
            if entry.is_symlink():
                try:
                    target = Path(entry.path).resolve()
                except (OSError, RuntimeError):
                    continue  # a symlink loop opens nothing
                if not any(r.contains(target) for r in roots):
                    raise RequestRejected(
                        403,
                        f"{field}: {Path(entry.path).name!r} in {current} links outside the "
                        "configured roots",
                    )
                if target.is_dir():
                    stack.append(target)
            elif entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
