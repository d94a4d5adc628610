"""The fault suite: each way a gate run can go wrong ends red, with a reason that names the
problem, a non-zero exit and the JSON report written; never green, never a bare traceback.

Adapters are the tiny model's (tests/gate/conftest.py); engine faults use small engines
registered from the inner run's conftest, so a crash or a hang is deterministic and cheap.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest

Adapters = Any  # tests/gate/conftest.py's Adapters


def gate(project: pytest.Pytester, adapter: Path, *args: str) -> pytest.RunResult:
    return project.runpytest(f"--candidate={adapter}", "--gate-report=out/report.json", *args)


def assert_red(
    project: pytest.Pytester, result: pytest.RunResult, *fragments: str
) -> dict[str, Any]:
    """Non-zero exit, a red JSON report, a reason containing every fragment, no traceback."""
    assert result.ret != 0, result.stdout.str()
    report: dict[str, Any] = json.loads((project.path / "out" / "report.json").read_text())
    assert report["passed"] is False
    assert any(all(f in r for f in fragments) for r in report["reasons"]), report["reasons"]
    out = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in out, out
    result.stdout.fnmatch_lines(["*qlgate: FAIL*"])
    return report


def copy_adapter(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- the adapter directory ----------------------------------------------------------------------


def test_missing_adapter_dir(gate_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    result = gate(gate_project, gate_project.path / "nope", f"--base-model={tiny_adapters.base}")
    report = assert_red(gate_project, result, "preflight [adapter_missing]", "does not exist")
    assert report["engine_load"]["loaded"] is False


def test_empty_adapter_dir(gate_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    empty = gate_project.mkdir("empty")
    result = gate(gate_project, empty, f"--base-model={tiny_adapters.base}")
    assert_red(gate_project, result, "preflight [adapter_empty]", "is empty")


def test_pickle_only_weights_are_never_opened(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    adapter = gate_project.mkdir("pickled")
    shutil.copyfile(
        tiny_adapters.perturbed / "adapter_config.json", adapter / "adapter_config.json"
    )
    marker = gate_project.path / "unpickled"

    class Boom:  # unpickling this would create the marker file
        def __reduce__(self) -> tuple[Any, tuple[str, str]]:
            return (Path.write_text, (marker, "ran"))  # type: ignore[return-value]

    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(Boom()))
    result = gate(gate_project, adapter)
    assert_red(gate_project, result, "preflight [pickle_only]", "adapter_model.bin")
    assert not marker.exists()


def test_nan_weights(gate_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    adapter = copy_adapter(tiny_adapters.perturbed, gate_project.path / "nan")
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(k for k in tensors if "lora_A" in k)[0]
    tensors[name] = tensors[name].copy()
    tensors[name].flat[3] = np.nan
    save_file(tensors, str(weights))
    result = gate(gate_project, adapter)
    assert_red(gate_project, result, "preflight [nonfinite_weights]", name)


CAPPED_CONFTEST = """
from qlgate_pytest.engines import register_engine
from qlgate_pytest.preflight import EngineCaps


class Capped:
    caps = EngineCaps("capped", max_lora_rank=2)

    def __init__(self, config):
        raise AssertionError("a preflight failure must stop the engine from being built")


register_engine("capped", Capped)
"""


def test_rank_too_high_for_the_engine(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    gate_project.makeconftest(CAPPED_CONFTEST)
    result = gate(gate_project, tiny_adapters.perturbed, "--engine=capped")
    assert_red(gate_project, result, "preflight [rank_too_high]", "LoRA rank 4", "max_lora_rank 2")


def test_dora_refused_for_vllm_before_it_loads(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """vLLM cannot serve DoRA: its factory says so, and preflight stops the run before the
    engine is imported or started (this runs where vllm is not installed too)."""
    adapter = copy_adapter(tiny_adapters.perturbed, gate_project.path / "dora")
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(json.dumps({**config, "use_dora": True}), encoding="utf-8")
    result = gate(gate_project, adapter, "--engine=vllm")
    assert_red(gate_project, result, "preflight [unsupported_adapter]", "cannot serve DoRA")


def _provenance(adapter: Path, **fields: Any) -> None:
    record = {"schema_version": 1, **fields}
    (adapter / "qlgate-provenance.json").write_text(json.dumps(record), encoding="utf-8")


def test_tokenizer_mismatch(gate_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    """The tokenizer recorded at training is not the one being served."""
    from qlgate_core.fingerprint import chat_template_sha256, read_chat_template

    adapter = copy_adapter(tiny_adapters.perturbed, gate_project.path / "tok")
    template = chat_template_sha256(read_chat_template(tiny_adapters.base))
    _provenance(adapter, tokenizer_sha256="0" * 64, chat_template_sha256=template)
    result = gate(gate_project, adapter)
    assert_red(gate_project, result, "preflight [tokenizer_mismatch]", "tokenizer_sha256")


def test_template_mismatch(gate_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    """The adapter was saved with a chat template other than the base model's."""
    adapter = copy_adapter(tiny_adapters.perturbed, gate_project.path / "tpl")
    (adapter / "chat_template.jinja").write_text(
        "{% for m in messages %}<<{{ m.role }}>> {{ m.content }}\n{% endfor %}", encoding="utf-8"
    )
    result = gate(gate_project, adapter)
    assert_red(gate_project, result, "preflight [template_mismatch]", "chat template")


