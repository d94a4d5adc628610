"""Preflight: everything about an adapter that can be checked before spending any generation.

The failures users report most are silent: an adapter that loads but is never applied, weights
full of NaN recorded as success, a tokenizer or chat template that differs between training and
serving, a base model other than the one trained on, golden prompts that were in the training
data. ``run_preflight`` finds them from files alone and returns one ``Finding`` per problem with a
short reason code; any finding of severity ``error`` turns the gate red.

Weights are read from safetensors only: pickle formats (``.bin``, ``.pt``, ...) run code when
loaded, so they are named and refused, never opened. Tensor values are checked on their raw bits
(exponent all ones = NaN/Inf) through a memory map, for every float dtype including bf16, with no
torch. A check that needs something absent is skipped with a ``warning`` finding saying what
was not checked (no provenance at all), except leakage: training data that the provenance names
but that cannot be found, or is not the data trained on (content hash), is an ``error`` unless
``--allow-unchecked-leakage``; a clean leakage check leaves an ``info`` finding naming the data.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qlgate_core.errors import PreflightError
from qlgate_core.fingerprint import chat_template_sha256, read_chat_template, tokenizer_sha256
from qlgate_pytest.gen_cache import weights_hash
from qlgate_pytest.leakage import DEFAULT_THRESHOLD, near_duplicates

ADAPTER_CONFIG = "adapter_config.json"
PROVENANCE = "qlgate-provenance.json"
PROVENANCE_VERSIONS = frozenset({1})  # training/provenance.py SCHEMA_VERSION
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# info: what a check ran against (the report shows it); never turns the gate red.
Severity = Literal["error", "warning", "info"]

# Keys transformers writes into tokenizer_config.json about how a tokenizer was *loaded*; they do
# not change tokenization (measured: a save_pretrained round trip flips local_files_only).
_LOAD_TIME_KEYS = frozenset(
    {"local_files_only", "is_local", "name_or_path", "_commit_hash", "cache_dir", "revision",
     "token", "trust_remote_code", "subfolder", "force_download", "chat_template"}
)  # fmt: skip
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?(?P<ab>[AB])\b")
# safetensors dtype -> (bits view, exponent mask: all ones = NaN/Inf, magnitude mask: 0 = +-0.0)
_FLOATS: Mapping[str, tuple[str, int, int]] = {
    "F64": ("<u8", 0x7FF0000000000000, 0x7FFFFFFFFFFFFFFF),
    "F32": ("<u4", 0x7F800000, 0x7FFFFFFF),
    "F16": ("<u2", 0x7C00, 0x7FFF),
    "BF16": ("<u2", 0x7F80, 0x7FFF),
    "F8_E5M2": ("u1", 0x7C, 0x7F),
    "F8_E4M3": ("u1", 0x7F, 0x7F),  # no infinities; S.1111.111 is NaN
}


@dataclass(frozen=True)
class Finding:
    """One preflight problem: ``reason`` is a stable code, ``message`` says what and where."""

    reason: str
    message: str
    severity: Severity = "error"
    subjects: tuple[str, ...] = ()  # the golden case ids a leakage finding concerns

    def to_error(self) -> PreflightError:
        return PreflightError(self.reason, self.message)


@dataclass(frozen=True)
class EngineCaps:
    """What an engine can serve; each engine fills this in before it loads anything.
    ``None`` means no limit (the HF engine serves any peft LoRA)."""

    name: str
    max_lora_rank: int | None = None
    supported_modules: frozenset[str] | None = None
    supports_dora: bool = True
    supports_modules_to_save: bool = True


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter's shape from its config and tensor shapes; engines size themselves from it
    (vLLM's ``max_lora_rank`` from ``rank``)."""

    peft_type: str
    rank: int
    target_modules: frozenset[str]
    use_dora: bool
    modules_to_save: tuple[str, ...]
    base_model_name_or_path: str | None


