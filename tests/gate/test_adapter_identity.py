"""The adapter identity (``qlgate_core/adapter_identity.py``) that the generation cache, the
report and ``deploy`` share: every file that changes what an engine computes, the config above all.

Unit tests on a peft-shaped directory, then end to end on the tiny model: ``--engine hf`` gates
an adapter, ``python -m qlgate_pytest deploy REPORT`` accepts it, and a config-only edit makes
deploy refuse with the file named.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from qlgate_core.adapter_identity import (
    SCHEME,
    AdapterIdentity,
    AdapterIdentityError,
    adapter_identity,
)
from qlgate_pytest.adapter_record import adapter_record, adapter_records
from qlgate_pytest.engines.base import EngineConfig
from qlgate_pytest.gen_cache import ModelIdentity, adapter_hash

Adapters = Any  # tests/gate/conftest.py's Adapters
PREFIX = "base_model.model.model.layers.0.self_attn"

# Config-only edits of an approved adapter (issue 20): each changes what peft computes.
CONFIG_EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "r halved": lambda c: c.update(r=c["r"] // 2),
    "lora_alpha -32": lambda c: c.update(lora_alpha=-32),
    "lora_alpha 3200": lambda c: c.update(lora_alpha=3200),
    "use_rslora": lambda c: c.update(use_rslora=True),
    "layers_to_transform": lambda c: c.update(layers_to_transform=[0]),
    "target_modules subset": lambda c: c.update(target_modules=["q_proj"]),
}


def make_adapter(path: Path, rank: int = 16) -> Path:
    """A peft-shaped LoRA directory: config, weights, a model card and provenance."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tensors = {}
    for module in ("q_proj", "v_proj"):
        tensors[f"{PREFIX}.{module}.lora_A.weight"] = rng.standard_normal((rank, 32))
        tensors[f"{PREFIX}.{module}.lora_B.weight"] = rng.standard_normal((32, rank))
    save_file({k: v.astype(np.float32) for k, v in tensors.items()},
              str(path / "adapter_model.safetensors"))  # fmt: skip
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 32,
              "target_modules": ["q_proj", "v_proj"], "use_rslora": False}  # fmt: skip
    write_config(path, config)
    (path / "README.md").write_text("# model card\n")
    (path / "qlgate-provenance.json").write_text('{"schema_version": 1}\n')
    return path


