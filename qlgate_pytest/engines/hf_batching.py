"""Batch planning for the ``hf`` engine: pure functions over token-id lists, no torch.

Batches are sized by a token budget rather than a count: a forward pass costs about
``rows x padded width``, so short prompts travel in large batches and long ones in small ones.
Requests are sorted by length first, so the padding in a batch is small. The plan depends only on
the requests, never on the role, so both roles see identical batches (identical numerics for the
paired comparison).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

# A shared prefix shorter than this is not worth a separate forward pass and a cache copy.
MIN_SHARED_PREFIX = 16


def common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every row starts with."""
    if not rows:
        return 0
    first = rows[0]
    n = min(len(r) for r in rows)
    for row in rows[1:]:
        i = 0
        while i < n and row[i] == first[i]:
            i += 1
        n = i
    return n


def shared_prefix_len(rows: Sequence[Sequence[int]], minimum: int = MIN_SHARED_PREFIX) -> int:
    """The prefix to compute once for ``rows``: common, leaving every row >= 1 own token; or 0."""
    if len(rows) < 2:
        return 0
    n = min(common_prefix_len(rows), min(len(r) for r in rows) - 1)
    return n if n >= minimum else 0


def plan_batches(
    widths: Sequence[int],
    *,
    max_tokens: int,
    min_rows: int,
    groups: Sequence[Hashable] | None = None,
    tie_break: Sequence[str] | None = None,
) -> list[list[int]]:
    """Indices into ``widths`` in batches: same group, sorted by width, rows x widest <= budget.

    A batch always takes at least ``min_rows`` rows (when that many remain in its group), so a
    tiny budget degrades to fixed-size batches. ``widths`` are each request's padded cost in
    tokens (prompt plus what the pass appends).
    """
    keys = list(groups) if groups is not None else [0] * len(widths)
    ties = list(tie_break) if tie_break is not None else [""] * len(widths)
    first_seen: dict[Hashable, int] = {}
    for i, key in enumerate(keys):
        first_seen.setdefault(key, i)
    order = sorted(range(len(widths)), key=lambda i: (first_seen[keys[i]], widths[i], ties[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current:
            same_group = keys[current[0]] == keys[i]
            widest = max(widths[current[-1]], widths[i])  # sorted: the newest is the widest
            fits = (len(current) + 1) * widest <= max_tokens or len(current) < min_rows
            if not same_group or not fits:
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """(ids, mask): rows padded on the left to the widest, so every row ends at the same column."""
    width = max((len(r) for r in rows), default=0)
    ids = [[pad_id] * (width - len(r)) + list(r) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return ids, mask


def best_index(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the earlier label, deterministically."""
    best = 0
    for j, value in enumerate(scores):
        if value > scores[best]:
            best = j
    return best


def cut(row: Sequence[int], budget: int, pad_id: int, eos_ids: frozenset[int]) -> list[int]:
    """Generated tokens up to and including the first end token, within ``budget``."""
    out: list[int] = []
    for token in row[:budget]:
        if token == pad_id and token not in eos_ids:
            break
        out.append(token)
        if token in eos_ids:
            break
    return out
