"""Content-addressed cache of generations under ``.qlgate_cache/gen/``.

A cached answer is reused only when everything that could change it is identical: base weights,
the adapter's identity (config, weights and every other file an engine reads; or none, for the
baseline), tokenizer and chat template, the prompt, the mode and labels, the sampling parameters,
and the engine with its version. Identities are content hashes, never paths, so retraining into
the same adapter directory, or editing only its ``adapter_config.json``, misses the cache
instead of serving the old adapter's answers.

Entries are one JSON file each, written to a temp file and moved into place with ``os.replace``,
so concurrent pytest-xdist workers never see half an entry; two workers writing one key write the
same answer and the last rename wins. A file that fails to parse or to validate is counted as
corrupt, treated as a miss, and replaced by the next ``put``. A cache must never fail a gate:
write errors are counted, not raised.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qlgate_core.adapter_identity import AdapterIdentity, adapter_identity, identity_files
from qlgate_core.fingerprint import (
    TOKENIZER_FILES,
    WEIGHT_SUFFIXES,
    chat_template_sha256,
    read_chat_template,
    sha256_json,
    tokenizer_sha256,
    weights_sha256,
)

if TYPE_CHECKING:
    from qlgate_pytest.engines.base import GenerateRequest, Generation, Ranking, RankRequest

SCHEMA_VERSION = 1
DEFAULT_ROOT = Path(".qlgate_cache")
NO_ADAPTER = "none"

# Hashing a 517 MB base costs ~1 s; each process hashes a directory once per state of its files.
# The state (inode, size, mtime, ctime of each file) changes when a file is rewritten or
# replaced, so an adapter retrained at the same path is hashed again. File times are coarse
# (milliseconds), so two writes in quick succession can leave the same state: as git does for
# "racy" index entries, a directory with a file younger than _SETTLED_S is never memoised.
_SETTLED_S = 2.0
_memo: dict[tuple[str, str, tuple[tuple[str, int, int, int, int], ...]], Any] = {}
_T = TypeVar("_T")


def _state(directory: Path, names: Sequence[str]) -> tuple[tuple[str, int, int, int, int], ...]:
    rows = []
    for name in sorted(names):
        st = (directory / name).stat()
        rows.append((name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(rows)


def _memoised(
    kind: str, directory: Path, names: Sequence[str], compute: Callable[[Path], _T]
) -> _T:
    state = _state(directory, names)
    key = (kind, str(directory.resolve()), state)
    if key in _memo:
        value: _T = _memo[key]
        return value
    value = compute(directory)
    newest = max((max(row[3], row[4]) for row in state), default=0)
    # Also unchanged while we hashed: otherwise the value may mix two versions of a file.
    if time.time_ns() - newest > _SETTLED_S * 1e9 and _state(directory, names) == state:
        _memo[key] = value
    return value


def weights_hash(model_dir: Path) -> str:
    """``qlgate_core.fingerprint.weights_sha256`` of a model directory, memoised (an adapter's
    identity is :func:`adapter_hash`: its config changes the computation as much as weights)."""
    names = [p.name for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    return _memoised("weights", model_dir, names, weights_sha256)


def adapter_hash(adapter_dir: Path) -> AdapterIdentity:
    """``qlgate_core.adapter_identity.adapter_identity`` of an adapter directory, memoised: every
    file that changes what an engine computes (config, weights, tokenizer, template, unknown
    files), so an edited ``adapter_config.json`` is a different adapter to the cache."""
    return _memoised("adapter", adapter_dir, identity_files(adapter_dir), adapter_identity)


def tokenizer_template_hash(tokenizer_dir: Path) -> str:
    """One hash over the tokenizer files and the chat template the engine renders prompts with."""
    names = [n for n in (*TOKENIZER_FILES, "chat_template.jinja") if (tokenizer_dir / n).is_file()]

    def compute(d: Path) -> str:
        parts = {
            "tokenizer": tokenizer_sha256(d),
            "template": chat_template_sha256(read_chat_template(d)),
        }
        return sha256_json(parts)

    return _memoised("tokenizer", tokenizer_dir, names, compute)


@dataclass(frozen=True)
class ModelIdentity:
    """What the model side of a cache key is made of: content hashes only."""

    base: str
    adapter: str  # AdapterIdentity.sha256; NO_ADAPTER for the baseline
    tokenizer: str

    @classmethod
    def of(cls, base_dir: Path, adapter_dir: Path | None, tokenizer_dir: Path) -> ModelIdentity:
        adapter = adapter_hash(adapter_dir).sha256 if adapter_dir is not None else NO_ADAPTER
        return cls(weights_hash(base_dir), adapter, tokenizer_template_hash(tokenizer_dir))


Prompt = str | Sequence[Mapping[str, str]]


def cache_key(
    model: ModelIdentity,
    *,
    prompt: Prompt,
    mode: str,
    labels: Sequence[str] | None,
    sampling: Mapping[str, Any],
    engine: str,
    engine_version: str,
) -> str:
    """The sha256 that addresses one generation; every argument is part of it.

    ``prompt`` is the rendered prompt string or the messages; ``sampling`` must be JSON-able
    (temperature, max_new_tokens, seed, dtype, ...). Labels keep their order: a rank-mode engine
    may score them in order, and a false hit would be worse than a miss.
    """
    messages = prompt if isinstance(prompt, str) else [dict(m) for m in prompt]
    return sha256_json(
        {
            "schema": SCHEMA_VERSION,
            "base": model.base,
            "adapter": model.adapter,
            "tokenizer": model.tokenizer,
            "prompt": messages,
            "mode": mode,
            "labels": list(labels) if labels is not None else None,
            "sampling": dict(sampling),
            "engine": engine,
            "engine_version": engine_version,
        }
    )


@dataclass(frozen=True)
class CachedGeneration:
    """One role's answer to one prompt. ``latency_ms`` is the original generation's: a cache hit
    must not make the candidate look faster than it is against a latency budget."""

    output: str
    label_scores: Mapping[str, float] | None
    input_tokens: int
    output_tokens: int
    latency_ms: float


@dataclass(frozen=True)
class CacheSummary:
    path: Path
    entries: int
    bytes: int


@dataclass(frozen=True)
class _Entry:
    """The file format of one entry; the key is stored too, so a misplaced file never answers."""

    # -inf is a legitimate log-likelihood; "constants" keeps it instead of writing null.
    __pydantic_config__ = {"extra": "forbid", "strict": True, "ser_json_inf_nan": "constants"}  # noqa: RUF012
    schema: int
    key: str
    value: CachedGeneration


@functools.cache
def _entry_adapter() -> Any:
    from pydantic import TypeAdapter  # pydantic only at this I/O boundary

    return TypeAdapter(_Entry)


class GenCache:
    """The cache directory of one gate run; ``enabled=False`` (``--no-gen-cache``) never reads or
    writes but still counts misses, so the report shows the cache was off."""

    def __init__(self, root: Path = DEFAULT_ROOT, *, enabled: bool = True) -> None:
        self.root = root
        self.dir = root / "gen"
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self.writes = 0
        self.write_errors = 0

    def _path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be a sha256 hex digest, got {key!r}")
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> CachedGeneration | None:
        """The cached answer for ``key``, or None on a miss or a corrupt entry."""
        path = self._path(key)
        if not self.enabled:
            self.misses += 1
            return None
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError:
            self.corrupt += 1
            self.misses += 1
            return None
        try:
            entry: _Entry = _entry_adapter().validate_json(raw)
            if entry.schema != SCHEMA_VERSION or entry.key != key:
                raise ValueError("entry belongs to another key or schema")
        except ValueError:  # pydantic's ValidationError is a ValueError
            self.corrupt += 1
            self.misses += 1
            return None
        self.hits += 1
        return entry.value

    def put(self, key: str, value: CachedGeneration) -> None:
        """Store ``value`` atomically; replaces a corrupt or older entry for ``key``."""
        path = self._path(key)
        if not self.enabled:
            return
        try:
            data: bytes = _entry_adapter().dump_json(_Entry(SCHEMA_VERSION, key, value))
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key[:8]}-", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                Path(tmp).replace(path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except (OSError, ValueError):
            # A full disk or a concurrent clear() must not fail the gate; the answer stays valid.
            self.write_errors += 1
            return
        self.writes += 1

    def clear(self) -> int:
        """Remove every entry (``--clear-gen-cache``); returns how many there were.

        The directory is renamed away first, so a concurrent reader sees either the old tree or
        none, never a half-deleted one.
        """
        if not self.dir.exists():
            return 0
        count = self.summary().entries
        trash = self.root / f".gen-trash-{uuid.uuid4().hex}"
        try:
            self.dir.rename(trash)
        except FileNotFoundError:  # another process cleared it first
            return 0
        shutil.rmtree(trash, ignore_errors=True)
        return count

    def summary(self) -> CacheSummary:
        """How many entries and bytes the cache holds now."""
        entries = total = 0
        if self.dir.is_dir():
            for path in self.dir.glob("??/*.json"):
                try:
                    total += path.stat().st_size
                except FileNotFoundError:  # replaced or cleared while we walked
                    continue
                entries += 1
        return CacheSummary(self.dir, entries, total)

    def stats(self) -> dict[str, int | bool]:
        """Counters for the report's ``cache`` section."""
        return {
            "enabled": self.enabled,
            "hits": self.hits,
            "misses": self.misses,
            "corrupt": self.corrupt,
            "writes": self.writes,
            "write_errors": self.write_errors,
        }