def run_preflight(
    adapter_dir: Path,
    *,
    base_dir: Path,
    engine_caps: EngineCaps,
    golden_prompts: Sequence[str] | Mapping[str, str],
    base_spec: str | None,
    leakage_threshold: float = DEFAULT_THRESHOLD,
    allow_unchecked_leakage: bool = False,
) -> list[Finding]:
    """Every problem found with ``adapter_dir`` served on ``base_dir`` by that engine.

    ``golden_prompts`` are the golden cases' user texts; a mapping (case id -> text) lets leakage
    findings name the cases. No findings of severity ``error``: the adapter may be served.
    ``allow_unchecked_leakage`` turns "training data not found / not the data trained on" from
    an error into a warning (``--allow-unchecked-leakage``).
    """
    try:
        _check_layout(adapter_dir)
        info = inspect_adapter(adapter_dir)
    except PreflightError as exc:  # nothing else can be checked without a readable adapter
        return [_finding_of(exc)]
    findings = _check_tensors(adapter_dir) + _check_engine(info, engine_caps, adapter_dir)
    try:
        provenance = _read_provenance(adapter_dir)
    except PreflightError as exc:
        return [*findings, _finding_of(exc)]
    findings += _check_base(info, provenance, adapter_dir, base_dir, base_spec)
    findings += _check_tokenizer(provenance, adapter_dir, base_dir)
    if provenance is None:
        # Without provenance nothing says which data the adapter was trained on, so leakage
        # cannot be checked: red like any training data that cannot be found (deleting the
        # provenance file must not be a way around the leakage check).
        what = "the training-time tokenizer hashes and base weights hash"
        msg = f"{adapter_dir / PROVENANCE} is absent: {what} were not checked"
        absent = f"{adapter_dir / PROVENANCE} is absent, so the training data is unknown"
        unchecked = [_unchecked(absent, allow_unchecked_leakage)] if golden_prompts else []
        return [*findings, Finding("provenance_missing", msg, "warning"), *unchecked]
    return findings + _check_leakage(
        provenance, adapter_dir, golden_prompts, leakage_threshold, allow_unchecked_leakage
    )


def _finding_of(exc: PreflightError) -> Finding:
    return Finding(exc.reason, str(exc).removeprefix(f"[{exc.reason}] "))


def errors(findings: Sequence[Finding]) -> list[Finding]:
    """The findings that turn the gate red."""
    return [f for f in findings if f.severity == "error"]


# --- layout and config ----------------------------------------------------------------------


