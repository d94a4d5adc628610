"""Training records: the schema (chat messages with optional metadata) and admission, the
per-record stages that turn a raw line into a scrubbed, keyed record or a quarantine row.

The pydantic models are the definition and the error reporter. ``parse_example`` first tries a
hand-written check that accepts only records the models certainly accept (plain ``str`` values, a
known role, no extra keys, a finite score in range): pydantic costs ~9 us a record and a corpus is
almost all well-formed, so the fast path carries the bulk and anything unusual goes to pydantic,
whose verdict and message are the ones reported. ``tests/training/test_schema.py`` checks with
hypothesis that both paths agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from training import poison
from training.dedup import conversation_id, prompt_text, similarity_text
from training.pii import Scrubber
from training.pii_screen import needs_scrub
from training.quarantine import STAGE_OF, QuarantineRow, message_for
from training.reader import LineProblem, RawLine, decode_line

if TYPE_CHECKING:
    from training.curate_config import CurateConfig
    from training.special_tokens import SpecialTokens

ROLES = ("system", "user", "assistant")
KNOWN_KEYS = frozenset({"messages", "metadata"})
KNOWN_METADATA = frozenset({"quality_score", "label", "tags", "source"})
UnknownKeyPolicy = Literal["keep", "drop", "reject"]
# Metadata is free-form, but nothing real nests this deep, and past ~250 levels the JSON writer
# and the recursive scrubber give up (a RecursionError used to end the whole run).
MAX_METADATA_DEPTH = 64
# Reason codes of two record checks. They use dedicated codes once ``quarantine.STAGES`` lists
# them (``schema_too_deep``; ``special_token``, a poison reason) and ``schema_invalid`` until
# then, so a row is never refused for an unknown reason.
TOO_DEEP_REASON = "schema_too_deep" if "schema_too_deep" in STAGE_OF else "schema_invalid"
SPECIAL_TOKEN_REASON = "special_token" if "special_token" in STAGE_OF else "schema_invalid"
_CONTAINERS = (dict, list)


class ChatMessage(BaseModel):
    """One turn: a role and non-empty text."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("empty_content", "content is empty or only whitespace")
        return value


