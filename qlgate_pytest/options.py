"""The gate's options: names, validators, and one frozen :class:`GateOptions` per run.

Every option is settable three ways, resolved once with the precedence
command line > environment (``QLGATE_<NAME>``) > ini (``qlgate_<name>``) > default.
A bad value raises :class:`~qlgate_core.errors.OptionError` naming the option, the value and
where it came from; the plugin turns that into ``pytest.UsageError`` (exit 4).

Relative paths resolve against the invocation directory when they come from the command line
or the environment, and against the rootdir (where the ini file lives) otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from qlgate_core.errors import OptionError
from qlgate_pytest.option_parsers import (
    parse_adapter_dir,
    parse_base_model,
    parse_bool,
    parse_confidence,
    parse_device,
    parse_dtype,
    parse_endpoint,
    parse_existing,
    parse_float,
    parse_int,
    parse_max_p99_ms,
    parse_max_slice_drop,
    parse_merge,
    parse_min_f1_gain,
    parse_name,
    parse_positive_int,
    parse_report_path,
    parse_seed,
)
from qlgate_pytest.option_parsers import (
    parse_engine as parse_engine,  # re-exported: qlgate_pytest.service validates with it
)

GROUP = "qlgate"
ENV_PREFIX = "QLGATE_"
INI_PREFIX = "qlgate_"


@dataclass(frozen=True)
class OptionSpec:
    """One option: its key (``dest``, env and ini suffix), flag, help and kind."""

    key: str
    flag: str
    help: str
    metavar: str | None = None
    flag_only: bool = False  # a boolean switch on the command line

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()

    @property
    def ini(self) -> str:
        return INI_PREFIX + self.key

    @property
    def dest(self) -> str:
        return INI_PREFIX + self.key


# fmt: off
CANDIDATE = OptionSpec("candidate", "--candidate", "adapter directory to gate; activates the gate",
                       "DIR")
BASELINE = OptionSpec("baseline", "--baseline", "what the candidate must beat: 'base' (the base "
                      "model, default), an adapter DIR, or a previous gate REPORT.json",
                      "base|DIR|REPORT.json")
BASE_MODEL = OptionSpec("base_model", "--base-model", "base model spec ('embedded', a directory, "
                        "a cached hub id); default: the adapter's provenance, else its "
                        "adapter_config.json, else the embedded model", "SPEC")
ENGINE = OptionSpec("engine", "--engine", "engine that runs the model (default: hf)", "NAME")
GOLDEN = OptionSpec("golden", "--golden", "golden case directory or file (default: golden/)",
                    "PATH")
GOLDEN_LOCK = OptionSpec("golden_lock", "--golden-lock", "the golden-set lock the golden set must "
                         "match (default: golden.lock in the golden directory; written by "
                         "python -m qlgate_pytest lock-golden)", "PATH")
ALLOW_UNLOCKED_GOLDEN = OptionSpec("allow_unlocked_golden", "--allow-unlocked-golden", "let a "
                                   "golden set without a lock file run (an existing lock is "
                                   "still checked)", flag_only=True)
MIN_F1_GAIN = OptionSpec("min_f1_gain", "--min-f1-gain", "the CI lower bound of candidate - "
                         "baseline macro-F1 must be strictly above this (default 0.0: shown "
                         "better; negative: non-inferiority)", "X")
CONFIDENCE = OptionSpec("confidence", "--confidence",
                        "confidence level of the bootstrap interval (default 0.95)", "P")
MAX_P99_MS = OptionSpec("max_p99_ms", "--max-p99-ms",
                        "latency budget: candidate p99 per request, in ms", "MS")
MAX_SLICE_DROP = OptionSpec("max_slice_drop", "--max-slice-drop", "largest allowed drop of any "
                            "tag slice's metric versus the baseline (0..1)", "X")
GATE_REPORT = OptionSpec("gate_report", "--gate-report", "write the JSON gate report here", "PATH")
GATE_HTML = OptionSpec("gate_html", "--gate-html", "write a self-contained HTML report with plots "
                       "here", "PATH")
GATE_PROM = OptionSpec("gate_prom", "--gate-prom", "write Prometheus text metrics here (textfile "
                       "collector / push gateway)", "PATH")
GATE_CASES = OptionSpec("gate_cases", "--gate-cases", "write the per-case results here as CSV or "
                        "Parquet (by suffix)", "PATH")
ALLOW_PARTIAL = OptionSpec("allow_partial", "--allow-partial", "let a partial selection (-k, -m, "
                           "a subset of files) pass", flag_only=True)
TRAIN_DATA = OptionSpec("train_data", "--train-data", "instead of --candidate: train the "
                        "candidate on this curated dataset first (cached by data + config "
                        "hash), then gate it", "DIR")
TRAIN_CONFIG = OptionSpec("train_config", "--train-config",
                          "training config file for --train-data", "FILE")
BATCH_SIZE = OptionSpec("batch_size", "--gate-batch-size", "minimum requests per engine batch "
                        "(default 8); the hf engine grows batches of short prompts up to its "
                        "token budget", "N")
MAX_BATCH_TOKENS = OptionSpec("max_batch_tokens", "--gate-max-batch-tokens", "hf engine: token "
                              "budget of one batch, padding included (default: 1024 on CPU, "
                              "more on GPU)", "N")
MERGE = OptionSpec("merge", "--gate-merge", "hf engine: auto (default: the engine's choice), on "
                   "(merge each LoRA into its own copy of the weights where it can) or off "
                   "(peft's unmerged LoRA)", "auto|on|off")
ENDPOINT = OptionSpec("endpoint", "--endpoint", "gate a live OpenAI-compatible endpoint (e.g. "
                      "vllm serve) instead of an adapter; implies --engine openai; activates "
                      "the gate", "URL")
SERVED_MODEL = OptionSpec("served_model", "--served-model", "with --endpoint: the model name to "
                          "gate (e.g. the LoRA module name given to vllm serve)", "NAME")
BASELINE_MODEL = OptionSpec("baseline_model", "--baseline-model", "with --endpoint: a served "
                            "model name to compare against (default: none; gate on --min-f1)",
                            "NAME")
MIN_F1 = OptionSpec("min_f1", "--min-f1", "absolute floor: red when the candidate's macro-F1 "
                    "(accuracy for non-label sets) is below it (0..1); with --endpoint and no "
                    "baseline model this is the drift check", "X")
DEVICE = OptionSpec("device", "--gate-device", "auto (default; under pytest-xdist with several "
                    "GPUs, worker i uses GPU i mod n), cpu, cuda or cuda:N", "DEVICE")
DTYPE = OptionSpec("dtype", "--gate-dtype", "auto (default: float32 on CPU, bfloat16 on CUDA), "
                   "float32, bfloat16, float16", "DTYPE")
SEED = OptionSpec("seed", "--gate-seed", "seed for decoding and the bootstrap (default 0)", "N")
LEAKAGE_THRESHOLD = OptionSpec("leakage_threshold", "--leakage-threshold", "preflight: a golden "
                               "prompt this similar (Jaccard, 0..1) to a training row is a leak "
                               "(default 0.85)", "X")
NO_GEN_CACHE = OptionSpec("no_gen_cache", "--no-gen-cache", "do not read or write the generation "
                          "cache", flag_only=True)
CLEAR_GEN_CACHE = OptionSpec("clear_gen_cache", "--clear-gen-cache", "empty the generation cache "
                             "before the run", flag_only=True)
GEN_CACHE_DIR = OptionSpec("gen_cache_dir", "--gen-cache-dir", "where the generation cache lives "
                           "(default: .qlgate_cache under the rootdir)", "DIR")
PERTURB = OptionSpec("perturb", "--perturb", "also run N seeded label-preserving perturbations of "
                     "each label case and report flip rates (default 0: off)", "N")
MAX_FLIP_RATE = OptionSpec("max_flip_rate", "--max-flip-rate", "with --perturb: red when the "
                           "candidate's flip rate (overall or in any slice) exceeds this (0..1)",
                           "X")
REQUEST_TIMEOUT = OptionSpec("request_timeout", "--request-timeout", "per-request deadline in "
                             "seconds; a request over it is an error (default: none)", "S")
ALLOW_UNCHECKED_LEAKAGE = OptionSpec("allow_unchecked_leakage", "--allow-unchecked-leakage",
                                     "preflight: let the gate pass when the training data named "
                                     "in the provenance cannot be found or is not the data "
                                     "trained on (leakage unchecked; a warning, not red)",
                                     flag_only=True)
MAX_PASS_RATE_DROP = OptionSpec("max_pass_rate_drop", "--max-pass-rate-drop", "non-label cases "
                                "beside label cases: the CI lower bound of candidate - baseline "
                                "pass rate must be above minus this (default 0.05; 0: shown "
                                "better)", "X")

OPTIONS: tuple[OptionSpec, ...] = (
    CANDIDATE, BASELINE, BASE_MODEL, ENGINE, GOLDEN, MIN_F1_GAIN, CONFIDENCE, MAX_P99_MS,
    MAX_SLICE_DROP, GATE_REPORT, GATE_HTML, GATE_PROM, GATE_CASES, ALLOW_PARTIAL, TRAIN_DATA,
    TRAIN_CONFIG, BATCH_SIZE, DEVICE, DTYPE, SEED, LEAKAGE_THRESHOLD, NO_GEN_CACHE,
    CLEAR_GEN_CACHE, GEN_CACHE_DIR, PERTURB, MAX_FLIP_RATE, REQUEST_TIMEOUT, MAX_BATCH_TOKENS,
    MERGE, ENDPOINT, SERVED_MODEL, BASELINE_MODEL, MIN_F1,
    GOLDEN_LOCK, ALLOW_UNLOCKED_GOLDEN,
    ALLOW_UNCHECKED_LEAKAGE, MAX_PASS_RATE_DROP,
)
# fmt: on
BY_KEY: Mapping[str, OptionSpec] = {o.key: o for o in OPTIONS}


@dataclass(frozen=True)
class BaselineSpec:
    """``base`` (no adapter), an adapter directory, or a previous report's outcomes."""

    kind: Literal["base", "adapter", "report"]
    path: Path | None = None

    def describe(self) -> str:
        return "base model" if self.path is None else f"{self.kind} {self.path}"


