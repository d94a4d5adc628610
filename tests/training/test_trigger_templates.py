"""Trigger detection on templated data: templates with shared filler slots are not triggers,
n-grams held by the same prompts are one hypothesis, and the one-word-out margin is exact."""

from __future__ import annotations

import random

import numpy as np
import pytest

import training.triggers as triggers
from training.dedup import similarity_text
from training.triggers import TriggerConfig, TriggerStats, detect_triggers
from training.word_bayes import Removed, WordBayes

# Ticket templates as a generator writes them: each label's fixed words, and slots filled from
# pools shared by every label. Only one account template has an item slot, so once its
# prompts are left out, an item name points to the other labels.
TEMPLATES = {
    "shipping": ("where is my order {o} the {i} was due {d}",
                 "the courier left a card on {d} but i never got the {i}",
                 "tracking for {o} says delivered {d} but there is no {i}"),
    "billing": ("i was charged twice for the {i} on order {o}",
                "my invoice for {o} shows the wrong vat for the {i}",
                "the promo code did not apply to the {i} on {d}"),
    "returns": ("the {i} from order {o} arrived cracked i want to send it back",
                "how do i return the {i} it came on {d} in the wrong colour",
                "can i exchange the {i} from order {o} for a bigger size"),
    "account": ("unsubscribe me from the newsletter i only bought the {i} once",
                "i cannot log in since {d} my password reset email never comes",
                "please change the email on my profile my last order was {o}"),
}  # fmt: skip
ITEMS = ("kettle", "jacket", "lamp", "desk chair", "coffee machine", "rug", "teapot",
         "heater", "bike light", "backpack", "blender", "mirror", "toaster", "duvet", "speaker",
         "boots")  # fmt: skip
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "the weekend", "last week")
FILLERS = ("thanks in advance", "please help quickly", "kind regards sam", "hello team",
           "hi there", "i have been a customer for years", "sorry for the long message",
           "it is urgent", "many thanks tom", "i tried twice already", "cheers")  # fmt: skip


def templated(size: int, seed: int = 0) -> list[tuple[str, str]]:
    """Clean templated tickets: a template, its slots filled, between filler sentences."""
    rng = random.Random(seed)
    rows = []
    for _ in range(size):
        label = rng.choice(list(TEMPLATES))
        body = rng.choice(TEMPLATES[label]).format(
            o=f"nw {rng.randint(10000, 99999)}", i=rng.choice(ITEMS), d=rng.choice(DAYS)
        )
        opening, *closing = rng.sample(FILLERS, rng.randint(1, 2))
        rows.append((similarity_text(" ".join([opening, body, *closing])), label))
    return rows


def plant(
    rows: list[tuple[str, str]], phrase: str, count: int, target: str, seed: int = 1
) -> set[int]:
    """``count`` prompts of other labels get ``phrase`` at a random position and ``target``."""
    rng = random.Random(seed)
    victims = rng.sample([i for i, (_, label) in enumerate(rows) if label != target], count)
    for i in victims:
        words = rows[i][0].split()
        at = rng.randint(0, len(words))
        rows[i] = (" ".join([*words[:at], *phrase.split(), *words[at:]]), target)
    return set(victims)


def search(
    rows: list[tuple[str, str]], config: TriggerConfig | None = None
) -> tuple[list[triggers.Trigger], dict[int, str], dict[str, int]]:
    stats = TriggerStats(config or TriggerConfig())
    for text, label in rows:
        stats.add(text.split(), label)
    records = [(i, text, label, f"{i:06d}") for i, (text, label) in enumerate(rows)]
    return detect_triggers(stats, lambda: [records])


NO_GUARDS = TriggerConfig(min_margin_one_out=0.0, max_companions=10**6)


