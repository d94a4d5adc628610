"""The streaming LSH candidate index of near-duplicate detection.

Signatures arrive in batches (from the admission workers, or computed here from texts); the
index keeps one uint64 key per LSH band and row in memory (8 bytes x bands per record) and
appends the signatures themselves to a file, from which ``signatures`` reads back only the rows
the near-duplicate pass needs. ``flags`` marks every row that shares a band key with another row:
the only rows that can have a near-duplicate. Keys depend on the signature alone, so flags do not
depend on batch boundaries or on which process computed them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from training.dedup import NearDupConfig, band_keys, choose_bands, text_signatures
from training.sortops import repeated

Signatures = npt.NDArray[np.uint32]


class CandidateIndex:
    """``add``/``add_signatures`` batches, then ``flags()``; ``path`` holds the signatures (a
    temporary in-memory list when None, for small uses and tests)."""

    def __init__(self, config: NearDupConfig, min_threshold: float, path: Path | None = None):
        self.config = config
        self.bands = choose_bands(config.num_perm, min_threshold)
        self._keys: list[npt.NDArray[np.uint64]] = []
        self._path = path
        self._file: BinaryIO | None = path.open("wb") if path is not None else None
        self._memory: list[Signatures] = []
        self.size = 0

    def add(self, texts: Sequence[str]) -> None:
        """Index similarity texts (golden prompts, augmentation candidates)."""
        if texts:
            self.add_signatures(text_signatures(texts, self.config))

    def add_signatures(self, sigs: Signatures, keys: npt.NDArray[np.uint64] | None = None) -> None:
        """Index signatures; ``keys`` are their ``band_keys`` when the caller has them."""
        if not len(sigs):
            return
        if sigs.shape[1] != self.config.num_perm:
            raise ValueError(
                f"signatures have {sigs.shape[1]} permutations, not {self.config.num_perm}"
            )
        if keys is None:
            keys = band_keys(sigs, self.bands)
        elif keys.shape != (len(sigs), self.bands):
            raise ValueError(f"band keys have shape {keys.shape}, not {(len(sigs), self.bands)}")
        self._keys.append(keys)
        if self._file is not None:
            self._file.write(np.ascontiguousarray(sigs, dtype=np.uint32).tobytes())
        else:
            self._memory.append(sigs.astype(np.uint32, copy=False))
        self.size += len(sigs)

    def flags(self) -> npt.NDArray[np.bool_]:
        if not self._keys:
            return np.zeros(0, dtype=bool)
        keys = self.keys()
        flagged = np.zeros(len(keys), dtype=bool)
        for band in range(keys.shape[1]):
            flagged |= repeated(keys[:, band])
        return flagged

    def keys(
        self, rows: npt.NDArray[np.int64] | Sequence[int] | None = None
    ) -> npt.NDArray[np.uint64]:
        """The band keys of index rows ``rows`` (all rows when None), in that order."""
        if len(self._keys) != 1:
            joined = (
                np.concatenate(self._keys) if self._keys else np.zeros((0, self.bands), np.uint64)
            )
            self._keys = [joined]
        return self._keys[0] if rows is None else self._keys[0][np.asarray(rows, dtype=np.int64)]

    def signatures(self, rows: npt.NDArray[np.int64] | Sequence[int]) -> Signatures:
        """The signatures of index rows ``rows``, in that order."""
        wanted = np.asarray(rows, dtype=np.int64)
        if self._path is None:
            stored = np.concatenate(self._memory) if self._memory else self._empty()
            return stored[wanted]
        if self._file is not None:
            self._file.flush()
        if self.size == 0:
            return self._empty()[wanted]
        table = np.memmap(
            self._path, dtype=np.uint32, mode="r", shape=(self.size, self.config.num_perm)
        )
        return np.array(table[wanted])

    @property
    def path(self) -> Path | None:
        return self._path

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _empty(self) -> Signatures:
        return np.zeros((0, self.config.num_perm), dtype=np.uint32)
