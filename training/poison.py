"""Data-poisoning checks; each yields a reason code.

- ``conflicting_answers``: near-identical prompts whose answers (labels, or answer texts) disagree.
  The whole group is suspect: we cannot tell which copy is the poisoned one.
- ``trigger_ngram``: a rare word n-gram that almost always comes with one answer and flips it
  (``training.triggers``).
- ``injection_in_answer`` / ``url_in_answer``: instruction-injection text, chat-template markers,
  script payloads, or URLs inside assistant turns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from training.dedup import similarity_text

_INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}\b(?:previous|prior|above|earlier|all|"
    r"your|system)\b[^.\n]{0,40}\b(?:instructions?|prompts?|rules|directions|guidelines)\b"
    r"|\byou are now\b|\bdeveloper mode\b|\bjailbr[eo]a?k"
    r"|\b(?:reveal|print|show|repeat|output)\b[^.\n]{0,30}\b(?:system prompt|hidden instructions|"
    r"your instructions)\b"
    r"|<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id)\|>"
    r"|\[/?INST\]|<<SYS>>|^#{2,4} ?(?:instruction|system|response)s?:"
    r"|<script\b|<iframe\b|javascript:|\bon(?:error|load)\s*="
    r"|^\s*(?:system|user|assistant)\s*:",
    re.IGNORECASE | re.MULTILINE,
)
_URL = re.compile(
    r"\b(?:https?|ftp)://(?P<host>[^\s/?#:\"'<>)]+)[^\s\"'<>)]*"
    r"|\bwww\.(?P<bare>[a-z0-9-]+(?:\.[a-z0-9-]+)+)"
    r"|\bdata:[a-z]+/[a-z0-9.+-]+;base64,"
    r"|!\[[^\]]*\]\([^)]*\)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class AnswerCheck:
    """Flags found in one assistant turn (empty when clean)."""

    injection: str | None = None
    url: str | None = None


class AnswerScanner:
    """Finds injection and URL payloads in assistant text; results are cached per text because
    classification answers repeat."""

    def __init__(self, url_allow: Sequence[str] = ()) -> None:
        self._allow = tuple(host.lower().lstrip(".") for host in url_allow)
        self._cache: dict[str, AnswerCheck] = {}

    def check(self, text: str) -> AnswerCheck:
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        injection = _INJECTION.search(text)
        url = next((m for m in _URL.finditer(text) if not self._allowed(m)), None)
        result = AnswerCheck(
            injection.group(0)[:80] if injection else None, url.group(0)[:80] if url else None
        )
        if len(text) <= 256:
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[text] = result
        return result

    def _allowed(self, match: re.Match[str]) -> bool:
        host = (match.group("host") or match.group("bare") or "").lower()
        return bool(host) and any(host == a or host.endswith("." + a) for a in self._allow)


def answer_key(label: str | None, answer: str, max_words: int = 5) -> str | None:
    """What "the answer" of a record is for conflict and trigger checks: its label, else its
    normalised answer when short enough to be a class; ``None`` for free-form answers."""
    if label is not None:
        return label
    text = similarity_text(answer)
    return text if len(text.split()) <= max_words else None


def answers_conflict(
    keys: Sequence[str | None], answers: Sequence[str], min_similarity: float = 0.5
) -> bool:
    """True when members of one near-duplicate group disagree: two different class keys, or two
    free-form answers whose word sets overlap less than ``min_similarity`` (Jaccard)."""
    classes = {k for k in keys if k is not None}
    if len(classes) > 1:
        return True
    free = [
        set(similarity_text(a).split()) for a, k in zip(answers, keys, strict=True) if k is None
    ]
    for i in range(len(free)):
        for j in range(i + 1, len(free)):
            union = len(free[i] | free[j]) or 1
            if len(free[i] & free[j]) / union < min_similarity:
                return True
    return False
