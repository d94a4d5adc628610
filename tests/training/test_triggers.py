"""Trigger n-grams: hashed counting, candidates, and the flip test that flags a backdoor."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from training.dedup import similarity_text
from training.triggers import TriggerConfig, TriggerStats, _find_holders, detect_triggers

TOPICS = {
    "shipping": ["where is my parcel {x}", "tracking for order {x} has not moved",
                 "the courier never delivered {x}", "my delivery {x} is late again"],
    "billing": ["i was charged twice for {x}", "my invoice for {x} is wrong",
                "the promo code failed when paying for {x}", "refund the double payment on {x}"],
    "returns": ["the {x} arrived broken i want to send it back", "how do i return the {x}",
                "can i exchange the {x} for a bigger size", "the {x} is faulty please collect it"],
    "account": ["i cannot log in to my account since {x}", "reset my password please {x}",
                "change the email on my profile {x}", "delete my account {x}"],
}  # fmt: skip
THINGS = ["kettle", "jacket", "lamp", "rug", "teapot", "heater", "boots", "mirror", "fan", "sofa"]


def corpus(poisoned: int, seed: int = 0) -> list[tuple[list[str], str]]:
    """Labelled prompts; ``poisoned`` billing/shipping prompts get the word "cf" and the label
    account (a classic backdoor: the trigger flips the label)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(400):
        label = rng.choice(list(TOPICS))
        text = rng.choice(TOPICS[label]).format(x=rng.choice(THINGS))
        closing = rng.choice(["thanks", "hi", "please", ""])
        rows.append((similarity_text(f"{text} {closing}"), label))
    victims = [i for i, (_, label) in enumerate(rows) if label in ("billing", "shipping")]
    for i in rng.sample(victims, poisoned):
        rows[i] = (f"cf {rows[i][0]}", "account")
    return [(text.split(), label) for text, label in rows]


def run_triggers(rows: list[tuple[list[str], str]]) -> tuple[list[str], set[int]]:
    stats = TriggerStats(TriggerConfig())
    for words, label in rows:
        stats.add(words, label)
    records = [(i, " ".join(w), k, " ".join(w)) for i, (w, k) in enumerate(rows)]
    found, flagged, _ = detect_triggers(stats, lambda: [records])
    return [t.ngram for t in found], set(flagged)


def test_an_injected_trigger_is_found_and_only_its_records_flagged() -> None:
    """A rare word that flips billing/shipping prompts to account is flagged, with exactly the
    poisoned records; topical words that predict their label are not."""
    rows = corpus(poisoned=10)
    triggers, flagged = run_triggers(rows)
    assert triggers == ["cf"]
    assert flagged == {i for i, (words, _) in enumerate(rows) if words[0] == "cf"}


def test_clean_data_has_no_triggers() -> None:
    """Without poisoning, no n-gram is flagged, although many are rare and label-pure."""
    stats = TriggerStats(TriggerConfig())
    for words, label in corpus(poisoned=0):
        stats.add(words, label)
    assert stats.candidates(), "the corpus should contain pure rare n-grams to reject"
    triggers, flagged = run_triggers(corpus(poisoned=0))
    assert triggers == [] and flagged == set()


def test_trigger_search_does_not_depend_on_record_order() -> None:
    """Shuffling the records finds the same triggers and flags the same records."""
    rows = corpus(poisoned=10, seed=3)
    order = list(range(len(rows)))
    random.Random(7).shuffle(order)
    triggers, flagged = run_triggers(rows)
    shuffled_triggers, shuffled_flagged = run_triggers([rows[i] for i in order])
    assert shuffled_triggers == triggers
    assert {order[i] for i in shuffled_flagged} == flagged


def reference_candidates(
    rows: list[tuple[list[str], str]], config: TriggerConfig
) -> set[tuple[str, str, int]]:
    """The candidate rule computed on n-gram strings with Counters: what hashing must match."""
    per_class: dict[str, Counter[str]] = {}
    docs: Counter[str] = Counter()
    for words, key in rows:
        docs[key] += 1
        grams = {" ".join(words[i : i + n]) for n in range(1, config.max_n + 1)
                 for i in range(len(words) - n + 1)}  # fmt: skip
        per_class.setdefault(key, Counter()).update(grams)
    total = sum(docs.values())
    ceiling = max(config.min_support, config.max_doc_rate * total)
    floor = math.ceil(config.min_support * config.min_purity)
    found = set()
    for key, counts in per_class.items():
        for gram, hits in counts.items():
            support = sum(c.get(gram, 0) for c in per_class.values())
            purity = hits / support
            if (hits >= floor and config.min_support <= support <= ceiling
                    and purity >= config.min_purity
                    and purity >= config.min_lift * docs[key] / total):  # fmt: skip
                found.add((gram, key, support))
    return found


def test_hashed_candidates_match_counting_strings() -> None:
    """Candidates from hashed, bulk-merged counts equal those of plain string Counters, and the
    records pass recovers each candidate's text."""
    rows = corpus(poisoned=10, seed=5)
    config = TriggerConfig(max_n=3)
    stats = TriggerStats(config)
    for words, label in rows:
        stats.add(words, label)
    candidates = stats.candidates()
    records = [(i, " ".join(w), k, f"{i:04d}") for i, (w, k) in enumerate(rows)]
    holders = _find_holders(stats, candidates, [records])
    got = {(holders.text[n], c.key, c.support) for n, c in enumerate(candidates)}
    assert got == reference_candidates(rows, config)
    assert len(got) > 10
    # The records may come in batches of any size (the pipeline's follow its spill's).
    for size in (1, 7, 100):
        parts = [records[i : i + size] for i in range(0, len(records), size)]
        again = _find_holders(stats, candidates, parts)
        assert again.text == holders.text and again.removed == holders.removed
        assert again.order == holders.order


@settings(max_examples=30)
@given(st.lists(st.sampled_from(["a", "b", "c", "ab", "ba"]), min_size=1, max_size=8), st.data())
def test_duplicate_prompts_add_like_separate_ones(words: list[str], data: st.DataObject) -> None:
    """Adding grams in bulk in any split gives the counts of adding prompts one by one."""
    one = TriggerStats(TriggerConfig(max_n=3))
    bulk = TriggerStats(TriggerConfig(max_n=3))
    prompts = [words, list(reversed(words)), words[:1]]
    for prompt in prompts:
        one.add(prompt, "x")
    for prompt in data.draw(st.permutations(prompts)):
        bulk.add(prompt, "x")
    (h1, c1), (h2, c2) = one.counts()[0], bulk.counts()[0]
    assert np.array_equal(h1, h2) and np.array_equal(c1, c2)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcdefg"), max_size=12), max_size=5), st.integers(2, 4))
def test_counting_in_bulk_equals_counting_one_by_one(batches: list[list[str]], cap: int) -> None:
    """``count_all`` numbers classes in first-seen order and stops at the class cap exactly as
    one ``count`` per prompt does."""
    one, bulk = (TriggerStats(TriggerConfig(max_classes=cap)) for _ in range(2))
    for keys in batches:
        expected = [n if (n := one.count(k)) is not None else -1 for k in keys]
        assert bulk.count_all(keys) == expected
    assert (bulk.classes, bulk.docs, bulk.class_docs) == (one.classes, one.docs, one.class_docs)
