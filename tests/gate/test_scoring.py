"""Per-case scorers: label extraction from a weak model's free text, and the other scorers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlgate_core.scoring import (
    SCORERS,
    extract_json,
    normalize_label,
    score_output,
    validate_expected,
)

LABELS = ("account", "billing", "returns", "shipping")


@pytest.mark.parametrize(
    "text",
    [
        "billing",
        "Billing",
        "  BILLING  ",
        "billing.",
        "'billing'",
        '"Billing"',
        "`billing`",
        "**billing**",
        "Label: billing",
        "label: Billing.",
        "The answer is billing.",
        "This message is about billing.",
        "billing\n\nThe customer was charged twice.",
        "Category - billing",
    ],
)
def test_label_is_found_in_common_free_text_forms(text: str) -> None:
    """A weak model's answer that names exactly one allowed label yields that label."""
    assert normalize_label(text, LABELS) == "billing"


@pytest.mark.parametrize(
    "text",
    [
        "billing or shipping",
        "It could be billing, but maybe shipping.",
        "Label: billing\nLabel: shipping",
        "",
        "   ",
        "refund",  # a synonym of returns: never guessed
        "payment",
        "I cannot help with that.",
        "bill",
    ],
)
def test_ambiguous_or_labelless_text_is_none(text: str) -> None:
    """Two labels named, or none (synonyms included), is no prediction at all."""
    assert normalize_label(text, LABELS) is None


def test_first_line_settles_a_label_followed_by_explanation() -> None:
    """A label alone on the first line wins over labels mentioned in the explanation below it."""
    assert normalize_label("returns\nNot billing, since nothing was charged.", LABELS) == "returns"


def test_longest_label_wins_over_its_prefix() -> None:
    """'returns' is matched as itself, not as 'return' plus noise; and vice versa."""
    labels = ("return", "returns")
    assert normalize_label("The answer is returns.", labels) == "returns"
    assert normalize_label("I want to return it", labels) == "return"


def test_multiword_labels_match_with_any_separator() -> None:
    """'card_arrival' matches 'card arrival' / 'Card-Arrival', and is not also read as 'card'."""
    labels = ("card", "card_arrival", "card_payment")
    assert normalize_label("Card-Arrival", labels) == "card_arrival"
    assert normalize_label("this is card arrival, card arrival", labels) == "card_arrival"
    assert normalize_label("card", labels) == "card"
    assert normalize_label("card arrival or card payment", labels) is None


def test_label_inside_a_longer_word_does_not_count() -> None:
    """'account' inside 'accounting' or 'accounts' is not a mention of the label."""
    assert normalize_label("accounting question", LABELS) is None


@settings(max_examples=100, deadline=None)
@given(
    label=st.sampled_from(LABELS),
    upper=st.lists(st.booleans(), min_size=8, max_size=8),
    prefix=st.sampled_from(["", "Label: ", "The answer is ", "'", "**", "Category: "]),
    suffix=st.sampled_from(["", ".", "!", "'", "**", "\n\nbecause reasons"]),
)
def test_label_survives_case_and_decoration(
    label: str, upper: list[bool], prefix: str, suffix: str
) -> None:
    """Any casing of a label with common decoration around it still normalises to the label."""
    cased = "".join(ch.upper() if u else ch for ch, u in zip(label, upper * 2, strict=False))
    assert normalize_label(f"{prefix}{cased}{suffix}", LABELS) == label


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=80))
def test_normalize_label_returns_an_allowed_label_or_none(text: str) -> None:
    """Whatever the text, the result is one of the allowed labels or None, never anything else."""
    assert normalize_label(text, LABELS) in (*LABELS, None)


def test_label_scorer_reports_prediction_and_correctness() -> None:
    """The label scorer is right only on the expected label and explains misses."""
    ok = score_output("label", "Label: shipping", "shipping", LABELS)
    assert (ok.correct, ok.predicted) == (True, "shipping")
    wrong = score_output("label", "billing", "shipping", LABELS)
    assert (wrong.correct, wrong.predicted) == (False, "billing")
    hedge = score_output("label", "billing or shipping", "shipping", LABELS)
    assert (hedge.correct, hedge.predicted) == (False, None)
    assert "ambiguous" in hedge.detail


def test_exact_ignores_case_and_whitespace_only() -> None:
    """exact compares whitespace- and case-normalised text, nothing looser."""
    assert score_output("exact", "  Hello\n  World ", "hello world", None).correct
    assert not score_output("exact", "Hello, World", "hello world", None).correct


