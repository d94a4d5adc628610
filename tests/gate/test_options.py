"""Gate options: validators, precedence (CLI > env > ini > default), errors naming the source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qlgate_core.errors import OptionError
from qlgate_pytest.option_parsers import (
    parse_bool,
    parse_confidence,
    parse_device,
    parse_endpoint,
    parse_max_slice_drop,
    parse_merge,
    parse_min_f1_gain,
    parse_name,
    parse_positive_int,
)
from qlgate_pytest.options import OPTIONS, BaselineSpec, GateOptions, resolve_options

Adapters = Any  # tests/gate/conftest.py's Adapters (conftest modules are not importable)


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A rootdir with golden/, an adapter-looking directory and a report file."""
    (tmp_path / "golden").mkdir()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "old-report.json").write_text("{}", encoding="utf-8")
    return tmp_path


def resolve(
    project: Path,
    cli: dict[str, object] | None = None,
    env: dict[str, str] | None = None,
    ini: dict[str, str] | None = None,
) -> GateOptions:
    return resolve_options(
        cli or {}, env or {}, ini or {}, cwd=project, rootdir=project, ini_file="pyproject.toml"
    )


def test_defaults_leave_the_gate_inert(project: Path) -> None:
    """With nothing set the gate is inactive and every setting has its documented default."""
    opts = resolve(project)
    assert not opts.active
    assert (opts.baseline, opts.engine, opts.min_f1_gain, opts.confidence) == (
        BaselineSpec("base"),
        "hf",
        0.0,
        0.95,
    )
    assert opts.golden == project / "golden" and opts.max_p99_ms is None


def test_cli_beats_env_beats_ini(project: Path) -> None:
    """The same option set three ways takes the command line's value, then env's, then ini's."""
    ini = {"qlgate_min_f1_gain": "0.1", "qlgate_confidence": "0.9", "qlgate_max_p99_ms": "300"}
    env = {"QLGATE_MIN_F1_GAIN": "0.2", "QLGATE_CONFIDENCE": "0.8"}
    opts = resolve(project, cli={"min_f1_gain": "0.3"}, env=env, ini=ini)
    assert (opts.min_f1_gain, opts.confidence, opts.max_p99_ms) == (0.3, 0.8, 300.0)
    assert opts.sources == {
        "min_f1_gain": "command line --min-f1-gain",
        "confidence": "environment variable QLGATE_CONFIDENCE",
        "max_p99_ms": "ini option qlgate_max_p99_ms in pyproject.toml",
    }


