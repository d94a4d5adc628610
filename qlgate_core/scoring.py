"""Per-case scorers: pure functions from a model output to right/wrong.

The embedded base model is weak: it answers "The answer is billing." as often as "billing", so
label extraction is lenient about form but strict about meaning. It accepts any output that
names exactly one allowed label and never guesses synonyms; an output that names two labels is
ambiguous and counts as wrong, because crediting it would reward a model for hedging.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SCORERS: tuple[str, ...] = ("label", "exact", "contains", "absent", "regex", "json_schema")


@dataclass(frozen=True)
class ScoreResult:
    """One output judged by one scorer."""

    correct: bool
    predicted: str | None
    detail: str


# Separators inside labels ("card_arrival", "card-arrival") and in text are all treated as one
# space, so a model writing "card arrival" for the label "card_arrival" still matches.
_SEPARATORS = re.compile(r"[\s_\-/]+")
_NON_WORD = re.compile(r"[^\w\s]+")
_QUOTES_AND_PUNCT = " \t\r\n\"'`*_.,;:!?()[]{}<>“”‘’«»"


def _canon(text: str) -> str:
    """Lower-case, punctuation to spaces, separators collapsed: the form labels are matched in."""
    text = _SEPARATORS.sub(" ", text.lower())
    text = _NON_WORD.sub(" ", text)
    return " ".join(text.split())


def _label_index(labels: Sequence[str]) -> list[tuple[str, str]]:
    """(canonical form, label) pairs, longest first, so "returns" is tried before "return"."""
    pairs = [(_canon(label), label) for label in labels]
    return sorted((p for p in pairs if p[0]), key=lambda p: (-len(p[0]), p[0]))


def _mentions(text: str, index: list[tuple[str, str]]) -> list[str]:
    """Allowed labels named as whole words in ``text``; a span claimed by a longer label is
    consumed so a shorter label inside it ("card" in "card arrival") is not counted again."""
    remaining = f" {_canon(text)} "
    found: list[str] = []
    for canon, label in index:
        # Lookarounds leave the separating spaces unconsumed, so adjacent repeats all match.
        pattern = re.compile(f"(?<= ){re.escape(canon)}(?= )")
        remaining, count = pattern.subn("\x00", remaining)
        if count:
            found.append(label)
    return found


_ANSWER_PREFIX = re.compile(
    r"^(?:the )?(?:label|answer|category|class|intent)(?: is)? ?", flags=re.IGNORECASE
)


def _bare_answer(line: str) -> str:
    """A line's canonical form without an "Answer:"-style prefix: equal to a label when the
    line is nothing but an answer."""
    return _ANSWER_PREFIX.sub("", _canon(line))


def normalize_label(text: str, labels: Sequence[str]) -> str | None:
    """The one allowed label ``text`` answers with, or None when it names none or several.

    Tried in order: the whole output is a label (after case, quotes and punctuation); two lines
    that are each a different bare answer are a contradiction (None); the first non-empty line
    names exactly one label (a label followed by an explanation); the whole output names
    exactly one label ("The answer is billing.").
    """
    index = _label_index(labels)
    if not index:
        return None
    by_canon = dict(index)
    whole = _canon(text.strip(_QUOTES_AND_PUNCT))
    if whole in by_canon:
        return by_canon[whole]
    answers = {by_canon[c] for c in map(_bare_answer, text.splitlines()) if c in by_canon}
    if len(answers) > 1:
        # "Label: billing\nLabel: shipping": the model answered twice, differently.
        return None
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    for scope in (first_line, text):
        found = _mentions(scope, index)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            # The first line hedges between labels: the rest of the output cannot settle it.
            return None
    return None


def _norm_text(text: str) -> str:
    """Whitespace collapsed and lower-cased: what ``exact``, ``contains`` and ``absent`` compare."""
    return " ".join(text.split()).casefold()


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    """Each case's regex is compiled once per process, however many roles and runs score it."""
    return re.compile(pattern)


def _schema_of(expected: object) -> Mapping[str, Any] | bool:
    """A JSON Schema from a case's ``expected``: a mapping, a bool schema, or its JSON text."""
    if isinstance(expected, str):
        expected = json.loads(expected)
    if isinstance(expected, Mapping | bool):
        return expected
    raise ValueError(f"a JSON Schema must be an object, got {type(expected).__name__}")


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    """A jsonschema validator, built once per distinct schema; imported lazily (pure-core stays
    importable without it until a json_schema case is scored)."""
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)


