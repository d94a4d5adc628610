"""The generation cache inside real gate runs (tiny model): a re-run of an unchanged candidate
loads no model, retraining into the same path misses, corrupt entries are rewritten, and the
``--no-gen-cache`` / ``--clear-gen-cache`` / ``--gen-cache-dir`` switches do what they say."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

Adapters = Any  # tests/gate/conftest.py's Adapters
NON_INFERIOR = "--min-f1-gain=-1"
# 4 rank cases + 1 generate case, each for the candidate and the base-model baseline.
REQUESTS = 10


def gate(project: pytest.Pytester, adapter: Path, *args: str) -> dict[str, Any]:
    result = project.runpytest(
        f"--candidate={adapter}", "--gate-report=out/report.json", NON_INFERIOR, *args
    )
    assert result.ret == 0, result.stdout.str()
    report: dict[str, Any] = json.loads((project.path / "out" / "report.json").read_text())
    report["_stdout"] = result.stdout.str()
    return report


def outcomes(report: dict[str, Any]) -> dict[str, Any]:
    return {row["id"]: (row["candidate"], row["baseline"]) for row in report["cases"]}


def entries(root: Path) -> list[Path]:
    return sorted((root / "gen").glob("??/*.json"))


def test_rerun_of_an_unchanged_candidate_loads_no_model(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    cold = gate(gate_project, tiny_adapters.perturbed)
    assert cold["cache"]["misses"] == REQUESTS and cold["cache"]["writes"] == REQUESTS
    assert cold["engine_load"]["loaded"] is True
    assert cold["engine_load"]["engine_requests"] == {"generate": 2, "rank": 8}
    assert len(entries(gate_project.path / ".qlgate_cache")) == REQUESTS
    warm = gate(gate_project, tiny_adapters.perturbed)
    assert warm["cache"]["hits"] == REQUESTS and warm["cache"]["misses"] == 0
    assert warm["engine_load"]["loaded"] is False
    assert warm["engine_load"]["engine_requests"] == {"generate": 0, "rank": 0}
    assert warm["run"]["engine"]["loaded"] is False  # the identity, not a loaded model
    assert outcomes(warm) == outcomes(cold)
    assert warm["delta"] == cold["delta"]
    assert "generation cache: 10 hits, 0 misses; engine not loaded, 0 requests" in warm["_stdout"]


def test_retraining_into_the_same_path_misses_the_cache(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    adapter = gate_project.path / "adapter"
    shutil.copytree(tiny_adapters.perturbed, adapter)
    first = gate(gate_project, adapter)
    # "retrain": new weights written over the old files, same directory
    shutil.copyfile(
        tiny_adapters.other / "adapter_model.safetensors", adapter / "adapter_model.safetensors"
    )
    second = gate(gate_project, adapter)
    half = REQUESTS // 2
    assert second["cache"]["hits"] == half  # the base-model baseline is unchanged
    assert second["cache"]["misses"] == half  # every candidate request is new
    assert second["engine_load"]["loaded"] is True
    scores = [
        (a[0]["label_scores"], b[0]["label_scores"])
        for a, b in zip(outcomes(first).values(), outcomes(second).values(), strict=True)
        if a[0]["label_scores"] is not None
    ]
    assert any(a != b for a, b in scores)  # the new adapter's own answers, not the old ones


def test_corrupt_entries_are_ignored_and_rewritten(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    first = gate(gate_project, tiny_adapters.perturbed)
    files = entries(gate_project.path / ".qlgate_cache")
    files[0].write_text('{"schema": 1, "key": "trunc', encoding="utf-8")
    files[1].write_bytes(b"\x00\xff garbage")
    second = gate(gate_project, tiny_adapters.perturbed)
    assert second["cache"]["corrupt"] == 2 and second["cache"]["misses"] == 2
    assert second["cache"]["writes"] == 2 and second["cache"]["hits"] == REQUESTS - 2
    assert outcomes(second).keys() == outcomes(first).keys()
    third = gate(gate_project, tiny_adapters.perturbed)
    assert third["cache"]["hits"] == REQUESTS and third["cache"]["corrupt"] == 0
    assert third["engine_load"]["loaded"] is False


def test_no_gen_cache_clear_and_dir_switches(
    gate_project: pytest.Pytester, tiny_adapters: Adapters, monkeypatch: pytest.MonkeyPatch
) -> None:
    off = gate(gate_project, tiny_adapters.perturbed, "--no-gen-cache")
    assert off["cache"]["enabled"] is False and off["cache"]["hits"] == 0
    assert not entries(gate_project.path / ".qlgate_cache")
    monkeypatch.setenv("QLGATE_GEN_CACHE_DIR", str(gate_project.path / "elsewhere"))
    gate(gate_project, tiny_adapters.perturbed)
    assert len(entries(gate_project.path / "elsewhere")) == REQUESTS
    cleared = gate(gate_project, tiny_adapters.perturbed, "--clear-gen-cache")
    assert cleared["cache"]["cleared"] == REQUESTS
    assert cleared["cache"]["hits"] == 0 and cleared["cache"]["misses"] == REQUESTS
    assert cleared["engine_load"]["loaded"] is True


# Config-only edits of an approved adapter (issue 20); the weights stay byte-identical.
CONFIG_EDITS: dict[str, dict[str, Any]] = {
    "r halved": {"r": 2},  # the tiny adapters are rank 4
    "lora_alpha -32": {"lora_alpha": -32},
    "lora_alpha 3200": {"lora_alpha": 3200},
    "use_rslora": {"use_rslora": True},
    "layers_to_transform": {"layers_to_transform": [0]},
    "target_modules subset": {"target_modules": ["q_proj"]},
}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the config-edit runs: the unedited adapter's answers are computed once."""
    return tmp_path_factory.mktemp("gen-cache")


@pytest.mark.parametrize("edit", list(CONFIG_EDITS), ids=list(CONFIG_EDITS))
def test_config_only_edit_misses_the_cache(
    gate_project: pytest.Pytester, tiny_adapters: Adapters, shared_cache: Path, edit: str
) -> None:
    """Editing only adapter_config.json of a gated adapter is never answered from the cache:
    every candidate request misses, and only the unchanged base-model baseline hits."""
    adapter = gate_project.path / "adapter"
    shutil.copytree(tiny_adapters.perturbed, adapter)
    where = f"--gen-cache-dir={shared_cache}"
    first = gate(gate_project, adapter, where)
    assert first["cache"]["misses"] + first["cache"]["hits"] == REQUESTS
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, **CONFIG_EDITS[edit]}))
    result = gate_project.runpytest(
        f"--candidate={adapter}", "--gate-report=out/report.json", NON_INFERIOR, where
    )
    second = json.loads((gate_project.path / "out" / "report.json").read_text())
    half = REQUESTS // 2
    assert second["cache"]["hits"] == half, result.stdout.str()  # the baseline's, no more
    assert second["cache"]["misses"] == half  # every candidate request
    # ... went to the engine (r halved does not even load onto rank-4 tensors: an error, which
    # is never cached, instead of the unedited adapter's answers)
    assert sum(second["engine_load"]["engine_requests"].values()) > 0
    identities = [r["run"]["adapters"]["candidate"]["sha256"] for r in (first, second)]
    assert identities[0] != identities[1]
