"""Adapter provenance: hashes the gate recomputes, atomic writing, version refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlgate_core.fingerprint import chat_template_sha256, sha256_file, tokenizer_sha256
from training.errors import DataError
from training.provenance import (
    FILENAME,
    SCHEMA_VERSION,
    BaseModelRecord,
    DatasetRecord,
    Provenance,
    dataset_record,
    git_commit,
    library_versions,
    read_provenance,
    tokenizer_hashes,
    write_provenance,
)


def _record(**changes: object) -> Provenance:
    fields: dict[str, object] = {
        "base_model": BaseModelRecord(spec="embedded", path="/m", weights_sha256="a" * 64),
        "tokenizer_sha256": "b" * 64,
        "chat_template_sha256": "c" * 64,
        "dataset": DatasetRecord(path="/d", manifest_sha256="d" * 64, content_sha256="e" * 64),
        "config": {"train": {"max_steps": 3}},
        "versions": {"torch": "2.13.0"},
        "git_commit": None,
        "metrics": {"eval_macro_f1": 0.9},
        "wall_time_s": 1.5,
        "tokens_per_s": 100.0,
        "adapter_weights_sha256": "f" * 64,
    }
    fields.update(changes)
    return Provenance.model_validate(fields)


def test_round_trip_and_contract_fields(tmp_path: Path) -> None:
    """A written record reads back equal and carries every field the contract names."""
    record = _record()
    path = write_provenance(tmp_path, record)
    assert path == tmp_path / FILENAME
    assert read_provenance(tmp_path) == record
    raw = json.loads(path.read_text())
    contract = {
        "schema_version",
        "base_model",
        "tokenizer_sha256",
        "chat_template_sha256",
        "dataset",
        "config",
        "versions",
        "git_commit",
        "metrics",
        "wall_time_s",
        "tokens_per_s",
        "adapter_weights_sha256",
    }
    assert contract <= set(raw)
    assert set(raw["base_model"]) == {"spec", "path", "weights_sha256"}
    assert set(raw["dataset"]) == {"path", "manifest_sha256", "content_sha256"}
    assert raw["schema_version"] == SCHEMA_VERSION
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME]  # no temp file left behind


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    """A record of another schema version is refused, naming the file and both versions."""
    raw = _record().model_dump(mode="json")
    raw["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / FILENAME).write_text(json.dumps(raw))
    with pytest.raises(DataError, match=rf"{FILENAME}: schema_version = {SCHEMA_VERSION + 1}"):
        read_provenance(tmp_path)


def test_bad_field_and_missing_file_are_named(tmp_path: Path) -> None:
    """A missing or mistyped field names the field; a missing file says so."""
    with pytest.raises(DataError, match="missing"):
        read_provenance(tmp_path)
    raw = _record().model_dump(mode="json")
    del raw["tokenizer_sha256"]
    (tmp_path / FILENAME).write_text(json.dumps(raw))
    with pytest.raises(DataError, match="field tokenizer_sha256"):
        read_provenance(tmp_path)


def test_dataset_record_hashes_the_manifest(tmp_path: Path) -> None:
    """The dataset identity is the manifest file's sha256 and its declared content hash."""
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"schema_version": 1, "content_sha256": "9" * 64}))
    record = dataset_record(tmp_path)
    assert record.manifest_sha256 == sha256_file(manifest)
    assert record.content_sha256 == "9" * 64
    assert dataset_record(tmp_path / "nowhere").manifest_sha256 is None


def test_tokenizer_hashes_match_fingerprint(tmp_path: Path) -> None:
    """Tokenizer and template hashes are fingerprint's, so the gate recomputes them equally,
    and a changed template changes only the template hash."""
    (tmp_path / "tokenizer.json").write_text('{"v": 1}')
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    tok, template = tokenizer_hashes(tmp_path)
    assert tok == tokenizer_sha256(tmp_path)
    assert template == chat_template_sha256("{{ messages }}")
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}!")
    tok2, template2 = tokenizer_hashes(tmp_path)
    assert tok2 == tok and template2 != template


def test_versions_and_git_commit() -> None:
    """Library versions name the training stack; the commit is a hex sha (or None outside git)."""
    versions = library_versions()
    assert {"python", "torch", "transformers", "peft", "trl"} <= set(versions)
    commit = git_commit()
    if commit is not None:
        sha = commit.removesuffix("+dirty")
        assert len(sha) == 40 and int(sha, 16) >= 0
    assert git_commit(Path("/")) is None