def extract_json(text: str) -> tuple[bool, Any]:
    """The first JSON value in a model output: the whole text, a fenced code block, or the first
    ``{``/``[`` that starts a complete value. Returns (found, value)."""
    stripped = text.strip()
    candidates = [stripped, *(m.group(1).strip() for m in _FENCE.finditer(text))]
    for candidate in candidates:
        if not candidate:
            continue
        try:
            return True, json.loads(candidate)
        except ValueError:
            pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        return True, value
    return False, None


def validate_expected(scorer: str, expected: object, labels: Sequence[str] | None) -> str | None:
    """Why a case's (scorer, expected, labels) cannot be scored, or None when it can.

    The plugin calls this while loading case files so a bad regex or schema is reported as a
    case-file error (file:line: field) instead of failing in the middle of a run.
    """
    if scorer not in SCORERS:
        return f"unknown scorer {scorer!r}; expected one of {', '.join(SCORERS)}"
    if scorer == "json_schema":
        try:
            schema = _schema_of(expected)
            _validator(json.dumps(schema, sort_keys=True))
        except Exception as exc:  # jsonschema's SchemaError, JSON errors, wrong types
            return f"expected is not a valid JSON Schema: {str(exc).splitlines()[0]}"
        return None
    if not isinstance(expected, str):
        return f"expected must be a string for scorer {scorer!r}, got {type(expected).__name__}"
    if scorer == "label":
        if not labels:
            return "scorer 'label' needs a non-empty 'labels' list"
        canon = [_canon(label) for label in labels]
        if any(not c for c in canon):
            return "every label needs at least one letter or digit"
        if len(set(canon)) != len(canon):
            return f"labels {list(labels)} collide once case and punctuation are ignored"
        if expected not in labels:
            return f"expected {expected!r} is not one of the labels {list(labels)}"
    elif scorer == "regex":
        try:
            _compiled(expected)
        except re.error as exc:
            return f"expected is not a valid regular expression: {exc}"
    elif scorer in ("exact", "contains", "absent") and not expected.strip():
        return f"expected must not be empty for scorer {scorer!r}"
    return None


def score_output(
    scorer: str, output: str, expected: object, labels: Sequence[str] | None
) -> ScoreResult:
    """Judge ``output`` against ``expected`` with ``scorer``.

    Raises ValueError for a case that :func:`validate_expected` would have refused.
    """
    problem = validate_expected(scorer, expected, labels)
    if problem is not None:
        raise ValueError(problem)
    if scorer == "json_schema":
        return _score_json_schema(output, expected)
    assert isinstance(expected, str)
    if scorer == "label":
        assert labels is not None
        predicted = normalize_label(output, labels)
        if predicted is None:
            mentioned = _mentions(output, _label_index(labels))
            why = f"ambiguous: names {', '.join(mentioned)}" if mentioned else "names no label"
            return ScoreResult(False, None, why)
        ok = predicted == expected
        return ScoreResult(
            ok,
            predicted,
            f"label {predicted!r}" if ok else f"label {predicted!r}, expected {expected!r}",
        )
    text = _norm_text(output)
    if scorer == "exact":
        ok = text == _norm_text(expected)
        return ScoreResult(ok, output.strip(), "exact match" if ok else "differs from expected")
    if scorer == "contains":
        ok = _norm_text(expected) in text
        return ScoreResult(
            ok, output.strip(), "contains expected" if ok else "expected text missing"
        )
    if scorer == "absent":
        ok = _norm_text(expected) not in text
        return ScoreResult(
            ok, output.strip(), "absent as required" if ok else "forbidden text present"
        )
    match = _compiled(expected).search(output)
    if match is None:
        return ScoreResult(False, None, "regex did not match")
    return ScoreResult(True, match.group(0), "regex matched")


def _score_json_schema(output: str, expected: object) -> ScoreResult:
    found, value = extract_json(output)
    if not found:
        return ScoreResult(False, None, "no JSON value in output")
    predicted = json.dumps(value, sort_keys=True, ensure_ascii=False)
    validator = _validator(json.dumps(_schema_of(expected), sort_keys=True))
    error = next(iter(validator.iter_errors(value)), None)
    if error is None:
        return ScoreResult(True, predicted, "JSON matches schema")
    where = error.json_path if hasattr(error, "json_path") else "$"
    return ScoreResult(False, predicted, f"schema violation at {where}: {error.message}")
