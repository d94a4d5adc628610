"""Training configuration: a TOML file validated into frozen dataclasses, plus the hardware plan.

The defaults are the reference QLoRA recipe (nf4 + double quant, bf16 compute, LoRA r16/alpha32/
dropout .05 on all seven projections, paged AdamW 8-bit, cosine LR 2e-4, warmup .05, gradient
clipping .3, gradient checkpointing). ``auto`` values are resolved per machine by ``resolve_plan``,
which is pure so its fallbacks are unit-tested:

- quantization ``auto``: nf4 on CUDA; none on CPU, because bitsandbytes 0.50.2 silently zeroes LoRA
  gradients through 4-bit layers once the model has run an eval-mode forward (DESIGN.md §6).
- compute dtype ``auto``: bf16 where the device supports it, else fp16 on CUDA and fp32 on CPU.
- optimizer ``auto``: paged AdamW 8-bit on CUDA; plain AdamW on CPU (paged optimizers need CUDA).

A file is ``[model]``, ``[lora]``, ``[train]``, ``[eval]``, ``[guard]`` and ``[oom]`` tables; an
unknown table or key, or a bad value, raises ``ConfigError`` naming ``file:line``, the key and the
value. ``python -m training train --list-options`` prints every option with its help.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from training.errors import ConfigError
from training.tomlconf import key_line, read_toml

_STRICT = ConfigDict(extra="forbid")
SEVEN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _help(text: str) -> Any:
    """An option's help text, kept in its type (``Annotated``) and shown by --list-options."""
    return Field(description=text)


PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Ratio = Annotated[float, Field(ge=0, lt=1)]


@dataclass(frozen=True)
class ModelSection:
    __pydantic_config__ = _STRICT
    base_model: Annotated[str, _help("'embedded', a local model directory, or a cached hub id")] = (
        "embedded"
    )
    device: Annotated[
        Literal["auto", "cpu", "cuda"], _help("where to train; auto = CUDA if present")
    ] = "auto"
    quantization: Annotated[
        Literal["auto", "nf4", "fp4", "none"],
        _help(
            "4-bit base weights (QLoRA) or none; auto = nf4 on CUDA, none on CPU (bitsandbytes "
            "CPU defect: zero LoRA gradients after any eval-mode forward)"
        ),
    ] = "auto"
    double_quant: Annotated[bool, _help("quantize the 4-bit quantization constants too")] = True
    compute_dtype: Annotated[
        Literal["auto", "bf16", "fp16", "fp32"],
        _help("matmul dtype; auto = bf16 where supported, else fp16 (CUDA) / fp32 (CPU)"),
    ] = "auto"
    attn_implementation: Annotated[
        Literal["sdpa", "eager", "flash_attention_2"],
        _help("attention kernel passed to from_pretrained"),
    ] = "sdpa"
    liger_kernels: Annotated[
        bool, _help("Liger's fused RMSNorm/SwiGLU/RoPE kernels (CUDA; needs liger-kernel)")
    ] = False


@dataclass(frozen=True)
class LoraSection:
    __pydantic_config__ = _STRICT
    r: Annotated[PosInt, _help("LoRA rank")] = 16
    alpha: Annotated[PosInt, _help("LoRA scaling numerator (scale = alpha / r)")] = 32
    dropout: Annotated[Ratio, _help("dropout on the LoRA input")] = 0.05
    target_modules: Annotated[tuple[str, ...], _help("module names that get adapters")] = (
        SEVEN_PROJECTIONS
    )


@dataclass(frozen=True)
class TrainSection:
    __pydantic_config__ = _STRICT
    epochs: Annotated[PosFloat, _help("passes over the training split (unless max_steps)")] = 1.0
    max_steps: Annotated[PosInt | None, _help("stop after N optimizer steps; overrides epochs")] = (
        None
    )
    micro_batch_size: Annotated[
        PosInt,
        _help("examples per device per forward/backward (16: 2.2x the tokens/s of 4 on an H200)"),
    ] = 16
    gradient_accumulation_steps: Annotated[PosInt, _help("micro-batches per optimizer step")] = 1
    learning_rate: Annotated[PosFloat, _help("peak learning rate")] = 2e-4
    lr_scheduler: Annotated[
        Literal["cosine", "linear", "constant", "constant_with_warmup"],
        _help("learning-rate schedule after warm-up"),
    ] = "cosine"
    warmup_ratio: Annotated[Ratio, _help("share of the steps warming the LR up, in [0, 1)")] = 0.05
    weight_decay: Annotated[NonNegFloat, _help("AdamW weight decay")] = 0.0
    max_grad_norm: Annotated[NonNegFloat, _help("clip the gradient norm to this (0: off)")] = 0.3
    optimizer: Annotated[
        str,
        _help("a transformers optimizer name; auto = paged_adamw_8bit (CUDA), adamw_torch (CPU)"),
    ] = "auto"
    gradient_checkpointing: Annotated[
        bool, _help("recompute activations in backward to save memory")
    ] = True
    selective_checkpointing: Annotated[
        bool, _help("keep attention outputs, recompute the rest (trl's selective checkpointing)")
    ] = False
    checkpoint_every_n_layers: Annotated[
        PosInt, _help("checkpoint only every n-th decoder layer (1 = all): memory back for speed")
    ] = 1
    max_length: Annotated[PosInt, _help("tokens per example; longer ones are truncated")] = 1024
    packing: Annotated[bool, _help("pack examples padding-free into max_length rows (BFD)")] = False
    seed: Annotated[int, _help("seed for data order, dropout and LoRA init")] = 0
    threads: Annotated[
        NonNegInt, _help("torch CPU threads; 0 = $OMP_NUM_THREADS, else the cores idle at start")
    ] = 0
    logging_steps: Annotated[
        PosInt, _help("log (and let the guard see) the loss every N steps")
    ] = 1


