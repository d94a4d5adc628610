"""Base model resolution: the embedded model's cache, its integrity, and offline hub ids."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from training import models
from training.errors import ModelResolutionError


def fake_convert(gguf: Path, out: Path) -> None:
    """Stands in for the 40 s GGUF conversion in plumbing tests: slow enough to overlap, and it
    counts its calls in a file beside the cache so tests can see how often it ran."""
    counter = out.parent / "conversions.log"
    with counter.open("a") as handle:
        handle.write(f"{os.getpid()}\n")
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    time.sleep(1.0)
    (out / "model.safetensors").write_bytes(os.urandom(1 << 16))


def _conversions(home: Path) -> int:
    log = home / "models" / "conversions.log"
    return len(log.read_text().split()) if log.exists() else 0


def _resolve_in_child(home: str, queue: multiprocessing.Queue[str]) -> None:
    queue.put(str(models.embedded_model_dir(Path(home), convert=fake_convert)))


def test_second_resolution_hits_the_cache(tmp_path: Path) -> None:
    """A valid cache entry is reused: the conversion runs once for two resolutions."""
    first = models.embedded_model_dir(tmp_path, convert=fake_convert)
    second = models.embedded_model_dir(tmp_path, convert=fake_convert)
    assert first == second
    assert _conversions(tmp_path) == 1


def test_concurrent_resolutions_leave_one_intact_copy(tmp_path: Path) -> None:
    """Two processes resolving at once convert once and agree on one valid directory."""
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    children = [ctx.Process(target=_resolve_in_child, args=(str(tmp_path), queue)) for _ in "ab"]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
        assert child.exitcode == 0
    paths = {queue.get(timeout=5) for _ in children}
    assert len(paths) == 1
    assert _conversions(tmp_path) == 1
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".convert")]
    assert leftovers == []
    assert models._is_valid(Path(paths.pop()))


def test_truncated_cache_file_is_rebuilt(tmp_path: Path) -> None:
    """A truncated weights file fails the content check and the entry is converted again."""
    target = models.embedded_model_dir(tmp_path, convert=fake_convert)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    rebuilt = models.embedded_model_dir(tmp_path, convert=fake_convert)
    assert rebuilt == target
    assert _conversions(tmp_path) == 2
    assert weights.stat().st_size == 1 << 16


def test_altered_cache_file_of_same_size_is_rebuilt(tmp_path: Path) -> None:
    """Same-size corruption is caught by the recorded sha256, not only by the size."""
    target = models.embedded_model_dir(tmp_path, convert=fake_convert)
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[10] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 1))
    models.embedded_model_dir(tmp_path, convert=fake_convert)
    assert _conversions(tmp_path) == 2


def test_offline_hub_id_gives_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id that is not cached is refused offline with a one-line, actionable message."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelResolutionError) as info:
        models.resolve("someorg/not-a-cached-model")
    message = str(info.value)
    assert "\n" not in message
    assert "someorg/not-a-cached-model" in message
    assert "never downloads" in message


def test_local_directory_without_config_is_refused(tmp_path: Path) -> None:
    """A directory that is not a transformers model is named in the error."""
    with pytest.raises(ModelResolutionError, match=r"no config\.json"):
        models.resolve(str(tmp_path))


def test_local_directory_resolves_to_itself(tmp_path: Path) -> None:
    """A local model directory is used as it is."""
    (tmp_path / "config.json").write_text("{}")
    resolved = models.resolve(str(tmp_path))
    assert resolved.path == tmp_path.resolve()
    assert resolved.source == "local"


@pytest.mark.slow
def test_converted_model_matches_gguf_logits() -> None:
    """The cached safetensors model gives the same logits as loading the GGUF directly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    converted_dir = models.resolve_base_model("embedded")
    gguf = models.gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(converted_dir))
    inputs = tokenizer(["Where is my parcel? Order NW-48213."], return_tensors="pt")
    converted = AutoModelForCausalLM.from_pretrained(str(converted_dir), dtype=torch.float32)
    with torch.no_grad():
        expected_logits = converted(**inputs).logits
    del converted
    direct = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    with torch.no_grad():
        direct_logits = direct(**inputs).logits
    assert torch.equal(expected_logits, direct_logits)
    direct_tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert direct_tokenizer.chat_template == tokenizer.chat_template
