"""The record schema, its fast path, and the per-record rules (labels, quality)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.schema import (
    Example,
    SchemaIssue,
    _fast_example,
    _pydantic_example,
    apply_record_rules,
    parse_example,
)

SYSTEM = {"role": "system", "content": "Route the ticket."}
USER = {"role": "user", "content": "Where is my parcel?"}
ANSWER = {"role": "assistant", "content": "shipping"}


def record(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "messages": [SYSTEM, USER, ANSWER],
        "metadata": {"label": "shipping", "quality_score": 0.9, "source": "export"},
    }
    base.update(overrides)
    return base


def test_valid_record_becomes_an_example() -> None:
    """A well-formed record parses into role/content pairs, label, source and the rest."""
    example = parse_example(record())
    assert example == Example(
        (
            ("system", "Route the ticket."),
            ("user", "Where is my parcel?"),
            ("assistant", "shipping"),
        ),
        "shipping",
        "export",
        {"quality_score": 0.9},
    )


def with_meta(**meta: Any) -> dict[str, Any]:
    return {"messages": [USER, ANSWER], "metadata": meta}


def user(content: Any, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content, **extra}, ANSWER]}


@pytest.mark.parametrize(
    ("obj", "reason", "field"),
    [
        ({"metadata": {}}, "schema_missing_field", "messages"),
        ({"messages": "hi"}, "schema_wrong_type", "messages"),
        ({"messages": []}, "schema_too_short", "messages"),
        ({"messages": [{"role": "bot", "content": "hi"}, ANSWER]}, "schema_bad_role",
         "messages[0].role"),
        (user(""), "schema_empty_content", "messages[0].content"),
        (user(" \t"), "schema_empty_content", "messages[0].content"),
        (user(["a"]), "schema_wrong_type", "messages[0].content"),
        ({"messages": [SYSTEM, ANSWER]}, "schema_no_user_turn", "<record>"),
        ({"messages": [SYSTEM, USER]}, "schema_last_turn_not_assistant", "<record>"),
        (user("hi", name="x"), "schema_unknown_key", "messages[0].name"),
        (with_meta(quality_score="high"), "schema_wrong_type", "metadata.quality_score"),
        (with_meta(quality_score=1.5), "schema_out_of_range", "metadata.quality_score"),
        (with_meta(quality_score=True), "schema_wrong_type", "metadata.quality_score"),
        ({"messages": [USER, ANSWER], "metadata": "good"}, "schema_wrong_type", "metadata"),
        (with_meta(tags="edge"), "schema_wrong_type", "metadata.tags"),
        (with_meta(label=""), "schema_too_short", "metadata.label"),
    ],
)  # fmt: skip
def test_each_schema_violation_has_its_reason_and_field(
    obj: dict[str, Any], reason: str, field: str
) -> None:
    """Every kind of schema violation maps to its reason code and names the failing field."""
    issue = parse_example(obj)
    assert isinstance(issue, SchemaIssue)
    assert issue.reasons[0] == reason
    assert issue.field == field
    if field != "<record>":
        assert field in issue.message


def test_unknown_top_level_keys_follow_the_policy() -> None:
    """Unknown top-level keys are kept under metadata, dropped, or rejected by policy."""
    raw = record(ticket_id="T-1")
    kept = parse_example(raw, "keep")
    assert isinstance(kept, Example) and kept.metadata["ticket_id"] == "T-1"
    dropped = parse_example(raw, "drop")
    assert isinstance(dropped, Example) and "ticket_id" not in dropped.metadata
    rejected = parse_example(raw, "reject")
    assert isinstance(rejected, SchemaIssue)
    assert rejected.reasons == ("schema_unknown_key",) and rejected.field == "ticket_id"


def rules(example: Example, **overrides: Any) -> Example | SchemaIssue:
    settings_: dict[str, Any] = {
        "labels": ("account", "billing", "returns", "shipping"),
        "label_must_match_answer": True,
        "min_score": 0.8,
        "missing_score": "reject",
    }
    settings_.update(overrides)
    return apply_record_rules(example, **settings_)


def test_rules_enforce_labels_answers_and_quality() -> None:
    """Label set, label/answer agreement, and the quality filter each reject with a reason."""
    base = parse_example(record())
    assert isinstance(base, Example)
    assert rules(base) == base
    other = Example(base.messages, "refunds", base.source, base.metadata)
    assert _reasons(rules(other)) == ("label_not_allowed",)
    wrong = Example(base.messages, "billing", base.source, base.metadata)
    assert _reasons(rules(wrong)) == ("label_answer_mismatch",)
    low = Example(base.messages, base.label, base.source, {"quality_score": 0.5})
    assert _reasons(rules(low)) == ("quality_below_min",)
    unscored = Example(base.messages, base.label, base.source, {})
    assert _reasons(rules(unscored)) == ("quality_missing",)
    assert rules(unscored, missing_score="keep") == unscored


def test_an_unlabelled_record_takes_its_answer_as_label() -> None:
    """With a label set configured, an answer that is a label becomes the record's label."""
    example = parse_example(record(metadata={"quality_score": 0.9}))
    assert isinstance(example, Example) and example.label is None
    ruled = rules(example)
    assert isinstance(ruled, Example) and ruled.label == "shipping"


