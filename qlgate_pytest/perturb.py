"""Seeded perturbations of a ticket that must not change its label, and flip rates over them.

A robust router answers "wher is my order NW-48213" like "Where is my order NW-48213?". Each kind
of perturbation changes only surface form: casing, whitespace, punctuation, one typo, or one
entity name swapped for another of the same kind (a person, a city, a product). Tokens that carry
identifiers (anything with a digit, ``@``, ``/`` or ``#``, such as order numbers) are never
touched, because changing them could change what the ticket is about.

Generation uses ``random.Random(seed)`` rather than hypothesis strategies: a gate run needs the
same perturbations on every machine and every run, and hypothesis draws are neither meant to be
replayed outside a test nor stable across its versions. The test suite uses hypothesis to check
the properties instead (deterministic, never empty, identifiers intact, never the original).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

KINDS: tuple[str, ...] = ("casing", "whitespace", "punctuation", "typo", "entity")

# Small, unambiguous lists: no name that is also a common word ("May", "Chase", "Bill").
ENTITIES: Mapping[str, tuple[str, ...]] = {
    "person": (
        "Alice", "Priya", "Chen", "Fatima", "Lukas", "Sofia", "Omar", "Emma",
        "Daniel", "Maria", "Kenji", "Olivia", "Mateo", "Aisha", "Jonas",
    ),
    "city": (
        "London", "Paris", "Berlin", "Madrid", "Chicago", "Toronto", "Sydney", "Mumbai",
        "Lisbon", "Denver", "Seattle", "Boston", "Dublin", "Oslo", "Vienna",
    ),
    "product": (
        "blender", "kettle", "backpack", "desk lamp", "yoga mat", "coffee grinder",
        "rain jacket", "toaster", "water bottle", "phone charger", "office chair", "air fryer",
    ),
}  # fmt: skip

_PROTECTED_TOKEN = re.compile(r"\S*[\d@/#]\S*")  # \d: any script's digits
_WHITESPACE = re.compile(r"\s+")
_TRAILING_PUNCT = re.compile(r"[.!?]+\s*$")
_TYPO_WORD = re.compile(r"[A-Za-z]{4,}")
# One adjacent key per letter on a QWERTY keyboard, for the "hit the key next to it" typo.
_NEIGHBOURS = dict(zip("qwertyuiopasdfghjklzxcvbnm", "wertyuioposdfghjklkxcvbnmn", strict=True))
_ENTITY_PATTERNS = {
    (kind, name): re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")
    for kind, names in ENTITIES.items()
    for name in names
}


@dataclass(frozen=True)
class Perturbation:
    """One perturbed text and the kind of change that made it."""

    kind: str
    text: str


@dataclass(frozen=True)
class _Text:
    """A text with the spans (start, end) that perturbations must leave byte-identical."""

    text: str
    protected: tuple[tuple[int, int], ...]

    def free(self, start: int, end: int) -> bool:
        return all(end <= a or start >= b for a, b in self.protected)

    def map_free(self, fn: Callable[[str], str]) -> str:
        """``fn`` applied to every stretch of text outside the protected spans."""
        out, pos = [], 0
        for a, b in self.protected:
            out += [fn(self.text[pos:a]), self.text[a:b]]
            pos = b
        out.append(fn(self.text[pos:]))
        return "".join(out)


def _splice(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


def _casing(t: _Text, rng: random.Random) -> str | None:
    variants = [t.map_free(str.lower), t.map_free(str.upper), _swap_first_cased(t)]
    changed = [v for v in variants if v is not None and v != t.text]
    return rng.choice(changed) if changed else None


def _swap_first_cased(t: _Text) -> str | None:
    for i, ch in enumerate(t.text):
        if ch.swapcase() != ch and len(ch.swapcase()) == 1 and t.free(i, i + 1):
            return _splice(t.text, i, i + 1, ch.swapcase())
    return None


def _whitespace(t: _Text, rng: random.Random) -> str | None:
    runs = [
        m.span() for m in _WHITESPACE.finditer(t.text) if m.start() > 0 and m.end() < len(t.text)
    ]
    options = ["  " + t.text, t.text + " ", t.text + "\n"]
    if runs:
        start, end = rng.choice(runs)
        # Interior changes are likelier to reach the model: engines often strip the ends.
        options += [_splice(t.text, start, end, ws) for ws in ("  ", "\n", "\t", " \n ")] * 2
    return rng.choice([o for o in options if o != t.text])


def _punctuation(t: _Text, rng: random.Random) -> str | None:
    options: list[str] = []
    trailing = _TRAILING_PUNCT.search(t.text)
    if trailing and t.free(*trailing.span()) and t.text[: trailing.start()].strip():
        options.append(t.text[: trailing.start()])
    body = t.text.rstrip()
    options += [body + mark for mark in ("!", "?", "...") if not body.endswith(mark)]
    commas = [i for i, ch in enumerate(t.text) if ch == "," and t.free(i, i + 1)]
    if commas:
        i = rng.choice(commas)
        options.append(_splice(t.text, i, i + 1, ""))
    word_ends = [
        m.end() for m in re.finditer(r"[A-Za-z]+(?=\s+\S)", t.text) if t.free(m.start(), m.end())
    ]
    if word_ends:
        i = rng.choice(word_ends)
        options.append(_splice(t.text, i, i, ","))
    options = [o for o in options if o.strip()]  # "," minus its comma is no ticket
    return rng.choice(options) if options else None


def _typo(t: _Text, rng: random.Random) -> str | None:
    words = [m for m in _TYPO_WORD.finditer(t.text) if t.free(m.start(), m.end())]
    if not words:
        return None
    word = rng.choice(words)
    w, start = word.group(), word.start()
    i = rng.randrange(1, len(w) - 1)  # interior letters: first and last stay, as in real typos
    edits = [w[:i] + w[i + 1 :], w[:i] + w[i] + w[i:]]  # drop / double a letter
    if w[i] != w[i + 1]:
        edits.append(w[:i] + w[i + 1] + w[i] + w[i + 2 :])  # swap neighbours
    near = _NEIGHBOURS.get(w[i].lower())
    if near and near != w[i].lower():
        edits.append(w[:i] + (near.upper() if w[i].isupper() else near) + w[i + 1 :])
    return _splice(t.text, start, word.end(), rng.choice(edits))


def _entity(t: _Text, rng: random.Random) -> str | None:
    found: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for key, pattern in _ENTITY_PATTERNS.items():
        spans = [m.span() for m in pattern.finditer(t.text) if t.free(*m.span())]
        if spans:
            found[key] = spans
    if not found:
        return None
    kind, name = rng.choice(sorted(found))
    # A name already in the text would merge two different entities into one: never pick it.
    others = [n for n in ENTITIES[kind] if n != name and (kind, n) not in found]
    if not others:
        return None
    new = rng.choice(others)
    text = t.text
    for start, end in sorted(found[(kind, name)], reverse=True):
        text = _splice(text, start, end, new)
    return text


_MAKERS: dict[str, Callable[[_Text, random.Random], str | None]] = {
    "casing": _casing,
    "whitespace": _whitespace,
    "punctuation": _punctuation,
    "typo": _typo,
    "entity": _entity,
}


def perturb(text: str, n: int, seed: int) -> list[Perturbation]:
    """``n`` perturbations of ``text``, the same for the same ``seed`` on every machine.

    Kinds rotate from a seeded start over the kinds that apply to this text (a text without an
    entity name gets no entity swap), so ``n >= 5`` covers every applicable kind. Each result
    differs from ``text``; results avoid repeating each other where the text allows.
    """
    if n < 0:
        raise ValueError(f"perturbation count n must be >= 0, got {n}")
    if not text.strip():
        raise ValueError("cannot perturb a blank text")
    t = _Text(text, tuple(m.span() for m in _PROTECTED_TOKEN.finditer(text)))
    rng = random.Random(seed)
    # Probe each kind on its own generator so the choice of kinds does not shift later draws.
    probe = random.Random(seed)
    applicable = [k for k in KINDS if _MAKERS[k](t, probe) is not None]
    offset = rng.randrange(len(applicable))  # whitespace and punctuation always apply
    out: list[Perturbation] = []
    seen = {text}
    for i in range(n):
        kind = applicable[(offset + i) % len(applicable)]
        candidate: str | None = None
        for _ in range(8):
            made = _MAKERS[kind](t, rng)
            if made is not None and made != text and made.strip():
                candidate = made
                if made not in seen:
                    break
        if candidate is None:  # applicable kinds always change the text; a bug if reached
            raise AssertionError(f"perturbation {kind!r} failed on {text!r}")
        seen.add(candidate)
        out.append(Perturbation(kind, candidate))
    return out


def perturb_conversation(
    messages: Sequence[Mapping[str, str]], n: int, seed: int
) -> list[tuple[Perturbation, list[dict[str, str]]]]:
    """``n`` copies of a conversation whose last user turn is perturbed (the system prompt and
    earlier turns are the task, not the ticket, and stay as they are)."""
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise ValueError("the conversation has no user turn to perturb")
    last = users[-1]
    out = []
    for p in perturb(messages[last]["content"], n, seed):
        copy = [dict(m) for m in messages]
        copy[last]["content"] = p.text
        out.append((p, copy))
    return out


def case_seed(case_id: str, seed: int) -> int:
    """A per-case seed that is stable across processes (``hash()`` is salted per process)."""
    digest = hashlib.sha256(f"{seed}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# --- flip rates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleRobustness:
    """One role's prediction on the original text and on each perturbation of it."""

    original: str | None
    perturbed: tuple[str | None, ...]


