"""Training from the harness: ``pytest --train-data DIR [--train-config F]`` trains the candidate
through :func:`training.train.train_adapter`, then gates it.

A trained adapter is cached under ``.qlgate_cache/trained/<key>/`` where the key hashes the
curated dataset (its manifest, else every file), the config file's bytes, a ``--base-model``
override and the training package's source: the same inputs reuse the adapter, any change
retrains. A file lock serialises concurrent sessions (xdist workers) on one key; the trainer
itself promotes its output atomically, so a crash leaves no half-written cache entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from qlgate_core.fingerprint import sha256_file, sha256_files, sha256_json

PROVENANCE = "qlgate-provenance.json"


class TrainFn(Protocol):
    """The signature of :func:`training.train.train_adapter`."""

    def __call__(
        self,
        data_dir: Path,
        out_dir: Path,
        *,
        config_path: Path | None = ...,
        overrides: Mapping[str, object] | None = ...,
    ) -> Path: ...


def _dataset_identity(data_dir: Path) -> dict[str, Any]:
    manifest = data_dir / "manifest.json"
    if manifest.is_file():
        return {"manifest_sha256": sha256_file(manifest)}
    files = [str(p.relative_to(data_dir)) for p in sorted(data_dir.rglob("*")) if p.is_file()]
    return {"files_sha256": sha256_files(data_dir, files)}


def _training_code_identity() -> str:
    import training

    root = Path(training.__file__).parent
    return sha256_files(root, [p.name for p in root.glob("*.py")])


def training_key(data_dir: Path, config_path: Path | None, base_model: str | None) -> str:
    """The cache key of a training run: what decides the adapter it produces."""
    identity = {
        "data": _dataset_identity(data_dir),
        "config": None if config_path is None else sha256_file(config_path),
        "base_model": base_model,
        "training_code": _training_code_identity(),
    }
    return sha256_json(identity)[:20]


def is_complete(adapter: Path) -> bool:
    """A finished adapter: the trainer writes provenance last, before its atomic promotion."""
    return (adapter / "adapter_config.json").is_file() and (adapter / PROVENANCE).is_file()


def _train_adapter(
    data_dir: Path,
    out_dir: Path,
    *,
    config_path: Path | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Path:
    from training.train import train_adapter

    return train_adapter(data_dir, out_dir, config_path=config_path, overrides=overrides)


def trained_adapter(
    data_dir: Path,
    config_path: Path | None,
    *,
    cache_root: Path,
    base_model: str | None = None,
    log: Callable[[str], None] = print,
    train: TrainFn = _train_adapter,
) -> Path:
    """The adapter for (data, config): reused from ``cache_root`` or trained into it now."""
    from filelock import FileLock

    key = training_key(data_dir, config_path, base_model)
    target = cache_root / key
    if is_complete(target):
        log(f"reusing trained candidate {target} (same data + config)")
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_root / f".{key}.lock")):
        if is_complete(target):  # another session trained it while we waited
            log(f"reusing trained candidate {target} (trained by a concurrent session)")
            return target
        overrides = {"model.base_model": base_model} if base_model else None
        log(f"training candidate from {data_dir} into {target} (no cached result)")
        out = train(data_dir, target, config_path=config_path, overrides=overrides)
    return Path(out)
