"""The content-addressed generation cache (qlgate_pytest/gen_cache.py)."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from qlgate_pytest.gen_cache import (
    NO_ADAPTER,
    CachedGeneration,
    GenCache,
    ModelIdentity,
    cache_key,
    tokenizer_template_hash,
    weights_hash,
)

MESSAGES = [{"role": "system", "content": "Route it."}, {"role": "user", "content": "refund?"}]
KEY_ARGS: dict[str, Any] = {
    "prompt": MESSAGES,
    "mode": "rank",
    "labels": ["billing", "returns"],
    "sampling": {"temperature": 0.0, "max_new_tokens": 8},
    "engine": "hf",
    "engine_version": "transformers 5.24 peft 0.21.2 fp32",
}
IDENTITY = ModelIdentity(base="b" * 64, adapter="a" * 64, tokenizer="t" * 64)
ANSWER = CachedGeneration(
    output="billing",
    label_scores={"billing": -0.25, "returns": float("-inf")},
    input_tokens=41,
    output_tokens=2,
    latency_ms=12.5,
)


def _write_weights(directory: Path, value: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {"lora_A": np.full((4, 8), value, dtype=np.float32)}, str(directory / "w.safetensors")
    )


def test_key_is_stable_and_covers_every_component() -> None:
    """Equal inputs give one key; changing any single component gives another."""
    base = cache_key(IDENTITY, **KEY_ARGS)
    assert base == cache_key(IDENTITY, **{**KEY_ARGS, "prompt": [dict(m) for m in MESSAGES]})
    variants = [
        cache_key(ModelIdentity("c" * 64, IDENTITY.adapter, IDENTITY.tokenizer), **KEY_ARGS),
        cache_key(ModelIdentity(IDENTITY.base, NO_ADAPTER, IDENTITY.tokenizer), **KEY_ARGS),
        cache_key(ModelIdentity(IDENTITY.base, IDENTITY.adapter, "u" * 64), **KEY_ARGS),
        cache_key(IDENTITY, **{**KEY_ARGS, "prompt": "<|im_start|>user\nrefund?"}),
        cache_key(IDENTITY, **{**KEY_ARGS, "mode": "generate"}),
        cache_key(IDENTITY, **{**KEY_ARGS, "labels": ["returns", "billing"]}),
        cache_key(IDENTITY, **{**KEY_ARGS, "sampling": {"temperature": 0.0, "max_new_tokens": 9}}),
        cache_key(IDENTITY, **{**KEY_ARGS, "engine": "vllm"}),
        cache_key(IDENTITY, **{**KEY_ARGS, "engine_version": "transformers 5.25"}),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_miss_then_hit_round_trips_the_answer(tmp_path: Path) -> None:
    """A put answer comes back equal (even a -inf log-likelihood), and counters say so."""
    cache = GenCache(tmp_path / ".qlgate_cache")
    key = cache_key(IDENTITY, **KEY_ARGS)
    assert cache.get(key) is None
    cache.put(key, ANSWER)
    assert cache.get(key) == ANSWER
    assert GenCache(tmp_path / ".qlgate_cache").get(key) == ANSWER  # another process's view
    assert cache.stats() == {
        "enabled": True, "hits": 1, "misses": 1, "corrupt": 0, "writes": 1, "write_errors": 0
    }  # fmt: skip
    assert cache.summary().entries == 1 and cache.summary().bytes > 0


def test_disabled_cache_neither_reads_nor_writes(tmp_path: Path) -> None:
    """--no-gen-cache: an existing entry is ignored and nothing is written."""
    key = cache_key(IDENTITY, **KEY_ARGS)
    GenCache(tmp_path).put(key, ANSWER)
    off = GenCache(tmp_path, enabled=False)
    assert off.get(key) is None
    off.put(cache_key(IDENTITY, **{**KEY_ARGS, "mode": "generate"}), ANSWER)
    assert off.summary().entries == 1 and off.stats()["misses"] == 1


def test_retraining_into_the_same_path_misses(tmp_path: Path) -> None:
    """Rewriting the adapter file in place (same path, same size) changes the key at once."""
    base, adapter, tok = tmp_path / "base", tmp_path / "adapter", tmp_path / "tok"
    _write_weights(base, 0.0)
    _write_weights(adapter, 1.0)
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"v": 1}')
    cache = GenCache(tmp_path / ".qlgate_cache")
    first = cache_key(ModelIdentity.of(base, adapter, tok), **KEY_ARGS)
    cache.put(first, ANSWER)
    assert cache.get(cache_key(ModelIdentity.of(base, adapter, tok), **KEY_ARGS)) == ANSWER
    size = (adapter / "w.safetensors").stat().st_size
    _write_weights(adapter, 2.0)  # "retrained": same shapes, new values, milliseconds later
    assert (adapter / "w.safetensors").stat().st_size == size
    second = cache_key(ModelIdentity.of(base, adapter, tok), **KEY_ARGS)
    assert second != first
    assert cache.get(second) is None


def test_settled_files_are_hashed_once_and_changes_still_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memoised hashing: an old, unchanged dir is read once; a rewritten file is read again."""
    import qlgate_pytest.gen_cache as gen_cache
    from qlgate_core.fingerprint import weights_sha256

    calls: list[Path] = []

    def counting(directory: Path) -> str:
        calls.append(directory)
        return weights_sha256(directory)

    monkeypatch.setattr(gen_cache, "weights_sha256", counting)
    model = tmp_path / "m"
    _write_weights(model, 1.0)
    monkeypatch.setattr(gen_cache, "_SETTLED_S", 0.0)  # as if written long ago (ctime is now)
    first = weights_hash(model)
    assert weights_hash(model) == first and len(calls) == 1
    monkeypatch.setattr(gen_cache, "_SETTLED_S", 2.0)
    _write_weights(model, 3.0)  # fresh file: hashed, and not memoised while it may still change
    assert weights_hash(model) != first
    assert weights_hash(model) != first and len(calls) == 3