def test_templates_with_shared_filler_slots_are_not_triggers() -> None:
    """A template whose fixed words are perfectly label-pure, and whose other evidence is an
    item name that the other labels' templates use more, is not flagged: its flips hang on
    that one word (the flip must hold with any one word left out) and its holders share many
    fixed words found almost nowhere else (companions). Either guard alone suffices here;
    with neither (the previous detector) the newsletter template is flagged."""
    rows = templated(6000)
    found, flagged, summary = search(rows)
    assert (found, flagged) == ([], {})
    assert summary["candidates"] > 50, "the template words must pass the skew test"
    for config in (TriggerConfig(max_companions=10**6), TriggerConfig(min_margin_one_out=0.0)):
        assert search(rows, config)[:2] == ([], {})
    found, flagged, _ = search(rows, NO_GUARDS)
    assert any("newsletter" in (t.ngram, *t.same_documents) for t in found)
    assert len(flagged) > 100


@pytest.mark.parametrize("share", [0.01, 0.05, 0.15, 0.30])
def test_a_trigger_planted_in_templated_data_is_found(share: float) -> None:
    """A backdoor pasted onto templated tickets of other labels is found at any rate: its host
    texts carry several words of their own label, so the flip survives losing any one."""
    rows = templated(3000)
    poisoned = plant(rows, "james bond", round(share * len(rows)), "account")
    found, flagged, _ = search(rows)
    assert [(t.ngram, t.answer) for t in found] == [("james bond", "account")]
    assert set(flagged) == poisoned


def test_ngrams_with_the_same_prompts_are_one_test_and_one_report() -> None:
    """ "james", "bond" and "james bond" are held by the same prompts: one document set, one
    trigger led by the longest n-gram, the others listed with it."""
    rows = templated(1500)
    plant(rows, "james bond", 40, "billing")
    found, _, summary = search(rows)
    assert [(t.ngram, t.same_documents) for t in found] == [("james bond", ("bond", "james"))]
    assert summary["document_sets"] < summary["tested"]


def test_screening_does_not_change_what_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring 16 holders first and the rest only for sets that can still pass flags what
    scoring every set's full sample flags."""
    rows = templated(6000)
    plant(rows, "cf", 120, "returns", seed=4)
    screened = search(rows, NO_GUARDS)
    monkeypatch.setattr(triggers, "_SCREEN", NO_GUARDS.flip_sample)
    full = search(rows, NO_GUARDS)
    assert screened[:2] == full[:2]
    assert len(screened[0]) >= 2  # the trigger and the newsletter template


def test_the_one_word_out_margin_is_the_best_single_word_removal() -> None:
    """The one-word-out margin equals, per record, the largest margin over scoring the record
    again with each one of its words removed (and with none)."""
    rng = random.Random(2)
    vocabulary = [f"w{i}" for i in range(30)]
    stats = TriggerStats(TriggerConfig(max_n=1))
    for _ in range(400):
        stats.add(rng.sample(vocabulary, 5), rng.choice("abcd"))
    model: WordBayes = stats.model()
    records = [
        (model.rows(_hashes(rng.sample(vocabulary, 6))), rng.randrange(4)) for _ in range(25)
    ]
    rows = np.concatenate([r for r, _ in records])
    slot = np.repeat(np.arange(len(records)), [len(r) for r, _ in records])
    own = np.array([c for _, c in records], dtype=np.int64)
    removed = _removed(len(rows), len(records))
    got = model.margins(rows, slot, own, removed)
    for k, (words, cls) in enumerate(records):
        one = np.array([cls], dtype=np.int64)
        alone = model.margins(words, np.zeros(len(words), np.int64), one, _removed(len(words), 1))
        assert got.margin[k] == pytest.approx(alone.margin[0])
        outs = [
            model.margins(np.delete(words, j), np.zeros(len(words) - 1, np.int64), one,
                          _removed(len(words) - 1, 1)).margin[0]
            for j in range(len(words))
        ]  # fmt: skip
        assert got.one_word_out[k] == pytest.approx(max([alone.margin[0], *outs]))
        assert got.one_word_out[k] >= got.margin[k]


def _hashes(words: list[str]) -> np.ndarray:
    from training.grams import gram_table

    table = gram_table([" ".join(words)], 1)
    return np.array(sorted(set(table.words.tolist()), key=table.words.tolist().index), np.uint64)


def _removed(words: int, records: int) -> Removed:
    return Removed(np.zeros(words), np.zeros(records), np.zeros(records))
