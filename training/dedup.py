"""Duplicate detection: exact (normalised conversation hash) and near (MinHash LSH over character
shingles of the prompt, verified by exact Jaccard).

Near-duplicate search runs in two steps so the whole corpus never needs pairwise work:
1. ``dedup_index.CandidateIndex`` takes prompt signatures (one-permutation MinHash of
   numpy-hashed shingles, ``training.minhash``, computed where the records are admitted), keeps
   one key per LSH band in memory and the signatures on disk, and at the end flags every row
   that shares a band with another.
2. ``near_pairs`` takes only the flagged rows' signatures, bands them in numpy and verifies each
   candidate pair near a threshold with the exact Jaccard of the shingle sets.

Groups are connected components of verified pairs, which depend only on the texts, so the result
does not depend on input order; which member of a group is kept (the first) is the caller's rule.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Hashable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field, with_config

from training.grams import mix
from training.minhash import oph_signatures
from training.sortops import hash_argsort, unique, unique_rows

U64 = npt.NDArray[np.uint64]
_NON_WORD = re.compile(r"[\W_]+")
# Bucket sizes up to this are verified pair by pair; larger ones (hundreds of templated
# messages sharing a band) anchor on their smallest key to stay near-linear.
_ALL_PAIRS_MAX = 32
# Estimates this close to a threshold are settled by the exact Jaccard (about 3 standard
# deviations of a 128-permutation estimate).
_EXACT_MARGIN = 0.1
_SIGNATURE_BATCH = 4096
_ESTIMATE_BATCH = 1024
_BASE = np.uint64(1_000_003)


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class NearDupConfig:
    """MinHash LSH settings: Jaccard threshold, signature length, shingle size and seed."""

    threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.85
    num_perm: Annotated[int, Field(ge=16, le=1024)] = 128
    shingle: Annotated[int, Field(ge=1, le=32)] = 5
    seed: int = 0


def normalize_text(text: str) -> str:
    """Case-folded, NFKC-normalised text with runs of whitespace collapsed: the identity used by
    exact dedup and record ids."""
    cached = _NORMALIZED.get(text)
    if cached is not None:
        return cached
    folded = text if text.isascii() else unicodedata.normalize("NFKC", text)
    result = " ".join(folded.casefold().split())
    # System prompts and class answers repeat on every record; remember the short ones.
    if len(text) <= 1024:
        if len(_NORMALIZED) >= 16384:
            _NORMALIZED.clear()
        _NORMALIZED[text] = result
    return result


_NORMALIZED: dict[str, str] = {}


def conversation_id(messages: Iterable[tuple[str, str]]) -> str:
    """16-hex content hash of the normalised conversation (the dataset's ``id`` column)."""
    joined = "\x1e".join(f"{role}\x1f{normalize_text(content)}" for role, content in messages)
    return hashlib.blake2b(joined.encode(), digest_size=8).hexdigest()


# ASCII bytes -> lower-case letters and digits kept, everything else a space.
_ALNUM = bytes(
    (c + 32 if 65 <= c <= 90 else c) if (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122) else 32
    for c in range(256)
)


def similarity_text(text: str) -> str:
    """Text as compared by near-dup and leakage: letters and digits only, lower case (or the
    normalised text itself when it has no letters or digits, so "???" differs from "!!!")."""
    if text.isascii():
        # bytes.translate is one C pass; the regex below costs several times more.
        words = text.encode().translate(_ALNUM).split()
        if words:
            return b" ".join(words).decode()
        return " ".join(text.lower().split())
    folded = unicodedata.normalize("NFKC", text).casefold()
    found = _NON_WORD.sub(" ", folded).split()
    return " ".join(found) if found else " ".join(folded.split())


def prompt_text(messages: Iterable[tuple[str, str]]) -> str:
    """The user turns joined: what near-dup, poisoning and leakage checks compare."""
    return "\n".join(content for role, content in messages if role == "user")


def shingle_hashes(texts: Sequence[str], size: int) -> tuple[U64, U64]:
    """Hashes of each text's character ``size``-grams as one flat array plus row offsets
    (``offsets[i]:offsets[i+1]`` are text ``i``'s); a text shorter than ``size`` is one shingle.
    Computed with numpy over the batch's code points, so the cost per text is a few array ops."""
    n = len(texts)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
    points = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    span = max(len(points) - size + 1, 0)
    # The polynomial hash of every window of the joined texts, updated in place.
    rolled = points[:span].astype(np.uint64)
    for offset in range(1, size):
        rolled *= _BASE
        rolled += points[offset : offset + span]
    # A text contributes the windows that start and end inside it: those whose first and last
    # characters belong to the same text.
    owner_at = np.repeat(np.arange(n), lengths)
    inside = owner_at[:span] == owner_at[size - 1 :]
    hashes = rolled[inside]
    per_text = np.maximum(lengths - size + 1, 0)
    short = np.flatnonzero((lengths < size) & (lengths > 0))
    counts = per_text.copy()
    if len(short):
        # Short texts hash whole, so "hi" still has a signature and equals only "hi".
        extra = np.array([_whole_hash(texts[int(i)]) for i in short], dtype=np.uint64)
        counts[short] = 1
        owner = owner_at[:span][inside]
        order = np.argsort(np.concatenate([owner, short]), kind="stable")
        hashes = np.concatenate([hashes, extra])[order]
    offsets = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(counts, out=offsets[1:])
    # The polynomial hash of similar shingles is not well spread.
    return mix(hashes), offsets


def _whole_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def choose_bands(num_perm: int, threshold: float, recall: float = 0.99) -> int:
    """The fewest LSH bands (longest rows, fewest false candidates) that still make a pair at
    ``threshold`` a candidate with probability >= ``recall``."""
    for bands in sorted(b for b in range(1, num_perm + 1) if num_perm % b == 0):
        rows = num_perm // bands
        if 1.0 - (1.0 - threshold**rows) ** bands >= recall:
            return bands
    return num_perm


def signatures(hashes: U64, offsets: U64, config: NearDupConfig) -> npt.NDArray[np.uint32]:
    """MinHash signatures (``training.minhash``), one row of ``num_perm`` uint32 per text."""
    return oph_signatures(hashes, offsets, config.num_perm, config.seed)


def text_signatures(texts: Sequence[str], config: NearDupConfig) -> npt.NDArray[np.uint32]:
    """Signatures of similarity texts, hashed batch by batch (the shingle arrays of a whole
    corpus would dwarf the signatures)."""
    parts = [
        signatures(*shingle_hashes(texts[i : i + _SIGNATURE_BATCH], config.shingle), config)
        for i in range(0, len(texts), _SIGNATURE_BATCH)
    ]
    if not parts:
        return np.zeros((0, config.num_perm), dtype=np.uint32)
    return np.concatenate(parts)


def band_keys(sigs: npt.NDArray[np.uint32], bands: int) -> U64:
    """One uint64 per row and LSH band (``(n, bands)``): rows sharing a key share the band."""
    n, num_perm = sigs.shape
    rows = num_perm // bands
    weights = _band_weights(rows)
    keys: U64 = np.empty((n, bands), dtype=np.uint64)
    # Band by band: a uint64 copy of all signatures at once would be twice their size again.
    for band in range(bands):
        block = sigs[:, band * rows : (band + 1) * rows].astype(np.uint64)
        keys[:, band] = (block * weights).sum(axis=1, dtype=np.uint64)
    return keys


def jaccard(a: AbstractSet[Hashable], b: AbstractSet[Hashable]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def candidate_pairs(
    sigs: npt.NDArray[np.uint32],
    order_keys: Sequence[str],
    bands: int,
    keys: U64 | None = None,
) -> npt.NDArray[np.int64]:
    """Distinct pairs ``(i, j)``, ``i < j``, of rows sharing at least one LSH band, as an
    ``(n, 2)`` array. A bucket of more than ``_ALL_PAIRS_MAX`` rows pairs each member with the
    bucket's smallest ``order_keys`` member only, so the result never depends on row order.
    ``keys`` are the rows' ``band_keys`` when the caller has them."""
    n = len(sigs)
    # Python's sort of the keys: three times numpy's argsort of an object array.
    by_rank = np.array(sorted(range(n), key=list(order_keys).__getitem__), dtype=np.int64)
    all_keys = band_keys(sigs, bands) if keys is None else keys
    # Rows laid out in rank order once, so each band needs one stable sort by key where a
    # lexsort by (key, rank) makes two.
    ranked_keys = np.ascontiguousarray(all_keys[by_rank].T)
    found: list[npt.NDArray[np.int64]] = []
    for band in range(bands):
        column = ranked_keys[band]
        local = hash_argsort(column)
        order, sorted_keys = by_rank[local], column[local]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, n])
        # Buckets of one size become pairs in one vectorised step per size.
        for size in unique(sizes[(sizes > 1) & (sizes <= _ALL_PAIRS_MAX)]).tolist():
            members = order[starts[sizes == size][:, None] + np.arange(size)]
            i, j = _triu(size)
            found.append(np.stack([members[:, i].ravel(), members[:, j].ravel()], axis=1))
        big = sizes > _ALL_PAIRS_MAX
        if big.any():
            # The smallest order key (the stable sort put it first) anchors the rest of its bucket.
            big_starts, big_sizes = starts[big], sizes[big]
            anchors = np.repeat(order[big_starts], big_sizes - 1)
            offsets = np.arange(int((big_sizes - 1).sum())) - np.repeat(
                np.cumsum(big_sizes - 1) - (big_sizes - 1), big_sizes - 1
            )
            rest = order[np.repeat(big_starts, big_sizes - 1) + 1 + offsets]
            found.append(np.stack([anchors, rest], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    pairs.sort(axis=1)
    # One int64 per pair makes the de-duplication a flat sort.
    codes = unique(pairs[:, 0] * np.int64(n) + pairs[:, 1])
    return np.stack([codes // n, codes % n], axis=1)


@lru_cache(maxsize=_ALL_PAIRS_MAX + 1)
def _triu(size: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    i, j = np.triu_indices(size, k=1)
    return i, j


@lru_cache(maxsize=8)
def _band_weights(rows: int) -> U64:
    generator = np.random.default_rng(0x51_6E_61)
    return generator.integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)


class UnionFind:
    """Disjoint sets over ``0..n-1`` with path halving."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        """Sets with two or more members, each sorted, in order of their smallest member."""
        # Only members that were joined to another point away from themselves; a root is its
        # set's smallest member (``union``), so taking the rest in ascending order keeps each
        # group sorted. Most rows of a large corpus are singletons and are never looked at.
        parent = self.parent
        buckets: dict[int, list[int]] = {}
        for x in [x for x, up in enumerate(parent) if up != x]:
            root = self.find(x)
            members = buckets.get(root)
            if members is None:
                buckets[root] = [root, x]
            else:
                members.append(x)
        return [members for _, members in sorted(buckets.items())]


def near_duplicate_groups(texts: Sequence[str], config: NearDupConfig) -> list[list[int]]:
    """Groups of indices whose similarity texts are near-duplicates (pure, whole-list form of
    what the pipeline does in streaming steps; used by tests and small inputs)."""
    prepared = [similarity_text(t) for t in texts]
    bands = choose_bands(config.num_perm, config.threshold)
    union = UnionFind(len(prepared))
    for a, b, similarity in near_pairs(prepared, prepared, config, bands, [config.threshold]):
        if similarity >= config.threshold:
            union.union(a, b)
    return union.groups()


def near_pairs(
    texts: Sequence[str],
    order_keys: Sequence[str],
    config: NearDupConfig,
    bands: int,
    thresholds: Sequence[float],
    sigs: npt.NDArray[np.uint32] | None = None,
    keys: U64 | None = None,
) -> list[tuple[int, int, float]]:
    """LSH candidate pairs ``(i, j, similarity)``, ``i < j``, among similarity texts that may
    reach the lowest of ``thresholds``. The similarity is the MinHash estimate, replaced by the
    exact shingle Jaccard wherever the estimate lies within ``_EXACT_MARGIN`` of a threshold, so
    no decision at a threshold rests on the estimate's noise (sd ~0.03 at 128 permutations)."""
    if len(texts) < 2:
        return []
    if sigs is None:
        sigs = text_signatures(texts, config)
    pairs = candidate_pairs(sigs, order_keys, bands, keys)
    if not len(pairs):
        return []
    agree = np.empty(len(pairs), dtype=np.int64)
    # Small slices keep the gathered signature rows in cache (about twice as fast as 16k).
    for start in range(0, len(pairs), _ESTIMATE_BATCH):
        chunk = pairs[start : start + _ESTIMATE_BATCH]
        same = sigs[chunk[:, 0]] == sigs[chunk[:, 1]]
        agree[start : start + len(chunk)] = np.count_nonzero(same, axis=1)
    estimate = agree / sigs.shape[1]
    lowest = min(thresholds)
    close = np.zeros(len(pairs), dtype=bool)
    for threshold in thresholds:
        close |= np.abs(estimate - threshold) < _EXACT_MARGIN
    keep = (estimate >= lowest - _EXACT_MARGIN) | close
    # Shingle sets only for rows of pairs the exact Jaccard settles, hashed in batches and kept
    # as sorted uint64 arrays (8 bytes a shingle; a Python set of ints costs ~6x that).
    needed = unique(pairs[keep][close[keep]])
    sets: dict[int, U64] = {}
    for start in range(0, len(needed), _SIGNATURE_BATCH):
        batch = needed[start : start + _SIGNATURE_BATCH].tolist()
        distinct, bounds = unique_rows(*shingle_hashes([texts[r] for r in batch], config.shingle))
        edges = bounds.tolist()
        for k, row in enumerate(batch):
            sets[row] = distinct[edges[k] : edges[k + 1]]
    result = []
    for (a, b), similarity, exact in zip(
        pairs[keep].tolist(), estimate[keep].tolist(), close[keep].tolist(), strict=True
    ):
        if exact:
            similarity = sorted_jaccard(sets[a], sets[b])
        result.append((a, b, similarity))
    return result


def sorted_jaccard(a: U64, b: U64) -> float:
    """``jaccard`` of two sets given as sorted arrays of distinct values."""
    if not len(a) and not len(b):
        return 1.0
    # Each of b's values is looked up in a (both sorted and distinct): three array calls where
    # ``np.intersect1d`` makes about ten, and this runs once per pair settled exactly.
    at = np.searchsorted(a, b)
    inside = at < len(a)
    inter = int(np.count_nonzero(a[at[inside]] == b[inside]))
    return inter / (len(a) + len(b) - inter)
