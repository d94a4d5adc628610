"""``qlgate-provenance.json``: what an adapter was trained from, so the gate can trace it.

The record names the base model (spec, directory, weights hash), the tokenizer and chat-template
hashes (the "silent tokenizer" failure is a mismatch here), the dataset (manifest and content
hashes), the resolved config, library versions, the git commit, metrics, wall time and tokens/s,
and the adapter's own weights hash. Hashes come from ``qlgate_core.fingerprint`` so the gate
recomputes them identically. The file is versioned; a reader refuses another version.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from qlgate_core.fingerprint import (
    chat_template_sha256,
    read_chat_template,
    sha256_file,
    tokenizer_sha256,
    weights_sha256,
)
from training.errors import DataError

SCHEMA_VERSION = 1
FILENAME = "qlgate-provenance.json"
_LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "bitsandbytes",
    "datasets",
    "safetensors",
    "tokenizers",
    "liger-kernel",
    "qlgate",
)


class BaseModelRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    spec: str
    path: str
    weights_sha256: str


class DatasetRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    manifest_sha256: str | None
    content_sha256: str | None


class Provenance(BaseModel):
    """The provenance record; field names are the contract in docs/CONTRACTS.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: int = SCHEMA_VERSION
    base_model: BaseModelRecord
    tokenizer_sha256: str
    chat_template_sha256: str
    dataset: DatasetRecord
    config: dict[str, Any]
    versions: dict[str, str]
    git_commit: str | None
    metrics: dict[str, Any]
    wall_time_s: float
    tokens_per_s: float
    adapter_weights_sha256: str


def base_model_record(spec: str, path: Path) -> BaseModelRecord:
    return BaseModelRecord(spec=spec, path=str(path), weights_sha256=weights_sha256(path))


def dataset_record(data_dir: Path) -> DatasetRecord:
    """The dataset's identity: its manifest file's hash and the content hash it declares."""
    manifest = data_dir / "manifest.json"
    if not manifest.is_file():
        return DatasetRecord(path=str(data_dir), manifest_sha256=None, content_sha256=None)
    try:
        content = json.loads(manifest.read_text(encoding="utf-8")).get("content_sha256")
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{manifest}: unreadable manifest ({exc})") from None
    return DatasetRecord(
        path=str(data_dir),
        manifest_sha256=sha256_file(manifest),
        content_sha256=content if isinstance(content, str) else None,
    )


def tokenizer_hashes(model_dir: Path) -> tuple[str, str]:
    """(tokenizer_sha256, chat_template_sha256) of the tokenizer files in ``model_dir``."""
    return tokenizer_sha256(model_dir), chat_template_sha256(read_chat_template(model_dir))


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape training, plus Python and CUDA."""
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import torch

        if torch.version.cuda:
            out["cuda"] = str(torch.version.cuda)
    except ImportError:  # pragma: no cover - torch is a hard dependency of training
        pass
    return out


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the checkout holding the code (``+dirty`` if modified), if it is one."""
    where = path or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head or None


def write_provenance(directory: Path, record: Provenance) -> Path:
    """Write ``directory/qlgate-provenance.json`` atomically (temp file + rename)."""
    target = directory / FILENAME
    text = json.dumps(record.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{FILENAME}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_provenance(directory: Path) -> Provenance:
    """Load and validate an adapter's provenance; another schema version is refused."""
    path = directory / FILENAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing; was this adapter trained by qlgate?") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{path}: schema_version = {version!r}, this qlgate reads {SCHEMA_VERSION} only"
        )
    try:
        return Provenance.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise DataError(f"{path}: field {field}: {err['msg']}") from None
