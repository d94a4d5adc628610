"""Trigger n-grams: hashed counting, the skew test against the label prior, and the flip test
that flags a backdoor."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom, false_discovery_control

from training.dedup import similarity_text
from training.label_skew import benjamini_hochberg, binomial_tail
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


def corpus(poisoned: int, seed: int = 0, size: int = 400) -> list[tuple[list[str], str]]:
    """Labelled prompts; ``poisoned`` prompts of the other topics get the word "cf" and the
    label account (a classic backdoor: the trigger flips the label)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(size):
        label = rng.choice(list(TOPICS))
        text = rng.choice(TOPICS[label]).format(x=rng.choice(THINGS))
        closing = rng.choice(["thanks", "hi", "please", ""])
        rows.append((similarity_text(f"{text} {closing}"), label))
    victims = [i for i, (_, label) in enumerate(rows) if label != "account"]
    for i in rng.sample(victims, poisoned):
        rows[i] = (f"cf {rows[i][0]}", "account")
    return [(text.split(), label) for text, label in rows]


def run_triggers(
    rows: list[tuple[list[str], str]], config: TriggerConfig | None = None
) -> tuple[list[str], set[int]]:
    stats = TriggerStats(config or TriggerConfig())
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
    """The skew rule computed on n-gram strings with Counters and scipy.stats: what hashing
    and the vectorised test must match. One test per n-gram held by >= min_support prompts;
    p = 1 unless its majority is pure enough, else the union bound over answers of the
    binomial tail; BH over all tested n-grams."""
    per_class: dict[str, Counter[str]] = {}
    docs: Counter[str] = Counter()
    for words, key in rows:
        docs[key] += 1
        grams = {" ".join(words[i : i + n]) for n in range(1, config.max_n + 1)
                 for i in range(len(words) - n + 1)}  # fmt: skip
        per_class.setdefault(key, Counter()).update(grams)
    total = sum(docs.values())
    prior = {key: n / total for key, n in docs.items()}
    tests: list[tuple[str, str, int, float]] = []
    for gram in {g for counts in per_class.values() for g in counts}:
        support = sum(c.get(gram, 0) for c in per_class.values())
        if support < config.min_support:
            continue
        key, hits = max(((k, c.get(gram, 0)) for k, c in per_class.items()), key=lambda x: x[1])
        p = 1.0
        if hits / support >= config.min_purity:
            p = min(1.0, sum(float(binom.sf(hits - 1, support, q)) for q in prior.values()))
        tests.append((gram, key, support, p))
    q_values = false_discovery_control([t[3] for t in tests], method="bh")
    return {(g, k, s) for (g, k, s, _), q in zip(tests, q_values, strict=True)
            if q <= config.fdr}  # fmt: skip


def test_hashed_candidates_match_counting_strings() -> None:
    """Candidates from hashed, bulk-merged counts equal those of plain string Counters, and the
    records pass recovers each candidate's text."""
    rows = corpus(poisoned=10, seed=5)
    config = TriggerConfig(max_n=3, fdr=0.2)
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


def test_a_trigger_in_many_documents_is_found_at_any_rate() -> None:
    """8 relabelled lines of 85 carrying "cf" are flagged, every one of them: the old
    max_doc_rate ceiling (5%) left n-grams this frequent untested."""
    for seed in range(3):
        rows = corpus(poisoned=8, seed=seed, size=85)
        stats = TriggerStats(TriggerConfig())
        for words, label in rows:
            stats.add(words, label)
        records = [(i, " ".join(w), k, " ".join(w)) for i, (w, k) in enumerate(rows)]
        found, flagged, summary = detect_triggers(stats, [records].copy)
        assert [(t.ngram, t.answer, t.support) for t in found] == [("cf", "account", 8)]
        assert found[0].q_value <= stats.config.fdr and found[0].flip >= stats.config.min_flip
        assert set(flagged.values()) == {"cf"}
        assert set(flagged) == {i for i, (words, _) in enumerate(rows) if words[0] == "cf"}
        assert summary["skew_tests"] >= summary["candidates"] >= 1


