"""``python -m training doctor``: report the ML stack's versions, known-bad combinations, CUDA,
bf16, memory against the base model, and the model cache's integrity; exit 1 on a blocking
problem, each with its fix.

This module gathers the facts (imports, subprocess import probes, file reads); the rules are
pure, in :mod:`training.doctor`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

from training.doctor import STACK, Facts, Finding, Gpu, ModelFacts, diagnose, exit_code
from training.errors import ModelResolutionError

# Imported in a child process: a broken build can crash or hang the importer (bitsandbytes with
# `kernels` reaches for the hub), and the doctor must survive to report it.
PROBED = ("bitsandbytes", "torchvision", "torchaudio")
_PROBE_TIMEOUT_S = 180
_ENV_KEYS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CUDA_VISIBLE_DEVICES", "QLGATE_HOME")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-model",
        default="embedded",
        metavar="SPEC",
        help="base model to check memory and cache for (default: embedded)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16", "4bit"),
        help="dtype the model will run at (auto: bfloat16 on GPU, float32 on CPU)",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument(
        "--no-import-probes",
        action="store_true",
        help="skip importing bitsandbytes/torchvision in child processes (faster)",
    )


# -- facts ------------------------------------------------------------------------------------


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def requirement_problems(versions: dict[str, str | None], extra: str) -> tuple[str, ...]:
    """Declared requirements among the stack (and qlgate's own, with ``extra``) that the
    installed versions do not satisfy."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    stack = {canonicalize_name(n) for n in STACK}
    problems = []
    owners = [n for n in STACK if versions.get(n)] + (["qlgate"] if _version("qlgate") else [])
    for owner in owners:
        for text in metadata.requires(owner) or []:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            env = {"extra": extra if owner == "qlgate" else ""}
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = canonicalize_name(req.name)
            if owner != "qlgate" and name not in stack:
                continue
            found = _version(name)
            if found is None:
                if owner == "qlgate":
                    problems.append(f"qlgate[{extra}] needs {req}, which is not installed")
            elif not req.specifier.contains(found, prereleases=True):
                problems.append(f"{owner} needs {req}, found {name} {found}")
    return tuple(dict.fromkeys(problems))


def _probe(module: str) -> str | None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"import {module} hung for {_PROBE_TIMEOUT_S} s (a download attempt?)"
    if done.returncode == 0:
        return None
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"import {module} exited {done.returncode}"


def import_errors(versions: dict[str, str | None]) -> dict[str, str]:
    modules = [m for m in PROBED if versions.get(m)]
    with ThreadPoolExecutor(max_workers=max(1, len(modules))) as pool:
        results = dict(zip(modules, pool.map(_probe, modules), strict=True))
    return {m: err for m, err in results.items() if err is not None}


def _gpus() -> tuple[str | None, tuple[Gpu, ...]]:
    try:
        import torch
    except ImportError:
        return None, ()
    cuda = torch.version.cuda
    if cuda is None or not torch.cuda.is_available():
        return cuda, ()
    gpus = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        gpus.append(
            Gpu(i, torch.cuda.get_device_name(i), free, total, torch.cuda.get_device_capability(i))
        )
    return cuda, tuple(gpus)


def _cpu_bf16_native() -> bool | None:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _ram_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def safetensors_params(path: Path) -> int:
    """Parameter count from a safetensors file's header; ValueError if the file is truncated or
    its header does not describe exactly its bytes."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        if header_len <= 0 or 8 + header_len > size:
            raise ValueError(f"{path.name}: header length {header_len} exceeds the file")
        header = json.loads(handle.read(header_len))
    end, params = 0, 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        end = max(end, int(tensor["data_offsets"][1]))
        params += math.prod(int(d) for d in tensor["shape"])
    if 8 + header_len + end != size:
        raise ValueError(
            f"{path.name}: header describes {8 + header_len + end} bytes, file has {size}"
        )
    return params


def _weights_facts(spec: str, directory: Path, verified: str) -> ModelFacts:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return ModelFacts(spec, "corrupt", "no *.safetensors weights", path=str(directory))
    try:
        params = sum(safetensors_params(f) for f in files)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return ModelFacts(spec, "corrupt", f"unreadable weights: {exc}", path=str(directory))
    detail = f"{len(files)} safetensors file(s), {verified}"
    return ModelFacts(spec, "ok", detail, n_params=params, path=str(directory))


class _NotCached(Exception):
    pass


def _refuse_conversion(gguf: Path, out: Path) -> None:
    # The doctor reports; it never spends 30 s converting a model as a side effect.
    raise _NotCached


def model_facts(spec: str) -> ModelFacts:
    from training import models

    try:
        if spec == models.EMBEDDED:
            try:
                path = models.embedded_model_dir(convert=_refuse_conversion)
            except _NotCached:
                return ModelFacts(
                    spec,
                    "absent",
                    "not converted yet, or its cache failed the "
                    "sha256 check; it is rebuilt on first use",
                )
            return _weights_facts(spec, path, "sha256 of every file matches its marker")
        return _weights_facts(spec, models.resolve(spec).path, "headers consistent with sizes")
    except ModelResolutionError as exc:
        return ModelFacts(spec, "unresolvable", str(exc))


def gather(spec: str | None, *, probe_imports: bool = True) -> Facts:
    versions = {name: _version(name) for name in STACK}
    torch_cuda, gpus = _gpus() if versions.get("torch") else (None, ())
    extra = "gpu" if gpus else "cpu"
    return Facts(
        python=(sys.version_info.major, sys.version_info.minor, sys.version_info.micro),
        versions=versions,
        requirement_problems=requirement_problems(versions, extra),
        import_errors=import_errors(versions) if probe_imports else {},
        torch_cuda=torch_cuda,
        nvidia_driver=shutil.which("nvidia-smi") is not None,
        gpus=gpus,
        cpu_bf16_native=_cpu_bf16_native(),
        ram_available_bytes=_ram_available(),
        model=model_facts(spec) if spec else None,
        env={k: os.environ[k] for k in _ENV_KEYS if k in os.environ},
    )


# -- output -----------------------------------------------------------------------------------

_LABEL = {"ok": " OK ", "warn": "WARN", "fail": "FAIL"}


def format_findings(findings: list[Finding]) -> list[str]:
    width = max((len(f.check) for f in findings), default=0)
    lines = []
    for f in findings:
        lines.append(f"[{_LABEL[f.status]}] {f.check:<{width}}  {f.detail}")
        if f.fix and f.status != "ok":
            lines.append(f"       {'':<{width}}  fix: {f.fix}")
    fails = sum(f.status == "fail" for f in findings)
    warns = sum(f.status == "warn" for f in findings)
    verdict = "blocking problem(s): fix them before training or gating" if fails else "ready"
    lines.append(f"{fails} blocking, {warns} warning(s): {verdict}")
    return lines


def run(args: argparse.Namespace) -> int:
    facts = gather(args.base_model, probe_imports=not args.no_import_probes)
    findings = diagnose(facts, dtype=args.dtype)
    if args.json:
        rows = [dataclasses.asdict(f) for f in findings]
        print(json.dumps({"exit_code": exit_code(findings), "findings": rows}, indent=2))
    else:
        print("\n".join(format_findings(findings)))
    return exit_code(findings)
