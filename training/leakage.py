"""Leakage between training data and the golden set.

A training example whose prompt is a near-duplicate of a golden case's prompt would let the gate
reward memorisation, so it is quarantined as ``golden_leakage``. Golden prompts are read with the
gate's own loader (``qlgate_core.cases.load_golden``: the same files, defaults and errors the
gate uses); the pipeline compares them with training prompts through the same LSH index, on the
same similarity text and shingles, as near-duplicate detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.errors import DataError


@dataclass(frozen=True)
class GoldenPrompts:
    """The golden set as leakage sees it: case ids, their prompt texts, and the set's hash."""

    path: str
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    sha256: str


def load_golden_prompts(path: Path) -> GoldenPrompts:
    """Every golden case's user text under ``path`` (a directory or a case file)."""
    from qlgate_core.cases import golden_sha256, load_golden
    from qlgate_core.errors import GoldenCaseError

    try:
        cases = load_golden(path)
    except GoldenCaseError as exc:
        raise DataError(f"golden set: {exc}") from None
    if not cases:
        raise DataError(f"golden set {path} has no cases")
    return GoldenPrompts(
        path=str(path),
        ids=tuple(case.id for case in cases),
        texts=tuple(case.prompt_text() for case in cases),
        sha256=golden_sha256(cases),
    )