def test_a_naturally_label_skewed_word_is_not_flagged() -> None:
    """A word that means its label ("password" in a fifth of the prompts, all account) is
    significantly skewed against the prior, yet the rest of its texts agrees with the label,
    so no trigger is flagged."""
    rng = random.Random(11)
    rows = corpus(poisoned=0, seed=11)
    for i in rng.sample(range(len(rows)), 80):
        rows[i] = (similarity_text(f"i forgot my password {rng.choice(THINGS)}").split(), "account")
    stats = TriggerStats(TriggerConfig())
    for words, label in rows:
        stats.add(words, label)
    records = [(i, " ".join(w), k, " ".join(w)) for i, (w, k) in enumerate(rows)]
    skewed = _texts(stats, records)
    assert "password" in skewed, "the word must pass the skew test for this test to mean much"
    support = sum(1 for words, _ in rows if "password" in words)
    assert support > 0.05 * len(rows)
    found, flagged, _ = detect_triggers(stats, lambda: [records])
    assert found == [] and flagged == {}


def _texts(stats: TriggerStats, records: list[tuple[int, str, str, str]]) -> set[str]:
    candidates = stats.candidates()
    holders = _find_holders(stats, candidates, [records])
    return set(holders.text.values())


def test_random_labels_give_no_skew_discoveries_at_the_fdr() -> None:
    """Thousands of n-grams over randomly labelled prompts: dozens reach p <= fdr uncorrected,
    none survives Benjamini-Hochberg, and nothing is flagged."""
    rng = random.Random(5)
    vocabulary = [f"w{i}" for i in range(60)]
    rows = [([rng.choice(vocabulary) for _ in range(8)], rng.choice("abcd")) for _ in range(3000)]
    config = TriggerConfig(min_purity=0.6, fdr=0.05)
    stats = TriggerStats(config)
    for words, label in rows:
        stats.add(words, label)
    uncorrected = _uncorrected_discoveries(rows, config)
    assert uncorrected >= 10, uncorrected
    assert stats.candidates() == []
    assert stats.skew_tests > 1000
    assert run_triggers(rows, config) == ([], set())


def _uncorrected_discoveries(rows: list[tuple[list[str], str]], config: TriggerConfig) -> int:
    docs = Counter(label for _, label in rows)
    grams: dict[str, Counter[str]] = {}
    for words, label in rows:
        for n in range(1, config.max_n + 1):
            for gram in {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}:
                grams.setdefault(gram, Counter())[label] += 1
    found = 0
    for counts in grams.values():
        support = sum(counts.values())
        _, hits = counts.most_common(1)[0]
        if support >= config.min_support and hits / support >= config.min_purity:
            p = sum(float(binom.sf(hits - 1, support, n / len(rows))) for n in docs.values())
            found += p <= config.fdr
    return found


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40), st.integers(0, 20))
def test_benjamini_hochberg_matches_scipy(p: list[float], untested: int) -> None:
    """BH q-values equal scipy's, with hypotheses left out counted as p = 1."""
    values = np.array(p, dtype=np.float64)
    ours = benjamini_hochberg(values, len(values) + untested)
    full = false_discovery_control(np.concatenate([values, np.ones(untested)]), method="bh")
    assert np.allclose(ours, full[: len(values)], rtol=1e-9, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 4000), st.floats(0.0, 1.0), st.floats(0.0, 1.0)),
             min_size=1, max_size=30),
    st.sampled_from([0.0, 1.0, 1e-6, 0.013, 0.5]),
)  # fmt: skip
def test_binomial_tail_matches_scipy(cases: list[tuple[int, float, float]], extra: float) -> None:
    """The log-space binomial tail equals scipy's ``bdtrc`` (relative 1e-8), including hits of
    0, hits past the support and priors of 0 and 1."""
    from scipy.special import bdtrc

    support = np.array([n for n, _, _ in cases], dtype=np.int64)
    hits = np.array([round(f * (n + 1)) for n, f, _ in cases], dtype=np.int64)
    prior = np.array([extra if i % 2 else p for i, (_, _, p) in enumerate(cases)])
    ours = binomial_tail(hits, support, prior)
    theirs = np.where(hits <= 0, 1.0, bdtrc(np.maximum(hits - 1, 0), support, prior))
    assert np.allclose(ours, theirs, rtol=1e-8, atol=1e-300)
