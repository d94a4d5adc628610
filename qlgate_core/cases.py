"""Golden cases: the schema (pydantic, unknown keys rejected), loading JSONL and YAML case files
with ``file:line: field`` errors, and the golden-set hash.

File formats (docs/CONTRACTS.md, "Golden case files"):
- ``*.jsonl``: one case object per line; blank lines and lines starting with ``#`` are skipped.
- ``*.yaml`` / ``*.yml``: a list of cases, or ``{defaults: {...}, cases: [...]}`` where each case
  is merged over ``defaults`` key by key (a case's ``tags`` replace the default ``tags``).

YAML line numbers come from the composed node tree, so an error points at the line of the
offending key (or the case's first line when the key is missing), not at the file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from qlgate_core import golden_lock
from qlgate_core.errors import GoldenCaseError
from qlgate_core.fingerprint import sha256_json
from qlgate_core.golden_tree import CASE_SUFFIXES as CASE_SUFFIXES  # re-exported: its old home
from qlgate_core.golden_tree import TreeFile, scan
from qlgate_core.scoring import validate_expected

SCORERS = ("label", "exact", "contains", "absent", "regex", "json_schema")
ID_PATTERN = r"^[A-Za-z0-9_.-]+$"
TAG_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Tags become pytest markers; these names already mean something to pytest and would, e.g.,
# silently skip the case.
RESERVED_TAGS = frozenset(
    {"skip", "skipif", "xfail", "parametrize", "usefixtures", "filterwarnings", "qlgate_cases"}
)


class CaseFieldError(ValueError):
    """A cross-field rule failed; carries the field to blame, for ``file:line: field`` errors."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field_name = field_name
        super().__init__(message)


class ChatTurn(BaseModel):
    """One message of a golden conversation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class GoldenCase(BaseModel):
    """One golden case; see docs/CONTRACTS.md for the meaning of each field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=ID_PATTERN, max_length=200)
    messages: tuple[ChatTurn, ...] | None = None
    prompt: str | None = None
    system: str | None = None
    expected: str | dict[str, Any]
    scorer: Literal["label", "exact", "contains", "absent", "regex", "json_schema"] = "label"
    labels: tuple[str, ...] | None = None
    mode: Literal["rank", "generate"] | None = None
    tags: tuple[str, ...] = ()
    must_pass: bool = False
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    max_new_tokens: int = Field(default=32, ge=1, le=4096)
    notes: str | None = None

    _path: str = PrivateAttr(default="<memory>")
    _line: int = PrivateAttr(default=0)

    @model_validator(mode="after")
    def _check(self) -> GoldenCase:
        if (self.messages is None) == (self.prompt is None):
            raise CaseFieldError("messages", "give exactly one of 'messages' or 'prompt'")
        if self.messages is not None:
            if self.system is not None:
                raise CaseFieldError("system", "'system' goes with 'prompt'; put it in 'messages'")
            if not self.messages or self.messages[-1].role == "assistant":
                raise CaseFieldError("messages", "must be non-empty and not end with assistant")
            if not any(m.role == "user" for m in self.messages):
                raise CaseFieldError("messages", "needs at least one user turn")
        if self.scorer == "json_schema":
            if not isinstance(self.expected, dict):
                raise CaseFieldError("expected", "json_schema needs a JSON Schema object")
        elif not isinstance(self.expected, str):
            raise CaseFieldError("expected", f"scorer {self.scorer!r} needs a string")
        if self.scorer == "label":
            if not self.labels:
                raise CaseFieldError("labels", "scorer 'label' needs the allowed 'labels'")
            if len(set(self.labels)) != len(self.labels):
                raise CaseFieldError("labels", "labels must be distinct")
            if self.expected not in self.labels:
                raise CaseFieldError("expected", f"{self.expected!r} is not one of {self.labels}")
        if self.mode == "rank" and self.scorer != "label":
            raise CaseFieldError("mode", "'rank' works only with scorer 'label'")
        # The scorer's own rules (valid regex / JSON Schema, non-empty text, labels that stay
        # distinct after normalisation), so a case that cannot be scored fails at load time.
        problem = validate_expected(self.scorer, self.expected, self.labels)
        if problem is not None:
            about_labels = problem.startswith(("labels", "every label", "scorer 'label'"))
            blamed = "labels" if about_labels else "expected"
            raise CaseFieldError(blamed, problem)
        for tag in self.tags:
            if not TAG_PATTERN.match(tag) or tag in RESERVED_TAGS:
                raise CaseFieldError(
                    "tags", f"tag {tag!r} must be an identifier and not a pytest marker name"
                )
        return self

    @property
    def effective_mode(self) -> Literal["rank", "generate"]:
        """``rank`` for label cases unless ``mode`` says otherwise; ``generate`` for the rest."""
        if self.mode is not None:
            return self.mode
        return "rank" if self.scorer == "label" else "generate"

    @property
    def source(self) -> str:
        """``path:line`` of the case's definition."""
        return f"{self._path}:{self._line}"

    def conversation(self) -> list[dict[str, str]]:
        """The turns to answer, with ``system`` + ``prompt`` expanded into messages."""
        if self.messages is not None:
            return [{"role": m.role, "content": m.content} for m in self.messages]
        turns = [] if self.system is None else [{"role": "system", "content": self.system}]
        return [*turns, {"role": "user", "content": str(self.prompt)}]

    def prompt_text(self) -> str:
        """All user turns joined by newlines: the text a leakage check compares with training."""
        return "\n".join(t["content"] for t in self.conversation() if t["role"] == "user")

    def expected_text(self) -> str:
        """``expected`` as a string (a JSON Schema in canonical JSON)."""
        if isinstance(self.expected, dict):
            return json.dumps(self.expected, sort_keys=True, separators=(",", ":"))
        return self.expected

    def located(self, path: Path | str, line: int) -> GoldenCase:
        """This case, remembering where it was defined (for duplicate-id errors)."""
        self._path = str(path)
        self._line = line
        return self