@pytest.mark.parametrize(
    ("where", "expected_source"),
    [
        ("cli", "command line --confidence"),
        ("env", "environment variable QLGATE_CONFIDENCE"),
        ("ini", "ini option qlgate_confidence in pyproject.toml"),
    ],
)
def test_bad_value_names_option_value_and_source(
    project: Path, where: str, expected_source: str
) -> None:
    """A bad value from any source is an OptionError naming the option, value and source."""
    kwargs = {
        "cli": {"cli": {"confidence": "1.5"}},
        "env": {"env": {"QLGATE_CONFIDENCE": "1.5"}},
        "ini": {"ini": {"qlgate_confidence": "1.5"}},
    }[where]
    with pytest.raises(OptionError) as info:
        resolve(project, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "--confidence" in message and "'1.5'" in message and expected_source in message


def test_paths_resolve_against_cwd_or_rootdir(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """CLI/env paths are relative to the invocation dir, ini paths to the rootdir."""
    elsewhere = tmp_path_factory.mktemp("cwd")
    (elsewhere / "adapter").mkdir()
    (elsewhere / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")
    opts = resolve_options(
        {"candidate": "adapter"},
        {},
        {"qlgate_gate_report": "out/r.json"},
        cwd=elsewhere,
        rootdir=project,
    )
    assert opts.candidate == elsewhere / "adapter"
    assert opts.gate_report == project / "out" / "r.json"
    assert opts.active


def test_baseline_kinds(project: Path) -> None:
    """--baseline accepts 'base', an adapter directory or a report file, and nothing else."""
    assert resolve(project, cli={"baseline": "adapter"}).baseline == BaselineSpec(
        "adapter", project / "adapter"
    )
    assert resolve(project, cli={"baseline": "old-report.json"}).baseline.kind == "report"
    with pytest.raises(OptionError, match="--baseline"):
        resolve(project, cli={"baseline": "missing.json"})
    with pytest.raises(OptionError, match="not a peft adapter"):
        resolve(project, cli={"baseline": "golden"})


def test_candidate_is_resolved_but_left_to_preflight(project: Path) -> None:
    """--candidate is only resolved here: a missing or broken adapter is preflight's finding,
    a red verdict with its reason in the report (tests/gate/test_faults.py), not a usage error."""
    assert resolve(project, cli={"candidate": "nope"}).candidate == project / "nope"
    assert resolve(project, cli={"candidate": "golden"}).active


def test_issue6_options_parse_and_validate(project: Path) -> None:
    """Cache, perturbation, timeout and leakage options: defaults, values, and refusals."""
    opts = resolve(project, cli={"candidate": "adapter"})
    assert (opts.no_gen_cache, opts.clear_gen_cache, opts.perturb) == (False, False, 0)
    assert opts.gen_cache_dir is None and opts.request_timeout is None
    opts = resolve(
        project,
        cli={"candidate": "adapter", "perturb": "3", "max_flip_rate": "0.2"},
        env={"QLGATE_NO_GEN_CACHE": "yes", "QLGATE_GEN_CACHE_DIR": "c"},
        ini={"qlgate_request_timeout": "1.5", "qlgate_leakage_threshold": "0.7"},
    )
    assert (opts.perturb, opts.max_flip_rate, opts.no_gen_cache) == (3, 0.2, True)
    assert opts.request_timeout == 1.5 and opts.leakage_threshold == 0.7
    assert opts.gen_cache_dir is not None and opts.gen_cache_dir.name == "c"
    bad = [
        ({"perturb": "-1"}, "--perturb"),
        ({"max_flip_rate": "0.1"}, "needs --perturb"),
        ({"perturb": "2", "max_flip_rate": "1.5"}, "--max-flip-rate"),
        ({"request_timeout": "0"}, "--request-timeout"),
        ({"leakage_threshold": "0"}, "--leakage-threshold"),
    ]
    for cli, named in bad:
        with pytest.raises(OptionError, match=named):
            resolve(project, cli={"candidate": "adapter", **cli})


def test_candidate_and_train_data_exclude_each_other(project: Path) -> None:
    """Gating an adapter and training one are alternatives, and train_config needs train_data."""
    with pytest.raises(OptionError, match="exclude each other"):
        resolve(project, cli={"candidate": "adapter", "train_data": "golden"})
    (project / "train.toml").write_text("", encoding="utf-8")
    with pytest.raises(OptionError, match="needs --train-data"):
        resolve(project, env={"QLGATE_TRAIN_CONFIG": "train.toml"})


def test_missing_default_golden_dir_is_a_usage_error(tmp_path: Path) -> None:
    """An active gate without a golden set says where it looked and how to point elsewhere."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(OptionError, match=r"no golden set at .*--golden"):
        resolve(tmp_path, cli={"candidate": "a"})


def test_unknown_engine_suggests_a_known_one(project: Path) -> None:
    """A typo in --engine gets a 'did you mean'."""
    with pytest.raises(OptionError, match="did you mean 'hf'"):
        resolve(project, cli={"engine": "hff"})


@pytest.mark.parametrize(
    ("parse", "bad"),
    [
        (parse_min_f1_gain, "1.0"),
        (parse_min_f1_gain, "-1.5"),
        (parse_min_f1_gain, "nan"),
        (parse_confidence, "0.4"),
        (parse_confidence, "1"),
        (parse_max_slice_drop, "-0.1"),
        (parse_positive_int, "0"),
        (parse_positive_int, "2.5"),
        (parse_bool, "maybe"),
        (parse_device, "gpu"),
        (parse_endpoint, "ftp://host/v1"),
        (parse_endpoint, "localhost:8000/v1"),
        (parse_endpoint, "http:///v1"),
        (parse_endpoint, "http://host:port/v1"),
        (parse_merge, "sometimes"),
        (parse_name, "two words"),
        (parse_name, " "),
    ],
)
def test_validators_reject_out_of_range_values(parse, bad: str) -> None:  # type: ignore[no-untyped-def]
    """Each validator refuses values outside its documented domain with a reason."""
    with pytest.raises(ValueError, match=r"."):
        parse(bad)


def test_validators_accept_their_domain() -> None:
    """Boundary values inside each domain are accepted."""
    assert parse_min_f1_gain("-1") == -1.0 and parse_min_f1_gain("0.05") == 0.05
    assert parse_confidence("0.5") == 0.5 and parse_max_slice_drop("1") == 1.0
    assert parse_bool("Yes") and not parse_bool("off") and parse_device("cuda:1") == "cuda:1"


def test_every_option_has_flag_env_and_ini() -> None:
    """Option names follow one scheme: --flag, QLGATE_KEY, qlgate_key."""
    for spec in OPTIONS:
        assert spec.flag.startswith("--")
        assert spec.env == "QLGATE_" + spec.key.upper()
        assert spec.ini == "qlgate_" + spec.key


# -- end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "ini", "named"),
    [
        (["--candidate=adapter", "--min-f1-gain=abc"], {}, "", "--min-f1-gain"),
        (["--candidate=adapter"], {"QLGATE_CONFIDENCE": "2"}, "", "QLGATE_CONFIDENCE"),
        (["--candidate=adapter"], {}, "qlgate_batch_size = 0", "qlgate_batch_size"),
        (["--candidate=adapter", "--perturb=x"], {}, "", "--perturb"),
        (["--candidate=adapter", "--baseline=old.json"], {}, "", "--baseline (from *version 99"),
        (["--candidate=adapter", "--min-f1=1.5"], {}, "", "--min-f1 (from command line*<= 1"),
        (["--candidate=adapter"], {}, "qlgate_merge = maybe", "--gate-merge (from ini*auto, on"),
        (["--served-model=m"], {"QLGATE_ENDPOINT": "ftp://x"}, "", "QLGATE_ENDPOINT*http"),
        (["--endpoint=http://127.0.0.1:1/v1"], {}, "", "--endpoint (from *needs --served-model"),
        (["--candidate=adapter", "--gate-max-batch-tokens=0"], {}, "", "--gate-max-batch-tok"),
    ],
)
def test_bad_option_exits_4_naming_it(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    ini: str,
    named: str,
) -> None:
    """A bad value from CLI, env or ini stops pytest with exit 4 and names the option."""
    (pytester.path / "golden").mkdir()
    (pytester.path / "adapter").mkdir()
    (pytester.path / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")
    (pytester.path / "old.json").write_text('{"schema_version": 99}', encoding="utf-8")
    pytester.makeini("[pytest]\n" + ini)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: qlgate: *{named}*"])


def test_options_from_ini_and_env_reach_the_gate(
    gate_project: pytest.Pytester, tiny_adapters: Adapters, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ini and env settings drive a real gate run: threshold, report path, batch size."""
    gate_project.makepyprojecttoml(
        "[tool.pytest.ini_options]\njunit_family = 'xunit1'\n"
        "qlgate_min_f1_gain = '-1.0'\nqlgate_gate_report = 'from-ini.json'\n"
        "qlgate_allow_unchecked_leakage = true\n"  # the plumbing adapter has no provenance
    )
    monkeypatch.setenv("QLGATE_CANDIDATE", str(tiny_adapters.perturbed))
    monkeypatch.setenv("QLGATE_BATCH_SIZE", "2")
    result = gate_project.runpytest()
    report = read_json(gate_project.path / "from-ini.json")
    assert report["thresholds"]["min_f1_gain"] == -1.0
    assert report["run"]["options"]["batch_size"] == 2
    assert report["run"]["engine"]["batch_size"] == 2
    assert report["run"]["options"]["sources"]["candidate"] == (
        "environment variable QLGATE_CANDIDATE"
    )
    assert report["passed"] is True and result.ret == 0


# -- the endpoint (drift) options and the hf engine knobs -------------------------------------

URL = "http://127.0.0.1:8000/v1"


def test_endpoint_options_from_cli_env_and_ini(project: Path) -> None:
    """--endpoint activates the gate, implies --engine openai and reaches the engine's extra;
    each of its options is settable from the command line, the environment and ini."""
    opts = resolve(
        project,
        env={"QLGATE_ENDPOINT": URL, "QLGATE_MIN_F1": "0.85"},
        ini={"qlgate_served_model": "cand", "qlgate_baseline_model": "base"},
    )
    assert opts.active and opts.engine == "openai" and opts.candidate is None
    assert (opts.endpoint, opts.served_model, opts.baseline_model, opts.min_f1) == (
        URL,
        "cand",
        "base",
        0.85,
    )
    assert opts.sources["endpoint"] == "environment variable QLGATE_ENDPOINT"
    assert opts.sources["served_model"] == "ini option qlgate_served_model in pyproject.toml"
    assert opts.engine_extra() == {
        "openai_endpoint": URL,
        "openai_served_model": "cand",
        "openai_baseline_model": "base",
    }
    assert opts.baseline_describe() == "served model base"
    drift = resolve(
        project, cli={"endpoint": "https://h.example", "served_model": "c", "min_f1": "0"}
    )
    assert drift.min_f1 == 0.0 and drift.baseline_model is None
    assert drift.baseline_describe().startswith("none")
    assert (
        resolve(
            project, cli={"endpoint": URL, "served_model": "c", "min_f1": "1", "engine": "openai"}
        ).engine
        == "openai"
    )


@pytest.mark.parametrize(
    ("cli", "named"),
    [
        ({"engine": "hf"}, r"--endpoint \(from command line --endpoint\).*--engine \(from"),
        ({"candidate": "adapter"}, "--endpoint .* and --candidate .* exclude each other"),
        ({"train_data": "golden"}, "--endpoint .* and --train-data .* exclude each other"),
        ({"served_model": None}, "needs --served-model"),
        ({"min_f1": None}, "nothing to gate on: pass --min-f1"),
        ({"baseline": "adapter"}, "--baseline .*: with --endpoint the baseline is"),
        ({"baseline": "base"}, "--baseline .*: with --endpoint the baseline is"),
        ({"baseline": "old-report.json", "baseline_model": "b"}, "exclude each other"),
        ({"merge": "off"}, "--gate-merge .* does not apply to --endpoint"),
        ({"max_batch_tokens": "64"}, "--gate-max-batch-tokens .* does not apply"),
        ({"base_model": "embedded"}, "--base-model .* does not apply"),
    ],
)
def test_endpoint_exclusions(project: Path, cli: dict[str, object], named: str) -> None:
    """What --endpoint needs and what it excludes, each a usage error naming the options."""
    full = {"endpoint": URL, "served_model": "cand", "min_f1": "0.5", **cli}
    with pytest.raises(OptionError, match=named):
        resolve(project, cli={k: v for k, v in full.items() if v is not None})


def test_endpoint_with_a_baseline_report_or_local_knobs_from_ini(project: Path) -> None:
    """A previous report is a baseline an endpoint run can use; local-engine settings from ini
    (the project's settings for local runs) do not block a drift run and do not reach it."""
    opts = resolve(
        project,
        cli={"endpoint": URL, "served_model": "cand", "baseline": "old-report.json"},
        ini={"qlgate_merge": "off", "qlgate_max_batch_tokens": "64", "qlgate_device": "cpu"},
    )
    assert opts.baseline.kind == "report" and opts.min_f1 is None
    assert "merge" not in opts.engine_extra() and "max_batch_tokens" not in opts.engine_extra()


@pytest.mark.parametrize(
    ("cli", "env", "named"),
    [
        ({"served_model": "m"}, {}, "--served-model .* needs --endpoint"),
        ({}, {"QLGATE_BASELINE_MODEL": "m"}, "QLGATE_BASELINE_MODEL.* needs --endpoint"),
        ({"engine": "openai"}, {}, "--engine .* needs --endpoint URL and --served-model"),
    ],
)
def test_endpoint_companions_need_an_endpoint(
    project: Path, cli: dict[str, object], env: dict[str, str], named: str
) -> None:
    with pytest.raises(OptionError, match=named):
        resolve(project, cli={"candidate": "adapter", **cli}, env=env)


def test_endpoint_without_golden_dir_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="no golden set"):
        resolve(tmp_path, cli={"endpoint": URL, "served_model": "c", "min_f1": "0.5"})


def test_min_f1_is_a_floor_for_local_engines_too(project: Path) -> None:
    """--min-f1 with --candidate is an extra floor beside the gain over the baseline."""
    opts = resolve(project, cli={"candidate": "adapter"}, ini={"qlgate_min_f1": "0.7"})
    assert opts.min_f1 == 0.7 and opts.engine == "hf" and opts.endpoint is None
    assert resolve(project, cli={"candidate": "adapter"}).min_f1 is None
    for bad in ("-0.1", "1.01", "nan", "x"):
        with pytest.raises(OptionError, match=r"--min-f1 \(from environment"):
            resolve(project, cli={"candidate": "adapter"}, env={"QLGATE_MIN_F1": bad})


def test_hf_engine_knobs_reach_engine_extra(project: Path) -> None:
    """--gate-max-batch-tokens and --gate-merge become EngineConfig.extra keys; auto omits."""
    opts = resolve(project, cli={"candidate": "adapter"})
    assert (opts.max_batch_tokens, opts.merge, opts.engine_extra()) == (None, "auto", {})
    opts = resolve(
        project,
        cli={"candidate": "adapter", "max_batch_tokens": "2048"},
        env={"QLGATE_MERGE": "off"},
    )
    assert opts.engine_extra() == {"max_batch_tokens": 2048, "merge": False}
    assert opts.sources["merge"] == "environment variable QLGATE_MERGE"
    opts = resolve(project, cli={"candidate": "adapter"}, ini={"qlgate_merge": "on"})
    assert opts.engine_extra() == {"merge": True}
    assert resolve(project, cli={"candidate": "adapter", "merge": "auto"}).engine_extra() == {}
    assert parse_merge("Yes") == "on" and parse_merge("0") == "off"
    for bad in ("0", "-5", "1.5"):
        with pytest.raises(OptionError, match="--gate-max-batch-tokens"):
            resolve(project, cli={"candidate": "adapter"}, ini={"qlgate_max_batch_tokens": bad})


def test_hf_engine_knobs_are_part_of_the_generation_cache_key(project: Path) -> None:
    """Merging moves log-likelihoods slightly and the token budget changes the batch layout:
    a run with other knobs must miss the cache, not reuse answers computed without them."""
    import numpy as np
    from safetensors.numpy import save_file

    from qlgate_pytest.engines.base import EngineConfig
    from qlgate_pytest.gate_cache import build_cache

    base = project / "base"
    base.mkdir()
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(base / "model.safetensors"))
    (base / "tokenizer_config.json").write_text('{"chat_template": "{{ m }}"}', encoding="utf-8")
    samplings = []
    for cli in ({}, {"merge": "off"}, {"merge": "on"}, {"max_batch_tokens": "64"}):
        opts = resolve(project, cli={"candidate": "adapter", "no_gen_cache": True, **cli})
        config = EngineConfig(base, {"candidate": None}, extra=opts.engine_extra())
        cache, _ = build_cache(opts, project, config, {"engine": "hf"})
        samplings.append(json.dumps(cache.sampling, sort_keys=True))
    assert len(set(samplings)) == len(samplings)
