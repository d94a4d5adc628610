"""qlgate's own ``pytest_qlgate_generation_cache``: the content-addressed cache in
``.qlgate_cache/gen/`` (``gen_cache.py``) between the driver and the engine.

Everything a key needs is known before the engine is loaded: content hashes of the base weights,
each role's adapter identity (``adapter_config.json``, weights and every other file an engine
reads: ``qlgate_core/adapter_identity.py``) and the tokenizer + chat template, the engine's name,
factory and library versions, and the decoding settings. That is what lets a fully cached run
skip loading the model (``lazy_engine.py``). The cache never fails a gate: if an identity cannot
be computed, the run proceeds uncached and the report says why.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from qlgate_core.fingerprint import TOKENIZER_FILES, sha256_json
from qlgate_pytest.gen_cache import (
    DEFAULT_ROOT,
    NO_ADAPTER,
    DriverCache,
    GenCache,
    ModelIdentity,
    adapter_hash,
    tokenizer_template_hash,
    weights_hash,
)

if TYPE_CHECKING:
    from qlgate_pytest.engines.base import EngineConfig
    from qlgate_pytest.options import GateOptions

# Libraries whose version changes an engine's numerics; the engine's own module is added.
ENGINE_LIBRARIES: Mapping[str, tuple[str, ...]] = {
    "hf": ("torch", "transformers", "peft"),
    "vllm": ("vllm", "torch", "transformers"),
}


def cache_root(options: GateOptions, rootdir: Path) -> Path:
    """``--gen-cache-dir``, else ``.qlgate_cache`` under the rootdir."""
    return options.gen_cache_dir if options.gen_cache_dir is not None else rootdir / DEFAULT_ROOT


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def device_class(requested: str) -> str:
    """``cpu`` or ``cuda`` for a ``--gate-device`` value, without importing torch (4 s).

    ``auto`` resolves as the engines do (CUDA when a usable GPU is visible); CPU and GPU
    kernels give different numerics, so their answers must not share cache entries.
    """
    if requested != "auto":
        return requested.split(":")[0]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "cpu"
    return "cuda" if Path("/proc/driver/nvidia/gpus").is_dir() else "cpu"


def engine_identity(name: str) -> dict[str, Any]:
    """What identifies an engine's code without building it: name, factory, library versions.

    Importing the factory's module is cheap (engines import torch/vLLM when built, not when
    imported). Anything that fails here leaves the identity without that part, never raises.
    """
    info: dict[str, Any] = {"engine": name}
    try:
        from qlgate_pytest.engines.registry import get_engine_factory

        factory = get_engine_factory(name)
        module = getattr(factory, "__module__", "") or ""
        info["factory"] = f"{module}:{getattr(factory, '__qualname__', type(factory).__name__)}"
    except Exception:
        module = ""
    dists = {"qlgate", *ENGINE_LIBRARIES.get(name, ())}
    top = module.split(".")[0]
    if top and top != "qlgate_pytest":
        dists |= set(metadata.packages_distributions().get(top, ()))
    info["versions"] = {d: _version(d) for d in sorted(dists)}
    return info


def engine_version(identity: Mapping[str, Any]) -> str:
    """One string over the identity (factory and versions), for the cache key."""
    return sha256_json({k: v for k, v in identity.items() if k != "engine"})


def _tokenizer_identity(base: Path, adapter: Path | None) -> str:
    """The base's tokenizer + template, and the adapter's own when it ships one (an engine
    may serve that one instead; either way a change must miss)."""
    parts = [tokenizer_template_hash(base)]
    if adapter is not None and any(
        (adapter / n).is_file() for n in (*TOKENIZER_FILES, "chat_template.jinja")
    ):
        parts.append(tokenizer_template_hash(adapter))
    return parts[0] if len(parts) == 1 else sha256_json(parts)


def build_cache(
    options: GateOptions,
    rootdir: Path,
    engine_config: EngineConfig,
    engine_info: Mapping[str, Any],
) -> tuple[DriverCache, GenCache]:
    """The driver cache for this run's roles; raises OSError/ValueError when an identity
    cannot be computed (the caller then runs uncached)."""
    store = GenCache(cache_root(options, rootdir), enabled=not options.no_gen_cache)
    base = engine_config.base_model
    base_hash = weights_hash(base)
    identities: dict[str, ModelIdentity] = {
        role: ModelIdentity(
            base_hash,
            adapter_hash(adapter).sha256 if adapter is not None else NO_ADAPTER,
            _tokenizer_identity(base, adapter),
        )
        for role, adapter in engine_config.adapters.items()
    }
    sampling = {
        "decoding": "greedy",
        "seed": engine_config.seed,
        "dtype": engine_config.dtype,
        "device": device_class(engine_config.device),
        # Batch layout moves fp32 log-likelihoods by ~1e-5: conservative, a new size misses.
        "batch_size": engine_config.batch_size,
        "extra": {k: repr(v) for k, v in sorted(engine_config.extra.items())},
    }
    cache = DriverCache(
        store,
        identities,
        engine=str(engine_info.get("engine", options.engine)),
        engine_version=engine_version(engine_info),
        sampling=sampling,
    )
    return cache, store


@pytest.hookimpl(trylast=True)
def pytest_qlgate_generation_cache(
    config: pytest.Config, engine_config: EngineConfig, engine_info: Mapping[str, Any]
) -> DriverCache | None:
    """The default cache (a conftest or plugin answering first replaces it)."""
    from qlgate_pytest.session import GATE_KEY

    gate = config.stash.get(GATE_KEY, None)
    if gate is None:
        return None
    try:
        cache, store = build_cache(gate.options, config.rootpath, engine_config, engine_info)
    except (OSError, ValueError) as exc:
        gate.cache_note = f"generation cache off: cannot identify the models: {exc}"
        return None
    gate.gen_cache = store
    return cache
