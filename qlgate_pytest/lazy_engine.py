"""An engine that is loaded only when a request actually reaches it.

With the generation cache, a re-run of an unchanged candidate finds every answer in the cache;
loading a model (seconds to minutes, GBs of memory) to then not use it would dominate the run.
:class:`LazyEngine` stands in for the engine: ``describe()`` answers from what is known before
loading, and the first ``generate``/``rank`` call builds, warms up and then forwards to the real
engine. It also counts what reached the engine, so the report can say "engine not loaded, 0
requests" and a test can assert that a cached run generated nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qlgate_pytest.engines.base import (
    Engine,
    GenerateRequest,
    Generation,
    Ranking,
    RankRequest,
    Role,
)


class LazyEngine:
    """An :class:`~qlgate_pytest.engines.base.Engine` that loads on the first request."""

    def __init__(
        self, name: str, static_info: Mapping[str, Any], load: Callable[[], Engine]
    ) -> None:
        self.name = name
        self._static = dict(static_info)
        self._load = load
        self._engine: Engine | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self.load_s: float | None = None
        self.calls: dict[str, int] = {"generate": 0, "rank": 0}
        self.requests: dict[str, int] = {"generate": 0, "rank": 0}

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    def engine(self) -> Engine:
        """The real engine, loaded and warmed up now if it was not; a load failure is raised
        again on every later call (it is not retried: the model is the same)."""
        with self._lock:
            if self._engine is not None:
                return self._engine
            if self._error is not None:
                raise self._error
            start = time.perf_counter()
            try:
                engine = self._load()
                engine.warm_up()
            except BaseException as exc:
                self._error = exc
                raise
            self.load_s = time.perf_counter() - start
            self._engine = engine
            return engine

    def describe(self) -> Mapping[str, Any]:
        if self._engine is not None:
            return self._engine.describe()
        return {**self._static, "loaded": False}

    def warm_up(self) -> None:
        """Nothing: warming up is part of loading, which waits for the first request."""

    def generate(self, role: Role, requests: Sequence[GenerateRequest]) -> list[Generation]:
        self.calls["generate"] += 1
        self.requests["generate"] += len(requests)
        return self.engine().generate(role, requests)

    def rank(self, role: Role, requests: Sequence[RankRequest]) -> list[Ranking]:
        self.calls["rank"] += 1
        self.requests["rank"] += len(requests)
        return self.engine().rank(role, requests)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def stats(self) -> dict[str, Any]:
        """For the report's ``engine_load`` section."""
        return {
            "loaded": self.loaded or self.load_s is not None,
            "load_s": self.load_s,
            "calls": dict(self.calls),
            "requests": dict(self.requests),
        }


class CountedEngine:
    """The real engine as a golden Python test gets it (``qlgate_engine``): every attribute of
    the engine, with ``generate``/``rank`` going through the lazy engine (already loaded), so
    requests a team test makes are counted in the report like the gate's own."""

    def __init__(self, lazy: LazyEngine) -> None:
        self._lazy = lazy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lazy.engine(), name)

    def generate(self, role: Role, requests: Sequence[GenerateRequest]) -> list[Generation]:
        return self._lazy.generate(role, requests)

    def rank(self, role: Role, requests: Sequence[RankRequest]) -> list[Ranking]:
        return self._lazy.rank(role, requests)