def _check_layout(adapter_dir: Path) -> None:
    if not adapter_dir.is_dir():
        what = "is not a directory" if adapter_dir.exists() else "does not exist"
        raise PreflightError("adapter_missing", f"adapter directory {adapter_dir} {what}")
    files = sorted(p.name for p in adapter_dir.iterdir() if not p.name.startswith("."))
    if not files:
        raise PreflightError("adapter_empty", f"adapter directory {adapter_dir} is empty")
    if ADAPTER_CONFIG not in files:
        raise PreflightError(
            "no_adapter_config",
            f"{adapter_dir} has no {ADAPTER_CONFIG} (found {', '.join(files[:8])}): "
            "not a peft adapter directory",
        )
    if not any(name.endswith(".safetensors") for name in files):
        pickles = [n for n in files if n.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise PreflightError(
                "pickle_only",
                f"{adapter_dir} has weights only in pickle format ({', '.join(pickles)}), which "
                "runs code when loaded and is never opened: re-save with safetensors "
                "(save_pretrained(..., safe_serialization=True))",
            )
        raise PreflightError("no_weights", f"{adapter_dir} has no adapter_model.safetensors")


def _read_json(path: Path, reason: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PreflightError(reason, f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PreflightError(reason, f"{path}: unreadable: {exc}") from None
    if not isinstance(value, dict):
        raise PreflightError(reason, f"{path}:1: expected a JSON object")
    return value


def inspect_adapter(adapter_dir: Path) -> AdapterInfo:
    """The adapter's config and tensor shapes (no tensor data is read); raises
    ``PreflightError`` naming the file and field when either is unusable."""
    path = adapter_dir / ADAPTER_CONFIG
    config = _read_json(path, "bad_adapter_config")

    def field(name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = config.get(name, default)
        # bool is an int in Python; "r": true must still be refused.
        if value is not None and (
            not isinstance(value, kind) or isinstance(value, bool) != (kind is bool)
        ):
            raise PreflightError(
                "bad_adapter_config", f"{path}: field {name!r} has invalid value {value!r}"
            )
        return value

    pattern = field("rank_pattern", dict, {}) or {}
    ranks = [field("r", int, 0), *(v for v in pattern.values() if isinstance(v, int))]
    modules: set[str] = set()
    for name, shape in _tensor_shapes(adapter_dir).items():
        match = _LORA_KEY.match(name)
        if match:
            modules.add(match["module"].rsplit(".", 1)[-1])
            if match["ab"] == "A" and shape:
                ranks.append(shape[0])  # lora_A is (r, in_features): the rank actually saved
    if not modules:
        raise PreflightError("no_lora_tensors", f"{adapter_dir}: no LoRA tensors in safetensors")
    targets = field("target_modules", (list, str))
    if isinstance(targets, list):  # a string is a regex: the tensors say what it matched
        modules.update(str(t) for t in targets)
    return AdapterInfo(
        peft_type=str(field("peft_type", str, "LORA")),
        rank=max(ranks),
        target_modules=frozenset(modules),
        use_dora=bool(field("use_dora", bool, False)),
        modules_to_save=tuple(str(m) for m in field("modules_to_save", list) or ()),
        base_model_name_or_path=field("base_model_name_or_path", str),
    )


# --- tensors --------------------------------------------------------------------------------


def _header(path: Path) -> tuple[int, dict[str, Any]]:
    """Data offset and header of a safetensors file, validated by the safetensors library."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header: dict[str, Any] = json.loads(handle.read(size))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PreflightError(
            "corrupt_weights", f"{path}: not a valid safetensors file: {exc}"
        ) from None
    header.pop("__metadata__", None)
    return 8 + size, header


def _tensor_shapes(adapter_dir: Path) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for path in sorted(adapter_dir.glob("*.safetensors")):
        shapes.update({k: list(v["shape"]) for k, v in _header(path)[1].items()})
    return shapes


def _check_tensors(adapter_dir: Path) -> list[Finding]:
    """NaN/Inf anywhere; and every lora_B zero, peft's untrained initialisation, which loads
    fine and changes nothing (the "adapter never applied" failure, caught before generation)."""
    import numpy as np

    bad: list[str] = []
    b_total = b_zero = 0
    for path in sorted(adapter_dir.glob("*.safetensors")):
        offset, header = _header(path)
        if path.stat().st_size == offset:
            continue
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=offset)
        for name, meta in header.items():
            if meta["dtype"] not in _FLOATS:
                continue
            view, exponent, magnitude = _FLOATS[meta["dtype"]]
            start, end = meta["data_offsets"]
            bits = data[start:end].view(np.dtype(view))
            if np.any((bits & exponent) == exponent):
                bad.append(f"{path.name}:{name}")
            match = _LORA_KEY.match(name)
            if match and match["ab"] == "B":
                b_total += 1
                b_zero += not np.any(bits & magnitude)
    findings = []
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        listed = ", ".join(bad[:5]) + more
        findings.append(Finding("nonfinite_weights", f"NaN or Inf in adapter tensor(s) {listed}"))
    if b_total and b_zero == b_total:
        msg = f"every lora_B tensor in {adapter_dir} is zero: peft's untrained initialisation"
        findings.append(Finding("noop_adapter", msg + ", which cannot change any output"))
    return findings


def _check_engine(info: AdapterInfo, caps: EngineCaps, adapter_dir: Path) -> list[Finding]:
    where, engine = adapter_dir / ADAPTER_CONFIG, f"engine {caps.name!r}"
    problems: list[tuple[str, str]] = []
    if info.peft_type.upper() != "LORA":
        problems.append(("unsupported_adapter", f"peft_type {info.peft_type!r}: LoRA only"))
    if info.use_dora and not caps.supports_dora:
        problems.append(("unsupported_adapter", f"use_dora is true; {engine} cannot serve DoRA"))
    if info.modules_to_save and not caps.supports_modules_to_save:
        msg = f"modules_to_save {list(info.modules_to_save)}; {engine} cannot serve them"
        problems.append(("unsupported_adapter", msg))
    if caps.max_lora_rank is not None and info.rank > caps.max_lora_rank:
        msg = f"LoRA rank {info.rank} (r, rank_pattern, tensor shapes) exceeds {engine}"
        problems.append(("rank_too_high", f"{msg} max_lora_rank {caps.max_lora_rank}"))
    supported = caps.supported_modules
    if supported is not None and (extra := sorted(info.target_modules - supported)):
        msg = f"target modules {extra} are not served by {engine} (supported: {sorted(supported)})"
        problems.append(("unsupported_modules", msg))
    return [Finding(reason, f"{where}: {text}") for reason, text in problems]


# --- provenance: base model and tokenizer ---------------------------------------------------


def _read_provenance(adapter_dir: Path) -> dict[str, Any] | None:
    path = adapter_dir / PROVENANCE
    if not path.is_file():
        return None
    record = _read_json(path, "bad_provenance")
    version = record.get("schema_version")
    if version not in PROVENANCE_VERSIONS:
        msg = (
            f"field 'schema_version' is {version!r}; this gate reads {sorted(PROVENANCE_VERSIONS)}"
        )
        raise PreflightError("bad_provenance", f"{path}: {msg}")
    kinds = {"base_model": dict, "dataset": dict, "tokenizer_sha256": str}
    for key, kind in {**kinds, "chat_template_sha256": str}.items():
        if key in record and not isinstance(record[key], kind):
            msg = f"{path}: field {key!r} must be a {kind.__name__}"
            raise PreflightError("bad_provenance", msg)
    return record


def _check_base(
    info: AdapterInfo,
    provenance: Mapping[str, Any] | None,
    adapter_dir: Path,
    base_dir: Path,
    base_spec: str | None,
) -> list[Finding]:
    recorded = (provenance or {}).get("base_model") or {}
    served = base_spec or str(base_dir)
    if isinstance(recorded.get("weights_sha256"), str):
        # Content decides: a copied or renamed base is the same base; a re-saved one is not.
        want, have = recorded["weights_sha256"], weights_hash(base_dir)
        if want == have:
            return []
        trained = f"trained on base {recorded.get('spec')!r} (weights sha256 {want[:12]}…)"
        msg = f"{adapter_dir / PROVENANCE}: adapter {trained}, but the base being served"
        return [Finding("base_mismatch", f"{msg} ({served}) has weights sha256 {have[:12]}…")]
    name = info.base_model_name_or_path
    if not name or _same_base_name(name, base_dir, base_spec):
        return []
    msg = f"{adapter_dir / ADAPTER_CONFIG}: base_model_name_or_path {name!r} does not name"
    return [Finding("base_mismatch", f"{msg} the base being served ({served})")]


def _same_base_name(recorded: str, base_dir: Path, base_spec: str | None) -> bool:
    """Without a content hash, names are compared leniently: a hub id and a local copy share
    their last component ("HuggingFaceTB/SmolLM2-135M-Instruct" ~ "smollm2-135m-instruct")."""
    names = {str(base_dir), base_dir.name, *([base_spec] if base_spec else [])}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        names.add(str(json.loads((base_dir / "config.json").read_text())["_name_or_path"]))
    path = Path(recorded).expanduser()
    if path.exists() and path.resolve() == base_dir.resolve():
        return True
    tails = {n.rstrip("/").rsplit("/", 1)[-1].lower() for n in names}
    return recorded in names or recorded.rstrip("/").rsplit("/", 1)[-1].lower() in tails


def _has_tokenizer(directory: Path) -> bool:
    return any((directory / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))


def _tokenizer_semantics(directory: Path) -> tuple[str, str]:
    """What decides tokenization: tokenizer.json and the config without its load-time keys."""
    vocab = directory / "tokenizer.json"
    config: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        config = json.loads((directory / "tokenizer_config.json").read_text())
    kept = {k: v for k, v in config.items() if k not in _LOAD_TIME_KEYS}
    return (vocab.read_text() if vocab.is_file() else ""), json.dumps(kept, sort_keys=True)


def _check_tokenizer(
    provenance: Mapping[str, Any] | None, adapter_dir: Path, base_dir: Path
) -> list[Finding]:
    found = []
    prov = adapter_dir / PROVENANCE
    adapter_tok = _has_tokenizer(adapter_dir)
    recorded = (provenance or {}).get("tokenizer_sha256")
    # The engine tokenizes with the adapter's saved tokenizer when it has one, else the base's.
    served = adapter_dir if adapter_tok else base_dir
    if recorded and (actual := tokenizer_sha256(served)) != recorded:
        msg = f"{prov}: tokenizer_sha256 recorded at training ({recorded[:12]}…) differs from"
        found.append(Finding("tokenizer_mismatch", f"{msg} the files in {served} ({actual[:12]}…)"))
    both = adapter_tok and _has_tokenizer(base_dir)
    if both and _tokenizer_semantics(adapter_dir) != _tokenizer_semantics(base_dir):
        msg = f"the tokenizer saved with the adapter ({adapter_dir}) differs from the base"
        found.append(Finding("tokenizer_mismatch", f"{msg} model's ({base_dir})"))
    recorded = (provenance or {}).get("chat_template_sha256")
    templates = {base_dir: read_chat_template(base_dir)}
    if adapter_tok or (adapter_dir / "chat_template.jinja").is_file():
        templates[adapter_dir] = read_chat_template(adapter_dir)
    for directory, template in templates.items():
        if recorded and (actual := chat_template_sha256(template)) != recorded:
            msg = f"{prov}: chat_template_sha256 recorded at training ({recorded[:12]}…)"
            msg += f" differs from the chat template in {directory} ({actual[:12]}…)"
            found.append(Finding("template_mismatch", msg))
    if not recorded and len(set(templates.values())) > 1:
        msg = f"the chat template saved with the adapter ({adapter_dir}) differs from the base"
        found.append(Finding("template_mismatch", f"{msg} model's ({base_dir})"))
    return found


# --- leakage --------------------------------------------------------------------------------


def _check_leakage(
    provenance: Mapping[str, Any],
    adapter_dir: Path,
    golden: Sequence[str] | Mapping[str, str],
    threshold: float,
    allow_unchecked: bool,
) -> list[Finding]:
    """Near-duplicates of golden prompts in the training data the provenance names, found and
    verified by ``training_data.locate``. Data that cannot be found or is not the data trained
    on is red unless ``--allow-unchecked-leakage``; a ``leakage_checked`` info finding names the
    data a clean check was run against, so the report says what "no leakage" rests on."""
    from qlgate_pytest import training_data

    if isinstance(golden, Mapping):
        ids, texts = list(golden), list(golden.values())
    else:
        ids, texts = [f"#{i}" for i in range(len(golden))], list(golden)
    if not texts:
        return []
    record = provenance.get("dataset") or {}
    if not isinstance(record.get("path"), str):
        return [_unchecked(f"{adapter_dir / PROVENANCE} records no dataset.path", allow_unchecked)]
    located = training_data.locate(record, adapter_dir)
    if located.data is None:
        return [_unchecked(located.detail, allow_unchecked)]
    found = []
    if located.status == "mismatch":
        what = f"the training data changed since training: {located.detail}"
        if allow_unchecked:
            msg = f"{what}; leakage checked against it ({ALLOWED})"
            found.append(Finding("dataset_changed", msg, "warning"))
        else:
            msg = f"{what}; leakage against the data trained on cannot be checked ({HOW_TO_ALLOW})"
            found.append(Finding("dataset_changed", msg))
    elif located.status == "unverified":
        msg = f"no dataset hash was recorded at training, so {located.detail} is taken on trust"
        found.append(Finding("dataset_unverified", msg, "warning"))
    data = located.data
    matches = near_duplicates(texts, [text for _, text in data.rows], threshold=threshold)
    if matches:
        shown = "; ".join(
            f"{ids[m.query]} ~ training row {data.rows[m.match][0]} (Jaccard {m.similarity:.2f})"
            for m in matches[:5]
        ) + (f"; and {len(matches) - 5} more" if len(matches) > 5 else "")
        msg = f"{len(matches)} golden prompt(s) near-duplicate the training data in "
        msg += f"{data.root} (threshold {threshold:.2f}): {shown}"
        found.append(Finding("leakage", msg, subjects=tuple(ids[m.query] for m in matches)))
    checked = f"checked {len(texts)} golden prompt(s) against {located.detail}"
    found.append(Finding("leakage_checked", checked, "info"))
    return found


ALLOWED = "allowed by --allow-unchecked-leakage"
HOW_TO_ALLOW = "pass --allow-unchecked-leakage to accept a run whose leakage is unchecked"


def _unchecked(why: str, allowed: bool) -> Finding:
    """Leakage could not be checked: red, or a warning when the user accepted that."""
    if allowed:
        return Finding("leakage_unchecked", f"{why}: leakage unchecked ({ALLOWED})", "warning")
    msg = f"{why}: golden prompts cannot be checked against the training data ({HOW_TO_ALLOW})"
    return Finding("leakage_unchecked", msg)