# -- the golden set ----------------------------------------------------------------------------


def test_empty_golden_set(gate_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    (gate_project.path / "golden" / "cases.yaml").write_text("cases: []\n", encoding="utf-8")
    result = gate(gate_project, tiny_adapters.perturbed)
    assert_red(gate_project, result, "holds no cases")


def test_duplicate_case_ids(
    gate_project: pytest.Pytester, tiny_adapters: Adapters, golden_writer: Any
) -> None:
    golden_writer(
        gate_project.path,
        [{"id": "bill-1", "prompt": "again", "expected": "billing"}],
        name="more.yaml",
    )
    result = gate(gate_project, tiny_adapters.perturbed)
    assert_red(gate_project, result, "more.yaml", "duplicate case id 'bill-1'")


def test_malformed_case_file(gate_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    (gate_project.path / "golden" / "bad.jsonl").write_text(
        '{"id": "ok-1", "prompt": "hi", "expected": "x", "scorer": "exact"}\n'
        '{"id": "bad-1", "pro\n',
        encoding="utf-8",
    )
    result = gate(gate_project, tiny_adapters.perturbed)
    assert_red(gate_project, result, "bad.jsonl:2")


def test_partial_selection(gate_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    result = gate(gate_project, tiny_adapters.perturbed, "--min-f1-gain=-1", "-k", "bill")
    assert_red(gate_project, result, "partial selection: 1 of 5")


def test_baseline_report_of_another_golden_set(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """Refused before anything is generated: its outcomes cannot be paired with these cases."""
    old = gate_project.path / "old.json"
    old.write_text(
        json.dumps(
            {"schema_version": 1, "passed": True, "reasons": [], "golden_sha256": "f" * 64,
             "cases": []}
        ),
        encoding="utf-8",
    )  # fmt: skip
    result = gate(gate_project, tiny_adapters.perturbed, f"--baseline={old}")
    report = assert_red(gate_project, result, "baseline report", "refused", "golden_sha256")
    assert report["engine_load"]["engine_requests"] == {"generate": 0, "rank": 0}


# -- the engine --------------------------------------------------------------------------------

FAULTY_CONFTEST = """
import os
import time
from pathlib import Path

from qlgate_pytest.engines import Generation, Ranking, register_engine

MODE = {mode!r}


class Faulty:
    name = "faulty"

    def __init__(self, config):
        self.calls = 0

    def describe(self):
        return {{"engine": "faulty"}}

    def warm_up(self):
        pass

    def close(self):
        pass

    def _maybe_fail(self, role):
        self.calls += 1
        if MODE == "raise" and role == "baseline":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if MODE == "hang":
            time.sleep(3)
        if MODE == "kill":
            try:  # exactly one worker dies, however the two race
                os.close(os.open("killed-once", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os._exit(137)  # as the OOM killer would

    def rank(self, role, requests):
        self._maybe_fail(role)
        return [Ranking(r.key, {{l: -float(i) for i, l in enumerate(r.labels)}}, r.labels[0],
                        1.0, 5, 1) for r in requests]

    def generate(self, role, requests):
        self._maybe_fail(role)
        return [Generation(r.key, "hello", 1.0, 5, 1) for r in requests]


register_engine("faulty", Faulty)
"""


def test_engine_exception_mid_run(gate_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    """The candidate's calls succeed, then the model raises on the baseline's."""
    gate_project.makeconftest(FAULTY_CONFTEST.format(mode="raise"))
    result = gate(gate_project, tiny_adapters.perturbed, "--engine=faulty")
    assert_red(gate_project, result, "case(s) errored", "illegal memory access")


def test_killed_xdist_worker(gate_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    """A worker killed mid-run (OOM) is replaced by xdist; its unreported cases make it red."""
    gate_project.makeconftest(FAULTY_CONFTEST.format(mode="kill"))
    result = gate_project.runpytest_subprocess(
        f"--candidate={tiny_adapters.perturbed}",
        "--gate-report=out/report.json",
        "--engine=faulty",
        "--min-f1-gain=-1",
        "-n",
        "2",
    )
    assert (gate_project.path / "killed-once").exists()
    report = assert_red(gate_project, result, "crashed")
    assert report["passed"] is False


def test_per_request_timeout(gate_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    """An engine call that overruns --request-timeout is abandoned; its cases are errors."""
    gate_project.makeconftest(FAULTY_CONFTEST.format(mode="hang"))
    result = gate(gate_project, tiny_adapters.perturbed, "--engine=faulty", "--request-timeout=0.2")
    assert_red(gate_project, result, "case(s) errored", "--request-timeout 0.2s")