class DriverCache:
    """``driver.GenerationCache`` over a :class:`GenCache`: one ``ModelIdentity`` per role, the
    engine's name and version string, and its decoding settings make each request's key.

    The request's ``key`` (the case id) is not part of the content key: two cases with the same
    prompt share an entry, and a hit is re-labelled with the asking request's key.
    """

    def __init__(
        self,
        cache: GenCache,
        identities: Mapping[str, ModelIdentity],
        *,
        engine: str,
        engine_version: str,
        sampling: Mapping[str, Any],
    ) -> None:
        self.cache = cache
        self.identities = dict(identities)
        self.engine = engine
        self.engine_version = engine_version
        self.sampling = dict(sampling)

    def _key(self, role: str, request: GenerateRequest | RankRequest) -> str:
        from qlgate_pytest.engines.base import RankRequest

        if isinstance(request, RankRequest):
            mode, labels, sampling = "rank", request.labels, self.sampling
        else:
            mode, labels = "generate", None
            sampling = {**self.sampling, "max_new_tokens": request.max_new_tokens}
        return cache_key(
            self.identities[role],
            prompt=[m.as_dict() for m in request.messages],
            mode=mode,
            labels=labels,
            sampling=sampling,
            engine=self.engine,
            engine_version=self.engine_version,
        )

    def lookup(
        self, role: str, request: GenerateRequest | RankRequest
    ) -> Generation | Ranking | None:
        from qlgate_pytest.engines.base import Generation, Ranking, RankRequest

        hit = self.cache.get(self._key(role, request))
        if hit is None:
            return None
        n_in, n_out = hit.input_tokens, hit.output_tokens
        if not isinstance(request, RankRequest):
            return Generation(request.key, hit.output, hit.latency_ms, n_in, n_out)
        if hit.label_scores is None or set(hit.label_scores) != set(request.labels):
            return None  # cannot happen for a well-formed entry: labels are in the key
        return Ranking(request.key, dict(hit.label_scores), hit.output, hit.latency_ms, n_in, n_out)

    def store(
        self, role: str, request: GenerateRequest | RankRequest, result: Generation | Ranking
    ) -> None:
        from qlgate_pytest.engines.base import Ranking

        if result.error is not None:  # an error is not an answer: the next run retries
            return
        if isinstance(result, Ranking):
            output, scores = result.best, dict(result.scores)
        else:
            output, scores = result.text, None
        value = CachedGeneration(
            output, scores, result.prompt_tokens, result.output_tokens, result.latency_ms
        )
        self.cache.put(self._key(role, request), value)
