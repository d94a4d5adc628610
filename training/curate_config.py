"""Curation settings: frozen dataclasses with defaults, loaded from TOML at the boundary.

pydantic validates the TOML straight into the dataclasses (unknown keys rejected), so the
defaults live in one place; a bad key or value is a ``ConfigError`` naming the file, the line
of the key where it can be found, the dotted key and what is wrong.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config

from training.dedup import NearDupConfig
from training.errors import ConfigError
from training.pii import PiiConfig
from training.schema import UnknownKeyPolicy
from training.tomlconf import key_line, read_toml
from training.triggers import TriggerConfig

Policy = Literal["quarantine", "warn", "off"]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
_FORBID = ConfigDict(extra="forbid")


@with_config(_FORBID)
@dataclass(frozen=True)
class ReadConfig:
    """``max_line_bytes``: longer lines are quarantined as ``line_too_long`` (never loaded).
    ``workers``: processes that decode, validate and scrub lines (1: in the main process)."""

    max_line_bytes: Annotated[int, Field(ge=64)] = 1_000_000
    workers: Annotated[int, Field(ge=1, le=64)] = 1


@with_config(_FORBID)
@dataclass(frozen=True)
class SchemaConfig:
    """``unknown_keys``: top-level keys other than messages/metadata are kept under metadata,
    dropped, or rejected. ``labels``: if set, the allowed ``metadata.label`` values; a record
    without a label whose answer is one of them takes it as its label."""

    unknown_keys: UnknownKeyPolicy = "keep"
    labels: tuple[str, ...] = ()
    label_must_match_answer: bool = False


@with_config(_FORBID)
@dataclass(frozen=True)
class QualityConfig:
    """Keep records with ``metadata.quality_score >= min_score``; ``missing`` scores are
    rejected (as the reference design does) or kept."""

    min_score: Fraction = 0.8
    missing: Literal["reject", "keep"] = "reject"


@with_config(_FORBID)
@dataclass(frozen=True)
class PoisonConfig:
    """What to do with each poisoning flag: quarantine the records, keep them with a warning in
    the manifest, or skip the check."""

    conflicts: Policy = "quarantine"
    answer_similarity: Fraction = 0.5
    triggers: Policy = "quarantine"
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    injection: Policy = "quarantine"
    urls: Policy = "quarantine"
    url_allow: tuple[str, ...] = ()


@with_config(_FORBID)
@dataclass(frozen=True)
class LeakageConfig:
    """Training prompts at least this similar (Jaccard of shingles) to a golden prompt leak."""

    threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8


@with_config(_FORBID)
@dataclass(frozen=True)
class SplitConfig:
    """Held-out share per label (at least one example per label that has two or more)."""

    validation_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    seed: int = 0


@with_config(_FORBID)
@dataclass(frozen=True)
class AugmentConfig:
    """Teacher paraphrases of edge-case and under-represented examples (``n`` per source).

    ``teacher``: "embedded", a local model directory, or an OpenAI-compatible base URL
    (``teacher_model`` names the served model). Sources are train-split examples tagged with one
    of ``edge_tags`` or whose label has fewer than ``under_represented`` x the largest label's
    count; synthetic records never exceed ``max_ratio`` x the kept human records.
    """

    n: Annotated[int, Field(ge=0, le=32)] = 0
    teacher: str = "embedded"
    teacher_model: str = "default"
    api_key_env: str = "OPENAI_API_KEY"
    max_ratio: Annotated[float, Field(ge=0.0, le=10.0)] = 0.5
    max_sources: Annotated[int, Field(ge=1)] | None = None
    edge_tags: tuple[str, ...] = ("edge",)
    under_represented: Fraction = 0.5
    max_new_tokens: Annotated[int, Field(ge=8, le=512)] = 64
    temperature: Annotated[float, Field(gt=0.0, le=2.0)] = 0.9
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    batch_size: Annotated[int, Field(ge=1, le=256)] = 8
    timeout_s: Annotated[float, Field(gt=0.0)] = 60.0
    threads: Annotated[int, Field(ge=1, le=64)] = 1
    seed: int = 0


@with_config(_FORBID)
@dataclass(frozen=True)
class CurateConfig:
    """Every curation setting; ``configs/curate.toml`` sets a subset, the rest are defaults."""

    read: ReadConfig = field(default_factory=ReadConfig)
    schema: SchemaConfig = field(default_factory=SchemaConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    dedup: NearDupConfig = field(default_factory=NearDupConfig)
    poison: PoisonConfig = field(default_factory=PoisonConfig)
    leakage: LeakageConfig = field(default_factory=LeakageConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


_ADAPTER = TypeAdapter(CurateConfig)


def config_from_mapping(data: dict[str, Any], source: str = "<config>") -> CurateConfig:
    """Validate a mapping (parsed TOML) into a ``CurateConfig``; ``source`` names it in errors."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, None)) from None


def load_config(path: Path | None) -> CurateConfig:
    """Defaults when ``path`` is None, else the TOML file validated over the defaults."""
    if path is None:
        return CurateConfig()
    data, text = read_toml(path)
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path), text)) from None


def config_to_dict(config: CurateConfig) -> dict[str, Any]:
    """Plain JSON-ready form, for the manifest."""
    result: dict[str, Any] = _ADAPTER.dump_python(config, mode="json")
    return result


def with_overrides(config: CurateConfig, **sections: dict[str, Any]) -> CurateConfig:
    """``config`` with fields replaced per section, e.g. ``augment={"n": 2}`` (command-line
    options win over the file); ``None`` values are ignored. Validated like a file."""
    changes = {
        name: {k: v for k, v in fields.items() if v is not None}
        for name, fields in sections.items()
    }
    if not any(changes.values()):
        return config
    data = config_to_dict(config)
    for name, fields in changes.items():
        data[name].update(fields)
    return config_from_mapping(data, "command line")


def _describe(exc: ValidationError, source: str, text: str | None) -> str:
    error = exc.errors(include_url=False)[0]
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        what = "unknown key"
    else:
        what = f"{error['msg']} (got {error.get('input')!r})"
    line = key_line(text, [str(p) for p in error["loc"]]) if text else None
    where = f"{source}:{line}" if line else source
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more)" if more else ""
    return f"{where}: {key}: {what}{suffix}"


def replace(config: CurateConfig, **sections: Any) -> CurateConfig:
    """``dataclasses.replace`` re-exported for callers that build configs in code (tests)."""
    return dataclasses.replace(config, **sections)