@dataclass(frozen=True)
class RobustnessCase:
    """A label case run with perturbations; ``kinds[i]`` made the i-th perturbed prediction."""

    case_id: str
    tags: tuple[str, ...]
    kinds: tuple[str, ...]
    candidate: RoleRobustness
    baseline: RoleRobustness | None = None


@dataclass(frozen=True)
class FlipRate:
    """How often perturbing the input changed the prediction."""

    flips: int
    total: int  # perturbed predictions
    cases: int
    cases_flipped: int

    @property
    def rate(self) -> float:
        return self.flips / self.total if self.total else 0.0

    def upper(self, confidence: float) -> float:
        """Upper bound of the flip rate's exact (Clopper-Pearson) interval at ``confidence``:
        the highest rate these observations cannot rule out. It treats perturbed answers as
        independent; perturbations of one case share its difficulty, so a few cases with many
        perturbations each understate the bound's true width (``cases`` says how many)."""
        from qlgate_core.stats import clopper_pearson

        return clopper_pearson(self.flips, self.total, confidence)[1]


@dataclass(frozen=True)
class FlipReport:
    """Flip rates per role (``candidate``/``baseline``), overall, per slice tag and per kind."""

    overall: Mapping[str, FlipRate]
    by_slice: Mapping[str, Mapping[str, FlipRate]]
    by_kind: Mapping[str, Mapping[str, FlipRate]]