# -- loading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RawCase:
    data: Mapping[str, Any]
    line: int
    # field name -> line of its key (the case's own keys win over the defaults')
    field_lines: Mapping[str, int] = field(default_factory=dict)
    nodes: Mapping[str, yaml.Node] = field(default_factory=dict)


def load_case_file(path: Path) -> list[GoldenCase]:
    """The cases in one JSONL or YAML file; the first problem raises :class:`GoldenCaseError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldenCaseError(path, None, None, f"cannot read: {exc}") from None
    raws = _jsonl_cases(path, text) if path.suffix == ".jsonl" else _yaml_cases(path, text)
    return [_validate(path, raw) for raw in raws]


def _jsonl_cases(path: Path, text: str) -> Iterator[_RawCase]:
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise GoldenCaseError(path, number, None, f"invalid JSON: {exc.msg}") from None
        if not isinstance(data, dict):
            raise GoldenCaseError(path, number, None, "each line must be one JSON object")
        yield _RawCase(data, number)


def _yaml_cases(path: Path, text: str) -> Iterator[_RawCase]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise GoldenCaseError(path, line, None, f"invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise GoldenCaseError(path, None, None, f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    if root is None or data is None:
        return
    defaults: Mapping[str, Any] = {}
    default_nodes: dict[str, yaml.Node] = {}
    if isinstance(root, yaml.MappingNode):
        keys = _mapping_keys(path, root)
        unknown = sorted(set(keys) - {"defaults", "cases"})
        if unknown:
            raise GoldenCaseError(
                path,
                keys[unknown[0]].start_mark.line + 1,
                unknown[0],
                "a case file mapping has only 'defaults' and 'cases'",
            )
        if "cases" not in keys:
            raise GoldenCaseError(path, root.start_mark.line + 1, "cases", "missing")
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise GoldenCaseError(
                path,
                keys["defaults"].start_mark.line + 1,
                "defaults",
                "must be a mapping of case fields",
            )
        if "defaults" in keys and isinstance(_value_node(root, "defaults"), yaml.MappingNode):
            default_nodes = _mapping_keys(path, _value_node(root, "defaults"))
        seq_node, items = _value_node(root, "cases"), data["cases"]
    else:
        seq_node, items = root, data
    if not isinstance(seq_node, yaml.SequenceNode) or not isinstance(items, list):
        raise GoldenCaseError(
            path,
            seq_node.start_mark.line + 1,
            None,
            "expected a list of cases (or a mapping with 'cases')",
        )
    for node, item in zip(seq_node.value, items, strict=True):
        line = node.start_mark.line + 1
        if not isinstance(item, dict) or not isinstance(node, yaml.MappingNode):
            raise GoldenCaseError(path, line, None, "each case must be a mapping")
        own = _mapping_keys(path, node)
        lines = {k: n.start_mark.line + 1 for k, n in default_nodes.items()}
        lines.update({k: n.start_mark.line + 1 for k, n in own.items()})
        nodes = {k: _value_node(node, k) for k in own}
        yield _RawCase({**defaults, **item}, line, lines, nodes)


def _mapping_keys(path: Path, node: yaml.Node) -> dict[str, yaml.Node]:
    keys: dict[str, yaml.Node] = {}
    for key_node, _ in node.value:
        name = str(key_node.value)
        if name in keys:
            raise GoldenCaseError(path, key_node.start_mark.line + 1, name, "duplicate key")
        keys[name] = key_node
    return keys


def _value_node(node: yaml.Node, key: str) -> yaml.Node:
    value_node: yaml.Node
    for key_node, value_node in node.value:
        if str(key_node.value) == key:
            return value_node
    return node


def _validate(path: Path, raw: _RawCase) -> GoldenCase:
    try:
        case = GoldenCase.model_validate(dict(raw.data))
    except ValidationError as exc:
        field_name, line, message = _first_problem(exc, raw)
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        case_id = raw.data.get("id")
        who = f" in case {case_id!r}" if isinstance(case_id, str) else ""
        raise GoldenCaseError(path, line, field_name, f"{message}{who}{suffix}") from None
    return case.located(path, raw.line)


def _first_problem(exc: ValidationError, raw: _RawCase) -> tuple[str | None, int, str]:
    error = exc.errors()[0]
    loc = [str(p) for p in error["loc"]]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, CaseFieldError):
        loc = [cause.field_name]
        message = str(cause)
    else:
        message = str(error["msg"])
        if error["type"] == "extra_forbidden":
            message = "unknown key (allowed: " + ", ".join(sorted(GoldenCase.model_fields)) + ")"
    if not loc:
        return None, raw.line, message
    line = raw.field_lines.get(loc[0], raw.line)
    node = raw.nodes.get(loc[0])
    # Walk into nested YAML (e.g. messages.1.content) for the exact line.
    for part in loc[1:]:
        if isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
        elif isinstance(node, yaml.MappingNode):
            node = _value_node(node, part)
        else:
            break
        line = node.start_mark.line + 1
    return ".".join(loc), line, message


# -- a golden set -----------------------------------------------------------------------------


def case_files(root: Path) -> list[Path]:
    """Case files under ``root`` (or ``root`` itself), sorted; hidden directories skipped.

    ``golden_tree`` decides, the same way for the golden-set lock, which names every other file.
    """
    return [f.path for f in scan(root) if f.kind == "cases"]


@dataclass(frozen=True)
class GoldenSet:
    """Every case under a golden root, by file, with each broken file's error kept apart.

    ``errors`` holds a case file's parse error under its path and, when the set was checked
    against a golden-set lock, the lock's problem under the lock's path: each becomes a reason
    of a red verdict. ``notes`` are lines to print (a lock check turned off, skipped files).
    """

    root: Path
    files: Mapping[Path, tuple[GoldenCase, ...]]
    errors: Mapping[Path, GoldenCaseError]
    tree: tuple[TreeFile, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def cases(self) -> list[GoldenCase]:
        return [c for cases in self.files.values() for c in cases]

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(c.id for c in self.cases)

    @property
    def tags(self) -> frozenset[str]:
        return frozenset(t for c in self.cases for t in c.tags)

    @property
    def sha256(self) -> str:
        return golden_sha256(self.cases)

    def current_lock(self) -> golden_lock.GoldenLock:
        """The lock this set would have now: every file's content hash, each case's hash."""
        sha256s = {f.rel: golden_lock.content_sha256(f.path.read_bytes()) for f in self.tree}
        tables: dict[str, dict[str, str] | None] = {}
        for f in self.tree:
            if f.kind == "cases":
                loaded = self.files.get(f.path)
                tables[f.rel] = None if loaded is None else {c.id: case_sha256(c) for c in loaded}
        return golden_lock.build_lock(self.tree, sha256s, tables, self.sha256)


def load_golden_set(
    root: Path, *, lock: Path | None = None, allow_unlocked: bool = False
) -> GoldenSet:
    """Load every case file; a file's parse error or a duplicate id is kept as that file's error.

    With ``lock`` (a golden-set lock file, see ``golden_lock``) the whole set is compared with
    it and any difference, or a missing lock unless ``allow_unlocked``, is an error under the
    lock's path. Without it nothing is compared (library use: leakage, benchmarks).
    """
    files: dict[Path, tuple[GoldenCase, ...]] = {}
    errors: dict[Path, GoldenCaseError] = {}
    seen: dict[str, GoldenCase] = {}
    tree = tuple(scan(root, exclude=[lock or golden_lock.lock_path_for(root)]))
    for path in [f.path for f in tree if f.kind == "cases"]:
        try:
            cases = load_case_file(path)
        except GoldenCaseError as exc:
            errors[path] = exc
            continue
        duplicate = _first_duplicate(cases, seen)
        if duplicate is not None:
            first, again = duplicate
            errors[path] = GoldenCaseError(
                path,
                again._line,
                "id",
                f"duplicate case id {again.id!r}: also defined at {first.source}",
            )
            continue
        seen.update((c.id, c) for c in cases)
        files[path] = tuple(cases)
    golden = GoldenSet(root, files, errors, tree)
    if lock is None:
        return golden
    # A -k run is checked like a whole one: the lock is about the files, not the selection.
    checked = golden_lock.check(
        golden.current_lock(),
        lock,
        root=root,
        allow_unlocked=allow_unlocked,
        skipped=[f for f in tree if f.kind == "skipped"],
    )
    if checked.problem is not None:
        errors[lock] = GoldenCaseError(lock, None, None, checked.problem)
    return dataclasses.replace(golden, errors=errors, notes=checked.notes)


def _first_duplicate(
    cases: Sequence[GoldenCase], seen: Mapping[str, GoldenCase]
) -> tuple[GoldenCase, GoldenCase] | None:
    local: dict[str, GoldenCase] = dict(seen)
    for case in cases:
        if case.id in local:
            return local[case.id], case
        local[case.id] = case
    return None


def load_golden(path: Path) -> list[GoldenCase]:
    """Every case under ``path`` (a directory or one file); the first problem raises."""
    if not path.exists():
        raise GoldenCaseError(path, None, None, "golden path does not exist")
    golden = load_golden_set(path)
    if golden.errors:
        raise next(iter(golden.errors.values()))
    return golden.cases


def case_sha256(case: GoldenCase) -> str:
    """Hash of one case's content, defaults merged in (what the golden-set lock records)."""
    return sha256_json(case.model_dump(mode="json"))


def golden_sha256(cases: Iterable[GoldenCase]) -> str:
    """Hash of a set of cases: order- and file-layout-independent, defaults included."""
    rows = sorted((c.model_dump(mode="json") for c in cases), key=lambda row: str(row["id"]))
    return sha256_json(rows)
