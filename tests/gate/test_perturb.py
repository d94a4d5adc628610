"""Label-preserving perturbations and flip rates (qlgate_pytest/perturb.py)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlgate_pytest.perturb import (
    ENTITIES,
    KINDS,
    FlipRate,
    RobustnessCase,
    RoleRobustness,
    case_seed,
    flip_rate_violations,
    flip_rates,
    flip_report_to_json,
    perturb,
    perturb_conversation,
    robustness_case_from_json,
    robustness_case_to_json,
)

ORDER = re.compile(r"[A-Z]{2}-\d{5}")
TICKET = "Hi, I'm Alice from Berlin. My blender (order NW-48213) arrived broken, refund please!"

words = st.from_regex(r"[A-Za-z]{1,9}", fullmatch=True)
order_numbers = st.from_regex(r"[A-Z]{2}-\d{5}", fullmatch=True)
names = st.sampled_from([n for group in ENTITIES.values() for n in group])
marks = st.sampled_from([",", ".", "!", "?", "...", "'s", "-"])
separators = st.sampled_from([" ", "  ", "\n", " \t"])
tickets = st.lists(
    st.one_of(words, words, order_numbers, names, marks), min_size=1, max_size=25
).flatmap(
    lambda toks: st.lists(separators, min_size=len(toks), max_size=len(toks)).map(
        lambda seps: "".join(t + s for t, s in zip(toks, seps, strict=True)).strip() or "x"
    )
)
any_text = st.text(min_size=1, max_size=60).filter(lambda s: s.strip() != "")


@settings(max_examples=200, deadline=None)
@given(text=any_text, n=st.integers(0, 8), seed=st.integers(0, 2**32))
def test_deterministic_nonempty_and_changed(text: str, n: int, seed: int) -> None:
    """Same text+seed gives the same list; each result is non-blank and differs from the text."""
    first = perturb(text, n, seed)
    assert first == perturb(text, n, seed)
    assert len(first) == n
    for p in first:
        assert p.kind in KINDS
        assert p.text.strip()
        assert p.text != text


@settings(max_examples=150, deadline=None)
@given(text=tickets, seed=st.integers(0, 2**32))
def test_order_numbers_stay_intact(text: str, seed: int) -> None:
    """Every order number (NW-48213) survives every kind of perturbation, in order."""
    for p in perturb(text, 10, seed):
        assert ORDER.findall(p.text) == ORDER.findall(text), p


@settings(max_examples=100, deadline=None)
@given(text=tickets, seed=st.integers(0, 2**32))
def test_each_kind_changes_only_its_aspect(text: str, seed: int) -> None:
    """Casing keeps the letters, whitespace the tokens, punctuation the words; a typo edits one
    word; an entity swap replaces a listed name with another of the same kind."""
    for p in perturb(text, 10, seed):
        if p.kind == "casing":
            assert p.text.lower() == text.lower()
        elif p.kind == "whitespace":
            assert p.text.split() == text.split()
        elif p.kind == "punctuation":
            assert re.findall(r"\w+", p.text) == re.findall(r"\w+", text)
        elif p.kind == "typo":
            before, after = text.split(), p.text.split()
            assert len(before) == len(after)
            assert sum(a != b for a, b in zip(before, after, strict=True)) == 1
        else:
            assert p.kind == "entity"
            gone = [n for g in ENTITIES.values() for n in g if n in text and n not in p.text]
            assert gone


def test_five_perturbations_cover_every_applicable_kind() -> None:
    """A ticket with a name, a city and a product gets all five kinds from n=5."""
    kinds = {p.kind for p in perturb(TICKET, 5, seed=3)}
    assert kinds == set(KINDS)


def test_entity_swap_keeps_the_kind_and_replaces_every_mention() -> None:
    """Swapping "Alice" replaces each mention with one other person's name, never a city."""
    text = "Alice ordered a kettle; Alice wants it sent to Paris."
    swaps = [p.text for s in range(40) for p in perturb(text, 5, s) if p.kind == "entity"]
    assert swaps
    for swapped in swaps:
        people = [n for n in ENTITIES["person"] if n in swapped]
        cities = [n for n in ENTITIES["city"] if n in swapped]
        products = [n for n in ENTITIES["product"] if n in swapped]
        # One entity changed, consistently: still one person (twice), one city, one product.
        assert len(people) == 1 and len(cities) == 1 and len(products) == 1
        assert swapped.count(people[0]) == 2 or people[0] == "Alice"


