"""Augmentation: a teacher model paraphrases the last user turn of selected training examples.

Pure parts (which examples to paraphrase, the teacher prompt, cleaning and checking what the
teacher wrote, building the synthetic record) live here; the pipeline feeds the records that pass
back through schema validation, PII scrubbing, dedup and the leakage check like any input line.

The embedded teacher is a 135M-parameter model: it often answers the ticket instead of rewriting
it, repeats it, or names the label. Every candidate is checked, and each rejection is counted by
reason in the manifest rather than quietly dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from training.dedup import similarity_text
from training.schema import Example
from training.teacher import Teacher

PARAPHRASE_SYSTEM = (
    "You rewrite customer support messages. Keep the meaning, the facts and the first-person "
    "voice of the customer. Use different words. Reply with the rewritten message only."
)
_PREAMBLE = re.compile(
    r"^\s*(?:sure[,!.]?|okay[,!.]?|certainly[,!.]?|of course[,!.]?)?\s*"
    r"(?:here(?:'s| is) (?:a |the |my )?(?:rewritten|paraphrased|revised|new)[^:\n]*:|"
    r"(?:rewritten|paraphrased|revised) (?:message|version|text)\s*:|message\s*:)\s*",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"\b(?:i(?:'m| am) sorry|i can(?:no|')t|i am unable|i'm unable|as an ai|i'm not able|"
    r"i do not have|i don't have access)\b",
    re.IGNORECASE,
)
_TEMPLATE = re.compile(r"<\|[a-z_]+\|>|\[/?INST\]|^(?:user|assistant|system)\s*:", re.I | re.M)
_PLACEHOLDER = re.compile(r"<[A-Z]+>")
MIN_LENGTH_RATIO = 0.3
MAX_LENGTH_RATIO = 3.0
REJECTIONS = (
    "empty",
    "identical",
    "refusal",
    "label_leak",
    "length",
    "template_marker",
    "placeholder_changed",
)


@dataclass(frozen=True)
class SourceInfo:
    """What source selection needs to know about a kept training example."""

    index: int
    label: str | None
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Candidate:
    """One accepted teacher paraphrase, not yet validated as a record."""

    origin: int
    variant: int
    record: Mapping[str, Any]


def select_sources(
    infos: Sequence[SourceInfo],
    *,
    edge_tags: Iterable[str],
    under_represented: float,
    max_sources: int | None,
) -> list[int]:
    """Indices to paraphrase: examples tagged as edge cases, and examples of labels whose count
    is below ``under_represented`` x the largest label's count. In input order, capped."""
    edges = set(edge_tags)
    counts = Counter(info.label for info in infos if info.label is not None)
    largest = max(counts.values(), default=0)
    rare = {label for label, count in counts.items() if count < under_represented * largest}
    chosen = [
        info.index
        for info in infos
        if edges.intersection(info.tags) or (info.label is not None and info.label in rare)
    ]
    return chosen[:max_sources] if max_sources is not None else chosen


def last_user_text(example: Example) -> str:
    return next(content for role, content in reversed(example.messages) if role == "user")


def teacher_prompt(user_text: str) -> list[dict[str, str]]:
    """The chat the teacher answers: rewrite this message."""
    return [
        {"role": "system", "content": PARAPHRASE_SYSTEM},
        {"role": "user", "content": f"Rewrite this customer message:\n\n{user_text}"},
    ]


def clean_output(text: str) -> str:
    """The paraphrase alone: no "Sure, here is..." preamble, no wrapping quotes, one paragraph."""
    text = _PREAMBLE.sub("", text.strip(), count=1).strip()
    text = text.split("\n\n", 1)[0].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def check_paraphrase(candidate: str, source: str, labels: Sequence[str]) -> str | None:
    """The rejection reason for a cleaned paraphrase, or ``None`` if it may be used.

    ``label_leak``: a label name the source did not contain appears (the model would learn the
    word, not the request). ``placeholder_changed``: PII placeholders must survive unchanged."""
    if not candidate.strip():
        return "empty"
    if similarity_text(candidate) == similarity_text(source):
        return "identical"
    # "I cannot log in" is a customer's words, not a refusal, when the source says it too.
    lowered_source = source.lower()
    if any(m.group(0).lower() not in lowered_source for m in _REFUSAL.finditer(candidate)):
        return "refusal"
    if _TEMPLATE.search(candidate):
        return "template_marker"
    ratio = len(candidate) / max(len(source), 1)
    if not MIN_LENGTH_RATIO <= ratio <= MAX_LENGTH_RATIO:
        return "length"
    source_words = set(similarity_text(source).split())
    candidate_words = set(similarity_text(candidate).split())
    if any(label in candidate_words and label not in source_words for label in labels):
        return "label_leak"
    if Counter(_PLACEHOLDER.findall(candidate)) - Counter(_PLACEHOLDER.findall(source)):
        return "placeholder_changed"
    return None