@dataclass(frozen=True)
class EvalSection:
    __pydantic_config__ = _STRICT
    enabled: Annotated[bool, _help("evaluate on the validation split at every epoch end")] = True
    metric: Annotated[
        Literal["auto", "loss", "macro_f1"],
        _help("picks the best checkpoint; auto = macro_f1 when the rows carry labels"),
    ] = "auto"
    label_f1: Annotated[bool, _help("rank the labels by log-likelihood, report macro-F1")] = True
    baseline: Annotated[bool, _help("also score the base model before training")] = True
    batch_size: Annotated[PosInt, _help("sequences per forward during evaluation")] = 16
    max_examples: Annotated[PosInt | None, _help("score at most the first N validation rows")] = (
        None
    )


@dataclass(frozen=True)
class GuardSection:
    __pydantic_config__ = _STRICT
    enabled: Annotated[bool, _help("stop on NaN/inf or diverging loss, or zero LoRA gradients")] = (
        True
    )
    max_loss: Annotated[
        PosFloat | None, _help("stop when the loss exceeds this after warm-up (unset: off)")
    ] = 5.0
    warmup_steps: Annotated[
        NonNegInt | None,
        _help("steps before max_loss applies; unset = the LR warm-up, at least 10% of the steps"),
    ] = None
    spike_factor: Annotated[
        Annotated[float, Field(gt=1, allow_inf_nan=False)],
        _help("a loss above factor x the running median is a spike"),
    ] = 3.0
    spike_min_delta: Annotated[
        NonNegFloat, _help("a spike must also exceed the median by this much (noise near zero)")
    ] = 1.0
    spike_patience: Annotated[PosInt, _help("stop after this many consecutive spikes")] = 3
    median_window: Annotated[PosInt, _help("logged losses in the running median")] = 20
    min_history: Annotated[PosInt, _help("logged losses needed before spikes are judged")] = 5
    check_gradients: Annotated[
        bool, _help("stop when the LoRA gradient norm is zero or not finite")
    ] = True


@dataclass(frozen=True)
class OomSection:
    __pydantic_config__ = _STRICT
    retry: Annotated[
        bool, _help("on out-of-memory, retry with half the micro-batch and double accumulation")
    ] = False
    min_micro_batch: Annotated[PosInt, _help("do not retry below this micro-batch size")] = 1