def _rate(rows: Sequence[tuple[int, int]]) -> FlipRate:
    return FlipRate(
        flips=sum(f for f, _ in rows),
        total=sum(t for _, t in rows),
        cases=len(rows),
        cases_flipped=sum(1 for f, _ in rows if f),
    )


def flip_rates(cases: Sequence[RobustnessCase]) -> FlipReport:
    """Flip = a perturbed prediction that differs from the same role's original prediction."""
    overall: dict[str, list[tuple[int, int]]] = {}
    slices: dict[str, dict[str, list[tuple[int, int]]]] = {}
    kinds: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for case in cases:
        roles = {"candidate": case.candidate, "baseline": case.baseline}
        for role, result in roles.items():
            if result is None:
                continue
            if len(result.perturbed) != len(case.kinds):
                raise ValueError(
                    f"case {case.case_id}: {role} has {len(result.perturbed)} perturbed "
                    f"predictions for {len(case.kinds)} perturbations"
                )
            flipped = [p != result.original for p in result.perturbed]
            row = (sum(flipped), len(flipped))
            overall.setdefault(role, []).append(row)
            for tag in dict.fromkeys(case.tags):
                slices.setdefault(tag, {}).setdefault(role, []).append(row)
            for kind in dict.fromkeys(case.kinds):
                hits = [f for f, k in zip(flipped, case.kinds, strict=True) if k == kind]
                kinds.setdefault(kind, {}).setdefault(role, []).append((sum(hits), len(hits)))
    return FlipReport(
        overall={role: _rate(rows) for role, rows in overall.items()},
        by_slice={s: {r: _rate(rows) for r, rows in v.items()} for s, v in sorted(slices.items())},
        by_kind={k: {r: _rate(rows) for r, rows in v.items()} for k, v in sorted(kinds.items())},
    )


