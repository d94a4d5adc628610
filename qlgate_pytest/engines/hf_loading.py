"""Loading for the ``hf`` engine: device and dtype choice, the base model, the role adapters.

Nothing here runs a forward pass; :mod:`qlgate_pytest.engines.hf` puts the pieces together.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlgate_core.errors import EngineError
from qlgate_pytest.engines.base import ROLES, EngineConfig, Role

INSTALL = "pip install 'qlgate[cpu]'"
DTYPES = ("float32", "bfloat16", "float16")


def error_text(exc: BaseException) -> str:
    """One line naming the exception, short enough for a report row."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


def check_adapter_dir(path: Path) -> None:
    """Refuse a directory that is not a safetensors peft adapter (pickles are never loaded)."""
    if not path.is_dir():
        raise EngineError(f"adapter directory {path} does not exist")
    if not (path / "adapter_config.json").is_file():
        raise EngineError(f"{path} has no adapter_config.json; it is not a peft adapter")
    if not (path / "adapter_model.safetensors").is_file():
        raise EngineError(
            f"{path} has no adapter_model.safetensors; only safetensors adapters are loaded"
        )


def pick_device(requested: str, torch: Any) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device {requested!r} requested but CUDA is not available")
    return requested


def pick_dtype(requested: str, device: str) -> str:
    """``auto``: float32 on CPU (no bf16 matmul units here: bench/README.md), bfloat16 on CUDA."""
    if requested == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if requested not in DTYPES:
        raise EngineError(f"dtype {requested!r} is not one of {', '.join(DTYPES)}")
    return requested


def import_stack() -> Any:
    """The torch module, or an EngineError naming the extra to install."""
    try:
        import peft  # noqa: F401
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise EngineError(f"the hf engine needs torch, transformers and peft: {INSTALL}") from exc
    return torch


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot load the tokenizer of {path}: {error_text(exc)}") from exc
    check_tokenizer(tokenizer, str(path))
    return tokenizer


def check_tokenizer(tokenizer: Any, source: str) -> None:
    if getattr(tokenizer, "chat_template", None) is None:
        raise EngineError(f"the tokenizer of {source} has no chat template")


def load_base(path: Path, dtype_name: str, torch: Any) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype_name))
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot load base model {path}: {error_text(exc)}") from exc


def end_ids(tokenizer: Any, base: Any) -> tuple[int, frozenset[int]]:
    """(pad id, end-of-answer ids): the generation config's eos ids, else the tokenizer's."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = base.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    return int(pad), frozenset(eos if isinstance(eos, list) else [int(eos)])


@dataclass
class Attached:
    """The served model and, per role, the adapter name it runs under (None: adapter off)."""

    model: Any
    adapter_names: dict[Role, str | None]
    is_peft: bool


def attach_adapters(base: Any, config: EngineConfig) -> Attached:
    """Load each requested role's adapter once, under the role's name, onto ``base``."""
    from peft import PeftModel

    names: dict[Role, str | None] = {}
    model: Any = None
    adapters: Mapping[Role, Path | None] = config.adapters
    for role in ROLES:
        if role not in adapters:
            continue  # a role nobody asked for is not served
        path = adapters[role]
        if path is None:
            names[role] = None
            continue
        check_adapter_dir(path)
        try:
            if model is None:
                model = PeftModel.from_pretrained(
                    base, str(path), adapter_name=role, is_trainable=False
                )
            else:
                model.load_adapter(str(path), adapter_name=role, is_trainable=False)
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise EngineError(
                f"adapter {path} does not load onto base model {config.base_model}: "
                f"{error_text(exc)}"
            ) from exc
        names[role] = role
    served = model if model is not None else base
    served.eval()
    return Attached(served, names, model is not None)


def cache_kwarg(base: Any) -> str:
    """transformers 5.2x renamed the forward's ``past_key_values`` to ``cache``."""
    forward = inspect.signature(base.forward).parameters
    return "cache" if "cache" in forward else "past_key_values"
