"""What a curation run leaves behind, and how it gets there atomically.

Everything is built in a hidden staging directory beside the target and renamed into place at
the end, so a crashed or failed run never leaves a directory that looks like a finished one (the
manifest is written last, and only a directory with a manifest is ever replaced).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from training.errors import OutputExistsError
from training.outputs import OwnedDir, check_output_path, owned_dir, sweep_stale

if TYPE_CHECKING:
    from training.curate_config import CurateConfig
    from training.leakage import GoldenPrompts

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"
DATASET = "dataset"
SPLITS = ("train", "validation")
_WRITE_BATCH = 8192
_VERSIONED = (
    "qlgate",
    "datasets",
    "pyarrow",
    "pydantic",
    "orjson",
    "numpy",
    "phonenumbers",
    "python-stdnum",
    "transformers",
    "torch",
)


def staging_dir(out: Path) -> OwnedDir:
    """A fresh staging directory next to ``out`` (same filesystem, so the final rename is
    atomic), held under this process's lock (``outputs.owned_dir``); stale ones of dead runs
    are removed first. Refuses to go ahead if ``out`` holds something other than an earlier
    run."""
    check_output_path(out)
    if out.exists():
        if not out.is_dir():
            raise OutputExistsError(f"output {out} exists and is not a directory")
        if any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise OutputExistsError(
                f"output directory {out} is not empty and has no {MANIFEST}; "
                "refusing to replace what curation did not write"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out.parent, f".{out.name}.old-", restore=out)
    return owned_dir(out.parent, f".{out.name}.staging-")


def promote(staging: Path, out: Path) -> None:
    """Move the finished staging directory to ``out``, replacing an earlier run's output
    (swapped into an owned trash directory first, so a run dying between the two renames
    leaves the old output for the next run to restore)."""
    if out.exists():
        trash = owned_dir(out.parent, f".{out.name}.old-")
        try:
            out.rename(trash.path / out.name)
            staging.rename(out)
            shutil.rmtree(trash.path, ignore_errors=True)
        finally:
            trash.release()
    else:
        staging.rename(out)


def write_json_atomic(obj: Mapping[str, Any], path: Path) -> None:
    """Write JSON to ``path`` via a temporary file and a rename."""
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
            stream.write(b"\n")
        Path(temp).replace(path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def row_hash(row_id: str, turns: Sequence[Mapping[str, str]], label: str | None, source: str,
             meta_json: str) -> str:  # fmt: skip
    """Hash of one dataset row (its split is added when the content hash is taken)."""
    canonical = orjson.dumps([row_id, turns, label, source, meta_json])
    return hashlib.sha256(canonical).hexdigest()


class DatasetSink:
    """Streams kept rows into one Arrow file per split, hashing them as it goes, then saves a
    ``DatasetDict`` (docs/CONTRACTS.md, "Curated dataset") with ``save_to_disk``."""

    def __init__(self, staging: Path) -> None:
        from datasets import Features, List, Value
        from datasets.arrow_writer import ArrowWriter

        self.features = Features(
            {
                "id": Value("string"),
                "messages": List({"role": Value("string"), "content": Value("string")}),
                "label": Value("string"),
                "source": Value("string"),
                "metadata": Value("string"),
            }
        )
        self._dir = staging / ".arrow"
        self._dir.mkdir()
        self._writers = {
            split: ArrowWriter(features=self.features, path=str(self._dir / f"{split}.arrow"))
            for split in SPLITS
        }
        self._buffers: dict[str, dict[str, list[Any]]] = {s: _empty_columns() for s in SPLITS}
        # One "split TAB id TAB digest" line per row: sorting the lines orders them as the
        # (split, id, digest) tuples would (fixed-width hex ids and digests, no tabs in a
        # split name), at a fraction of the cost of comparing tuples.
        self._hashes: list[str] = []
        self.counts: dict[str, int] = dict.fromkeys(SPLITS, 0)
        self.labels: dict[str, dict[str, int]] = {s: {} for s in SPLITS}

    def add(
        self,
        split: str,
        row_id: str,
        messages: Sequence[Sequence[str]],
        label: str | None,
        source: str,
        metadata: Mapping[str, Any],
    ) -> None:
        meta_json = orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS).decode()
        turns = [{"role": role, "content": content} for role, content in messages]
        digest = row_hash(row_id, turns, label, source, meta_json)
        self.add_prepared(split, row_id, turns, label, source, meta_json, digest)

    def add_prepared(
        self,
        split: str,
        row_id: str,
        turns: list[dict[str, str]],
        label: str | None,
        source: str,
        meta_json: str,
        digest: str,
    ) -> None:
        """``add`` for a row whose turns, metadata JSON and ``row_hash`` were made already
        (by the admission workers)."""
        columns = self._buffers[split]
        columns["id"].append(row_id)
        for turn in turns:
            columns["role"].append(turn["role"])
            columns["content"].append(turn["content"])
        columns["offset"].append(len(columns["role"]))
        columns["label"].append(label)
        columns["source"].append(source)
        columns["metadata"].append(meta_json)
        self._account(split, [row_id], [label], [digest])
        if len(columns["id"]) >= _WRITE_BATCH:
            self._flush(split)

    def add_table(self, split: str, rows: Any) -> None:
        """Add rows given as an Arrow table or batch with the spill's columns (``id``,
        ``turns``, ``label``, ``source``, ``mj``, ``h``; ``spill.spill_schema``), in order: the
        final pass moves whole batches without making a Python object per row."""
        import pyarrow as pa

        if not rows.num_rows:
            return
        self._flush(split)
        arrays = [rows.column(name) for name in ("id", "turns", "label", "source", "mj")]
        table = pa.Table.from_arrays(arrays, schema=self.features.arrow_schema)
        self._writers[split].write_table(table)
        self._account(
            split,
            rows.column("id").to_pylist(),
            rows.column("label").to_pylist(),
            rows.column("h").to_pylist(),
        )

    def _account(
        self, split: str, ids: Sequence[str], labels: Sequence[str | None], digests: Sequence[str]
    ) -> None:
        """Count rows per split and label and keep their content-hash lines."""
        self._hashes += [f"{split}\t{i}\t{d}\n" for i, d in zip(ids, digests, strict=True)]
        self.counts[split] += len(ids)
        counts = self.labels[split]
        for label in labels:
            key = label if label is not None else "<none>"
            counts[key] = counts.get(key, 0) + 1

    def _flush(self, split: str) -> None:
        # Arrow arrays built from flat columns: converting a list of message dicts row by row
        # (``write_batch``) costs more than the rest of the final pass.
        import pyarrow as pa

        columns = self._buffers[split]
        if columns["id"]:
            turns = pa.StructArray.from_arrays(
                [pa.array(columns["role"], pa.string()), pa.array(columns["content"], pa.string())],
                names=["role", "content"],
            )
            messages = pa.ListArray.from_arrays(pa.array(columns["offset"], pa.int32()), turns)
            arrays = [pa.array(columns["id"], pa.string()), messages]
            arrays += [pa.array(columns[k], pa.string()) for k in ("label", "source", "metadata")]
            table = pa.Table.from_arrays(arrays, schema=self.features.arrow_schema)
            self._writers[split].write_table(table)
            self._buffers[split] = _empty_columns()

    def content_sha256(self) -> str:
        """Hash of the kept rows, independent of the order they were written in."""
        return hashlib.sha256("".join(sorted(self._hashes)).encode()).hexdigest()

    def save(self, target: Path) -> None:
        import datasets
        from datasets import Dataset, DatasetDict

        for split in SPLITS:
            self._flush(split)
            self._writers[split].finalize()
            self._writers[split].close()
        enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            parts = {
                split: Dataset.from_file(str(self._dir / f"{split}.arrow")) for split in SPLITS
            }
            # An empty split saved with the default sharding gets no shard at all, and
            # ``load_from_disk`` then fails with an IndexError: give it one empty shard.
            shards = {split: 1 if not len(part) else None for split, part in parts.items()}
            DatasetDict(parts).save_to_disk(str(target), num_shards=shards)
        finally:
            if enabled:
                datasets.enable_progress_bars()
        del parts
        shutil.rmtree(self._dir, ignore_errors=True)


def _empty_columns() -> dict[str, list[Any]]:
    names = ("id", "role", "content", "label", "source", "metadata")
    return {"offset": [0], **{name: [] for name in names}}


def stratified_split(
    ids: Mapping[int, str], labels: Mapping[int, str | None], fraction: float, seed: int
) -> dict[int, str]:
    """Record index -> "train" | "validation", per label: sort by content id, shuffle with a
    seed derived from the label, hold out ``fraction`` (at least one of each label that has two
    or more records, never all). Input order plays no part."""
    import random

    by_label: dict[str, list[int]] = {}
    for index in ids:
        by_label.setdefault(labels[index] or "<none>", []).append(index)
    split: dict[int, str] = {}
    for label, members in sorted(by_label.items()):
        # By (content id, index): index order first, then a stable sort by id (two C-keyed
        # sorts cost a third of one sort by a tuple-making lambda).
        members.sort()
        members.sort(key=ids.__getitem__)
        random.Random(f"{seed}:{label}").shuffle(members)
        held = round(fraction * len(members))
        if fraction > 0 and len(members) >= 2:
            held = min(max(held, 1), len(members) - 1)
        for position, index in enumerate(members):
            split[index] = "validation" if position < held else "train"
    return split


def build_manifest(
    config: CurateConfig,
    stats: Mapping[str, Any],
    *,
    stages: Mapping[str, int],
    reasons: Mapping[str, int],
    sink: DatasetSink,
    after: Mapping[str, int],
    warnings: Sequence[Mapping[str, Any]],
    golden: GoldenPrompts | None,
    augment: Mapping[str, Any],
    bands: int,
) -> dict[str, Any]:
    """The manifest (docs/CONTRACTS.md): counts per stage, labels before and after, PII found,
    poisoning findings, configuration and library versions. Stage counts are of quarantined
    lines by primary reason, plus ``pii_scrubbed`` (admitted records with PII replaced) and
    ``poison_flagged`` (quarantined or kept with a warning)."""
    from training.curate_config import config_to_dict

    kept = sum(after.values())
    counts = {
        "read": stats["read"],
        "invalid_json": stages.get("invalid_json", 0),
        "schema": stages.get("schema", 0),
        "quality": stages.get("quality", 0),
        "pii_scrubbed": stats["pii_records"],
        "exact_dup": stages.get("exact_dup", 0),
        "near_dup": stages.get("near_dup", 0),
        "poison_flagged": stages.get("poison", 0) + sum(len(w["lines"]) for w in warnings),
        "poison_quarantined": stages.get("poison", 0),
        "leakage": stages.get("leakage", 0),
        "augmented": int(augment.get("accepted", 0)),
        "kept": kept,
        "quarantined": sum(stages.values()),
        "train": sink.counts["train"],
        "validation": sink.counts["validation"],
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "input": {"path": stats["input_path"], "bytes": stats["input_bytes"]},
        "input_sha256": stats["input_sha256"],
        "content_sha256": sink.content_sha256(),
        "counts": counts,
        "reasons": dict(sorted(reasons.items())),
        "labels": {
            "before": dict(sorted(stats["labels_before"].items())),
            "after": dict(sorted(after.items())),
            "train": dict(sorted(sink.labels["train"].items())),
            "validation": dict(sorted(sink.labels["validation"].items())),
        },
        "pii": {"records": stats["pii_records"], "by_type": dict(sorted(stats["pii"].items()))},
        "dedup": {"near_dup_groups": stats["near_groups"], "lsh_bands": bands},
        "poison": {
            "conflict_groups": stats["conflict_groups"],
            "triggers": stats["triggers"],
            "trigger_search": stats.get("trigger_search", {}),
            "warnings": list(warnings),
        },
        "leakage": {
            "golden": None
            if golden is None
            else {"path": golden.path, "cases": len(golden.ids), "sha256": golden.sha256}
        },
        "special_tokens": stats.get("special_tokens"),
        "augment": dict(augment),
        "config": config_to_dict(config),
        "versions": library_versions(),
    }
