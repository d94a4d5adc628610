"""Exact and near-duplicate detection: normalisation, shingles, LSH candidates, and the
order-independence property."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from training.dedup import (
    NearDupConfig,
    UnionFind,
    candidate_pairs,
    choose_bands,
    conversation_id,
    jaccard,
    near_duplicate_groups,
    normalize_text,
    shingle_hashes,
    signatures,
    similarity_text,
    sorted_jaccard,
)
from training.dedup_index import CandidateIndex

TICKETS = [
    "My parcel with the kettle has been stuck in transit since Monday, order NW-12345.",
    "I was charged twice for the jacket, please refund one of the two payments.",
    "How do I reset my password? The reset email never arrives in my inbox.",
    "The lamp arrived with a cracked base, I would like to send it back for a refund.",
    "Can you deliver to Norway? I want to order a rug for my sister's new flat.",
]


def test_normalisation_ignores_case_whitespace_and_compatibility_forms() -> None:
    """Exact-dup identity ignores case, runs of whitespace and Unicode compatibility forms."""
    assert normalize_text("  Hello\tWORLD \n") == "hello world"
    assert normalize_text("ﬁle Ｆｕｌｌ") == normalize_text("file full")
    a = conversation_id([("user", "Where is MY parcel?"), ("assistant", "shipping")])
    b = conversation_id([("user", "where  is my parcel?"), ("assistant", "Shipping")])
    assert a == b and len(a) == 16
    assert a != conversation_id([("user", "where is my parcel?"), ("assistant", "billing")])


def test_similarity_text_keeps_letters_and_digits_only() -> None:
    """Punctuation and case do not count towards similarity; ASCII and Unicode paths agree."""
    assert similarity_text("Hello, World_x! 12-3") == "hello world x 12 3"
    assert similarity_text("Straße, café!") == "strasse café"
    assert similarity_text("???") == "???"


def _reference_shingles(text: str, size: int) -> int:
    return len(text) - size + 1 if len(text) >= size else (1 if text else 0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=20), min_size=1, max_size=8), st.integers(1, 6))
def test_shingle_hashes_cover_each_text(texts: list[str], size: int) -> None:
    """Each text gets one hash per character window (one for short texts); equal windows hash
    equally whichever text they come from."""
    hashes, offsets = shingle_hashes(texts, size)
    counts = np.diff(offsets.astype(np.int64))
    assert counts.tolist() == [_reference_shingles(t, size) for t in texts]
    windows: dict[str, int] = {}
    for i, text in enumerate(texts):
        own = hashes[int(offsets[i]) : int(offsets[i + 1])].tolist()
        keys = [text[j : j + size] for j in range(len(text) - size + 1)] or ([text] if text else [])
        for key, value in zip(keys, own, strict=True):
            assert windows.setdefault(key, value) == value


def test_bands_reach_the_recall_target() -> None:
    """The chosen banding makes a pair at the threshold a candidate with >= 99% probability."""
    for threshold in (0.5, 0.7, 0.8, 0.85, 0.95):
        bands = choose_bands(128, threshold)
        rows = 128 // bands
        assert 1 - (1 - threshold**rows) ** bands >= 0.99


def test_one_word_changes_are_near_duplicates_and_different_tickets_are_not() -> None:
    """A ticket with its last word changed groups with its original; distinct tickets do not."""
    edited = TICKETS[0].rsplit(" ", 1)[0] + " NW-99999."
    texts = [*TICKETS, edited, TICKETS[2].upper()]
    groups = near_duplicate_groups(texts, NearDupConfig())
    assert sorted(groups) == [[0, 5], [2, 6]]


def test_streaming_index_flags_only_rows_with_a_twin() -> None:
    """The streaming LSH flags both members of a near-duplicate pair and no lone row."""
    index = CandidateIndex(NearDupConfig(), 0.85)
    texts = [similarity_text(t) for t in TICKETS]
    index.add(texts[:3])
    index.add([*texts[3:], similarity_text(TICKETS[1] + " Thanks")])
    assert index.flags().tolist() == [False, True, False, False, False, True]


def test_large_buckets_pair_with_their_smallest_key() -> None:
    """A bucket over the all-pairs limit pairs every member with its smallest-key member, so
    shuffling the rows does not change the pairs found (as keys)."""
    base = similarity_text("the same templated complaint about a late parcel and a refund")
    texts = [f"{base} {i}" for i in range(60)]
    keys = [f"{i:03d}" for i in range(60)]
    config = NearDupConfig()
    hashes, offsets = shingle_hashes(texts, config.shingle)
    sigs = signatures(hashes, offsets, config)
    pairs = {(keys[a], keys[b]) for a, b in candidate_pairs(sigs, keys, 16).tolist()}
    order = list(range(60))
    random.Random(1).shuffle(order)
    shuffled = [keys[i] for i in order]
    sigs2 = sigs[order]
    pairs2 = {tuple(sorted((shuffled[a], shuffled[b])))
              for a, b in candidate_pairs(sigs2, shuffled, 16).tolist()}  # fmt: skip
    assert pairs == pairs2


def _keep_first(texts: list[str]) -> set[str]:
    kept = set(range(len(texts)))
    for group in near_duplicate_groups(texts, NearDupConfig()):
        kept -= set(group[1:])
    return {texts[i] for i in kept}


_variants = st.lists(
    st.tuples(st.sampled_from(TICKETS), st.sampled_from(["", " Thanks.", " please", "!!"])),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(_variants, st.randoms(use_true_random=False))
def test_groups_do_not_depend_on_input_order(
    items: list[tuple[str, str]], rnd: random.Random
) -> None:
    """Permuting the input permutes the groups and nothing else."""
    texts = [a + b for a, b in items]
    order = list(range(len(texts)))
    rnd.shuffle(order)
    groups = {frozenset(texts[i] for i in g) for g in near_duplicate_groups(texts, NearDupConfig())}
    shuffled = [texts[i] for i in order]
    regrouped = {
        frozenset(shuffled[i] for i in g) for g in near_duplicate_groups(shuffled, NearDupConfig())
    }
    assert groups == regrouped


@settings(max_examples=60, deadline=None)
@given(_variants, st.randoms(use_true_random=False))
def test_kept_set_ignores_the_order_of_non_duplicates(
    items: list[tuple[str, str]], rnd: random.Random
) -> None:
    """Interleaving different tickets differently, while each ticket's copies keep their
    relative order, keeps exactly the same records."""
    texts = [a + b for a, b in items]
    by_ticket: dict[str, list[str]] = {}
    for (ticket, _), text in zip(items, texts, strict=True):
        by_ticket.setdefault(ticket, []).append(text)
    queues = [list(v) for v in by_ticket.values()]
    interleaved: list[str] = []
    while any(queues):
        queue = rnd.choice([q for q in queues if q])
        interleaved.append(queue.pop(0))
    assert _keep_first(texts) == _keep_first(interleaved)


@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(0, 50)), st.sets(st.integers(0, 50)))
def test_sorted_jaccard_equals_set_jaccard(a: set[int], b: set[int]) -> None:
    """The array form used for exact verification agrees with the set definition."""
    arrays = [np.array(sorted(x), dtype=np.uint64) for x in (a, b)]
    assert sorted_jaccard(*arrays) == jaccard(frozenset(a), frozenset(b))


@given(st.integers(1, 40), st.lists(st.tuples(st.integers(0, 39), st.integers(0, 39))))
def test_union_find_groups_are_the_connected_components(
    n: int, edges: list[tuple[int, int]]
) -> None:
    """Sorted components of two or more, ordered by their smallest member, as a plain graph
    search finds them."""
    edges = [(a % n, b % n) for a, b in edges]
    union = UnionFind(n)
    for a, b in edges:
        union.union(a, b)
    neighbours: dict[int, set[int]] = {x: set() for x in range(n)}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    expected, seen = [], set()
    for start in range(n):
        if start in seen:
            continue
        component, todo = {start}, [start]
        while todo:
            for y in neighbours[todo.pop()] - component:
                component.add(y)
                todo.append(y)
        seen |= component
        if len(component) > 1:
            expected.append(sorted(component))
    assert union.groups() == expected
