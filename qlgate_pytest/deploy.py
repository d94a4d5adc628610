"""Deployment config for approved adapters: a ``vllm serve`` command line (or its YAML config)
made only from gate reports that passed and whose adapters are still the files that were gated.

A report is refused when it did not pass, when it does not record its adapter's identity (an
adapter that cannot be re-identified cannot be shown to be the approved one), when the adapter's
files now differ (retrained, reconfigured or replaced since the gate: stale; the refusal names
the files), or when reports for one server disagree on the base model. The identity is
``qlgate_core/adapter_identity.py``'s: ``adapter_config.json`` and every other file an engine reads,
recorded the same for every engine under ``run.adapters.candidate`` (``adapter_record.py``).
Multi-LoRA sizing comes from the adapters themselves:
``--max-loras`` is the number of adapters, ``--max-lora-rank`` the smallest vLLM rank that fits
the largest adapter rank.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlgate_core.adapter_identity import (
    SCHEME,
    AdapterIdentity,
    AdapterIdentityError,
    adapter_identity,
)
from qlgate_core.errors import ReportError

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM worker extension that loads qlgate's verified CPU LoRA fix (engines/vllm_patch.py); named
# here as a string so deploying never imports torch.
CPU_LORA_FIX = "qlgate_pytest.engines.vllm_patch.LoRAFixExtension"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DeployRefused(ReportError):
    """A report cannot back a deployment; the message says which report and why."""


@dataclass(frozen=True)
class ApprovedAdapter:
    """One adapter a passing, current report approves."""

    name: str
    path: Path
    rank: int
    sha256: str  # qlgate_core.adapter_identity: config, weights and every file an engine reads
    report: Path
    base_model: str


@dataclass(frozen=True)
class ServeConfig:
    """What ``vllm serve`` needs for the approved adapters."""

    base_model: str
    adapters: tuple[ApprovedAdapter, ...]
    max_lora_rank: int
    max_model_len: int | None = None
    port: int | None = None
    worker_extension: str | None = None

    def args(self) -> list[str]:
        """``vllm serve`` arguments (after the program name)."""
        out = ["serve", self.base_model, "--enable-lora", "--lora-modules"]
        out += [f"{a.name}={a.path}" for a in self.adapters]
        out += ["--max-loras", str(len(self.adapters)), "--max-lora-rank", str(self.max_lora_rank)]
        if self.max_model_len is not None:
            out += ["--max-model-len", str(self.max_model_len)]
        if self.port is not None:
            out += ["--port", str(self.port)]
        if self.worker_extension is not None:
            out += ["--worker-extension-cls", self.worker_extension]
        return out

    def command(self, program: str = "vllm") -> str:
        """The shell command line, quoted."""
        return shlex.join([*shlex.split(program), *self.args()])

    def yaml_text(self) -> str:
        """The same settings as a ``vllm serve --config FILE`` YAML (JSON scalars are YAML)."""
        lines = [
            "# vllm serve --config THIS_FILE  (made by python -m qlgate_pytest deploy)",
            f"model: {json.dumps(self.base_model)}",
            "enable-lora: true",
            "lora-modules:",
            *(f"  - {json.dumps(f'{a.name}={a.path}')}" for a in self.adapters),
            f"max-loras: {len(self.adapters)}",
            f"max-lora-rank: {self.max_lora_rank}",
        ]
        if self.max_model_len is not None:
            lines.append(f"max-model-len: {self.max_model_len}")
        if self.port is not None:
            lines.append(f"port: {self.port}")
        if self.worker_extension is not None:
            lines.append(f"worker-extension-cls: {json.dumps(self.worker_extension)}")
        lines += [f"# {a.name}: {a.sha256} approved by {a.report}" for a in self.adapters]
        return "\n".join(lines) + "\n"


def lora_rank_for(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that is >= ``rank``."""
    for allowed in VLLM_RANKS:
        if allowed >= rank:
            return allowed
    raise DeployRefused(f"LoRA rank {rank} exceeds vLLM's largest --max-lora-rank {VLLM_RANKS[-1]}")


