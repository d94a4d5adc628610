"""The gate end to end through pytester: collection, outcomes, verdict, exit code, reports.

Plumbing runs use the tiny random model (its answers mean nothing, so thresholds are set to
test the wiring); the tests marked slow use the real embedded model, where the verdict depends
on what the adapter learned.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Adapters = Any  # tests/gate/conftest.py's Adapters (conftest modules are not importable)
Writer = Callable[..., Path]


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def label_case(case_id: str, prompt: str, expected: str) -> dict[str, Any]:
    return {"id": case_id, "prompt": prompt, "expected": expected}


NON_INFERIOR = "--min-f1-gain=-1"  # plumbing: any candidate that runs may pass


def run(project: pytest.Pytester, adapter: Path, *args: str) -> pytest.RunResult:
    return project.runpytest(
        f"--candidate={adapter}", "--gate-report=out/report.json", "--junitxml=out/junit.xml", *args
    )


def junit(project: pytest.Pytester) -> dict[str, Any]:
    """Per-testcase outcome and properties from the JUnit file."""
    root = ET.parse(project.path / "out" / "junit.xml").getroot()
    cases: dict[str, Any] = {}
    for tc in root.iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if tc.find(tag) is not None:
                outcome = tag
        props = {p.get("name"): p.get("value") for p in tc.iter("property")}
        cases[str(tc.get("name"))] = {"outcome": outcome, "props": props}
    return cases


def test_inert_without_candidate(
    pytester: pytest.Pytester, golden_writer: Writer, plumbing_cases: list[dict[str, Any]]
) -> None:
    """Without --candidate the golden set is not collected and torch is never imported."""
    golden_writer(pytester.path, plumbing_cases)
    pytester.makepyfile(
        test_inert="""
        import sys
        def test_nothing_heavy_was_imported():
            assert "torch" not in sys.modules and "transformers" not in sys.modules
            assert "qlgate_core.cases" not in sys.modules  # golden loading (pydantic)
            assert "qlgate_pytest.gate" not in sys.modules  # statistics (numpy)
    """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    assert "golden" not in result.stdout.str()


def test_green_gate_exits_0_and_reports_agree(
    gate_project: pytest.Pytester, tiny_adapters: Adapters, plumbing_cases: list[dict[str, Any]]
) -> None:
    """A passing gate: exit 0, JSON passed, JUnit without failures; misses are xfailed."""
    result = run(gate_project, tiny_adapters.perturbed, NON_INFERIOR)
    assert result.ret == 0, result.stdout.str()
    report = read_json(gate_project.path / "out" / "report.json")
    assert report["passed"] is True and report["reasons"] == []
    assert {row["id"] for row in report["cases"]} == {c["id"] for c in plumbing_cases}
    assert report["golden_sha256"] and report["delta"]["ci_low"] is not None
    cases = junit(gate_project)
    assert "test_project_test" not in cases  # tests/ is not collected in a gate run
    assert (
        cases["gate"]["outcome"] == "passed" and cases["gate"]["props"]["qlgate_verdict"] == "PASS"
    )
    misses = {row["id"] for row in report["cases"] if not row["candidate"]["correct"]}
    for case_id in {c["id"] for c in plumbing_cases}:
        payload = json.loads(cases[case_id]["props"]["qlgate_case"])
        assert payload["case_id"] == case_id and payload["baseline"] is not None
        assert cases[case_id]["outcome"] == ("skipped" if case_id in misses else "passed")
    result.stdout.fnmatch_lines(["*qlgate gate*", "qlgate: PASS (5 cases)"])


def test_html_prometheus_and_case_table_follow_the_json_report(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """--gate-html, --gate-prom and --gate-cases are written from the same verdict as the JSON."""
    import pandas as pd

    result = run(
        gate_project,
        tiny_adapters.perturbed,
        f"--baseline={tiny_adapters.perturbed}",  # the same adapter: the canary goes off
        "--gate-html=out/report.html",
        "--gate-prom=out/gate.prom",
        "--gate-cases=out/cases.csv",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    report = read_json(gate_project.path / "out" / "report.json")
    html = (gate_project.path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<html" in html.lower() and "adapter was not applied" in html
    prom = (gate_project.path / "out" / "gate.prom").read_text(encoding="utf-8")
    assert "qlgate_macro_f1" in prom
    passed = [line for line in prom.splitlines() if line.startswith("qlgate_gate_passed")]
    assert passed and passed[0].split()[-1] in {"0", "0.0"}
    table = pd.read_csv(gate_project.path / "out" / "cases.csv")
    assert len(table) == len(report["cases"])


def test_zero_effect_adapter_is_red(gate_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    """LoRA B = 0 changes nothing: preflight finds it from the weights alone, so the gate is red
    (exit 1, everywhere) before any model is loaded."""
    result = run(gate_project, tiny_adapters.zero)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    report = read_json(gate_project.path / "out" / "report.json")
    assert report["passed"] is False
    assert any(
        r.startswith("preflight [noop_adapter]") and "every lora_B tensor" in r
        for r in report["reasons"]
    )
    assert report["engine_load"]["loaded"] is False
    assert report["engine_load"]["engine_requests"] == {"generate": 0, "rank": 0}
    gate = junit(gate_project)["gate"]
    assert gate["outcome"] == "failure" and gate["props"]["qlgate_verdict"] == "FAIL"
    result.stdout.fnmatch_lines(["FAILED qlgate::gate*"])


def test_adapter_not_applied_canary_is_red(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """A non-zero adapter whose outputs equal the baseline's on every case (here: gated against
    itself) is red with the canary's reason, even under a non-inferiority threshold."""
    result = run(
        gate_project, tiny_adapters.perturbed, NON_INFERIOR, f"--baseline={tiny_adapters.perturbed}"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    report = read_json(gate_project.path / "out" / "report.json")
    assert report["passed"] is False
    assert any("the adapter was not applied" in r for r in report["reasons"])


def test_must_pass_miss_is_red(
    gate_project: pytest.Pytester,
    tiny_adapters: Adapters,
    golden_writer: Writer,
    plumbing_cases: list[dict[str, Any]],
) -> None:
    """A must_pass case the candidate misses fails its item and the gate."""
    never = {
        "id": "critical-1",
        "prompt": "x",
        "expected": "(?!)",
        "scorer": "regex",
        "must_pass": True,
        "max_new_tokens": 2,
        "tags": ["critical"],
    }
    golden_writer(gate_project.path, [*plumbing_cases, never])
    result = run(gate_project, tiny_adapters.perturbed, NON_INFERIOR)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*must_pass case critical-1 missed*"])
    report = read_json(gate_project.path / "out" / "report.json")
    assert report["passed"] is False
    assert any("must_pass" in r and "critical-1" in r for r in report["reasons"])
    assert junit(gate_project)["critical-1"]["outcome"] == "failure"


@pytest.mark.parametrize("selector", [["-k", "bill or free"], ["-m", "edge"]])
def test_partial_selection_is_red_unless_allowed(
    gate_project: pytest.Pytester, tiny_adapters: Adapters, selector: list[str]
) -> None:
    """-k/-m subsets are reported as partial and pass only with --allow-partial."""
    result = run(gate_project, tiny_adapters.perturbed, NON_INFERIOR, *selector)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    report = read_json(gate_project.path / "out" / "report.json")
    assert report["metrics"]["partial"] is True
    assert any("partial selection" in r for r in report["reasons"])
    allowed = run(gate_project, tiny_adapters.perturbed, NON_INFERIOR, "--allow-partial", *selector)
    assert allowed.ret == 0, allowed.stdout.str()


def test_tags_are_strict_markers(gate_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    """Case tags are registered markers: --strict-markers accepts them and -m selects by tag."""
    result = gate_project.runpytest(
        f"--candidate={tiny_adapters.perturbed}",
        "--strict-markers",
        "-m",
        "generate",
        "--collect-only",
        "-q",
    )
    assert result.ret == 0
    result.stdout.fnmatch_lines(["golden/cases.yaml::free-1", "*1/5 tests collected*"])


def test_malformed_golden_file_errors_with_file_and_line(
    gate_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """A broken case file is a collection error naming file:line: field; the report is red."""
    (gate_project.path / "golden" / "bad.yaml").write_text(
        "- id: ok-1\n  prompt: hi\n  expected: x\n  scorer: exact\n- id: bad-1\n  prompt: hi\n"
        "  expected: x\n  scorer: exactly\n",
        encoding="utf-8",
    )
    result = run(gate_project, tiny_adapters.perturbed, NON_INFERIOR)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*golden/bad.yaml:8: field 'scorer':*"])
    assert "Traceback" not in result.stdout.str()
    report = read_json(gate_project.path / "out" / "report.json")
    assert report["passed"] is False and any("bad.yaml:8" in r for r in report["reasons"])


def test_duplicate_ids_are_a_collection_error(
    gate_project: pytest.Pytester, tiny_adapters: Adapters, golden_writer: Writer
) -> None:
    """The same case id in two files is refused, naming both places."""
    golden_writer(gate_project.path, [label_case("bill-1", "again", "billing")], name="more.yaml")
    result = run(gate_project, tiny_adapters.perturbed, NON_INFERIOR)
    assert result.ret != 0
    result.stdout.fnmatch_lines(
        ["*more.yaml:*duplicate case id 'bill-1': also defined at*cases.yaml:*"]
    )


def test_engine_failure_errors_every_case_without_traceback(
    gate_project: pytest.Pytester, tiny_adapters: Adapters, wide_adapter: Path
) -> None:
    """An adapter that cannot load makes every case an error with the reason; the gate is red."""
    result = run(gate_project, wide_adapter, f"--base-model={tiny_adapters.base}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=6)  # five cases and the gate
    result.stdout.fnmatch_lines(
        ["*errored:*engine 'hf' unavailable:*does not load onto base model*"]
    )
    assert "Traceback" not in result.stdout.str()
    report = read_json(gate_project.path / "out" / "report.json")
    assert any("5 case(s) errored" in r for r in report["reasons"])


def test_adapter_baseline(gate_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    """--baseline DIR compares against a second adapter loaded in the same engine."""
    result = run(
        gate_project, tiny_adapters.perturbed, NON_INFERIOR, f"--baseline={tiny_adapters.other}"
    )
    assert result.ret == 0, result.stdout.str()
    report = read_json(gate_project.path / "out" / "report.json")
    assert report["run"]["engine"]["adapters"]["baseline"] == str(tiny_adapters.other)


def test_report_baseline_pairs_only_the_same_golden_set(
    gate_project: pytest.Pytester, tiny_adapters: Adapters, golden_writer: Writer
) -> None:
    """--baseline REPORT.json reuses that run's outcomes; another golden set is refused."""
    first = run(gate_project, tiny_adapters.other, NON_INFERIOR)
    assert first.ret == 0
    old = gate_project.path / "old.json"
    (gate_project.path / "out" / "report.json").rename(old)
    again = run(gate_project, tiny_adapters.perturbed, NON_INFERIOR, f"--baseline={old}")
    assert again.ret == 0, again.stdout.str()
    report = read_json(gate_project.path / "out" / "report.json")
    previous = {r["id"]: r["candidate"] for r in read_json(old)["cases"]}
    assert all(r["baseline"] == previous[r["id"]] for r in report["cases"])
    assert "baseline" not in report["run"]["engine"]["adapters"]
    golden_writer(gate_project.path, [label_case("new-1", "A new ticket.", "billing")], "new.yaml")
    refused = run(gate_project, tiny_adapters.perturbed, NON_INFERIOR, f"--baseline={old}")
    assert refused.ret == pytest.ExitCode.TESTS_FAILED
    report = read_json(gate_project.path / "out" / "report.json")
    assert any("refused" in r and "golden" in r for r in report["reasons"])


def test_python_files_in_golden_use_the_session_engine(
    gate_project: pytest.Pytester, tiny_adapters: Adapters, golden_locker: Writer
) -> None:
    """golden/test_*.py can parametrise over cases and share the gate's engine and results."""
    (gate_project.path / "golden" / "test_extra.py").write_text(
        "import pytest\n"
        "@pytest.mark.qlgate_cases(tags=['edge'])\n"
        "def test_edge(qlgate_case, qlgate_result, qlgate_engine):\n"
        "    assert qlgate_case.id == qlgate_result.case_id == 'acct-1'\n"
        "    assert qlgate_engine.name == 'hf'\n",
        encoding="utf-8",
    )
    golden_locker(gate_project.path)  # a new golden test file is a change the lock records
    result = run(gate_project, tiny_adapters.perturbed, NON_INFERIOR, "-v")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*golden/test_extra.py::test_edge[[]acct-1[]] PASSED*"])
    inert = gate_project.runpytest("golden/test_extra.py")
    inert.assert_outcomes(skipped=1)


# -- the real embedded model ------------------------------------------------------------------


@pytest.fixture
def held_out_project(
    pytester: pytest.Pytester, golden_writer: Writer, held_out_cases: list[dict[str, Any]]
) -> pytest.Pytester:
    """Twelve held-out sample tickets (three per label) as the golden set. The adapters are
    trained by a fixture without provenance, so the leakage check is accepted as unchecked."""
    pytester.makepyprojecttoml(
        "[tool.pytest.ini_options]\njunit_family = 'xunit1'\n"
        "qlgate_allow_unchecked_leakage = true\n"
    )
    golden_writer(pytester.path, held_out_cases)
    return pytester


@pytest.mark.slow
def test_trained_adapter_passes_on_the_real_model(
    held_out_project: pytest.Pytester, embedded_adapters: Adapters
) -> None:
    """An adapter trained on sample tickets beats the embedded base model: green, exit 0."""
    result = run(held_out_project, embedded_adapters.perturbed)
    report = read_json(held_out_project.path / "out" / "report.json")
    assert result.ret == 0, "\n".join(report["reasons"])
    assert report["passed"] is True
    assert report["delta"]["ci_low"] > 0
    assert report["metrics"]["candidate"]["macro_f1"] > report["metrics"]["baseline"]["macro_f1"]


@pytest.mark.slow
def test_zero_effect_adapter_is_red_on_the_real_model(
    held_out_project: pytest.Pytester, embedded_adapters: Adapters
) -> None:
    """On the embedded model a LoRA-B=0 adapter equals the base model: red, exit 1."""
    result = run(held_out_project, embedded_adapters.zero)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    report = read_json(held_out_project.path / "out" / "report.json")
    assert report["passed"] is False
    assert any(r.startswith("preflight [noop_adapter]") for r in report["reasons"])


# -- training from the harness (--train-data) -------------------------------------------------


def _fake_trainer(calls: list[Path]):  # type: ignore[no-untyped-def]
    """A stand-in for train_adapter that records calls and writes a finished-adapter shape."""

    def train(
        data_dir: Path, out_dir: Path, *, config_path: Path | None = None, overrides: object = None
    ) -> Path:
        calls.append(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "adapter_config.json").write_text("{}", encoding="utf-8")
        (out_dir / "qlgate-provenance.json").write_text("{}", encoding="utf-8")
        return out_dir

    return train


def test_trained_adapter_is_reused_for_the_same_data_and_config(tmp_path: Path) -> None:
    """Same data + config reuse the cached adapter; changing either trains again."""
    from qlgate_pytest.harness_train import trained_adapter

    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    (data / "manifest.json").write_text('{"content_sha256": "a"}', encoding="utf-8")
    config = tmp_path / "train.toml"
    config.write_text("[train]\nmax_steps = 1\n", encoding="utf-8")
    calls: list[Path] = []
    train = _fake_trainer(calls)
    first = trained_adapter(data, config, cache_root=cache, train=train, log=lambda _: None)
    again = trained_adapter(data, config, cache_root=cache, train=train, log=lambda _: None)
    assert first == again and len(calls) == 1 and first.parent == cache
    config.write_text("[train]\nmax_steps = 2\n", encoding="utf-8")
    other_config = trained_adapter(data, config, cache_root=cache, train=train, log=lambda _: None)
    (data / "manifest.json").write_text('{"content_sha256": "b"}', encoding="utf-8")
    other_data = trained_adapter(data, config, cache_root=cache, train=train, log=lambda _: None)
    assert len({first, other_config, other_data}) == 3 and len(calls) == 3


def _curated_dataset(root: Path, tickets: list[tuple[str, str]]) -> Path:
    """A curated dataset directory in the documented layout (docs/CONTRACTS.md)."""
    from datasets import Dataset, DatasetDict

    from qlgate_pytest.training_data import content_sha256
    from training.sample_task import SYSTEM_PROMPT

    def rows(part: list[tuple[str, str]]) -> dict[str, list[object]]:
        return {
            "id": [f"{i:016x}" for i in range(len(part))],
            "messages": [
                [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": label},
                ]
                for text, label in part
            ],
            "label": [label for _, label in part],
            "source": ["human"] * len(part),
            "metadata": ["{}"] * len(part),
        }

    DatasetDict(
        {
            "train": Dataset.from_dict(rows(tickets[:-2])),
            "validation": Dataset.from_dict(rows(tickets[-2:])),
        }
    ).save_to_disk(str(root / "dataset"))
    (root / "manifest.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                # The real hash: preflight recomputes it to verify the training data it finds.
                "content_sha256": content_sha256(root / "dataset"),
                "labels": ["account", "billing", "returns", "shipping"],
            }
        ),
        encoding="utf-8",
    )
    return root


def test_train_data_trains_through_the_training_package_then_gates(
    gate_project: pytest.Pytester, tiny_adapters: Adapters, plumbing_cases: list[dict[str, Any]]
) -> None:
    """--train-data trains a real adapter with train_adapter (tiny model, 1 step), caches it
    under .qlgate_cache/trained/, gates it, and a second run reuses it."""
    pytest.importorskip("trl")
    # The trainer's heavy imports (trl, datasets) must predate the in-process inner run.
    import training.train
    import training.trainer_setup  # noqa: F401

    # Not the golden prompts: preflight's leakage check would (rightly) refuse the adapter.
    tickets = [
        ("My card was billed two times for a single purchase.", "billing"),
        ("The courier still has not delivered my box.", "shipping"),
        ("The password reset link never arrives in my inbox.", "account"),
        ("Can I return a jacket that does not fit?", "returns"),
    ]
    data = _curated_dataset(gate_project.path / "curated", tickets * 2)
    config = gate_project.path / "tiny.toml"
    config.write_text(
        f'[model]\nbase_model = "{tiny_adapters.base}"\n[train]\nmax_steps = 1\n'
        "micro_batch_size = 2\nmax_length = 96\ngradient_checkpointing = false\n"
        # one step at full learning rate, so LoRA B leaves zero and the canary sees the adapter
        'warmup_ratio = 0.0\nlr_scheduler = "constant"\nlearning_rate = 1e-2\n'
        "[eval]\nenabled = false\n",
        encoding="utf-8",
    )
    args = (
        f"--train-data={data}",
        f"--train-config={config}",
        NON_INFERIOR,
        "--gate-report=out/report.json",
    )
    result = gate_project.runpytest(*args)
    assert result.ret == 0, result.stdout.str()
    trained = list((gate_project.path / ".qlgate_cache" / "trained").iterdir())
    adapters = [p for p in trained if p.is_dir() and not p.name.startswith(".")]
    assert len(adapters) == 1 and (adapters[0] / "qlgate-provenance.json").is_file()
    report = read_json(gate_project.path / "out" / "report.json")
    assert report["run"]["candidate"] == str(adapters[0])
    assert report["run"]["base_model"]["path"] == str(tiny_adapters.base)
    again = gate_project.runpytest(*args)
    assert again.ret == 0
    again.stdout.fnmatch_lines(["*reusing trained candidate*"])


# -- seams: registered engines and the preflight hook -----------------------------------------


@pytest.fixture
def oracle_project(
    gate_project: pytest.Pytester,
    golden_writer: Writer,
    tiny_adapters: Adapters,
    oracle_conftest: str,
) -> pytest.Pytester:
    """Eight label cases and a registered engine whose candidate is right on all of them."""
    tickets = [
        ("I was charged twice.", "billing"), ("The invoice total is wrong.", "billing"),
        ("My parcel never came.", "shipping"), ("The courier lost it.", "shipping"),
        ("Reset my password.", "account"), ("My login fails.", "account"),
        ("I want a refund for the mug.", "returns"), ("How do I send back a lamp?", "returns"),
    ]  # fmt: skip
    cases = [label_case(f"t{i}", text, label) for i, (text, label) in enumerate(tickets)]
    golden_writer(gate_project.path, cases)
    gate_project.makeconftest(oracle_conftest)
    return gate_project


def test_registered_engine_and_a_better_candidate_pass_the_default_gate(
    oracle_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """An engine plugged in with register_engine serves the gate; a candidate shown better than
    the baseline passes with the default threshold (gain CI strictly above 0)."""
    result = run(oracle_project, tiny_adapters.perturbed, "--engine=oracle")
    assert result.ret == 0, result.stdout.str()
    report = read_json(oracle_project.path / "out" / "report.json")
    assert report["passed"] is True and report["delta"]["ci_low"] > 0
    assert report["run"]["engine"] == {"engine": "oracle"}
    assert report["metrics"]["candidate"]["macro_f1"] == 1.0


def test_failing_python_test_in_golden_turns_the_gate_red(
    oracle_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """A failing team test in golden/ is a reason on the verdict, not just a red test."""
    (oracle_project.path / "golden" / "test_team.py").write_text(
        "def test_team_rule(qlgate_engine):\n    assert qlgate_engine.name == 'other'\n",
        encoding="utf-8",
    )
    result = run(oracle_project, tiny_adapters.perturbed, "--engine=oracle")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    report = read_json(oracle_project.path / "out" / "report.json")
    assert any("golden/test_team.py::test_team_rule failed" in r for r in report["reasons"])


def test_preflight_problems_stop_the_engine_and_turn_the_gate_red(
    oracle_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """pytest_qlgate_preflight problems error every case before any engine is built."""
    conftest = oracle_project.path / "conftest.py"
    conftest.write_text(
        conftest.read_text(encoding="utf-8")
        + "\ndef pytest_qlgate_preflight(config, candidate, base_model, cases):\n"
        "    return [f'rank too large in {candidate.name} ({len(cases)} cases)']\n",
        encoding="utf-8",
    )
    result = run(oracle_project, tiny_adapters.perturbed, "--engine=oracle")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert not (oracle_project.path / "engine-built").exists()
    report = read_json(oracle_project.path / "out" / "report.json")
    assert "rank too large in perturbed (8 cases)" in report["reasons"]
    assert any("8 case(s) errored" in r for r in report["reasons"])


def test_generation_cache_hook_sits_between_driver_and_engine(
    oracle_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """A pytest_qlgate_generation_cache answer serves hits and stores the engine's misses."""
    conftest = oracle_project.path / "conftest.py"
    conftest.write_text(
        conftest.read_text(encoding="utf-8")
        + """
class LastLabelForBaseline:
    stored = []

    def lookup(self, role, request):
        if role != "baseline":
            return None
        scores = {lab: float(i) for i, lab in enumerate(request.labels)}
        return Ranking(request.key, scores, request.labels[-1], 1.0, 1, 1)

    def store(self, role, request, result):
        Path("stored.txt").open("a").write(f"{role} {request.key}\\n")


def pytest_qlgate_generation_cache(config, engine_config, engine_info):
    assert engine_info["engine"] == "oracle" and "candidate" in engine_config.adapters
    return LastLabelForBaseline()
""",
        encoding="utf-8",
    )
    result = run(oracle_project, tiny_adapters.perturbed, "--engine=oracle")
    assert result.ret == 0, result.stdout.str()
    report = read_json(oracle_project.path / "out" / "report.json")
    # the engine's baseline always says "account"; the cached one the last label
    assert {row["baseline"]["predicted"] for row in report["cases"]} == {"shipping"}
    stored = (oracle_project.path / "stored.txt").read_text(encoding="utf-8").split("\n")
    assert sorted(line for line in stored if line) == sorted(f"candidate t{i}" for i in range(8))