def read_config(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((path / "adapter_config.json").read_text())
    return config


def write_config(path: Path, config: dict[str, Any], indent: int | None = 2) -> None:
    (path / "adapter_config.json").write_text(json.dumps(config, indent=indent))


def edit_config(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    config = read_config(path)
    edit(config)
    write_config(path, config)


@pytest.mark.parametrize("edit", list(CONFIG_EDITS), ids=list(CONFIG_EDITS))
def test_every_config_edit_is_another_adapter(tmp_path: Path, edit: str) -> None:
    """A config-only edit (weights untouched) changes the identity and names the config."""
    adapter = make_adapter(tmp_path / "a")
    before = adapter_identity(adapter)
    weights = (adapter / "adapter_model.safetensors").read_bytes()
    edit_config(adapter, CONFIG_EDITS[edit])
    after = adapter_identity(adapter)
    assert (adapter / "adapter_model.safetensors").read_bytes() == weights
    assert after.sha256 != before.sha256
    assert before.changes(after) == ["adapter_config.json (changed)"]


def test_config_is_hashed_as_parsed_json_with_every_key(tmp_path: Path) -> None:
    """Re-indenting or reordering the config keeps the identity; any key added changes it."""
    adapter = make_adapter(tmp_path / "a")
    before = adapter_identity(adapter).sha256
    config = read_config(adapter)
    write_config(adapter, dict(reversed(list(config.items()))), indent=None)
    assert adapter_identity(adapter).sha256 == before
    write_config(adapter, {**config, "some_future_peft_key": 1})
    assert adapter_identity(adapter).sha256 != before


def test_weight_files_renamed_or_added_change_the_identity(tmp_path: Path) -> None:
    """A renamed weight file and an extra one are each another adapter."""
    adapter = make_adapter(tmp_path / "a")
    before = adapter_identity(adapter)
    shutil.copyfile(adapter / "adapter_model.safetensors", adapter / "extra.safetensors")
    added = adapter_identity(adapter)
    assert before.changes(added) == ["extra.safetensors (added)"]
    (adapter / "extra.safetensors").unlink()
    (adapter / "adapter_model.safetensors").rename(adapter / "model.safetensors")
    renamed = adapter_identity(adapter)
    assert renamed.sha256 not in (before.sha256, added.sha256)
    assert before.changes(renamed) == [
        "adapter_model.safetensors (removed)",
        "model.safetensors (added)",
    ]


def test_unknown_and_tokenizer_files_count_readme_and_provenance_do_not(tmp_path: Path) -> None:
    """Fail closed: an unknown file, a nested one and the adapter's tokenizer and template are
    covered; peft's model card and qlgate's provenance (read by no engine) are not."""
    adapter = make_adapter(tmp_path / "a")
    before = adapter_identity(adapter).sha256
    (adapter / "README.md").write_text("# another card\n")
    (adapter / "qlgate-provenance.json").write_text('{"schema_version": 1, "x": 2}\n')
    assert adapter_identity(adapter).sha256 == before
    seen = {before}
    for name in ("tokenizer.json", "chat_template.jinja", "notes.bin", "sub/adapter_config.json"):
        (adapter / name).parent.mkdir(exist_ok=True)
        (adapter / name).write_text("{}")
        now = adapter_identity(adapter)
        assert name in now.files and now.sha256 not in seen, name
        seen.add(now.sha256)


def test_unidentifiable_directories_raise_a_one_line_error(tmp_path: Path) -> None:
    """No directory, or a config that is not JSON: an error naming the file and line."""
    with pytest.raises(AdapterIdentityError, match="does not exist"):
        adapter_identity(tmp_path / "nope")
    adapter = make_adapter(tmp_path / "a")
    (adapter / "adapter_config.json").write_text('{"r": 8,')
    with pytest.raises(AdapterIdentityError, match=r"adapter_config\.json:1: invalid JSON"):
        adapter_identity(adapter)


def test_identity_round_trips_through_the_report_record(tmp_path: Path) -> None:
    """The report's record is the identity itself, and reads back equal."""
    adapter = make_adapter(tmp_path / "a")
    record = adapter_record(adapter)
    assert record["path"] == str(adapter) and record["scheme"] == SCHEME
    assert AdapterIdentity.from_json(record) == adapter_identity(adapter)


def test_record_refuses_to_vouch_for_files_changed_during_the_run(tmp_path: Path) -> None:
    """When the engine loaded another identity than the files have now, no sha256 is recorded."""
    adapter = make_adapter(tmp_path / "a")
    loaded = adapter_identity(adapter).sha256
    edit_config(adapter, CONFIG_EDITS["lora_alpha -32"])
    records = adapter_records(
        {"candidate": adapter, "baseline": None}, {"adapter_sha256": {"candidate": loaded}}
    )
    assert list(records) == ["candidate"]
    assert records["candidate"]["sha256"] is None
    assert "changed during the gate run" in records["candidate"]["error"]


def test_cache_model_identity_follows_the_config(tmp_path: Path) -> None:
    """The cache key's adapter part is the identity (memoised), so a config edit misses."""
    adapter = make_adapter(tmp_path / "a")
    base = tmp_path / "base"
    base.mkdir()
    save_file({"w": np.zeros((2, 2), np.float32)}, str(base / "model.safetensors"))
    first = ModelIdentity.of(base, adapter, base)
    assert first.adapter == adapter_identity(adapter).sha256 == adapter_hash(adapter).sha256
    edit_config(adapter, CONFIG_EDITS["use_rslora"])
    assert ModelIdentity.of(base, adapter, base).adapter != first.adapter


def test_openai_engine_describes_the_same_identity(tmp_path: Path) -> None:
    """The openai engine records a configured adapter's identity like the local engines."""
    pytest.importorskip("httpx")
    from qlgate_pytest.engines.openai_engine import OpenAIEngine

    adapter = make_adapter(tmp_path / "a")
    extra = {"openai_endpoint": "http://127.0.0.1:9", "openai_served_model": "m"}
    engine = OpenAIEngine(EngineConfig(Path(), {"candidate": adapter}, extra=extra))
    try:
        described = engine.describe()["adapter_sha256"]
    finally:
        engine.close()
    assert described == {"candidate": adapter_identity(adapter).sha256}


# -- end to end: gate with the hf engine, then deploy ----------------------------------------


def deploy(report: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qlgate_pytest", "deploy", str(report)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_hf_gate_report_deploys_and_a_config_edit_is_refused(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """A passing ``--engine hf`` report deploys; after editing only adapter_config.json deploy
    exits 2 with one line naming that file."""
    adapter = gate_project.path / "approved"
    shutil.copytree(tiny_adapters.perturbed, adapter)
    result = gate_project.runpytest(
        f"--candidate={adapter}", "--engine=hf", "--gate-report=out/report.json",
        "--min-f1-gain=-1",
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    path = gate_project.path / "out" / "report.json"
    report = json.loads(path.read_text())
    record = report["run"]["adapters"]["candidate"]
    assert record["sha256"] == adapter_identity(adapter).sha256
    assert report["run"]["engine"]["adapter_sha256"] == {"candidate": record["sha256"]}
    ok = deploy(path)
    assert ok.returncode == 0, ok.stderr
    assert f"--lora-modules approved={adapter.resolve()}" in ok.stdout
    edit_config(adapter, CONFIG_EDITS["lora_alpha -32"])
    refused = deploy(path)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "stale report" in lines[0] and "adapter_config.json (changed)" in lines[0]