def parse_baseline(text: str, resolve: Callable[[str], Path]) -> BaselineSpec:
    value = text.strip()
    if value == "base":
        return BaselineSpec("base")
    path = resolve(value)
    if path.is_dir():
        return BaselineSpec("adapter", parse_adapter_dir(path))
    if path.suffix == ".json" and path.is_file():
        return BaselineSpec("report", path)
    raise ValueError("expected 'base', an adapter directory or an existing REPORT.json")


# -- resolution -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateOptions:
    """Every gate setting after precedence and validation; ``sources`` says where each came from."""

    candidate: Path | None = None
    baseline: BaselineSpec = BaselineSpec("base")
    base_model: str | None = None
    engine: str = "hf"
    golden: Path = Path("golden")
    golden_lock: Path | None = None  # None: golden_lock.lock_path_for(golden)
    allow_unlocked_golden: bool = False
    min_f1_gain: float = 0.0
    confidence: float = 0.95
    max_p99_ms: float | None = None
    max_slice_drop: float | None = None
    gate_report: Path | None = None
    gate_html: Path | None = None
    gate_prom: Path | None = None
    gate_cases: Path | None = None
    allow_partial: bool = False
    train_data: Path | None = None
    train_config: Path | None = None
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    leakage_threshold: float = 0.85  # qlgate_pytest.leakage.DEFAULT_THRESHOLD
    no_gen_cache: bool = False
    clear_gen_cache: bool = False
    gen_cache_dir: Path | None = None  # None: <rootdir>/.qlgate_cache
    perturb: int = 0
    max_flip_rate: float | None = None
    request_timeout: float | None = None
    max_batch_tokens: int | None = None  # None: the engine's default
    merge: Literal["auto", "on", "off"] = "auto"
    endpoint: str | None = None
    served_model: str | None = None
    baseline_model: str | None = None
    min_f1: float | None = None
    allow_unchecked_leakage: bool = False
    max_pass_rate_drop: float = 0.05  # qlgate_pytest.gate.Thresholds.max_pass_rate_drop
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """The gate runs only when told what to gate."""
        return (
            self.candidate is not None or self.train_data is not None or self.endpoint is not None
        )

    def baseline_describe(self) -> str:
        """What the candidate is compared with, in words (the report's ``run.baseline``)."""
        if self.endpoint is None or self.baseline.kind == "report":
            return self.baseline.describe()
        if self.baseline_model is not None:
            return f"served model {self.baseline_model}"
        return "none (absolute floor --min-f1)"

    def engine_extra(self) -> dict[str, Any]:
        """:attr:`EngineConfig.extra` for this run: the endpoint's settings, or the hf knobs."""
        if self.endpoint is not None:
            return {
                "openai_endpoint": self.endpoint,
                "openai_served_model": self.served_model,
                "openai_baseline_model": self.baseline_model,
            }
        extra: dict[str, Any] = {}
        if self.max_batch_tokens is not None:
            extra["max_batch_tokens"] = self.max_batch_tokens
        if self.merge != "auto":
            extra["merge"] = self.merge == "on"
        return extra

    def public(self) -> dict[str, Any]:
        """The settings as JSON-ready values, for the report."""
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, BaselineSpec):
                value = value.describe()
            elif item.name == "sources":
                value = dict(value)
            out[item.name] = value
        return out