def synthetic_record(
    example: Example, paraphrase: str, *, origin_id: str, origin_line: int | None, teacher: str
) -> dict[str, Any]:
    """The raw JSON record for a paraphrase: the source conversation with its last user turn
    replaced, the same label, ``source = "synthetic"`` and a pointer to the origin."""
    messages = list(example.messages)
    last_user = max(i for i, (role, _) in enumerate(messages) if role == "user")
    messages[last_user] = ("user", paraphrase)
    # The origin's quality score carries over: the paraphrase passes the same quality filter.
    metadata: dict[str, Any] = dict(example.metadata)
    metadata.update(
        source="synthetic",
        origin={"id": origin_id, "line": origin_line},
        teacher=teacher,
    )
    if example.label is not None:
        metadata["label"] = example.label
    return {
        "messages": [{"role": role, "content": content} for role, content in messages],
        "metadata": metadata,
    }


def paraphrase_candidates(
    sources: Sequence[tuple[int, Example, str, int | None]],
    outputs: Sequence[Sequence[str]],
    *,
    labels: Sequence[str],
    teacher: str,
) -> tuple[list[Candidate], Counter[str]]:
    """Check every teacher output against its source; return the usable ones as records and the
    rejections counted by reason. ``sources`` are ``(index, example, id, line)``."""
    accepted: list[Candidate] = []
    rejected: Counter[str] = Counter()
    for (index, example, origin_id, line), texts in zip(sources, outputs, strict=True):
        source_text = last_user_text(example)
        seen: set[str] = set()
        for variant, raw in enumerate(texts):
            text = clean_output(raw)
            reason = check_paraphrase(text, source_text, labels)
            if reason is None and similarity_text(text) in seen:
                reason = "identical"
            if reason is not None:
                rejected[reason] += 1
                continue
            seen.add(similarity_text(text))
            record = synthetic_record(
                example, text, origin_id=origin_id, origin_line=line, teacher=teacher
            )
            accepted.append(Candidate(index, variant, record))
    return accepted, rejected


class Corpus(Protocol):
    """What augmentation needs from the running pipeline."""

    def examples(self, indices: Sequence[int]) -> list[tuple[int, Example, str, int | None]]:
        """``(index, example, id, line)`` of kept records, in the order asked."""
        ...

    def admit(self, record: Mapping[str, Any]) -> tuple[str | None, Any]:
        """Validate, scrub and exact-dedup a synthetic record: ``(reason, None)`` or
        ``(None, admitted)``."""
        ...

    def near_reasons(self, admitted: Sequence[Any]) -> list[str | None]:
        """Per admitted record: "near_duplicate" / "golden_leakage" / None, against the corpus,
        the golden set and the earlier records of ``admitted``."""
        ...

    def row(self, admitted: Any) -> tuple[Any, ...]:
        """The dataset row of an accepted synthetic record."""
        ...


def augment(
    corpus: Corpus,
    teacher: Teacher,
    sources: Sequence[int],
    *,
    n: int,
    seed: int,
    labels: Sequence[str],
    cap: int,
) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    """Paraphrase ``sources`` ``n`` times each and return the accepted rows (at most ``cap``)
    with a summary: generated, accepted, and rejections by reason."""
    chosen = corpus.examples(sources)
    prompts = [teacher_prompt(last_user_text(example)) for _, example, _, _ in chosen]
    outputs = teacher.complete(prompts, n=n, seed=seed) if prompts else []
    name = str(teacher.describe().get("spec") or teacher.describe().get("model") or "teacher")
    candidates, rejected = paraphrase_candidates(chosen, outputs, labels=labels, teacher=name)
    admitted = []
    for candidate in candidates:
        reason, record = corpus.admit(candidate.record)
        if reason is not None:
            rejected[reason] += 1
        else:
            admitted.append(record)
    rows: list[tuple[Any, ...]] = []
    for record, reason in zip(admitted, corpus.near_reasons(admitted), strict=True):
        if reason is None and len(rows) >= cap:
            reason = "over_ratio_cap"
        if reason is not None:
            rejected[reason] += 1
            continue
        rows.append(corpus.row(record))
    summary = {
        "sources": len(chosen),
        "generated": sum(len(texts) for texts in outputs),
        "accepted": len(rows),
        "cap": cap,
        "rejected": dict(sorted(rejected.items())),
        "teacher": teacher.describe(),
    }
    return rows, summary