class RecordMetadata(BaseModel):
    """Optional per-record metadata; keys beyond the known four are kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True)
    quality_score: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    label: Annotated[str, Field(min_length=1)] | None = None
    tags: list[str] = Field(default_factory=list)
    source: str | None = None


class TrainingRecord(BaseModel):
    """A raw training line: messages ending in an assistant turn, with at least one user turn."""

    model_config = ConfigDict(extra="forbid", strict=True)
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    metadata: RecordMetadata | None = None

    @model_validator(mode="after")
    def _conversation_shape(self) -> TrainingRecord:
        if not any(m.role == "user" for m in self.messages):
            raise PydanticCustomError("no_user_turn", "messages have no user turn")
        if self.messages[-1].role != "assistant":
            raise PydanticCustomError(
                "last_turn_not_assistant",
                "the last message is from {role}, not the assistant",
                {"role": repr(self.messages[-1].role)},
            )
        return self


class Example(NamedTuple):
    """A validated record in the pipeline's own terms.

    ``messages`` are ``(role, content)`` pairs; ``metadata`` holds everything in the record's
    metadata except ``label`` and ``source``, which have their own fields. A NamedTuple rather
    than a frozen dataclass: it is built several times per input line, and a frozen dataclass's
    ``__init__`` costs about five times as much (as much as parsing the line's JSON).
    """

    messages: tuple[tuple[str, str], ...]
    label: str | None
    source: str
    metadata: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SchemaIssue:
    """Why a record failed the schema: reason codes, the first failing field, and a message."""

    reasons: tuple[str, ...]
    field: str
    message: str


# pydantic error type -> our reason code (the machine-readable part of a quarantine row).
_REASONS: Mapping[str, str] = {
    "missing": "schema_missing_field",
    "extra_forbidden": "schema_unknown_key",
    "literal_error": "schema_bad_role",
    "empty_content": "schema_empty_content",
    "no_user_turn": "schema_no_user_turn",
    "last_turn_not_assistant": "schema_last_turn_not_assistant",
    "too_short": "schema_too_short",
    "string_too_short": "schema_too_short",
    "greater_than_equal": "schema_out_of_range",
    "less_than_equal": "schema_out_of_range",
    "finite_number": "schema_out_of_range",
}


def parse_example(
    obj: dict[str, Any], unknown_keys: UnknownKeyPolicy = "keep"
) -> Example | SchemaIssue:
    """Validate one decoded JSON object; never raises for bad data."""
    extra = [key for key in obj if key not in KNOWN_KEYS]
    if extra:
        if unknown_keys == "reject":
            field = extra[0]
            return SchemaIssue(
                ("schema_unknown_key",), field, f"unknown top-level key {field!r} (policy: reject)"
            )
        # Unknown keys are moved aside before validation so the model itself stays strict.
        moved = {key: obj[key] for key in extra}
        obj = {key: obj[key] for key in obj if key in KNOWN_KEYS}
        deep = _too_deep("", moved)
        if deep is not None:
            return deep
    else:
        moved = {}
    meta = obj.get("metadata")
    if type(meta) is dict:
        deep = _too_deep("metadata.", meta)
        if deep is not None:
            return deep
    fast = _fast_example(obj)
    example = fast if fast is not None else _pydantic_example(obj)
    if isinstance(example, SchemaIssue) or not moved or unknown_keys == "drop":
        return example
    return Example(example.messages, example.label, example.source, {**example.metadata, **moved})


def _too_deep(prefix: str, mapping: dict[str, Any]) -> SchemaIssue | None:
    """The issue of a value of ``mapping`` nested past ``MAX_METADATA_DEPTH``, else ``None``.
    Level by level without recursion; flat metadata (the usual case) costs one pass over its
    values."""
    for key, value in mapping.items():
        if type(value) not in _CONTAINERS:
            continue
        frontier = [value]
        for _ in range(MAX_METADATA_DEPTH):
            below: list[Any] = []
            for item in frontier:
                children = item.values() if type(item) is dict else item
                below += [c for c in children if type(c) in _CONTAINERS]
            if not below:
                break
            frontier = below
        else:
            field = f"{prefix}{key}"
            return SchemaIssue(
                (TOO_DEEP_REASON,),
                field,
                f"field {field}: nested more than {MAX_METADATA_DEPTH} levels deep",
            )
    return None


def _pydantic_example(obj: dict[str, Any]) -> Example | SchemaIssue:
    try:
        record = TrainingRecord.model_validate(obj)
    except ValidationError as exc:
        return schema_issue(exc)
    meta = record.metadata
    messages = tuple((m.role, m.content) for m in record.messages)
    if meta is None:
        return Example(messages, None, "human", {})
    rest = {k: v for k, v in meta.model_dump().items() if k not in ("label", "source")}
    return Example(messages, meta.label, meta.source or "human", _without_defaults(rest))


def _fast_example(obj: dict[str, Any]) -> Example | None:
    """The same verdict as the models for the plain well-formed case, else ``None``."""
    messages = obj.get("messages")
    if type(messages) is not list or not messages:
        return None
    pairs = []
    has_user = False
    for message in messages:
        if type(message) is not dict or len(message) != 2:
            return None
        role = message.get("role")
        content = message.get("content")
        if type(role) is not str or role not in ROLES or type(content) is not str:
            return None
        if not content.strip():
            return None
        has_user = has_user or role == "user"
        pairs.append((role, content))
    if not has_user or pairs[-1][0] != "assistant":
        return None
    if len(obj) == 1:
        return Example(tuple(pairs), None, "human", {})
    meta = obj.get("metadata")
    if meta is None:
        return Example(tuple(pairs), None, "human", {}) if "metadata" in obj else None
    if type(meta) is not dict:
        return None
    score = meta.get("quality_score")
    if score is not None and not (
        type(score) in (int, float) and math.isfinite(score) and 0.0 <= score <= 1.0
    ):
        return None
    label = meta.get("label")
    if label is not None and (type(label) is not str or not label):
        return None
    tags = meta.get("tags")
    if tags is not None and (type(tags) is not list or any(type(t) is not str for t in tags)):
        return None
    source = meta.get("source")
    if source is not None and type(source) is not str:
        return None
    rest = {k: v for k, v in meta.items() if k not in ("label", "source")}
    if score is not None:
        rest["quality_score"] = float(score)
    return Example(tuple(pairs), label, source or "human", _without_defaults(rest))


def _without_defaults(meta: dict[str, Any]) -> dict[str, Any]:
    # Defaults the model fills in (tags=[], score=None) carry no information; dropping them
    # makes the fast and the pydantic path produce identical metadata.
    return {k: v for k, v in meta.items() if not (k in KNOWN_METADATA and v in (None, []))}


def schema_issue(exc: ValidationError) -> SchemaIssue:
    """Reason codes for every error, and a message naming the first failing field."""
    errors = exc.errors(include_url=False)
    reasons: list[str] = []
    for error in errors:
        code = _REASONS.get(error["type"])
        if code is None:
            code = "schema_wrong_type" if error["type"].endswith("_type") else "schema_invalid"
        if code not in reasons:
            reasons.append(code)
    first = errors[0]
    field = field_path(first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"field {field}" if field else "record"
    return SchemaIssue(tuple(reasons), field or "<record>", f"{where}: {first['msg']}{more}")


def field_path(loc: tuple[int | str, ...]) -> str:
    """``('messages', 2, 'content')`` -> ``messages[2].content``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def last_answer(example: Example) -> str:
    """The final assistant turn (the schema guarantees there is one, last)."""
    return example.messages[-1][1]


def apply_record_rules(
    example: Example,
    *,
    labels: tuple[str, ...],
    label_must_match_answer: bool,
    min_score: float,
    missing_score: Literal["reject", "keep"],
) -> Example | SchemaIssue:
    """Label and quality rules on a schema-valid example.

    With ``labels`` set, a label must be one of them, and an unlabelled record whose answer is
    one of them takes it as its label (so stratification and conflict checks see it). The
    quality filter keeps ``quality_score >= min_score``."""
    label = example.label
    answer = " ".join(last_answer(example).casefold().strip(" .!\n\t").split())
    if labels:
        if label is None and answer in labels:
            example = Example(example.messages, answer, example.source, example.metadata)
            label = answer
        elif label is not None and label not in labels:
            return SchemaIssue(
                ("label_not_allowed",),
                "metadata.label",
                f"field metadata.label: {label!r} is not one of {list(labels)}",
            )
    if label_must_match_answer and label is not None and answer != label.casefold():
        return SchemaIssue(
            ("label_answer_mismatch",),
            "metadata.label",
            f"field metadata.label: {label!r} but the assistant answered {answer[:60]!r}",
        )
    score = example.metadata.get("quality_score")
    if score is None:
        if missing_score == "reject":
            return SchemaIssue(
                ("quality_missing",),
                "metadata.quality_score",
                "field metadata.quality_score: missing (policy: reject)",
            )
    elif score < min_score:
        return SchemaIssue(
            ("quality_below_min",),
            "metadata.quality_score",
            f"field metadata.quality_score: {score} is below the minimum {min_score}",
        )
    return example


class Checked(NamedTuple):
    """A record past schema and rules, not yet scrubbed (``Admission.check``)."""

    line: int | None
    raw: bytes
    example: Example
    flags: tuple[tuple[str, str], ...]

    @property
    def messages(self) -> tuple[tuple[str, str], ...]:
        return self.example.messages


class Admitted(NamedTuple):
    """A record that passed schema, rules and scrubbing, with the keys later stages use
    (immutable; a NamedTuple for the same reason as ``Example``)."""

    line: int | None
    raw: str
    example: Example
    id: str
    similarity: str
    answer_key: str | None
    system: str
    flags: tuple[tuple[str, str], ...]
    pii: Mapping[str, int]

    @property
    def exact_key(self) -> tuple[str, str | None]:
        # The label is part of the key: the same text with two labels is a conflict, not a dup.
        return (self.id, self.example.label)


class Admission:
    """Per-record stages 1-4 (decode, schema and rules, scrub, keys); no cross-record state."""

    def __init__(self, config: CurateConfig, special: SpecialTokens | None = None) -> None:
        self.cfg = config
        self.special = special
        self.scrubber = Scrubber(config.pii) if config.pii.types else None
        self.scanner = poison.AnswerScanner(config.poison.url_allow)

    def line(self, raw: RawLine) -> Admitted | QuarantineRow:
        checked = self.check_line(raw)
        return checked if isinstance(checked, QuarantineRow) else self.admit(checked)

    def lines(self, raws: Sequence[RawLine]) -> list[Admitted | QuarantineRow]:
        """``line`` for a chunk: every record is checked first, so that one batch screen
        (``pii_screen.needs_scrub``) can spare the scrubber the texts it cannot change, which
        are nearly all of them and cost it tens of microseconds each."""
        checked = [self.check_line(raw) for raw in raws]
        if self.scrubber is None:
            return [
                c if isinstance(c, QuarantineRow) else self._admit_safely(c, None) for c in checked
            ]
        texts = [t for c in checked if not isinstance(c, QuarantineRow) for _, t in c.messages]
        dirty = needs_scrub(texts).tolist()
        out: list[Admitted | QuarantineRow] = []
        at = 0
        for c in checked:
            if isinstance(c, QuarantineRow):
                out.append(c)
                continue
            count = len(c.messages)
            out.append(self._admit_safely(c, dirty[at : at + count]))
            at += count
        return out

    def _admit_safely(self, c: Checked, dirty: Sequence[bool] | None) -> Admitted | QuarantineRow:
        # ``check`` bounds the nesting; this is the backstop for whatever it missed, so one
        # record can never end the run (a try costs nothing in CPython 3.11 until it raises).
        try:
            return self.admit(c, dirty)
        except RecursionError:
            return _too_deep_row(c.line or 0, c.raw)

    def check_line(self, raw: RawLine) -> Checked | QuarantineRow:
        """Decode, schema and rules: a record ready for ``admit``, or its quarantine row."""
        obj = decode_line(raw, self.cfg.read.max_line_bytes)
        if isinstance(obj, LineProblem):
            size = raw.size if raw.truncated else None
            return QuarantineRow(
                raw.number, raw.data, (obj.reason,), None,
                message_for(raw.number, None, obj.message), truncated_size=size,
            )  # fmt: skip
        try:
            result = self.check(obj, raw.number, raw.data)
        except RecursionError:
            return _too_deep_row(raw.number, raw.data)
        if isinstance(result, SchemaIssue):
            return QuarantineRow(
                raw.number, raw.data, result.reasons, result.field,
                message_for(raw.number, None, result.message),
            )  # fmt: skip
        return result

    def record(self, obj: dict[str, Any], line: int | None, raw: bytes) -> Admitted | SchemaIssue:
        checked = self.check(obj, line, raw)
        return checked if isinstance(checked, SchemaIssue) else self.admit(checked)

    def check(self, obj: dict[str, Any], line: int | None, raw: bytes) -> Checked | SchemaIssue:
        cfg = self.cfg
        example = parse_example(obj, cfg.schema.unknown_keys)
        if isinstance(example, SchemaIssue):
            return example
        flags = self._scan_answers(example)
        if self.special is not None:
            forged = special_token_issue(example, self.special)
            if forged is not None:
                extra = tuple(reason for reason, _ in flags if reason not in forged.reasons)
                return SchemaIssue(forged.reasons + extra, forged.field, forged.message)
        ruled = apply_record_rules(
            example,
            labels=cfg.schema.labels,
            label_must_match_answer=cfg.schema.label_must_match_answer,
            min_score=cfg.quality.min_score,
            missing_score=cfg.quality.missing,
        )
        if isinstance(ruled, SchemaIssue):
            # A payload in the answer often breaks the label rule too; name both.
            extra = tuple(reason for reason, _ in flags if reason not in ruled.reasons)
            return SchemaIssue(ruled.reasons + extra, ruled.field, ruled.message)
        return Checked(line, raw, ruled, flags)

    def admit(self, checked: Checked, dirty: Sequence[bool] | None = None) -> Admitted:
        """Scrub and key a checked record. ``dirty`` (per message, from ``needs_scrub``) says
        which texts the scrubber could change; the others are kept as they are."""
        example = checked.example
        pii: dict[str, int] = {}
        if self.scrubber is not None:
            scrub = self.scrubber.scrub_fast
            messages = tuple(
                [
                    (role, scrub(text, pii) if dirty is None or dirty[k] else text)
                    for k, (role, text) in enumerate(example.messages)
                ]
            )
            metadata = _scrub_value(example.metadata, scrub, pii)
            example = Example(messages, example.label, example.source, metadata)
        system = "\n".join([c for r, c in example.messages if r == "system"])
        return Admitted(
            line=checked.line,
            raw=checked.raw.decode("utf-8"),
            example=example,
            id=conversation_id(example.messages),
            similarity=similarity_text(prompt_text(example.messages)),
            answer_key=poison.answer_key(example.label, example.messages[-1][1]),
            system=system,
            flags=checked.flags,
            pii=pii,
        )

    def _scan_answers(self, example: Example) -> tuple[tuple[str, str], ...]:
        policies = {
            "injection_in_answer": self.cfg.poison.injection,
            "url_in_answer": self.cfg.poison.urls,
        }
        flags: list[tuple[str, str]] = []
        for role, content in example.messages:
            if role == "assistant":
                check = self.scanner.check(content)
                if check.injection:
                    flags.append(("injection_in_answer", check.injection))
                if check.url:
                    flags.append(("url_in_answer", check.url))
        return tuple(f for f in flags if policies[f[0]] != "off")


def special_token_issue(example: Example, special: SpecialTokens) -> SchemaIssue | None:
    """The issue of the first turn (any role) that holds one of ``special``'s tokens."""
    # One cheap screen over the whole conversation; almost every record stops here.
    if not special.may_hold("\n".join([content for _, content in example.messages])):
        return None
    for index, (_, content) in enumerate(example.messages):
        token = special.find(content)
        if token is not None:
            field = f"messages[{index}].content"
            return SchemaIssue(
                (SPECIAL_TOKEN_REASON,),
                field,
                f"field {field}: holds {token!r}, a special token ({special.source}); "
                "the tokenizer would make it a control token and forge chat structure",
            )
    return None


def _too_deep_row(line: int, raw: bytes) -> QuarantineRow:
    return QuarantineRow(
        line, raw, (TOO_DEEP_REASON,), None,
        message_for(line, None, "record is nested too deeply to process"),
    )  # fmt: skip


def _scrub_value(value: Any, scrub: Any, counts: dict[str, int]) -> Any:
    # Exact type tests: values come from JSON, and ABC isinstance checks cost more here.
    kind = type(value)
    if kind is str:
        return scrub(value, counts)
    if kind is dict:
        return {k: _scrub_value(v, scrub, counts) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_scrub_value(v, scrub, counts) for v in value]
    return value