def test_tokenizer_hash_covers_the_chat_template(tmp_path: Path) -> None:
    """Editing only chat_template.jinja changes the tokenizer part of the identity."""
    (tmp_path / "tokenizer.json").write_text('{"v": 1}')
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    before = tokenizer_template_hash(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{{ messages | tojson }}")
    assert tokenizer_template_hash(tmp_path) != before


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b'{"schema": 1, "key": "other"}', b"\xff\xfe\x00", b"[]"],
    ids=["empty", "truncated", "wrong-shape", "binary", "list"],
)
def test_corrupt_entry_is_a_miss_and_is_rewritten(tmp_path: Path, content: bytes) -> None:
    """A damaged file never answers; it is counted, and the next put replaces it."""
    cache = GenCache(tmp_path)
    key = cache_key(IDENTITY, **KEY_ARGS)
    cache.put(key, ANSWER)
    path = next((tmp_path / "gen").glob("*/*.json"))
    path.write_bytes(content)
    assert cache.get(key) is None
    assert cache.corrupt == 1
    cache.put(key, ANSWER)
    assert cache.get(key) == ANSWER


def test_entry_moved_to_another_key_never_answers(tmp_path: Path) -> None:
    """Each entry records its key: a file copied under another name is treated as corrupt."""
    cache = GenCache(tmp_path)
    key, other = cache_key(IDENTITY, **KEY_ARGS), cache_key(IDENTITY, **{**KEY_ARGS, "mode": "x"})
    cache.put(key, ANSWER)
    target = tmp_path / "gen" / other[:2] / f"{other}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "gen" / key[:2] / f"{key}.json", target)
    assert cache.get(other) is None and cache.corrupt == 1


def test_clear_removes_everything_and_reports_the_count(tmp_path: Path) -> None:
    """--clear-gen-cache: every entry gone, count returned, and the cache works afterwards."""
    cache = GenCache(tmp_path)
    keys = [cache_key(IDENTITY, **{**KEY_ARGS, "engine_version": str(i)}) for i in range(5)]
    for key in keys:
        cache.put(key, ANSWER)
    assert cache.clear() == 5
    assert cache.summary().entries == 0
    assert [p.name for p in tmp_path.iterdir()] == []
    assert cache.get(keys[0]) is None
    assert cache.clear() == 0
    cache.put(keys[0], ANSWER)
    assert cache.get(keys[0]) == ANSWER


def test_write_failure_is_counted_not_raised(tmp_path: Path) -> None:
    """A cache that cannot write (here: its directory is a file) never fails the gate."""
    (tmp_path / "gen").write_text("not a directory")
    cache = GenCache(tmp_path)
    cache.put(cache_key(IDENTITY, **KEY_ARGS), ANSWER)
    assert cache.write_errors == 1 and cache.writes == 0


def test_bad_key_is_refused(tmp_path: Path) -> None:
    """Keys are sha256 hex digests; anything else (a path!) is a caller bug."""
    with pytest.raises(ValueError, match="sha256"):
        GenCache(tmp_path).get("../../etc/passwd")


def _hammer(root: str, worker: int, keys: list[str], rounds: int) -> tuple[int, int]:
    """Each worker writes its own large answer under shared keys and reads them back."""
    cache = GenCache(Path(root))
    torn = 0
    for r in range(rounds):
        for i, key in enumerate(keys):
            if (i + r + worker) % 2:
                cache.put(key, CachedGeneration(str(worker) * 100_000, None, 1, 1, 1.0))
            got = cache.get(key)
            # A torn write would mix two workers' bytes or fail to parse.
            if got is not None and len(set(got.output)) != 1:
                torn += 1
    return torn, cache.corrupt


def test_concurrent_workers_never_see_half_an_entry(tmp_path: Path) -> None:
    """Four processes writing and reading the same keys: no torn or corrupt read, ever."""
    keys = [cache_key(IDENTITY, **{**KEY_ARGS, "engine_version": str(i)}) for i in range(8)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_hammer, [(str(tmp_path), w, keys, 6) for w in range(4)])
    assert results == [(0, 0)] * 4
    cache = GenCache(tmp_path)
    assert cache.summary().entries == len(keys)
    assert all(cache.get(k) is not None for k in keys)
    assert not list((tmp_path / "gen").glob("*/*.tmp"))  # no temp files left behind


def test_adapter_hash_is_memoised_and_sees_a_config_edit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memoised adapter identity re-reads the directory when only its config changed."""
    import qlgate_pytest.gen_cache as gen_cache
    from qlgate_core.adapter_identity import adapter_identity

    calls: list[Path] = []

    def counting(directory: Path) -> Any:
        calls.append(directory)
        return adapter_identity(directory)

    monkeypatch.setattr(gen_cache, "adapter_identity", counting)
    adapter = tmp_path / "a"
    _write_weights(adapter, 1.0)
    (adapter / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 8}')
    monkeypatch.setattr(gen_cache, "_SETTLED_S", 0.0)
    first = gen_cache.adapter_hash(adapter)
    assert gen_cache.adapter_hash(adapter) == first and len(calls) == 1
    (adapter / "adapter_config.json").write_text('{"r": 4, "lora_alpha": -8}')
    assert gen_cache.adapter_hash(adapter).sha256 != first.sha256 and len(calls) == 2
