"""``python -m qlgate_pytest deploy``: a vllm serve config only from passing, current reports.

Reports are made by the real gate core (``gate.decide`` + ``report.build_report``) over synthetic
per-case outcomes; adapters are real safetensors files with LoRA tensor shapes, so the hash and
rank checks run on files exactly as they would on a trained adapter.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from qlgate_pytest import __main__ as cli
from qlgate_pytest import deploy_cli
from qlgate_pytest.adapter_record import adapter_record
from qlgate_pytest.deploy import (
    CPU_LORA_FIX,
    DeployRefused,
    approve,
    lora_rank_for,
    serve_config,
)
from qlgate_pytest.gate import CaseResult, RoleResult, Selection, Thresholds, decide
from qlgate_pytest.report import build_report, load_report, write_json_atomic

LABELS = ("account", "billing", "returns", "shipping")


def make_adapter(path: Path, rank: int = 8, seed: int = 0) -> Path:
    """A peft-shaped LoRA directory (config + safetensors) of the given rank."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": rng.standard_normal((rank, 32)).astype(np.float32),
               f"{prefix}.lora_B.weight": rng.standard_normal((32, rank)).astype(np.float32)},
              str(path / "adapter_model.safetensors"))  # fmt: skip
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj"]}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def _role(label: str, right: bool) -> RoleResult:
    predicted = label if right else LABELS[(LABELS.index(label) + 1) % 4]
    return RoleResult(predicted, predicted, right, 20.0, 2)


def make_report(
    tmp: Path, adapter: Path, *, passing: bool = True, record_hash: bool = True,
    base: str = "/models/smollm2",
) -> Path:  # fmt: skip
    """A gate report written by the real core: the candidate wins (passing) or loses."""
    cases = []
    for i in range(40):
        label = LABELS[i % 4]
        cand_ok = i % 10 != 1 if passing else i % 2 == 0
        base_ok = i % 2 == 0 if passing else i % 10 != 1
        cases.append(CaseResult(f"c{i:02d}", ("core",), False, 1.0, "label", label,
                                _role(label, cand_ok), _role(label, base_ok)))  # fmt: skip
    verdict = decide(cases, Thresholds(resamples=300), Selection(40, 40))
    assert verdict.passed is passing, verdict.reasons
    entry: dict[str, Any] = adapter_record(adapter) if record_hash else {"path": str(adapter)}
    meta = {"golden_sha256": "ab" * 32, "candidate": str(adapter), "adapters": {"candidate": entry},
            "base_model": {"spec": "embedded", "path": base, "reason": "test"}}  # fmt: skip
    path = tmp / f"report-{adapter.name}.json"
    write_json_atomic(build_report(verdict, cases, meta), path)
    return path


def test_passing_current_report_gives_a_vllm_serve_command(tmp_path: Path) -> None:
    """A passing report whose adapter is unchanged yields --enable-lora, --lora-modules and the
    multi-LoRA sizing taken from the adapter."""
    adapter = make_adapter(tmp_path / "support-v3", rank=12)
    report = make_report(tmp_path, adapter)
    approved = approve(report, load_report(report), None)
    config = serve_config([approved], port=8001)
    args = shlex.split(config.command())
    assert args[:3] == ["vllm", "serve", "/models/smollm2"]
    assert args[args.index("--lora-modules") + 1] == f"support-v3={adapter.resolve()}"
    assert "--enable-lora" in args and args[args.index("--max-loras") + 1] == "1"
    assert args[args.index("--max-lora-rank") + 1] == "16"  # rank 12 -> vLLM's next size
    assert args[args.index("--port") + 1] == "8001"


def test_failing_report_is_refused_with_its_reasons(tmp_path: Path) -> None:
    """A red gate cannot approve a deployment; the refusal quotes why it was red."""
    adapter = make_adapter(tmp_path / "a")
    report = make_report(tmp_path, adapter, passing=False)
    with pytest.raises(DeployRefused, match="did not pass"):
        approve(report, load_report(report), None)


def test_adapter_changed_after_the_gate_is_stale(tmp_path: Path) -> None:
    """Weights rewritten after the gate (same path) make the report stale and refused."""
    adapter = make_adapter(tmp_path / "a", seed=0)
    report = make_report(tmp_path, adapter)
    make_adapter(adapter, seed=1)  # retrained in place
    with pytest.raises(DeployRefused, match="stale report"):
        approve(report, load_report(report), None)


def test_report_without_adapter_hash_is_refused(tmp_path: Path) -> None:
    """A report that does not record the approved identity cannot vouch for any files."""
    adapter = make_adapter(tmp_path / "a")
    report = make_report(tmp_path, adapter, record_hash=False)
    with pytest.raises(DeployRefused, match=r"run\.adapters\.candidate\.sha256' is missing"):
        approve(report, load_report(report), None)


