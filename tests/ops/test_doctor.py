"""The environment doctor: each rule on made-up facts (including combinations this machine does
not have), the fact gathering on real files, and one real run on this machine."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from training import doctor_cli
from training.doctor import Facts, Finding, Gpu, ModelFacts, diagnose, exit_code

GIB = 1024**3
GOOD_VERSIONS = {
    "torch": "2.13.0+cpu", "transformers": "5.24.0", "peft": "0.21.2", "trl": "1.16.0",
    "accelerate": "1.15.0", "bitsandbytes": "0.50.2", "safetensors": "0.8.0",
}  # fmt: skip
H200 = Gpu(0, "NVIDIA H200", free_bytes=139 * GIB, total_bytes=141 * GIB, capability=(9, 0))


def _facts(**changes: Any) -> Facts:
    base = Facts(
        python=(3, 11, 7),
        versions=dict(GOOD_VERSIONS),
        ram_available_bytes=16 * GIB,
        model=ModelFacts("embedded", "ok", "verified", n_params=134_515_008, path="/m"),
        env={"HF_HUB_OFFLINE": "1"},
    )
    return dataclasses.replace(base, **changes)


def _by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def _with(**versions: str | None) -> dict[str, str | None]:
    return {**GOOD_VERSIONS, **versions}


def test_healthy_cpu_machine_passes() -> None:
    """A consistent CPU stack with a verified model and enough RAM has no warning or failure."""
    findings = diagnose(_facts())
    assert exit_code(findings) == 0
    assert {f.status for f in findings} == {"ok"}
    assert _by_check(findings)["torch"].detail == "2.13.0+cpu"


def test_kernels_next_to_bitsandbytes_blocks() -> None:
    """The `kernels` package beside bitsandbytes is blocking, with the uninstall as the fix."""
    findings = diagnose(_facts(versions=_with(kernels="0.9.0")))
    bad = _by_check(findings)["kernels+bitsandbytes"]
    assert bad.status == "fail" and bad.fix == "pip uninstall -y kernels"
    assert exit_code(findings) == 1


@pytest.mark.parametrize(
    ("torchvision", "errors", "blocked"),
    [
        ("0.28.0+cpu", {}, False),
        ("0.28.0", {}, True),  # a CUDA build from PyPI beside the CPU torch
        ("0.24.0+cpu", {}, True),  # made for torch 2.9
        ("0.28.0+cpu", {"torchvision": "OSError: libcudart.so.12: cannot open"}, True),
    ],
)
def test_torchvision_must_match_torch(
    torchvision: str, errors: dict[str, str], blocked: bool
) -> None:
    """torchvision blocks when its version or build tag differs from torch's, or it fails to
    import; the fix removes it (text models do not need it)."""
    findings = diagnose(_facts(versions=_with(torchvision=torchvision), import_errors=errors))
    found = _by_check(findings).get("torchvision+torch")
    assert (found is not None and found.status == "fail") == blocked
    if found is not None:
        assert found.fix is not None and "pip uninstall -y torchvision" in found.fix
        for error in errors.values():
            assert error in found.detail


def test_bitsandbytes_import_failure_blocks() -> None:
    """A bitsandbytes that cannot be imported is blocking, naming the error."""
    errors = {"bitsandbytes": "RuntimeError: CUDA Setup failed"}
    found = _by_check(diagnose(_facts(import_errors=errors)))["import bitsandbytes"]
    assert found.status == "fail" and "CUDA Setup failed" in found.detail


def test_missing_core_package_and_requirement_conflicts_block() -> None:
    """No torch, or a declared requirement the installed versions break, is blocking."""
    assert _by_check(diagnose(_facts(versions=_with(torch=None))))["torch"].status == "fail"
    conflict = "trl needs transformers>=5.0, found transformers 4.46.0"
    findings = diagnose(_facts(requirement_problems=(conflict,)))
    assert _by_check(findings)["requirements"].detail == conflict
    assert exit_code(findings) == 1


@pytest.mark.parametrize(
    ("torch_cuda", "driver", "gpus", "status"),
    [
        (None, False, (), "ok"),
        (None, True, (), "fail"),  # GPU box, CPU torch
        ("12.8", True, (), "fail"),  # driver too old for the runtime
        ("12.8", False, (), "warn"),  # CUDA torch on a CPU box
        ("12.8", True, (H200,), "ok"),
    ],
)
def test_cuda_build_against_the_machine(
    torch_cuda: str | None, driver: bool, gpus: tuple[Gpu, ...], status: str
) -> None:
    """The torch build is checked against whether a driver and GPUs are present."""
    facts = _facts(torch_cuda=torch_cuda, nvidia_driver=driver, gpus=gpus)
    assert _by_check(diagnose(facts))["cuda"].status == status


def test_old_gpu_without_bf16_warns() -> None:
    """A GPU below compute capability 8.0 gets a bf16 warning suggesting float16."""
    t4 = Gpu(0, "Tesla T4", 15 * GIB, 16 * GIB, (7, 5))
    found = _by_check(diagnose(_facts(torch_cuda="12.8", nvidia_driver=True, gpus=(t4,))))["bf16"]
    assert found.status == "warn" and found.fix is not None and "float16" in found.fix


@pytest.mark.parametrize(("dtype", "status"), [("auto", "ok"), ("float32", "fail")])
def test_gpu_memory_against_an_8b_model(dtype: str, status: str) -> None:
    """8B params fit 24 GiB free at bf16 (auto on GPU) but not at float32."""
    gpu = Gpu(0, "L4", 24 * GIB, 24 * GIB, (8, 9))
    model = ModelFacts("meta-llama/Llama-3.1-8B", "ok", "ok", n_params=8_030_000_000, path="/m")
    facts = _facts(torch_cuda="12.8", nvidia_driver=True, gpus=(gpu,), model=model)
    assert _by_check(diagnose(facts, dtype=dtype))["gpu memory"].status == status


def test_ram_shortage_on_cpu_blocks() -> None:
    """On CPU the model is checked against available RAM."""
    found = _by_check(diagnose(_facts(ram_available_bytes=GIB // 4)))["memory"]
    assert found.status == "fail"


@pytest.mark.parametrize(
    ("state", "status"), [("absent", "warn"), ("corrupt", "fail"), ("unresolvable", "fail")]
)
def test_model_cache_states(state: str, status: str) -> None:
    """An absent cache is rebuilt on use (warn); a corrupt or unresolvable model blocks."""
    model = ModelFacts("embedded", state, "detail", path="/m")  # type: ignore[arg-type]
    found = next(
        f for f in diagnose(_facts(model=model)) if f.check in ("model cache", "base model")
    )
    assert found.status == status and found.fix


def test_online_hub_warns() -> None:
    """Without HF_HUB_OFFLINE the doctor warns that a missing file would download."""
    assert _by_check(diagnose(_facts(env={})))["offline"].status == "warn"


# --- gathering facts from real files and processes ------------------------------------------


def _tiny_weights(path: Path) -> int:
    import torch
    from safetensors.torch import save_file

    tensors = {"a": torch.zeros(3, 4), "b": torch.zeros(5)}
    save_file(tensors, str(path))
    return sum(t.numel() for t in tensors.values())


def test_safetensors_header_gives_params_and_catches_truncation(tmp_path: Path) -> None:
    """The header's shapes give the parameter count; a truncated file is detected."""
    path = tmp_path / "model.safetensors"
    expected = _tiny_weights(path)
    assert doctor_cli.safetensors_params(path) == expected
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match="file has"):
        doctor_cli.safetensors_params(path)