def _reasons(result: Example | SchemaIssue) -> tuple[str, ...]:
    assert isinstance(result, SchemaIssue)
    return result.reasons


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-2, max_value=2),
    st.text(max_size=6),
)
_good_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=8)}
)
_bad_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.one_of(st.sampled_from(["system", "user", "assistant", "bot"]), _scalars),
        "content": st.one_of(st.text(max_size=8), _scalars, st.lists(st.text(max_size=3))),
        "name": st.text(max_size=3),
    },
)
# Mostly well-formed conversations (... user ... assistant), sometimes with a bad turn mixed in.
_messages = st.builds(
    lambda head, user, tail: [*head, user, *tail],
    st.lists(st.one_of(_good_message, _bad_message), max_size=2),
    st.fixed_dictionaries({"role": st.just("user"), "content": st.text(min_size=1, max_size=8)}),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["assistant", "assistant", "user"]),
             "content": st.text(min_size=1, max_size=8)}
        ),
        min_size=1,
        max_size=1,
    ),
)  # fmt: skip
_good_metadata = st.fixed_dictionaries(
    {},
    optional={
        "quality_score": st.one_of(st.floats(0, 1), st.integers(0, 1)),
        "label": st.text(min_size=1, max_size=5),
        "tags": st.lists(st.text(max_size=3), max_size=2),
        "source": st.text(max_size=5),
        "extra": _scalars,
    },
)
_metadata = st.one_of(
    st.none(),
    _good_metadata,
    _good_metadata,
    _scalars,
    st.fixed_dictionaries(
        {},
        optional={
            "quality_score": _scalars,
            "label": _scalars,
            "tags": st.one_of(st.lists(st.one_of(st.text(max_size=3), _scalars)), _scalars),
            "source": _scalars,
        },
    ),
)
_plausible = st.fixed_dictionaries({"messages": _messages}, optional={"metadata": _metadata})
_records = st.one_of(
    _plausible,
    _plausible,
    _plausible,
    st.fixed_dictionaries({}, optional={"messages": _scalars, "metadata": _metadata}),
)


@settings(max_examples=500, deadline=None)
@given(_records)
def test_fast_path_agrees_with_pydantic(obj: dict[str, Any]) -> None:
    """Whenever the hand-written fast path accepts a record, pydantic accepts it identically."""
    fast = _fast_example(obj)
    slow = _pydantic_example(obj)
    if fast is not None:
        assert slow == fast
    assert isinstance(parse_example(obj), Example) == isinstance(slow, Example)


def test_fast_path_property_reaches_the_fast_path() -> None:
    """The generator above yields records the fast path accepts, so the property has teeth."""
    accepted = 0

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(_records)
    def count(obj: dict[str, Any]) -> None:
        nonlocal accepted
        accepted += _fast_example(obj) is not None

    count()
    assert accepted >= 30
