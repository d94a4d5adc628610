"""Which files under a golden root the gate reads, and which the collector skips (and why).

One classification serves the collector (``cases.case_files``, ``ItemSide.is_case_file``) and
the golden-set lock, so that a file the collector leaves out (``critical.YAML``, a case file
moved into ``.old/``, ``cases.json``) is named instead of ignored in silence:

- ``cases``: ``*.jsonl`` / ``*.yaml`` / ``*.yml`` outside hidden folders: loaded as cases;
- ``python``: ``*.py``: pytest files and their helpers, checks in their own right;
- ``skipped``: anything else the team put there; the lock records it with the reason;
- not listed at all: files tools write (``__pycache__/``, ``.pytest_cache/``, ``*.pyc``), the
  lock file itself, and prose (``*.md``, ``*.rst``, ``*.txt``), which holds no checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

CASE_SUFFIXES = (".jsonl", ".yaml", ".yml")
PYTHON_SUFFIX = ".py"
# Written by tools, not by the team: a run creates them, so locking them would turn it red.
GENERATED_DIRS = frozenset({"__pycache__", ".pytest_cache"})
GENERATED_SUFFIXES = (".pyc", ".pyo")
DOC_SUFFIXES = (".md", ".rst", ".txt")

Kind = Literal["cases", "python", "skipped"]


@dataclass(frozen=True)
class TreeFile:
    """One file under a golden root: where it is, what the gate makes of it, and why."""

    path: Path
    rel: str  # POSIX path relative to the root (the file's name when the root is a file)
    kind: Kind
    reason: str | None = None  # kind "skipped": why the collector leaves it out


def classify(rel: PurePosixPath) -> tuple[Kind, str | None] | None:
    """What the gate makes of the file at ``rel`` under a golden root; None: not part of it."""
    parts = rel.parts
    if any(part in GENERATED_DIRS for part in parts[:-1]) or rel.suffix in GENERATED_SUFFIXES:
        return None
    hidden = next((part for part in parts if part.startswith(".")), None)
    if hidden is not None:
        # pytest (norecursedirs '.*') and case_files both pass hidden names by.
        if hidden == parts[-1]:
            return "skipped", "a hidden file: the collector does not read it"
        return "skipped", f"in the hidden folder {hidden!r}: the collector does not look there"
    if rel.suffix in CASE_SUFFIXES:
        return "cases", None
    if rel.suffix == PYTHON_SUFFIX:
        return "python", None
    if rel.suffix in DOC_SUFFIXES:
        return None
    suffix = rel.suffix or "(none)"
    hint = ""
    if rel.suffix.lower() in CASE_SUFFIXES:
        hint = f"; suffixes are case-sensitive: rename it to {rel.suffix.lower()!r}"
    elif rel.suffix == ".json":
        hint = "; JSON cases go one per line in a '.jsonl' file"
    known = ", ".join(CASE_SUFFIXES)
    return "skipped", f"suffix {suffix!r} is not a case file's ({known}){hint}"


def scan(root: Path, exclude: Iterable[Path] = ()) -> list[TreeFile]:
    """Every file under ``root`` that is part of the golden set, sorted by path.

    A root that is a file is one case file, whatever its name (``--golden cases.txt`` is an
    explicit choice). ``exclude`` names files to leave out (the lock file).
    """
    if root.is_file():
        return [TreeFile(root, root.name, "cases")]
    if not root.is_dir():
        return []
    left_out = {p.resolve() for p in exclude}
    out: list[TreeFile] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.resolve() in left_out:
            continue
        rel = PurePosixPath(path.relative_to(root).as_posix())
        found = classify(rel)
        if found is not None:
            out.append(TreeFile(path, str(rel), found[0], found[1]))
    return out


def is_case_path(root: Path, path: Path) -> bool:
    """Whether the collector loads ``path`` as a case file of the golden root ``root``."""
    if path.suffix not in CASE_SUFFIXES:
        return False
    if path == root:
        return True
    if not (root.is_dir() and path.is_relative_to(root)):
        return False
    found = classify(PurePosixPath(path.relative_to(root).as_posix()))
    return found is not None and found[0] == "cases"
