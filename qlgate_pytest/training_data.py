"""The training data an adapter's provenance names: found wherever the gate runs, and verified.

``qlgate-provenance.json`` records ``dataset.path`` as training was given it, often relative to
the directory training ran in (``outputs/data``). A gate run from another directory, or through
the service, cannot resolve that against its own working directory. So the path is looked for:

1. as recorded, when absolute;
2. relative to the provenance file's directory (an adapter shipped beside its data);
3. relative to the working directory (the old behaviour, kept for runs from the training cwd);
4. relative to each directory above the provenance file, for each tail of the recorded path
   (``outputs/data`` and ``data`` under ``/repo/outputs/adapter``'s ancestors): the shipped
   layout ``outputs/adapter`` + ``outputs/data`` from any working directory, and a tree moved
   to another machine.

Identity is decided by content, never by location: the recorded ``content_sha256`` is compared
with the hash recomputed from the rows found (the same ``training.manifest.row_hash`` curation
uses), or, when only ``manifest_sha256`` was recorded, with the manifest file's hash. A searched
location (4) is accepted only when a recorded hash verifies it; a direct one (1-3) without any
recorded hash is used but reported as unverified.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["verified", "unverified", "mismatch", "missing"]
# Tails of the recorded path tried under each ancestor; deeper tails name the data precisely.
_MAX_TAIL = 3


@dataclass(frozen=True)
class TrainingData:
    """One curated dataset on disk: its rows' user texts and its hashes."""

    root: Path  # the curate output directory (holds manifest.json), or the saved dataset
    rows: tuple[tuple[str, str], ...]  # (row id, user text)
    manifest_sha256: str | None
    content_sha256: str  # recomputed from the rows
    declared_content_sha256: str | None = None  # what its manifest.json says


@dataclass(frozen=True)
class Located:
    """Where the recorded dataset was found and whether it is the one trained on."""

    status: Status
    data: TrainingData | None
    detail: str  # one line: what was found or looked for, and the hashes compared
    tried: tuple[Path, ...] = field(default=())


def _saved_dir(root: Path) -> Path | None:
    for saved in (root / "dataset", root):
        if (saved / "dataset_dict.json").is_file() or (saved / "state.json").is_file():
            return saved
    return None


def candidates(recorded: Path, provenance_dir: Path, cwd: Path) -> list[tuple[Path, bool]]:
    """(path, searched) in the order of the module docstring, without repeats; ``searched`` marks
    the locations found by walking up (accepted only when a hash verifies them)."""
    out: list[tuple[Path, bool]] = []
    seen: set[Path] = set()

    def add(path: Path, searched: bool) -> None:
        key = Path(os.path.normpath(path))
        if key not in seen:
            seen.add(key)
            out.append((key, searched))

    if recorded.is_absolute():
        add(recorded, False)
    else:
        add(provenance_dir / recorded, False)
        add(cwd / recorded, False)
    parts = [p for p in recorded.parts if p not in ("/", "", ".")]
    tails = [Path(*parts[-n:]) for n in range(min(_MAX_TAIL, len(parts)), 0, -1)]
    for ancestor in [provenance_dir, *provenance_dir.parents]:
        for tail in tails:
            add(ancestor / tail, True)
    return out


def content_sha256(saved: Path) -> str:
    """The content hash curation records in ``manifest.json``, recomputed from the saved rows."""
    return _read(saved)[1]


def _read(saved: Path) -> tuple[tuple[tuple[str, str], ...], str]:
    import hashlib

    import orjson
    from datasets import DatasetDict, load_from_disk

    from training.dedup import prompt_text
    from training.manifest import row_hash

    loaded = load_from_disk(str(saved))
    splits = loaded.items() if isinstance(loaded, DatasetDict) else [("data", loaded)]
    rows: list[tuple[str, str]] = []
    lines: list[str] = []
    for split, table in splits:
        for i, row in enumerate(table):
            messages = row.get("messages") or []
            # User turns only: the system prompt is shared by every row and golden case.
            turns = [(m.get("role", ""), m.get("content", "")) for m in messages]
            row_id = str(row.get("id") or f"{split}[{i}]")
            rows.append((row_id, prompt_text(turns)))
            meta = row.get("metadata")
            meta_json = meta if isinstance(meta, str) else orjson.dumps(meta).decode()
            # As curation's DatasetSink: role before content, the split added to each line.
            canonical = [{"role": m.get("role"), "content": m.get("content")} for m in messages]
            digest = row_hash(row_id, canonical, row.get("label"), row.get("source"), meta_json)
            lines.append(f"{split}\t{row_id}\t{digest}\n")
    return tuple(rows), hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def load(root: Path) -> TrainingData:
    """The dataset at ``root`` (a curate output dir or a saved DatasetDict)."""
    from qlgate_core.fingerprint import sha256_file

    saved = _saved_dir(root)
    if saved is None:
        raise FileNotFoundError(f"{root} holds no saved dataset")
    rows, content = _read(saved)
    manifest = root / "manifest.json"
    manifest_sha = sha256_file(manifest) if manifest.is_file() else None
    declared = None
    if manifest.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            value = json.loads(manifest.read_text(encoding="utf-8")).get("content_sha256")
            declared = value if isinstance(value, str) else None
    return TrainingData(root, rows, manifest_sha, content, declared)


def _verdict(record: Mapping[str, Any], data: TrainingData) -> tuple[bool | None, str]:
    """True/False: a recorded hash matches / differs; None: nothing recorded to compare."""
    want = record.get("content_sha256")
    if isinstance(want, str) and want:
        have = data.content_sha256
        if have == want:
            return True, f"content sha256 {have[:12]}…, as recorded at training"
        text = f"its rows hash to content sha256 {have[:12]}…, training recorded {want[:12]}…"
        if data.declared_content_sha256 == want:
            text += " (as its manifest still declares: the rows changed after curation)"
        return False, text
    want = record.get("manifest_sha256")
    if isinstance(want, str) and want:
        found = data.manifest_sha256
        short = "none" if found is None else f"{found[:12]}…"
        return found == want, f"manifest sha256 {short} (recorded {want[:12]}…)"
    return None, f"content sha256 {data.content_sha256[:12]}… (no hash recorded at training)"


def locate(record: Mapping[str, Any], provenance_dir: Path, cwd: Path | None = None) -> Located:
    """Find the dataset ``record`` (provenance ``dataset``) names; see the module docstring."""
    recorded = Path(str(record.get("path")))
    tried = candidates(recorded, provenance_dir, Path.cwd() if cwd is None else cwd)
    existing = [(p, searched) for p, searched in tried if _saved_dir(p) is not None]
    first_mismatch: Located | None = None
    for path, searched in existing:
        data = load(path)
        same, hashes = _verdict(record, data)
        if same:
            return Located("verified", data, f"{path} ({hashes})", tuple(p for p, _ in tried))
        if same is None and not searched:
            return Located("unverified", data, f"{path} ({hashes})", tuple(p for p, _ in tried))
        if same is False and first_mismatch is None:
            detail = f"{path} is not the dataset trained on: {hashes}"
            first_mismatch = Located("mismatch", data, detail, tuple(p for p, _ in tried))
    if first_mismatch is not None:
        return first_mismatch
    direct = [str(p) for p, searched in tried if not searched]
    detail = f"training dataset {recorded} recorded in the provenance is not on this machine "
    detail += f"(looked in {', '.join(direct)} and under the directories above {provenance_dir})"
    return Located("missing", None, detail, tuple(p for p, _ in tried))
