"""The training config: TOML loading, unknown keys, bad values, overrides and the hardware plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import (
    SEVEN_PROJECTIONS,
    Hardware,
    TrainConfig,
    load_config,
    options,
    resolve_plan,
    with_overrides,
)
from training.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "qlora.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_reference_recipe() -> None:
    """Without a file the config is the reference QLoRA recipe."""
    c = load_config()
    assert (c.lora.r, c.lora.alpha, c.lora.dropout) == (16, 32, 0.05)
    assert c.lora.target_modules == SEVEN_PROJECTIONS
    assert (c.train.learning_rate, c.train.lr_scheduler, c.train.warmup_ratio) == (
        2e-4,
        "cosine",
        0.05,
    )
    assert (c.train.max_grad_norm, c.train.gradient_checkpointing) == (0.3, True)
    assert c.guard.max_loss == 5.0
    plan = resolve_plan(c, Hardware(cuda=True, cuda_bf16=True))
    assert (plan.quantization, plan.compute_dtype, plan.optimizer) == (
        "nf4",
        "bf16",
        "paged_adamw_8bit",
    )
    assert c.model.double_quant


def test_unknown_key_is_named_with_file_and_line(tmp_path: Path) -> None:
    """A misspelt key is rejected with file:line, the dotted key, its value and the valid keys."""
    path = _write(tmp_path, "[train]\nmax_steps = 3\n\nlerning_rate = 1e-4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}:4" in message
    assert "train.lerning_rate" in message and "0.0001" in message
    assert "learning_rate" in message.split("valid here:")[1]


def test_unknown_table_is_named(tmp_path: Path) -> None:
    """An unknown [table] is rejected with its line and the valid tables."""
    path = _write(tmp_path, "# comment\n[trian]\nmax_steps = 3\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: unknown key 'trian'.*\[train\]"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[model]\nquantization = "int8"\n', "model.quantization = 'int8'"),
        ("[train]\nlearning_rate = -1.0\n", "train.learning_rate = -1.0"),
        ("[train]\nwarmup_ratio = 1.5\n", "train.warmup_ratio = 1.5"),
        ("[lora]\nr = 0\n", "lora.r = 0"),
        ('[lora]\ntarget_modules = "q_proj"\n', "lora.target_modules = 'q_proj'"),
        ("[guard]\nspike_factor = 0.5\n", "guard.spike_factor = 0.5"),
    ],
)
def test_bad_value_names_key_value_and_line(tmp_path: Path, text: str, needle: str) -> None:
    """A value of the wrong type or range names the key, the value and the line."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:2: ")
    assert needle in str(info.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    """Unparseable TOML and a missing file are ConfigErrors naming the file."""
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[train\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_overrides_dotted_and_bare_keys(tmp_path: Path) -> None:
    """Overrides apply over the file; bare keys resolve to their unique table."""
    path = _write(tmp_path, "[train]\nmax_steps = 30\nmicro_batch_size = 8\n")
    c = load_config(path, {"max_steps": 5, "lora.target_modules": ["q_proj"], "base_model": "x"})
    assert c.train.max_steps == 5 and c.train.micro_batch_size == 8
    assert c.lora.target_modules == ("q_proj",)
    assert c.model.base_model == "x"


def test_bad_override_says_override() -> None:
    """An invalid override names the key and says it came from an override, not the file."""
    with pytest.raises(ConfigError, match=r"^override: train.max_steps = 0"):
        load_config(None, {"max_steps": 0})
    with pytest.raises(ConfigError, match="override 'nope': unknown option"):
        load_config(None, {"nope": 1})
    with pytest.raises(ConfigError, match="override 'enabled': unknown option"):
        load_config(None, {"enabled": True})  # ambiguous: eval.enabled and guard.enabled


def test_every_option_has_help() -> None:
    """Every option carries help text (shown by --list-options)."""
    listed = list(options())
    assert len(listed) > 30
    assert all(help_text for _, _, help_text in listed)


def test_shipped_config_loads() -> None:
    """configs/qlora.toml (the README pipeline's config) is valid."""
    c = load_config(REPO / "configs" / "qlora.toml")
    plan = resolve_plan(c, Hardware(cuda=False))
    assert plan.device == "cpu" and plan.quantization == "none"


def test_cpu_plan_falls_back_and_explains() -> None:
    """On CPU, auto picks plain LoRA, fp32 without native bf16, and plain AdamW, with notes."""
    plan = resolve_plan(TrainConfig(), Hardware(cuda=False))
    assert (plan.device, plan.quantization, plan.compute_dtype, plan.optimizer) == (
        "cpu",
        "none",
        "fp32",
        "adamw_torch",
    )
    assert plan.evaluate_in_process
    assert any("bitsandbytes" in n for n in plan.notes)
    bf16 = resolve_plan(TrainConfig(), Hardware(cuda=False, cpu_bf16_native=True))
    assert bf16.compute_dtype == "bf16"


def test_cpu_4bit_never_evaluates_in_process() -> None:
    """Asking for 4-bit on CPU turns in-process evaluation off (bitsandbytes CPU defect)."""
    c = load_config(None, {"quantization": "nf4"})
    plan = resolve_plan(c, Hardware(cuda=False))
    assert plan.quantization == "nf4" and not plan.evaluate_in_process


def test_impossible_combinations_are_refused() -> None:
    """CUDA without a GPU, paged optimizers on CPU and bf16 on a GPU without it are refused."""
    with pytest.raises(ConfigError, match="no CUDA"):
        resolve_plan(load_config(None, {"device": "cuda"}), Hardware(cuda=False))
    with pytest.raises(ConfigError, match="needs CUDA"):
        resolve_plan(load_config(None, {"optimizer": "paged_adamw_8bit"}), Hardware(cuda=False))
    with pytest.raises(ConfigError, match="bf16"):
        resolve_plan(load_config(None, {"compute_dtype": "bf16"}), Hardware(cuda=True))
    with pytest.raises(ConfigError, match="liger"):
        resolve_plan(load_config(None, {"liger_kernels": True}), Hardware(cuda=False))
    fp16 = resolve_plan(TrainConfig(), Hardware(cuda=True, cuda_bf16=False))
    assert fp16.compute_dtype == "fp16"


def test_with_overrides_keeps_the_rest() -> None:
    """with_overrides replaces only the named fields (used by the OOM retry)."""
    c = load_config(None, {"micro_batch_size": 8})
    d = with_overrides(c, train={"micro_batch_size": 4, "gradient_accumulation_steps": 2})
    assert (d.train.micro_batch_size, d.train.gradient_accumulation_steps) == (4, 2)
    assert d.train.learning_rate == c.train.learning_rate and d.lora == c.lora


def test_shared_toml_reader_points_at_keys_and_tables(tmp_path: Path) -> None:
    """``training.tomlconf`` (used by the train and curate configs) finds a key's line inside
    nested tables and an unknown table's header, and names the file on unreadable input."""
    from training.tomlconf import key_line, read_toml

    text = "top = 1\n[poison]\nurls = 'warn'\n[poison.trigger]\nmax_n = 9\n[bogus]\n"
    assert key_line(text, ["top"]) == 1
    assert key_line(text, ["poison", "trigger", "max_n"]) == 5
    assert key_line(text, ["poison", "max_n"]) is None
    assert key_line(text, ["bogus"]) == 6
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff = 1\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: cannot read config"):
        read_toml(bad)
