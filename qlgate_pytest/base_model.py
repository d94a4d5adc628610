"""The base model a gate run serves: ``--base-model``, else the adapter's provenance, else its
``adapter_config.json``, else the embedded model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class BaseModelChoice:
    """The base model to load, and why this one."""

    spec: str
    path: Path
    reason: str


def base_model_for(adapter: Path, override: str | None) -> BaseModelChoice:
    """``--base-model``, else the adapter's provenance, else its adapter_config, else embedded."""
    from training.errors import ModelResolutionError
    from training.models import resolve

    if override:
        return BaseModelChoice(override, resolve(override).path, "--base-model")
    try:
        record = json.loads((adapter / "qlgate-provenance.json").read_text(encoding="utf-8"))
        spec, path = str(record["base_model"]["spec"]), Path(record["base_model"]["path"])
        try:
            return BaseModelChoice(spec, resolve(spec).path, "adapter provenance")
        except ModelResolutionError:
            if (path / "config.json").is_file():
                return BaseModelChoice(spec, path, "adapter provenance (recorded path)")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        name = config.get("base_model_name_or_path")
        if isinstance(name, str) and name:
            return BaseModelChoice(name, resolve(name).path, "adapter_config.json")
    except (OSError, ValueError, ModelResolutionError):
        pass
    return BaseModelChoice("embedded", resolve("embedded").path, "default (embedded model)")