def flip_rate_violations(
    report: FlipReport, max_flip_rate: float, confidence: float = 0.95
) -> list[str]:
    """Reasons the candidate breaks ``--max-flip-rate``, overall or in any slice; empty if none.

    The rule is on the upper confidence bound at the gate's ``confidence``, as the F1 rule is
    on the lower bound of the gain: 2 flips in 12 answers (rate 0.167) cannot show a flip rate
    below 0.2, since the bound is 0.484, and the gate fails closed."""
    scopes = [("overall", report.overall)] + [
        (f"slice {name!r}", roles) for name, roles in report.by_slice.items()
    ]
    level = f"{confidence * 100:g}%"
    reasons = []
    for scope, roles in scopes:
        cand = roles.get("candidate")
        if cand is None:
            continue
        upper = cand.upper(confidence)
        if upper <= max_flip_rate:
            continue
        base = roles.get("baseline")
        versus = f"; baseline {base.rate:.3f}" if base is not None else ""
        reasons.append(
            f"robustness {scope}: candidate flip rate {cand.rate:.3f} ({cand.flips}/{cand.total} "
            f"perturbed answers changed{versus}), {level} upper bound {upper:.3f}, exceeds "
            f"--max-flip-rate {max_flip_rate:.3f}"
        )
    return reasons


@functools.cache
def _case_adapter() -> Any:
    from pydantic import TypeAdapter  # pydantic only at this I/O boundary

    return TypeAdapter(RobustnessCase)


def robustness_case_to_json(case: RobustnessCase) -> str:
    """One case's perturbed predictions as JSON, for ``report.user_properties`` (xdist)."""
    data: bytes = _case_adapter().dump_json(case)
    return data.decode()


def robustness_case_from_json(text: str) -> RobustnessCase:
    """Inverse of :func:`robustness_case_to_json`; pydantic's ValidationError on bad input."""
    case: RobustnessCase = _case_adapter().validate_json(text)
    return case


def flip_report_to_json(report: FlipReport, confidence: float | None = None) -> dict[str, object]:
    """The report's ``robustness`` section: plain JSON with each rate beside its counts, and,
    given the gate's ``confidence``, its upper confidence bound (``upper``)."""

    def row(v: FlipRate) -> dict[str, object]:
        out: dict[str, object] = {
            "rate": v.rate,
            "flips": v.flips,
            "total": v.total,
            "cases": v.cases,
            "cases_flipped": v.cases_flipped,
        }
        if confidence is not None:
            out["upper"] = v.upper(confidence)
        return out

    def roles(r: Mapping[str, FlipRate]) -> dict[str, object]:
        return {role: row(v) for role, v in sorted(r.items())}

    return {
        "overall": roles(report.overall),
        "by_slice": {k: roles(v) for k, v in report.by_slice.items()},
        "by_kind": {k: roles(v) for k, v in report.by_kind.items()},
    }