@pytest.mark.parametrize(
    "edit",
    [{"r": 4}, {"lora_alpha": -32}, {"lora_alpha": 3200}, {"use_rslora": True},
     {"layers_to_transform": [0]}, {"target_modules": []}],
    ids=["r", "alpha-32", "alpha3200", "rslora", "layers", "targets"],
)  # fmt: skip
def test_config_only_edit_after_the_gate_is_stale(tmp_path: Path, edit: dict[str, Any]) -> None:
    """Editing only adapter_config.json (weights untouched) makes the report stale; the refusal
    names the file that changed."""
    adapter = make_adapter(tmp_path / "a")
    report = make_report(tmp_path, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(DeployRefused, match=r"stale report.*adapter_config\.json \(changed\)"):
        approve(report, load_report(report), None)


def test_added_weight_file_is_stale_and_a_model_card_edit_is_not(tmp_path: Path) -> None:
    """An extra safetensors file after the gate is refused by name; peft's README and qlgate's
    provenance (read by no server) may change."""
    adapter = make_adapter(tmp_path / "a")
    report = make_report(tmp_path, adapter)
    (adapter / "README.md").write_text("# card, edited after the gate\n")
    (adapter / "qlgate-provenance.json").write_text("{}")
    assert approve(report, load_report(report), None).path == adapter.resolve()
    save_file({"x": np.zeros(2, np.float32)}, str(adapter / "more.safetensors"))
    with pytest.raises(DeployRefused, match=r"more\.safetensors \(added\)"):
        approve(report, load_report(report), None)


def test_report_of_weights_only_hash_is_refused(tmp_path: Path) -> None:
    """A report recording only the old weights hash cannot vouch for the config: refused."""
    from qlgate_core.fingerprint import weights_sha256

    adapter = make_adapter(tmp_path / "a")
    report = make_report(tmp_path, adapter, record_hash=False)
    data = load_report(report)
    data["run"]["adapters"]["candidate"]["weights_sha256"] = weights_sha256(adapter)
    data["run"]["engine"] = {"adapter_sha256": {"candidate": weights_sha256(adapter)}}
    with pytest.raises(DeployRefused, match="does not record which adapter files"):
        approve(report, data, None)


def test_report_of_an_adapter_changed_during_the_run_is_refused(tmp_path: Path) -> None:
    """A record that says the files changed under the engine carries no identity: refused, and
    the refusal says why."""
    adapter = make_adapter(tmp_path / "a")
    report = make_report(tmp_path, adapter)
    data = load_report(report)
    data["run"]["adapters"]["candidate"] = adapter_record(adapter, loaded_sha256="0" * 64)
    with pytest.raises(DeployRefused, match="changed during the gate run"):
        approve(report, data, None)


def test_multi_lora_sizes_from_every_adapter_and_checks_names_and_base(tmp_path: Path) -> None:
    """Two approved adapters share one server: max-loras 2, rank fits the larger; duplicate
    names and different base models are refused."""
    a = make_adapter(tmp_path / "a", rank=8)
    b = make_adapter(tmp_path / "b", rank=32, seed=2)
    ra, rb = make_report(tmp_path, a), make_report(tmp_path, b)
    both = [approve(ra, load_report(ra), "router"), approve(rb, load_report(rb), "router-v2")]
    config = serve_config(both)
    assert (len(config.adapters), config.max_lora_rank) == (2, 32)
    assert "--max-loras 2" in config.command()
    same_name = [approve(ra, load_report(ra), "x"), approve(rb, load_report(rb), "x")]
    with pytest.raises(DeployRefused, match="used twice"):
        serve_config(same_name)
    other = make_report(tmp_path, make_adapter(tmp_path / "c", seed=3), base="/models/other")
    with pytest.raises(DeployRefused, match="different base models"):
        serve_config([both[0], approve(other, load_report(other), None)])


def test_rank_sizing_follows_vllm_allowed_values() -> None:
    """--max-lora-rank is the smallest allowed vLLM value that fits."""
    assert [lora_rank_for(r) for r in (1, 2, 8, 9, 64, 300)] == [1, 8, 8, 16, 64, 320]
    with pytest.raises(DeployRefused):
        lora_rank_for(513)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    deploy_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_writes_yaml_config_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--format yaml --out writes a vllm serve --config file whose keys are vLLM's flags."""
    adapter = make_adapter(tmp_path / "a")
    report = make_report(tmp_path, adapter)
    out = tmp_path / "deploy" / "serve.yaml"
    assert deploy_cli.run(_args(str(report), "--format", "yaml", "--out", str(out))) == 0
    data = yaml.safe_load(out.read_text())
    assert data["enable-lora"] is True and data["max-loras"] == 1 and data["max-lora-rank"] == 8
    assert data["lora-modules"] == [f"a={adapter.resolve()}"]
    assert not list(out.parent.glob(".*tmp"))
    assert "wrote" in capsys.readouterr().out


def test_cli_refusal_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through ``python -m qlgate_pytest deploy`` a failing report exits 2 with one error line."""
    monkeypatch.setitem(cli.COMMANDS, "deploy", ("qlgate_pytest.deploy_cli", "deployment config"))
    report = make_report(tmp_path, make_adapter(tmp_path / "a"), passing=False)
    assert cli.main(["deploy", str(report)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "did not pass" in err[0]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not importable")
@pytest.mark.vllm
def test_yaml_config_parses_as_the_command_in_vllms_own_parser(tmp_path: Path) -> None:
    """vLLM's own --config loader turns the YAML into the same flags as the command line."""
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    adapter = make_adapter(tmp_path / "a")
    report = make_report(tmp_path, adapter)
    config = serve_config([approve(report, load_report(report), None)])
    path = tmp_path / "serve.yaml"
    path.write_text(config.yaml_text())
    flags = FlexibleArgumentParser().load_config_file(str(path))
    assert ["--model", config.base_model, *config.args()[2:]] == flags


def test_cpu_flag_starts_through_the_launcher_with_the_lora_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cpu serves through qlgate's launcher and loads the CPU LoRA fix in vLLM's workers."""
    report = make_report(tmp_path, make_adapter(tmp_path / "a"))
    assert deploy_cli.run(_args(str(report), "--cpu")) == 0
    args = shlex.split(capsys.readouterr().out)
    assert args[1:3] == ["-m", "qlgate_pytest.vllm_launcher"]
    assert args[args.index("--worker-extension-cls") + 1] == CPU_LORA_FIX
    torch = pytest.importorskip("torch")
    assert torch is not None
    from qlgate_pytest.engines.vllm_patch import EXTENSION

    assert CPU_LORA_FIX == EXTENSION