@dataclass(frozen=True)
class _Raw:
    text: str
    source: str
    base: Path  # relative paths resolve against this


def _pick(
    spec: OptionSpec,
    cli: Mapping[str, object],
    env: Mapping[str, str],
    ini: Mapping[str, str],
    cwd: Path,
    rootdir: Path,
    ini_file: str,
) -> _Raw | None:
    value = cli.get(spec.key)
    if value is not None and value is not False:
        text = "true" if value is True else str(value)
        return _Raw(text, f"command line {spec.flag}", cwd)
    if spec.env in env and env[spec.env] != "":
        return _Raw(env[spec.env], f"environment variable {spec.env}", cwd)
    if ini.get(spec.ini, "") != "":
        return _Raw(ini[spec.ini], f"ini option {spec.ini} in {ini_file}", rootdir)
    return None


def resolve_options(
    cli: Mapping[str, object],
    env: Mapping[str, str],
    ini: Mapping[str, str],
    *,
    cwd: Path,
    rootdir: Path,
    ini_file: str = "the ini file",
) -> GateOptions:
    """Apply precedence and validators to raw values keyed by :attr:`OptionSpec.key`."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in OPTIONS:
        raw = _pick(spec, cli, env, ini, cwd, rootdir, ini_file)
        if raw is None:
            continue
        try:
            values[spec.key] = _convert(spec, raw)
        except ValueError as exc:
            raise OptionError(
                f"invalid value {raw.text!r} for {spec.flag} (from {raw.source}): {exc}"
            ) from None
        sources[spec.key] = raw.source
    if "golden" not in values:
        values["golden"] = rootdir / "golden"
        wants = values.get("candidate") or values.get("train_data") or values.get("endpoint")
        if wants and not values["golden"].exists():
            raise OptionError(
                f"no golden set at {values['golden']} (the default for {GOLDEN.flag}); "
                f"create it or pass {GOLDEN.flag} PATH"
            )
    if values.get("candidate") is not None and values.get("train_data") is not None:
        raise OptionError(
            f"{CANDIDATE.flag} (from {sources['candidate']}) and {TRAIN_DATA.flag} (from "
            f"{sources['train_data']}) exclude each other: gate an adapter, or train one"
        )
    if values.get("train_config") is not None and values.get("train_data") is None:
        raise OptionError(
            f"{TRAIN_CONFIG.flag} (from {sources['train_config']}) needs {TRAIN_DATA.flag}"
        )
    if values.get("max_flip_rate") is not None and not values.get("perturb"):
        raise OptionError(
            f"{MAX_FLIP_RATE.flag} (from {sources['max_flip_rate']}) needs {PERTURB.flag} N "
            "with N >= 1: without perturbations there is no flip rate to gate on"
        )
    _check_endpoint(values, sources)
    return GateOptions(**values, sources=sources)


def _check_endpoint(values: dict[str, Any], sources: Mapping[str, str]) -> None:
    """``--endpoint`` and the options that go with it (or must not); sets ``--engine openai``."""

    def named(key: str) -> str:
        return f"{BY_KEY[key].flag} (from {sources[key]})"

    endpoint = values.get("endpoint")
    if endpoint is None:
        for key in ("served_model", "baseline_model"):
            if values.get(key) is not None:
                raise OptionError(f"{named(key)} needs {ENDPOINT.flag} URL")
        if values.get("engine") == "openai":
            raise OptionError(
                f"{named('engine')} needs {ENDPOINT.flag} URL and {SERVED_MODEL.flag} NAME"
            )
        return
    for key in ("candidate", "train_data"):
        if values.get(key) is not None:
            raise OptionError(
                f"{named('endpoint')} and {named(key)} exclude each other: gate a live "
                "endpoint, or an adapter"
            )
    engine = values.get("engine")
    if engine is not None and engine != "openai":
        raise OptionError(
            f"{named('endpoint')} is served by the openai engine, not {named('engine')}; "
            f"drop {ENGINE.flag} or pass {ENGINE.flag} openai"
        )
    values["engine"] = "openai"
    if values.get("served_model") is None:
        raise OptionError(f"{named('endpoint')} needs {SERVED_MODEL.flag} NAME")
    # These act on a local model only. Asked for on this command line, ignoring them would hide
    # a mistake; from ini or env they are the project's settings for its local runs.
    for key in ("base_model", "max_batch_tokens", "merge", "device", "dtype"):
        if sources.get(key, "").startswith("command line"):
            raise OptionError(f"{named(key)} does not apply to {named('endpoint')}")
    baseline = values.get("baseline")
    if baseline is not None and baseline.kind != "report":
        raise OptionError(
            f"{named('baseline')}: with {ENDPOINT.flag} the baseline is "
            f"{BASELINE_MODEL.flag} NAME (served by the endpoint) or a previous REPORT.json"
        )
    if baseline is not None and values.get("baseline_model") is not None:
        raise OptionError(f"{named('baseline')} and {named('baseline_model')} exclude each other")
    if baseline is None and values.get("baseline_model") is None and values.get("min_f1") is None:
        raise OptionError(
            f"{named('endpoint')} has nothing to gate on: pass {MIN_F1.flag} X (an absolute "
            f"floor), {BASELINE_MODEL.flag} NAME or {BASELINE.flag} REPORT.json"
        )


def _path(raw: _Raw) -> Path:
    path = Path(raw.text.strip()).expanduser()
    return path if path.is_absolute() else raw.base / path


def _convert(spec: OptionSpec, raw: _Raw) -> object:
    text = raw.text
    converters: dict[str, Callable[[], object]] = {
        # Not checked here: a missing or broken adapter is preflight's finding, recorded as a
        # red verdict in the report rather than a usage error without one.
        "candidate": lambda: _path(raw),
        "baseline": lambda: parse_baseline(text, lambda v: _path(_Raw(v, raw.source, raw.base))),
        "base_model": lambda: parse_base_model(str(_path(raw)) if _path(raw).exists() else text),
        "engine": lambda: parse_engine(text),
        "golden": lambda: parse_existing(_path(raw)),
        "golden_lock": lambda: _path(raw),
        "allow_unlocked_golden": lambda: parse_bool(text),
        "min_f1_gain": lambda: parse_min_f1_gain(text),
        "confidence": lambda: parse_confidence(text),
        "max_p99_ms": lambda: parse_max_p99_ms(text),
        "max_slice_drop": lambda: parse_max_slice_drop(text),
        "gate_report": lambda: parse_report_path(_path(raw)),
        "gate_html": lambda: parse_report_path(_path(raw)),
        "gate_prom": lambda: parse_report_path(_path(raw)),
        "gate_cases": lambda: parse_report_path(_path(raw)),
        "allow_partial": lambda: parse_bool(text),
        "train_data": lambda: parse_existing(_path(raw), "dir"),
        "train_config": lambda: parse_existing(_path(raw), "file"),
        "batch_size": lambda: parse_positive_int(text),
        "device": lambda: parse_device(text),
        "dtype": lambda: parse_dtype(text),
        "seed": lambda: parse_seed(text),
        "leakage_threshold": lambda: parse_float(text, low=0.0, high=1.0, low_open=True),
        "no_gen_cache": lambda: parse_bool(text),
        "clear_gen_cache": lambda: parse_bool(text),
        "gen_cache_dir": lambda: _path(raw),
        "perturb": lambda: parse_int(text, low=0),
        "max_flip_rate": lambda: parse_float(text, low=0.0, high=1.0),
        "request_timeout": lambda: parse_float(text, low=0.0, low_open=True),
        "max_batch_tokens": lambda: parse_positive_int(text),
        "merge": lambda: parse_merge(text),
        "endpoint": lambda: parse_endpoint(text),
        "served_model": lambda: parse_name(text),
        "baseline_model": lambda: parse_name(text),
        "min_f1": lambda: parse_float(text, low=0.0, high=1.0),
        "allow_unchecked_leakage": lambda: parse_bool(text),
        "max_pass_rate_drop": lambda: parse_float(text, low=0.0, high=1.0),
    }
    return converters[spec.key]()