def test_text_without_entities_gets_no_entity_kind() -> None:
    """Kinds that cannot apply are skipped rather than faked (no names -> no entity swap)."""
    kinds = {p.kind for s in range(20) for p in perturb("where is my parcel", 5, s)}
    assert "entity" not in kinds
    assert {"casing", "whitespace", "punctuation", "typo"} <= kinds


def test_bad_arguments_are_refused() -> None:
    """A blank text or a negative count is a caller bug: ValueError, not an empty list."""
    with pytest.raises(ValueError, match="blank"):
        perturb("   ", 2, 0)
    with pytest.raises(ValueError, match=">= 0"):
        perturb("hello", -1, 0)


def test_case_seed_is_stable_across_processes() -> None:
    """Per-case seeds do not depend on the process's hash salt (xdist workers agree)."""
    code = "from qlgate_pytest.perturb import case_seed; print(case_seed('billing-007', 5))"
    out = [
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": salt, "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for salt in ("1", "2")
    ]
    assert out[0] == out[1] == str(case_seed("billing-007", 5))
    assert case_seed("billing-007", 5) != case_seed("billing-008", 5)


def _case(
    case_id: str, tags: tuple[str, ...], kinds: str, cand: str, base: str | None
) -> RobustnessCase:
    """Predictions as strings of one-letter labels: first the original, then one per kind."""
    ks = tuple({"c": "casing", "t": "typo", "e": "entity"}[k] for k in kinds)
    candidate = RoleRobustness(cand[0], tuple(cand[1:]))
    baseline = RoleRobustness(base[0], tuple(base[1:])) if base is not None else None
    return RobustnessCase(case_id, tags, ks, candidate, baseline)


def test_flip_rates_per_role_slice_and_kind() -> None:
    """Flips are counted against each role's own original answer, per slice and per kind."""
    cases = [
        _case("a", ("core",), "ct", "bbb", "bba"),  # baseline flips on the typo
        _case("b", ("core", "edge"), "ce", "baa", "aaa"),  # candidate flips twice
        _case("c", ("edge",), "tt", "aab", None),  # no baseline outcome
    ]
    report = flip_rates(cases)
    assert report.overall["candidate"] == FlipRate(flips=3, total=6, cases=3, cases_flipped=2)
    assert report.overall["baseline"] == FlipRate(flips=1, total=4, cases=2, cases_flipped=1)
    assert report.by_slice["core"]["candidate"].rate == pytest.approx(2 / 4)
    assert report.by_slice["edge"]["candidate"].rate == pytest.approx(3 / 4)
    assert report.by_kind["typo"]["candidate"] == FlipRate(1, 3, 2, 1)
    assert report.by_kind["typo"]["baseline"] == FlipRate(1, 1, 1, 1)
    as_json = flip_report_to_json(report)
    assert as_json["overall"]["candidate"]["rate"] == pytest.approx(0.5)  # type: ignore[index]


def test_flip_rate_gate_names_the_slice_and_counts() -> None:
    """--max-flip-rate fails the candidate overall and in each slice whose upper bound is above
    it, with counts, the raw rate and the bound."""
    report = flip_rates(
        [_case("a", ("core",), "cc", "bbb", "bbb"), _case("b", ("edge",), "cc", "aab", "aaa")]
    )
    reasons = flip_rate_violations(report, max_flip_rate=0.2)
    assert len(reasons) == 3  # overall 1/4, core 0/2 (bound 0.842), edge 1/2
    assert "overall" in reasons[0] and "1/4" in reasons[0] and "rate 0.250" in reasons[0]
    assert "95% upper bound 0.806" in reasons[0]
    assert "slice 'edge'" in reasons[2] and "baseline 0.000" in reasons[2]
    assert flip_rate_violations(report, max_flip_rate=0.99) == []


