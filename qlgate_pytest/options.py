"""The gate's options: names, validators, and one frozen :class:`GateOptions` per run.

Every option is settable three ways, resolved once with the precedence
command line > environment (``QLGATE_<NAME>``) > ini (``qlgate_<name>``) > default.
A bad value raises :class:`~qlgate_pytest.errors.OptionError` naming the option, the value and
where it came from; the plugin turns that into ``pytest.UsageError`` (exit 4).

Relative paths resolve against the invocation directory when they come from the command line
or the environment, and against the rootdir (where the ini file lives) otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from qlgate_pytest.errors import OptionError

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
BATCH_SIZE = OptionSpec("batch_size", "--gate-batch-size", "requests per engine batch (default 8)",
                        "N")
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

OPTIONS: tuple[OptionSpec, ...] = (
    CANDIDATE, BASELINE, BASE_MODEL, ENGINE, GOLDEN, MIN_F1_GAIN, CONFIDENCE, MAX_P99_MS,
    MAX_SLICE_DROP, GATE_REPORT, GATE_HTML, GATE_PROM, GATE_CASES, ALLOW_PARTIAL, TRAIN_DATA,
    TRAIN_CONFIG, BATCH_SIZE, DEVICE, DTYPE, SEED, LEAKAGE_THRESHOLD, NO_GEN_CACHE,
    CLEAR_GEN_CACHE, GEN_CACHE_DIR, PERTURB, MAX_FLIP_RATE, REQUEST_TIMEOUT,
)
# fmt: on
BY_KEY: Mapping[str, OptionSpec] = {o.key: o for o in OPTIONS}


# -- validators (pure: a string in, a value out, ValueError with the reason) ------------------


def parse_float(
    text: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite float within the given bounds."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"must be {'>' if low_open else '>='} {low:g}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"must be {'<' if high_open else '<='} {high:g}")
    return value


def parse_min_f1_gain(text: str) -> float:
    return parse_float(text, low=-1.0, high=1.0, high_open=True)


def parse_confidence(text: str) -> float:
    return parse_float(text, low=0.5, high=1.0, high_open=True)


def parse_max_p99_ms(text: str) -> float:
    return parse_float(text, low=0.0, low_open=True)


def parse_max_slice_drop(text: str) -> float:
    return parse_float(text, low=0.0, high=1.0)


def parse_int(text: str, *, low: int) -> int:
    """A whole number >= ``low``."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value < low:
        raise ValueError(f"must be >= {low}")
    return value


def parse_positive_int(text: str) -> int:
    return parse_int(text, low=1)


def parse_seed(text: str) -> int:
    return parse_int(text, low=0)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false, yes/no, on/off or 1/0")


def parse_choice(text: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (``cuda:N`` also passes when ``cuda`` is a choice)."""
    value = text.strip()
    if value in choices or (
        "cuda" in choices and value.startswith("cuda:") and value[5:].isdigit()
    ):
        return value
    raise ValueError(f"expected one of {', '.join(choices)}")


def parse_device(text: str) -> str:
    return parse_choice(text, ("auto", "cpu", "cuda", "mps"))


def parse_dtype(text: str) -> str:
    return parse_choice(text, ("auto", "float32", "bfloat16", "float16"))


def parse_engine(text: str) -> str:
    from qlgate_pytest.engines.registry import check_engine_name

    try:
        return check_engine_name(text.strip())
    except OptionError as exc:
        raise ValueError(str(exc)) from None


def parse_existing(path: Path, kind: Literal["dir", "file", "any"] = "any") -> Path:
    """``path`` if it exists (as a directory or a file when ``kind`` says so)."""
    ok = {"dir": path.is_dir, "file": path.is_file, "any": path.exists}[kind]()
    if not ok:
        raise ValueError(
            {"dir": "no such directory", "file": "no such file"}.get(kind, "no such path")
        )
    return path


def parse_adapter_dir(path: Path) -> Path:
    parse_existing(path, "dir")
    if not (path / "adapter_config.json").is_file():
        raise ValueError("no adapter_config.json in it: not a peft adapter directory")
    return path


def parse_report_path(path: Path) -> Path:
    if path.exists() and path.is_dir():
        raise ValueError("is a directory; give a file path")
    return path


def parse_base_model(text: str) -> str:
    spec = text.strip()
    if not spec:
        raise ValueError("empty")
    return spec


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
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """The gate runs only when told what to gate."""
        return self.candidate is not None or self.train_data is not None

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
        if (values.get("candidate") or values.get("train_data")) and not values["golden"].exists():
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
    return GateOptions(**values, sources=sources)


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
    }
    return converters[spec.key]()
