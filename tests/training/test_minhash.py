"""One-permutation MinHash: equal sets agree, estimates track the Jaccard similarity, and a
text's signature does not depend on the batch it is computed in."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import training.densify
from training.densify import _PROBE_SALT, densify, first_probes
from training.grams import mix
from training.minhash import EMPTY, _binned, oph_signatures

U64 = np.uint64


def _flat(sets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(sets) + 1, dtype=np.uint64)
    np.cumsum([len(s) for s in sets], out=offsets[1:])
    hashes = np.concatenate(sets) if sets else np.zeros(0, dtype=np.uint64)
    return hashes.astype(np.uint64), offsets


def _pair(rng: np.random.Generator, size: int, shared: int) -> tuple[np.ndarray, np.ndarray]:
    """Two sets of ``size`` hashes with ``shared`` in common."""
    pool = mix(rng.integers(0, 2**63, 2 * size - shared, dtype=np.int64).astype(np.uint64))
    return pool[:size], pool[size - shared :]


def test_estimates_are_unbiased_and_as_tight_as_k_permutations() -> None:
    """Over many pairs at known Jaccard similarities, the fraction of equal bins averages the
    true similarity, with the spread of a 128-permutation MinHash (sd sqrt(J(1-J)/128))."""
    rng = np.random.default_rng(7)
    for size, shared in ((150, 140), (150, 120), (60, 30), (300, 100)):
        truth = shared / (2 * size - shared)
        estimates = []
        for _ in range(200):
            a, b = _pair(rng, size, shared)
            sigs = oph_signatures(*_flat([a, b]), num_perm=128, seed=0)
            estimates.append(float((sigs[0] == sigs[1]).mean()))
        spread = np.sqrt(truth * (1 - truth) / 128)
        assert abs(np.mean(estimates) - truth) < 0.01
        assert np.std(estimates) < 1.5 * spread + 0.005


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=40), min_size=1, max_size=6),
    st.sampled_from([16, 100, 128]),
    st.integers(0, 3),
)
def test_a_signature_depends_on_its_set_alone(
    sets: list[list[int]], num_perm: int, seed: int
) -> None:
    """Order, repeats and the other rows of the batch change nothing; an empty set is all
    EMPTY and a non-empty one has no EMPTY bin left after densification."""
    arrays = [np.array(s, dtype=np.uint64) for s in sets]
    batch = oph_signatures(*_flat(arrays), num_perm=num_perm, seed=seed)
    for row, values in enumerate(arrays):
        shuffled = np.concatenate([values[::-1], values])
        alone = oph_signatures(*_flat([shuffled]), num_perm=num_perm, seed=seed)
        assert (alone[0] == batch[row]).all()
        if len(values):
            assert (batch[row] != EMPTY).all()
        else:
            assert (batch[row] == EMPTY).all()


def _densify_one_bin_at_a_time(sigs: np.ndarray, seed: int) -> np.ndarray:
    """The module docstring's densification, written out bin by bin."""
    num_perm = sigs.shape[1]
    result = sigs.copy()
    for row in range(len(sigs)):
        if (sigs[row] == EMPTY).all():
            continue
        for col in np.flatnonzero(sigs[row] == EMPTY).tolist():
            attempt = 0
            while result[row, col] == EMPTY:
                attempt += 1
                salt = U64(((seed + attempt) * _PROBE_SALT) & (2**64 - 1))
                probe = int(mix(np.array([col], dtype=np.uint64) ^ salt)[0] % U64(num_perm))
                result[row, col] = sigs[row, probe]
    return result


def _few_shingle_sets(sizes: list[int], seed: int, num_perm: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sets = [mix(rng.integers(0, 2**63, size, dtype=np.int64).astype(np.uint64)) for size in sizes]
    hashes, offsets = _flat(sets)
    return _binned(hashes, offsets.astype(np.int64), num_perm, seed % 5)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=8), st.integers(0, 2**32))
def test_densification_takes_the_first_non_empty_bin_on_each_probe_sequence(
    sizes: list[int], seed: int
) -> None:
    """Sets of a few shingles (one-shingle sets need ~num_perm probes per bin, so most of their
    bins are settled from the first-probe table) come out as the bin-by-bin definition gives."""
    binned = _few_shingle_sets(sizes, seed, 64)
    expected = _densify_one_bin_at_a_time(binned, seed % 5)
    assert np.array_equal(densify(binned, seed % 5), expected)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=6), st.integers(0, 2**32))
def test_bins_the_table_cannot_settle_go_back_to_probing(sizes: list[int], seed: int) -> None:
    """With a table horizon far too short, many bins have no source met within it; they are
    probed on from the horizon and still match the definition."""
    first_probes.cache_clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.densify, "_HORIZON_PER_BIN", 1)
        table, horizon = first_probes(64, seed % 5)
        assert horizon == 64 and (table == np.iinfo(np.int32).max).any()
        binned = _few_shingle_sets(sizes, seed, 64)
        expected = _densify_one_bin_at_a_time(binned, seed % 5)
        assert np.array_equal(densify(binned, seed % 5), expected)
        first_probes.cache_clear()


def test_the_seed_changes_the_signature() -> None:
    a = mix(np.arange(100, dtype=np.uint64))
    one = oph_signatures(*_flat([a]), num_perm=64, seed=0)
    two = oph_signatures(*_flat([a]), num_perm=64, seed=1)
    assert (one != two).mean() > 0.9


def test_many_rows_are_hashed_in_pieces() -> None:
    """Batches larger than one pass give the same rows as small batches."""
    rng = np.random.default_rng(3)
    sets = [mix(rng.integers(0, 2**63, 20, dtype=np.int64).astype(np.uint64)) for _ in range(9000)]
    whole = oph_signatures(*_flat(sets), num_perm=32, seed=0)
    parts = np.concatenate(
        [
            oph_signatures(*_flat(sets[i : i + 1000]), num_perm=32, seed=0)
            for i in range(0, 9000, 1000)
        ]
    )
    assert (whole == parts).all()


def test_pairs_at_the_threshold_become_lsh_candidates_as_designed() -> None:
    """With the bands ``choose_bands`` picks for 0.99 recall at 0.85, pairs at J = 0.85 share
    a band about 99% of the time (the formula assumes independent bins)."""
    from training.dedup import band_keys, choose_bands

    rng = np.random.default_rng(11)
    bands = choose_bands(128, 0.85)
    pairs = [_pair(rng, 150, 138) for _ in range(1500)]  # J = 138 / 162 = 0.852
    sigs = oph_signatures(*_flat([s for pair in pairs for s in pair]), num_perm=128, seed=0)
    keys = band_keys(sigs, bands)
    recall = float((keys[0::2] == keys[1::2]).any(axis=1).mean())
    assert recall >= 0.985