def test_flip_rate_gate_uses_the_upper_confidence_bound() -> None:
    """2 flips in 12 answers (raw rate 0.167 <= 0.2) cannot show a flip rate of at most 0.2:
    the 95% Clopper-Pearson upper bound is 0.484 (beta.ppf(0.975, 3, 10)), so the gate is red;
    0 flips in 200 answers (bound 1 - 0.025 ** (1/200) = 0.018) passes 0.02."""
    cases = [_case(f"c{i}", ("core",), "ccc", "aaaa", None) for i in range(3)]
    cases.append(_case("d", ("core",), "ccc", "abba", None))  # 2 flips: 2/12 in all
    report = flip_rates(cases)
    assert report.overall["candidate"].rate == pytest.approx(2 / 12)
    (overall, core) = flip_rate_violations(report, max_flip_rate=0.2)
    assert overall.startswith("robustness overall: candidate flip rate 0.167 (2/12 perturbed")
    assert "95% upper bound 0.484, exceeds --max-flip-rate 0.200" in overall
    assert core.startswith("robustness slice 'core': candidate flip rate 0.167")
    assert "90% upper bound 0.438" in flip_rate_violations(report, 0.2, confidence=0.9)[0]
    steady = flip_rates([_case(f"s{i}", (), "cc", "aaa", None) for i in range(100)])
    assert steady.overall["candidate"].upper(0.95) == pytest.approx(1 - 0.025 ** (1 / 200))
    assert flip_rate_violations(steady, max_flip_rate=0.02) == []
    as_json = flip_report_to_json(report, confidence=0.95)
    assert as_json["overall"]["candidate"]["upper"] == pytest.approx(0.4841, abs=1e-4)  # type: ignore[index]


def test_flip_rates_refuse_mismatched_lengths() -> None:
    """A role with fewer predictions than perturbations is a wiring bug, reported by case id."""
    bad = RobustnessCase("x", (), ("casing", "typo"), RoleRobustness("a", ("a",)))
    with pytest.raises(ValueError, match="case x: candidate has 1"):
        flip_rates([bad])


labels = st.sampled_from(["account", "billing", None])


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(st.sampled_from(["core", "edge", "long"]), max_size=2),
            st.lists(st.sampled_from(KINDS), min_size=1, max_size=4),
            labels,
            st.data(),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_flip_rate_totals_are_consistent(rows: list) -> None:  # type: ignore[type-arg]
    """Rates lie in [0, 1] and per-kind flips add up to the overall flips."""
    cases = []
    for i, (tags, kinds, original, data) in enumerate(rows):
        perturbed = tuple(data.draw(st.lists(labels, min_size=len(kinds), max_size=len(kinds))))
        cases.append(
            RobustnessCase(f"c{i}", tuple(tags), tuple(kinds), RoleRobustness(original, perturbed))
        )
    report = flip_rates(cases)
    overall = report.overall["candidate"]
    assert 0.0 <= overall.rate <= 1.0
    assert overall.total == sum(len(c.kinds) for c in cases)
    assert sum(k["candidate"].flips for k in report.by_kind.values()) == overall.flips


def test_conversation_perturbs_only_the_last_user_turn() -> None:
    """The system prompt and earlier turns stay; the last user turn gets perturb()'s texts."""
    messages = [
        {"role": "system", "content": "Route the ticket."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "billing"},
        {"role": "user", "content": TICKET},
    ]
    out = perturb_conversation(messages, 3, seed=9)
    assert [p for p, _ in out] == perturb(TICKET, 3, 9)
    for p, conversation in out:
        assert conversation[:3] == messages[:3] and conversation[3]["content"] == p.text
    assert messages[3]["content"] == TICKET  # the input is not modified
    with pytest.raises(ValueError, match="no user turn"):
        perturb_conversation([{"role": "system", "content": "x"}], 1, 0)


def test_robustness_case_round_trips_as_json() -> None:
    """A RobustnessCase survives the JSON trip xdist workers use (None predictions included)."""
    case = _case("a", ("core",), "ct", "bab", "bba")
    case = RobustnessCase(case.case_id, case.tags, case.kinds, RoleRobustness(None, ("a", None)))
    assert robustness_case_from_json(robustness_case_to_json(case)) == case