def recorded_adapter(report: Mapping[str, Any]) -> tuple[Path, AdapterIdentity | None]:
    """The candidate adapter's path and identity as the report recorded them
    (``run.adapters.candidate``); the path falls back to ``run.candidate``.

    A record with ``error`` (the adapter changed during the run, or could not be identified)
    or without a ``sha256`` (a report of an older qlgate that hashed the weights only) gives
    no identity: nothing vouches for its files.
    """
    run = report.get("run") or {}
    entry = (run.get("adapters") or {}).get("candidate") or {}
    path = entry.get("path") or run.get("candidate")
    if not isinstance(path, str) or not path:
        raise DeployRefused("field 'run.candidate': the report names no candidate adapter")
    if not isinstance(entry, Mapping) or entry.get("error") or not entry.get("sha256"):
        return Path(path), None
    try:
        return Path(path), AdapterIdentity.from_json(entry)
    except AdapterIdentityError as exc:
        raise DeployRefused(f"field 'run.adapters.candidate': {exc}") from None


def recorded_base(report: Mapping[str, Any]) -> str | None:
    """The base model the gate loaded (its path), if the report says."""
    base = (report.get("run") or {}).get("base_model")
    if isinstance(base, Mapping):
        path = base.get("path") or base.get("spec")
        return str(path) if path else None
    return str(base) if isinstance(base, str) and base else None


def approve(report_path: Path, report: Mapping[str, Any], name: str | None) -> ApprovedAdapter:
    """The adapter ``report`` approves, or :class:`DeployRefused` saying why not."""
    from qlgate_pytest.preflight import inspect_adapter

    where = str(report_path)
    if report.get("passed") is not True:
        reasons = "; ".join(str(r) for r in (report.get("reasons") or [])[:3]) or "no reason given"
        raise DeployRefused(
            f"{where}: the gate did not pass ({reasons}); a failing report "
            "cannot approve a deployment"
        )
    try:
        path, recorded = recorded_adapter(report)
    except DeployRefused as exc:
        raise DeployRefused(f"{where}: {exc}") from None
    if recorded is None:
        entry = ((report.get("run") or {}).get("adapters") or {}).get("candidate") or {}
        why = entry.get("error") if isinstance(entry, Mapping) else None
        raise DeployRefused(
            f"{where}: field 'run.adapters.candidate.sha256' is missing"
            + (f" ({why})" if why else "")
            + f": the report does not record which adapter files it approved, so {path} "
            "cannot be shown to be them; re-run the gate with a qlgate that records them"
        )
    if not (path / "adapter_config.json").is_file():
        raise DeployRefused(
            f"{where}: the approved adapter {path} is gone (no adapter_config.json)"
        )
    if recorded.scheme != SCHEME:
        raise DeployRefused(
            f"{where}: the report's adapter identity is of scheme {recorded.scheme}, this qlgate "
            f"computes scheme {SCHEME}: they cannot be compared; gate it again"
        )
    try:
        current = adapter_identity(path)
    except AdapterIdentityError as exc:
        raise DeployRefused(f"{where}: cannot identify {path}: {exc}") from None
    if current.sha256 != recorded.sha256:
        changed = recorded.changes(current) or ["the identity itself"]
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise DeployRefused(
            f"{where}: stale report: {path} changed after the gate: {', '.join(changed[:5])}"
            f"{more} (approved {recorded.sha256[:12]}..., now {current.sha256[:12]}...); "
            "gate it again"
        )
    label = name or path.name
    if not _NAME.match(label):
        raise DeployRefused(f"adapter name {label!r} for {path}: use letters, digits, _ . -")
    base = recorded_base(report)
    if base is None:
        raise DeployRefused(f"{where}: field 'run.base_model' is missing; pass --base-model")
    return ApprovedAdapter(
        label, path.resolve(), inspect_adapter(path).rank, recorded.sha256, report_path, base
    )


def serve_config(
    adapters: Sequence[ApprovedAdapter],
    *,
    base_model: str | None = None,
    max_model_len: int | None = None,
    port: int | None = None,
    worker_extension: str | None = None,
) -> ServeConfig:
    """One server for every approved adapter; they must share a base model and unique names."""
    if not adapters:
        raise DeployRefused("no adapters to deploy")
    names = [a.name for a in adapters]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DeployRefused(f"adapter name(s) {twice} used twice; give each one --name")
    bases = {a.base_model for a in adapters}
    if base_model is None and len(bases) > 1:
        raise DeployRefused(
            f"the reports were gated on different base models ({sorted(bases)}); one vLLM server "
            "serves one base model"
        )
    return ServeConfig(
        base_model=base_model or next(iter(bases)),
        adapters=tuple(adapters),
        max_lora_rank=lora_rank_for(max(a.rank for a in adapters)),
        max_model_len=max_model_len,
        port=port,
        worker_extension=worker_extension,
    )
