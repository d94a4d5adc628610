"""Finding the training data for the leakage check wherever the gate runs (issue 20 item 5):
a relative ``dataset.path`` is resolved from the provenance file, the data is verified by its
content hash, and data that cannot be found is red unless ``--allow-unchecked-leakage``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qlgate_pytest.preflight import EngineCaps, Finding, errors, run_preflight
from qlgate_pytest.run_extras import leakage_status, preflight_section
from qlgate_pytest.training_data import content_sha256, locate
from training.sample_task import SYSTEM_PROMPT

# gate_project's settings without its qlgate_allow_unchecked_leakage (tests/gate/conftest.py).
STRICT_INI = '[tool.pytest.ini_options]\ntestpaths = ["tests"]\njunit_family = "xunit1"\n'

TICKETS = [
    ("I was charged twice for the same order this month.", "billing"),
    ("My parcel NW-48213 has not arrived after two weeks.", "shipping"),
    ("How do I reset the password on my account?", "account"),
    ("The blender arrived broken and I want to send it back.", "returns"),
]
LEAKY = "i was CHARGED twice for the same order this month!!"


def curated(root: Path, tickets: list[tuple[str, str]], manifest: bool = True) -> Path:
    """A curated dataset in the documented layout, its manifest holding the real content hash."""
    from datasets import Dataset, DatasetDict

    rows = [
        {"id": f"{i:016x}", "label": label, "source": "human", "metadata": "{}",
         "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                      {"role": "user", "content": text},
                      {"role": "assistant", "content": label}]}
        for i, (text, label) in enumerate(tickets)
    ]  # fmt: skip
    splits = {"train": Dataset.from_list(rows[:-1]), "validation": Dataset.from_list(rows[-1:])}
    DatasetDict(splits).save_to_disk(str(root / "dataset"))
    if manifest:
        record = {"schema_version": 1, "content_sha256": content_sha256(root / "dataset")}
        (root / "manifest.json").write_text(json.dumps(record), encoding="utf-8")
    return root


def adapter_dir(out: Path) -> Path:
    """A servable LoRA adapter (random non-zero B) as safetensors, no model needed."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {
        f"{prefix}.lora_A.weight": rng.standard_normal((4, 16)).astype(np.float32),
        f"{prefix}.lora_B.weight": rng.standard_normal((16, 4)).astype(np.float32),
    }
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}
    (out / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    return out


def provenance(adapter: Path, dataset: dict[str, Any]) -> None:
    record = {"schema_version": 1, "dataset": dataset}
    (adapter / "qlgate-provenance.json").write_text(json.dumps(record), encoding="utf-8")


def recorded(data: Path, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The dataset record ``python -m training train --data DATA`` writes, run from ``cwd``."""
    from training.provenance import dataset_record

    with monkeypatch.context() as m:
        m.chdir(cwd)
        return dataset_record(data).model_dump()


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The README pipeline: outputs/data and outputs/adapter under a project, trained from the
    project directory with the relative path ``outputs/data``; the gate runs from elsewhere."""
    project = tmp_path / "project"
    data = curated(project / "outputs" / "data", TICKETS)
    adapter = adapter_dir(project / "outputs" / "adapter")
    provenance(adapter, recorded(Path("outputs/data"), project, monkeypatch))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return {"project": project, "data": data, "adapter": adapter, "base": tmp_path / "base"}


def check(layout: dict[str, Path], golden: dict[str, str], **kw: Any) -> list[Finding]:
    layout["base"].mkdir(exist_ok=True)
    return run_preflight(
        layout["adapter"],
        base_dir=layout["base"],
        engine_caps=EngineCaps("hf"),
        golden_prompts=golden,
        base_spec=None,
        **kw,
    )


def by_reason(findings: list[Finding]) -> dict[str, Finding]:
    return {f.reason: f for f in findings}


def test_relative_path_is_found_from_another_directory(layout: dict[str, Path]) -> None:
    """Recorded as ``outputs/data`` and gated from another directory, the data is found next
    to the adapter and checked: the leaky golden prompt is red (it was a silent warning)."""
    assert (
        json.loads((layout["adapter"] / "qlgate-provenance.json").read_text())["dataset"]["path"]
        == "outputs/data"
    )
    found = by_reason(check(layout, {"leaky": LEAKY, "fresh": "Can I pay by invoice?"}))
    assert set(found) == {"leakage", "leakage_checked"}
    assert found["leakage"].subjects == ("leaky",)
    info = found["leakage_checked"]
    assert info.severity == "info" and str(layout["data"]) in info.message
    assert "content sha256" in info.message
    clean = check(layout, {"fresh": "Can I pay by invoice?"})
    assert errors(clean) == [] and [f.reason for f in clean] == ["leakage_checked"]


def test_missing_data_is_red_unless_allowed(layout: dict[str, Path]) -> None:
    """Training data nowhere to be found: red naming the recorded path and the flag; allowed,
    a warning; the report's preflight section says which."""
    shutil.rmtree(layout["data"])
    found = check(layout, {"leaky": LEAKY})
    (finding,) = errors(found)
    assert finding.reason == "leakage_unchecked"
    assert "training dataset outputs/data recorded in the provenance" in finding.message
    assert "pass --allow-unchecked-leakage" in finding.message
    assert preflight_section(found)["leakage"].startswith("unchecked: training dataset")
    allowed = check(layout, {"leaky": LEAKY}, allow_unchecked_leakage=True)
    assert errors(allowed) == [] and [f.severity for f in allowed] == ["warning"]
    status = preflight_section(allowed)["leakage"]
    assert status.startswith("unchecked (allowed by --allow-unchecked-leakage): ")


def test_changed_rows_are_red_unless_allowed(layout: dict[str, Path]) -> None:
    """Same path and manifest, other rows (re-curated in place): the recomputed content hash
    differs from the recorded one, so it is not the data trained on: red unless allowed, and
    when allowed the leakage check still runs against what is there."""
    shutil.rmtree(layout["data"] / "dataset")
    curated(layout["data"], [*TICKETS[1:], ("A brand new ticket about gift cards.", "billing")],
            manifest=False)  # fmt: skip
    found = by_reason(check(layout, {"leaky": LEAKY}))
    assert [f.reason for f in errors(list(found.values()))] == ["dataset_changed"]
    message = found["dataset_changed"].message
    assert "is not the dataset trained on: its rows hash to content sha256" in message
    assert "as its manifest still declares: the rows changed after curation" in message
    allowed = by_reason(check(layout, {"leaky": LEAKY}, allow_unchecked_leakage=True))
    assert allowed["dataset_changed"].severity == "warning"
    assert "leakage_checked" in allowed and "leakage" not in allowed  # the leaky row is gone


def test_a_decoy_nearer_the_adapter_is_skipped_by_its_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tree moved to another machine (the recorded absolute path is gone): of the datasets the
    search finds, only the one whose content hash matches is taken."""
    project = tmp_path / "moved"
    data = curated(project / "outputs" / "data", TICKETS)
    record = {**recorded(data, tmp_path, monkeypatch), "path": "/gone/outputs/data"}
    adapter = adapter_dir(project / "outputs" / "adapter")
    curated(adapter / "data", TICKETS[:2])  # nearer the adapter, other rows
    located = locate(record, adapter, cwd=tmp_path)
    assert located.status == "verified" and located.data is not None
    assert located.data.root == data
    assert located.tried[0] == Path("/gone/outputs/data")


def test_without_recorded_hashes_only_direct_locations_are_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No manifest at training, so no hash: data at the recorded location is used and called
    unverified; a dataset found only by searching upwards is not taken on trust."""
    data = curated(tmp_path / "plain", TICKETS, manifest=False)
    record = recorded(data, tmp_path, monkeypatch)
    assert record["content_sha256"] is None and record["manifest_sha256"] is None
    adapter = adapter_dir(tmp_path / "adapter")
    assert locate(record, adapter, cwd=tmp_path / "adapter").status == "unverified"
    assert locate({**record, "path": "gone/plain"}, adapter, cwd=adapter).status == "missing"
    provenance(adapter, record)
    layout = {"adapter": adapter, "base": tmp_path / "base"}
    found = by_reason(check(layout, {"leaky": LEAKY}))
    assert found["dataset_unverified"].severity == "warning" and "leakage" in found


def test_content_hash_is_the_one_curation_records(tmp_path: Path) -> None:
    """Recomputed from the saved rows, the content hash equals curation's manifest value (the
    shipped sample data, curated as the README pipeline does)."""
    from training.curate import curate
    from training.curate_config import CurateConfig

    sample = Path(__file__).resolve().parents[2] / "data" / "sample" / "raw.jsonl"
    curate(sample, tmp_path / "out", CurateConfig())
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert content_sha256(tmp_path / "out" / "dataset") == manifest["content_sha256"]


def test_leakage_status_lines() -> None:
    """The report's one-line leakage status for each outcome."""
    checked = Finding("leakage_checked", "checked 2 golden prompt(s) against /d (...)", "info")
    assert leakage_status([checked]) == checked.message
    leak = Finding("leakage", "1 golden prompt(s) near-duplicate ...")
    assert leakage_status([leak, checked]).endswith("; near-duplicates found (red)")
    missing = Finding("provenance_missing", "x is absent: ... leakage were not checked", "warning")
    assert leakage_status([missing]).startswith("unchecked: x is absent")
    assert preflight_section(None)["leakage"] == "not run: preflight did not run"


# -- through the gate: pytest run from another directory than training --------------------------


@pytest.fixture
def gated(
    gate_project: pytest.Pytester,
    golden_writer: Callable[..., Path],
    tiny_adapters: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    oracle_conftest: str,
) -> Callable[..., tuple[int, dict[str, Any]]]:
    """``gate(golden prompts, *args)``: a gate run in the pytester directory of an adapter
    trained (as far as its provenance says) from another directory on ``outputs/data``."""
    project = tmp_path / "training-project"
    curated(project / "outputs" / "data", TICKETS)
    adapter = Path(shutil.copytree(tiny_adapters.perturbed, project / "outputs" / "adapter"))
    provenance(adapter, recorded(Path("outputs/data"), project, monkeypatch))
    gate_project.makeconftest(oracle_conftest)
    gate_project.makepyprojecttoml(STRICT_INI)  # the leakage check's own default, red

    def gate(prompts: list[tuple[str, str]], *args: str) -> tuple[int, dict[str, Any]]:
        cases = [
            {"id": f"t{i}", "prompt": text, "expected": label}
            for i, (text, label) in enumerate(prompts)
        ]
        golden_writer(gate_project.path, cases)
        result = gate_project.runpytest(
            f"--candidate={adapter}", f"--base-model={tiny_adapters.base}", "--engine=oracle",
            "--gate-report=out/report.json", *args,
        )  # fmt: skip
        report = json.loads((gate_project.path / "out" / "report.json").read_text())
        return int(result.ret), report

    gate.data = project / "outputs" / "data"  # type: ignore[attr-defined]
    return gate


FRESH = [
    ("My card was charged for an order I cancelled.", "billing"),
    ("The parcel tracking page shows nothing.", "shipping"),
    ("I forgot my password again.", "account"),
    ("Can I send back a lamp I bought?", "returns"),
]


def test_gate_from_another_directory_checks_and_catches_leakage(gated: Any) -> None:
    """Green with the check's data named in the report; a golden prompt copied from the
    training data turns it red (before, the run approved it with a warning)."""
    ret, report = gated(FRESH)
    assert ret == 0, report["reasons"]
    assert report["preflight"]["leakage"].startswith("checked 4 golden prompt(s) against ")
    assert str(gated.data) in report["preflight"]["leakage"]
    ret, report = gated([*FRESH, (TICKETS[0][0], "billing")])
    assert ret == pytest.ExitCode.TESTS_FAILED
    assert any(r.startswith("preflight [leakage]: 1 golden prompt(s)") for r in report["reasons"])


def test_gate_without_the_training_data_is_red_unless_allowed(gated: Any) -> None:
    """The data gone: red with the reason; --allow-unchecked-leakage: green, and the report
    says the leakage was unchecked and allowed."""
    shutil.rmtree(gated.data)
    ret, report = gated(FRESH)
    assert ret == pytest.ExitCode.TESTS_FAILED
    assert any(r.startswith("preflight [leakage_unchecked]") for r in report["reasons"])
    ret, report = gated(FRESH, "--allow-unchecked-leakage")
    assert ret == 0, report["reasons"]
    assert report["preflight"]["leakage"].startswith(
        "unchecked (allowed by --allow-unchecked-leakage): training dataset outputs/data"
    )