def test_contains_and_absent_are_complementary() -> None:
    """contains is right when the text appears (any case); absent is right when it does not."""
    out = "Please reset your PASSWORD via the link."
    assert score_output("contains", out, "password", None).correct
    assert not score_output("absent", out, "password", None).correct
    assert score_output("absent", out, "credit card", None).correct
    assert not score_output("contains", out, "credit card", None).correct


def test_regex_searches_and_reports_the_match() -> None:
    """regex is right when the pattern matches anywhere; the match is the prediction."""
    r = score_output("regex", "Your order #12345 ships today", r"#\d{5}\b", None)
    assert (r.correct, r.predicted) == (True, "#12345")
    assert not score_output("regex", "no number", r"#\d{5}", None).correct


SCHEMA = {
    "type": "object",
    "required": ["label", "priority"],
    "properties": {"label": {"type": "string"}, "priority": {"type": "integer"}},
}


@pytest.mark.parametrize(
    "output",
    [
        '{"label": "billing", "priority": 2}',
        'Sure! ```json\n{"label": "billing", "priority": 2}\n``` Hope that helps.',
        '```\n{"label": "billing", "priority": 2}\n```',
        'Here it is: {"label": "billing", "priority": 2} -- done',
    ],
)
def test_json_schema_finds_json_in_plain_fenced_or_embedded_output(output: str) -> None:
    """JSON is parsed from the bare output, a fenced block, or embedded in prose."""
    assert score_output("json_schema", output, SCHEMA, None).correct


def test_json_schema_rejects_invalid_or_missing_json() -> None:
    """A schema violation names its location; no JSON at all is a plain miss."""
    bad = score_output("json_schema", '{"label": "billing", "priority": "high"}', SCHEMA, None)
    assert not bad.correct
    assert "priority" in bad.detail
    none = score_output("json_schema", "I think it is billing", SCHEMA, None)
    assert (none.correct, none.predicted) == (False, None)


def test_json_schema_accepts_the_schema_as_json_text() -> None:
    """expected may be the schema's JSON text (how CaseResult carries it)."""
    import json

    assert score_output(
        "json_schema", '{"label": "x", "priority": 1}', json.dumps(SCHEMA), None
    ).correct


def test_extract_json_prefers_the_whole_text() -> None:
    """A bare JSON array is returned as is; prose without JSON reports not found."""
    assert extract_json("[1, 2]") == (True, [1, 2])
    assert extract_json("nothing here {oops") == (False, None)


@pytest.mark.parametrize(
    ("scorer", "expected", "labels", "fragment"),
    [
        ("regex", "(unclosed", None, "regular expression"),
        ("json_schema", {"type": "no-such-type"}, None, "JSON Schema"),
        ("json_schema", "{not json", None, "JSON Schema"),
        ("label", "refunds", LABELS, "not one of the labels"),
        ("label", "billing", None, "labels"),
        ("label", "billing", ("billing", "Billing!"), "collide"),
        ("exact", "  ", None, "empty"),
        ("contains", 3, None, "string"),
        ("fuzzy", "x", None, "unknown scorer"),
    ],
)
def test_validate_expected_explains_unscorable_cases(
    scorer: str, expected: object, labels: tuple[str, ...] | None, fragment: str
) -> None:
    """A case that cannot be scored gets a message naming the problem (for file:line errors)."""
    message = validate_expected(scorer, expected, labels)
    assert message is not None
    assert fragment in message


@pytest.mark.parametrize(
    ("scorer", "expected", "labels"),
    [
        ("label", "billing", LABELS),
        ("exact", "x", None),
        ("contains", "x", None),
        ("absent", "x", None),
        ("regex", r"\d+", None),
        ("json_schema", SCHEMA, None),
    ],
)
def test_validate_expected_accepts_valid_cases(
    scorer: str, expected: object, labels: tuple[str, ...] | None
) -> None:
    """Every scorer has a valid form that validate_expected accepts."""
    assert scorer in SCORERS
    assert validate_expected(scorer, expected, labels) is None


def test_score_output_refuses_an_invalid_case() -> None:
    """Scoring a case validate_expected refuses raises instead of guessing."""
    with pytest.raises(ValueError, match="regular expression"):
        score_output("regex", "x", "(", None)