@dataclass(frozen=True)
class TrainConfig:
    __pydantic_config__ = _STRICT
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    guard: GuardSection = field(default_factory=GuardSection)
    oom: OomSection = field(default_factory=OomSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (tuples become lists), as recorded in provenance."""
        out: dict[str, Any] = TypeAdapter(TrainConfig).dump_python(self, mode="json")
        return out


_ADAPTER = TypeAdapter(TrainConfig)
_SECTIONS: dict[str, type[Any]] = dict(get_type_hints(TrainConfig))


def options() -> Iterator[tuple[str, object, str]]:
    """Every option as (dotted key, default, help), in file order."""
    for section, cls in _SECTIONS.items():
        hints = get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            helps = [
                m.description
                for m in getattr(hints[f.name], "__metadata__", ())
                if isinstance(m, FieldInfo) and m.description
            ]
            yield f"{section}.{f.name}", f.default, helps[-1] if helps else ""


def load_config(
    path: Path | None = None, overrides: Mapping[str, object] | None = None
) -> TrainConfig:
    """The config in ``path`` (defaults when None) with ``overrides`` (dotted or unique bare
    keys, e.g. ``train.max_steps`` or ``max_steps``) applied on top, validated as a whole."""
    data: dict[str, Any] = {}
    text = ""
    source = "<defaults>"
    if path is not None:
        source = str(path)
        data, text = read_toml(path)
    for key, value in (overrides or {}).items():
        section, name = _split_key(key)
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table, got {table!r}")
        table[name] = list(value) if isinstance(value, tuple) else value
    return _validate(data, source, text, set(overrides or {}))


def _split_key(key: str) -> tuple[str, str]:
    if "." in key:
        section, _, name = key.partition(".")
        return section, name
    owners = [s for s, cls in _SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
    if len(owners) != 1:
        known = ", ".join(k for k, _, _ in options())
        raise ConfigError(f"override {key!r}: unknown option (known: {known})")
    return owners[0], key


def _validate(data: dict[str, Any], source: str, text: str, override_keys: set[str]) -> TrainConfig:
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        key = ".".join(loc)
        value = err.get("input")
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            valid = _valid_keys(loc[:-1])
            what = f"unknown key {key!r} = {value!r} (valid here: {valid})"
        else:
            what = f"{key} = {value!r}: {err['msg']}"
        where = source
        if key in override_keys or (loc and loc[-1] in override_keys):
            where = "override"
        else:
            line = key_line(text, loc)
            if line:
                where = f"{source}:{line}"
        raise ConfigError(f"{where}: {what}") from None


def _valid_keys(section_loc: list[str]) -> str:
    if not section_loc:
        return ", ".join(f"[{s}]" for s in _SECTIONS)
    cls = _SECTIONS.get(section_loc[0])
    return ", ".join(f.name for f in dataclasses.fields(cls)) if cls else "?"


# ---- the plan: what the config means on this machine ---------------------------------------


@dataclass(frozen=True)
class Hardware:
    """What the machine offers; built once from torch, passed in so planning stays pure."""

    cuda: bool
    cuda_bf16: bool = False
    cpu_bf16_native: bool = False
    world_size: int = 1


@dataclass(frozen=True)
class RunPlan:
    """The config resolved for one machine: every ``auto`` replaced, each fallback explained."""

    device: Literal["cpu", "cuda"]
    quantization: Literal["nf4", "fp4", "none"]
    compute_dtype: Literal["bf16", "fp16", "fp32"]
    optimizer: str
    evaluate_in_process: bool
    notes: tuple[str, ...] = ()


def resolve_plan(config: TrainConfig, hw: Hardware) -> RunPlan:
    """Resolve every ``auto`` for ``hw``; raise ``ConfigError`` on impossible combinations."""
    m, t = config.model, config.train
    notes: list[str] = []
    if m.device == "cuda" and not hw.cuda:
        raise ConfigError("model.device = 'cuda' but no CUDA device is available")
    device: Literal["cpu", "cuda"] = (
        "cuda" if (m.device == "cuda" or (m.device == "auto" and hw.cuda)) else "cpu"
    )

    quant: Literal["nf4", "fp4", "none"]
    if m.quantization == "auto":
        quant = "nf4" if device == "cuda" else "none"
        if device == "cpu":
            notes.append("quantization auto -> none on CPU (bitsandbytes CPU zero-gradient defect)")
    else:
        quant = m.quantization

    dtype: Literal["bf16", "fp16", "fp32"]
    if m.compute_dtype != "auto":
        dtype = m.compute_dtype
        if dtype == "bf16" and device == "cuda" and not hw.cuda_bf16:
            raise ConfigError("model.compute_dtype = 'bf16' but this GPU does not support bf16")
    elif device == "cuda":
        dtype = "bf16" if hw.cuda_bf16 else "fp16"
        if dtype == "fp16":
            notes.append("compute_dtype auto -> fp16: this GPU lacks bf16")
    else:
        dtype = "bf16" if hw.cpu_bf16_native else "fp32"
        if dtype == "fp32":
            notes.append("compute_dtype auto -> fp32: this CPU has no native bf16")

    optimizer = t.optimizer
    if optimizer == "auto":
        optimizer = "paged_adamw_8bit" if device == "cuda" else "adamw_torch"
    elif device == "cpu" and optimizer.startswith("paged_"):
        raise ConfigError(f"train.optimizer = {optimizer!r} needs CUDA; use adamw_torch on CPU")

    if m.liger_kernels and device != "cuda":
        raise ConfigError("model.liger_kernels = true needs CUDA (Triton kernels)")
    # The 4-bit model must never run an eval-mode forward on CPU while it still trains.
    in_process = config.eval.enabled and not (device == "cpu" and quant != "none")
    if config.eval.enabled and not in_process:
        notes.append("per-epoch evaluation skipped: 4-bit on CPU; the final adapter is scored once")
    if t.selective_checkpointing and not t.gradient_checkpointing:
        raise ConfigError(
            "train.selective_checkpointing = true needs gradient_checkpointing = true"
        )
    return RunPlan(device, quant, dtype, optimizer, in_process, tuple(notes))


def with_overrides(config: TrainConfig, **sections: Mapping[str, object]) -> TrainConfig:
    """A copy with some fields of some sections replaced (used by the OOM retry)."""
    changes = {
        name: dataclasses.replace(getattr(config, name), **dict(values))
        for name, values in sections.items()
    }
    return dataclasses.replace(config, **changes)