def test_local_model_with_truncated_weights_is_corrupt(tmp_path: Path) -> None:
    """A local model directory whose weights were cut short is reported corrupt."""
    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    _tiny_weights(weights)
    assert doctor_cli.model_facts(str(tmp_path)).state == "ok"
    weights.write_bytes(weights.read_bytes()[:-8])
    facts = doctor_cli.model_facts(str(tmp_path))
    assert facts.state == "corrupt" and "model.safetensors" in facts.detail


def test_absent_embedded_cache_is_reported_not_converted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an empty cache the doctor reports 'absent' and converts nothing."""
    monkeypatch.setenv("QLGATE_HOME", str(tmp_path))
    facts = doctor_cli.model_facts("embedded")
    assert facts.state == "absent"
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_import_probe_reports_the_error_line() -> None:
    """A module that fails to import yields its last error line; a good one yields None."""
    assert doctor_cli._probe("json") is None
    error = doctor_cli._probe("qlgate_no_such_module")
    assert error is not None and error.startswith("ModuleNotFoundError")


def test_real_run_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    """On the project's reference machine the doctor finds nothing blocking; JSON is parseable."""
    parser = argparse.ArgumentParser()
    doctor_cli.add_arguments(parser)
    code = doctor_cli.run(parser.parse_args(["--no-import-probes", "--json"]))
    report = json.loads(capsys.readouterr().out)
    assert code == report["exit_code"] == 0, report
    checks = {f["check"]: f for f in report["findings"]}
    assert checks["torch"]["detail"].startswith("2.13.0")
    assert checks["model cache"]["status"] == "ok"
    assert "sha256" in checks["model cache"]["detail"]
