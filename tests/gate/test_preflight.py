"""Preflight checks on real peft adapters of the tiny model (qlgate_pytest/preflight.py) and the
near-duplicate search behind the leakage check (qlgate_pytest/leakage.py)."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qlgate_pytest.leakage import near_duplicates
from qlgate_pytest.preflight import (
    EngineCaps,
    Finding,
    errors,
    inspect_adapter,
    run_preflight,
)
from qlgate_pytest.training_data import content_sha256
from training.sample_task import SYSTEM_PROMPT

HF = EngineCaps(name="hf")
TRAIN_TICKETS = [
    "My parcel NW-48213 has not arrived after two weeks, where is it?",
    "I was charged twice for the same order this month.",
    "How do I reset the password on my account?",
    "The blender arrived broken and I want to send it back for a refund.",
]
GOLDEN = {
    "leaky": "i was CHARGED twice for the same order this month!!",
    "fresh": "Can I change the email address my invoices go to?",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A tiny base, a second tiny base, a curated dataset, and a trained-looking adapter with
    the tokenizer and provenance that ``python -m training train`` writes."""
    import torch
    from datasets import Dataset, DatasetDict
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qlgate_core.fingerprint import weights_sha256
    from training import provenance as prov
    from training.tiny import build_tiny_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("preflight")
    base = build_tiny_model(root / "base", seed=0)
    other = build_tiny_model(root / "other-base", seed=1, tokenizer_from=base)

    data = root / "data"
    rows = [
        {"id": f"{i:016x}", "label": "x", "source": "human", "metadata": "{}",
         "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                      {"role": "user", "content": text},
                      {"role": "assistant", "content": "billing"}]}
        for i, text in enumerate(TRAIN_TICKETS)
    ]  # fmt: skip
    splits = {"train": Dataset.from_list(rows[:3]), "validation": Dataset.from_list(rows[3:])}
    DatasetDict(splits).save_to_disk(str(data / "dataset"))
    content = content_sha256(data / "dataset")  # what curation records for these rows
    manifest = {"schema_version": 1, "content_sha256": content}
    (data / "manifest.json").write_text(json.dumps(manifest))

    def adapter(name: str, **lora: Any) -> Path:
        model = AutoModelForCausalLM.from_pretrained(str(base))
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], **lora)
        out = root / name
        get_peft_model(model, config).save_pretrained(str(out))
        for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copyfile(base / file, out / file)
        tok, template = prov.tokenizer_hashes(base)
        record = prov.Provenance(
            base_model=prov.base_model_record(str(base), base),
            tokenizer_sha256=tok,
            chat_template_sha256=template,
            dataset=prov.dataset_record(data),
            config={}, versions={}, git_commit=None, metrics={}, wall_time_s=1.0,
            tokens_per_s=1.0, adapter_weights_sha256=weights_sha256(out),
        )  # fmt: skip
        prov.write_provenance(out, record)
        return out

    # init_lora_weights=False draws lora_B at random: a stand-in for a trained adapter.
    yield {
        "base": base,
        "other": other,
        "data": data,
        "adapter": adapter("adapter", init_lora_weights=False),
        "untrained": adapter("untrained"),
        "wide": adapter("wide", init_lora_weights=False, rank_pattern={"v_proj": 32}),
    }


@pytest.fixture
def adapter(world: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the good adapter, for a test to damage."""
    return Path(shutil.copytree(world["adapter"], tmp_path / "adapter"))


def check_all(world: dict[str, Path], adapter_dir: Path, **kw: Any) -> list[Finding]:
    """Every finding, info included (what the leakage check ran against)."""
    args: dict[str, Any] = {
        "base_dir": world["base"],
        "engine_caps": HF,
        "golden_prompts": {"fresh": GOLDEN["fresh"]},
        "base_spec": None,
    }
    return run_preflight(adapter_dir, **{**args, **kw})


def check(world: dict[str, Path], adapter_dir: Path, **kw: Any) -> list[Finding]:
    """Errors and warnings: the findings that say something is wrong or unchecked."""
    return [f for f in check_all(world, adapter_dir, **kw) if f.severity != "info"]


def reasons(findings: list[Finding]) -> list[str]:
    return [f.reason for f in errors(findings)]


def test_good_adapter_passes_with_its_shape_read(world: dict[str, Path], adapter: Path) -> None:
    """A correct adapter on its own base: no findings at all; rank and modules read right."""
    found = check_all(world, adapter)
    assert [(f.reason, f.severity) for f in found] == [("leakage_checked", "info")]
    assert str(world["data"]) in found[0].message and "content sha256" in found[0].message
    info = inspect_adapter(adapter)
    assert (info.rank, info.target_modules, info.peft_type) == (
        8,
        frozenset({"q_proj", "v_proj"}),
        "LORA",
    )


def test_missing_and_empty_directories(world: dict[str, Path], tmp_path: Path) -> None:
    """No directory, a file instead of one, and an empty one each get their own reason."""
    assert reasons(check(world, tmp_path / "nope")) == ["adapter_missing"]
    (tmp_path / "file").write_text("x")
    assert reasons(check(world, tmp_path / "file")) == ["adapter_missing"]
    (tmp_path / "empty").mkdir()
    found = check(world, tmp_path / "empty")
    assert reasons(found) == ["adapter_empty"] and "is empty" in found[0].message


def test_missing_adapter_config(world: dict[str, Path], adapter: Path) -> None:
    """Weights without adapter_config.json are not a peft adapter; the files found are listed."""
    (adapter / "adapter_config.json").unlink()
    (finding,) = check(world, adapter)
    assert finding.reason == "no_adapter_config" and "adapter_model.safetensors" in finding.message


def test_pickle_only_weights_are_refused_unopened(world: dict[str, Path], adapter: Path) -> None:
    """A .bin-only adapter is refused by name, and the pickle is never loaded (its payload
    would create a file if it were)."""

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(adapter / "PWNED"), "w"))

    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(Payload()))
    (finding,) = check(world, adapter)
    assert finding.reason == "pickle_only" and "adapter_model.bin" in finding.message
    assert not (adapter / "PWNED").exists()


def test_no_weights_at_all(world: dict[str, Path], adapter: Path) -> None:
    """A config without any weights file is reported as such."""
    (adapter / "adapter_model.safetensors").unlink()
    assert reasons(check(world, adapter)) == ["no_weights"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_weights_are_found_in_every_float_dtype(
    world: dict[str, Path], adapter: Path, dtype: str, bad: float
) -> None:
    """One NaN/Inf element in one tensor, in fp32, bf16 or fp16, is found and named."""
    import torch
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    tensors = {k: v.to(getattr(torch, dtype)) for k, v in load_file(str(path)).items()}
    name = sorted(tensors)[3]
    tensors[name].view(-1)[5] = bad
    save_file(tensors, str(path))
    found = errors(check(world, adapter))
    assert [f.reason for f in found] == ["nonfinite_weights"]
    assert name in found[0].message


def test_clean_bf16_adapter_passes(world: dict[str, Path], adapter: Path) -> None:
    """The bit-level check has no false alarm on a finite bf16 adapter (the NaN test's twin)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(path)).items()}, str(path))
    assert errors(check(world, adapter)) == []


def test_corrupt_safetensors(world: dict[str, Path], adapter: Path) -> None:
    """A truncated weights file is reported as corrupt, with its path."""
    path = adapter / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    (finding,) = check(world, adapter)
    assert finding.reason == "corrupt_weights" and str(path) in finding.message


def test_untrained_adapter_is_a_noop(world: dict[str, Path]) -> None:
    """peft's default init (every lora_B zero) cannot change any output: red before generation."""
    assert reasons(check(world, world["untrained"])) == ["noop_adapter"]


def test_rank_above_the_engine_limit(world: dict[str, Path]) -> None:
    """rank_pattern raising one module to 32 is caught although r is 8 (tensor shapes count)."""
    assert inspect_adapter(world["wide"]).rank == 32
    found = check(world, world["wide"], engine_caps=EngineCaps("vllm", max_lora_rank=16))
    assert reasons(found) == ["rank_too_high"]
    assert "rank 32" in found[0].message and "max_lora_rank 16" in found[0].message
    assert check(world, world["wide"], engine_caps=EngineCaps("vllm", max_lora_rank=32)) == []


def test_modules_and_dora_the_engine_cannot_serve(world: dict[str, Path], adapter: Path) -> None:
    """Target modules outside the engine's set, and DoRA on an engine without it, are named."""
    caps = EngineCaps("vllm", supported_modules=frozenset({"q_proj", "k_proj"}))
    (finding,) = check(world, adapter, engine_caps=caps)
    assert finding.reason == "unsupported_modules" and "['v_proj']" in finding.message
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    found = check(world, adapter, engine_caps=EngineCaps("vllm", supports_dora=False))
    assert reasons(found) == ["unsupported_adapter"] and "DoRA" in found[0].message


def test_malformed_adapter_config_names_file_line_and_field(
    world: dict[str, Path], adapter: Path
) -> None:
    """Invalid JSON gives file:line; a wrong-typed field is named with its value."""
    path = adapter / "adapter_config.json"
    good = path.read_text()
    path.write_text(good.replace('"r": 8,', '"r": 8,,'))
    (finding,) = check(world, adapter)
    assert finding.reason == "bad_adapter_config" and f"{path}:" in finding.message
    assert "invalid JSON" in finding.message
    path.write_text(good.replace('"r": 8,', '"r": "eight",'))
    (finding,) = check(world, adapter)
    assert "field 'r' has invalid value 'eight'" in finding.message


def test_base_mismatch_by_content_hash(world: dict[str, Path], adapter: Path) -> None:
    """Serving on another base (same architecture, other weights) is red, both hashes shown."""
    found = check(world, adapter, base_dir=world["other"], base_spec="other-base")
    assert reasons(found) == ["base_mismatch"]
    assert "other-base" in found[0].message and "weights sha256" in found[0].message


def test_base_mismatch_by_name_without_provenance(world: dict[str, Path], adapter: Path) -> None:
    """A plain peft adapter is judged by base_model_name_or_path: a hub id whose last part
    names the served base passes, another name fails. Missing provenance leaves the training
    data unknown: leakage unchecked is red, a warning only with --allow-unchecked-leakage."""
    (adapter / "qlgate-provenance.json").unlink()
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "someorg/base"}))
    assert reasons(check(world, adapter)) == ["leakage_unchecked"]
    found = check(world, adapter, allow_unchecked_leakage=True)
    assert errors(found) == []
    assert [f.reason for f in found] == ["provenance_missing", "leakage_unchecked"]
    assert "qlgate-provenance.json is absent, so the training data is unknown" in found[1].message
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "meta/Llama-3-8B"}))
    assert reasons(check(world, adapter)) == ["base_mismatch", "leakage_unchecked"]


def test_tokenizer_mismatch_in_the_adapter(world: dict[str, Path], adapter: Path) -> None:
    """Editing the adapter's tokenizer.json is caught against the training-time hash."""
    path = adapter / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    tokenizer["added_tokens"][0]["content"] = "<|changed|>"
    path.write_text(json.dumps(tokenizer))
    found = check(world, adapter)
    assert set(reasons(found)) == {"tokenizer_mismatch"}
    assert "tokenizer_sha256 recorded at training" in found[0].message


def test_tokenizer_config_change_is_a_mismatch(world: dict[str, Path], adapter: Path) -> None:
    """A changed special token in tokenizer_config.json is a tokenizer change too."""
    path = adapter / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "eos_token": "<|endoftext|>"}))
    assert set(reasons(check(world, adapter))) == {"tokenizer_mismatch"}


def test_base_tokenizer_resaved_with_load_time_keys_is_not_a_mismatch(
    world: dict[str, Path], adapter: Path, tmp_path: Path
) -> None:
    """A base whose tokenizer_config.json differs only in load-time keys (local_files_only,
    as a save_pretrained round trip writes) is the same tokenizer."""
    base = Path(shutil.copytree(world["base"], tmp_path / "base"))
    path = base / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "local_files_only": True}))
    assert check(world, adapter, base_dir=base) == []
    path.write_text(json.dumps({**json.loads(path.read_text()), "pad_token": "<|im_start|>"}))
    assert reasons(check(world, adapter, base_dir=base)) == ["tokenizer_mismatch"]


def test_template_mismatch_in_adapter_or_base(
    world: dict[str, Path], adapter: Path, tmp_path: Path
) -> None:
    """A changed chat template in the adapter copy, or in the base served, is red and named."""
    template = adapter / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_begin|>", 1))
    found = check(world, adapter)
    assert reasons(found) == ["template_mismatch"] and str(adapter) in found[0].message
    base = Path(shutil.copytree(world["base"], tmp_path / "base"))
    (base / "chat_template.jinja").write_text("{{ messages }}")
    clean = Path(shutil.copytree(world["adapter"], tmp_path / "clean"))
    found = check(world, clean, base_dir=base)
    assert reasons(found) == ["template_mismatch"] and str(base) in found[0].message


def test_leakage_names_the_golden_case_and_training_row(
    world: dict[str, Path], adapter: Path
) -> None:
    """A golden prompt that is a training ticket up to case and punctuation is leakage."""
    found = check(world, adapter, golden_prompts=GOLDEN)
    assert reasons(found) == ["leakage"]
    assert found[0].subjects == ("leaky",)
    assert f"{1:016x}" in found[0].message and "threshold 0.85" in found[0].message
    near = {"near": "I was charged twice for the same order last month."}
    assert check(world, adapter, golden_prompts=near) == []  # Jaccard ~0.7 < 0.85
    assert reasons(check(world, adapter, golden_prompts=near, leakage_threshold=0.6)) == ["leakage"]


def test_leakage_unchecked_is_red_unless_allowed(world: dict[str, Path], adapter: Path) -> None:
    """Training data absent on this machine (as in CI): red, naming the path and the way out;
    with --allow-unchecked-leakage a warning that says it was allowed."""
    path = adapter / "qlgate-provenance.json"
    record = json.loads(path.read_text())
    record["dataset"]["path"] = "/nowhere/data"
    path.write_text(json.dumps(record))
    found = check(world, adapter, golden_prompts=GOLDEN)
    assert reasons(found) == ["leakage_unchecked"]
    assert "/nowhere/data" in found[0].message and "--allow-unchecked-leakage" in found[0].message
    allowed = check(world, adapter, golden_prompts=GOLDEN, allow_unchecked_leakage=True)
    assert errors(allowed) == [] and [f.reason for f in allowed] == ["leakage_unchecked"]
    assert "leakage unchecked (allowed by --allow-unchecked-leakage)" in allowed[0].message


def test_bad_provenance(world: dict[str, Path], adapter: Path) -> None:
    """An unreadable provenance or another schema version is red with file and line/field."""
    path = adapter / "qlgate-provenance.json"
    good = json.loads(path.read_text())
    path.write_text(json.dumps({**good, "schema_version": 2}))
    (finding,) = check(world, adapter)
    assert finding.reason == "bad_provenance" and "schema_version" in finding.message
    path.write_text('{\n  "schema_version": 1,\n  oops\n}')
    (finding,) = check(world, adapter)
    assert finding.reason == "bad_provenance" and f"{path}:3:" in finding.message


def test_near_duplicates_exact_search() -> None:
    """Matches need Jaccard >= threshold; each query gets its best match; blanks match nothing."""
    corpus = ["where is my parcel it has not arrived", "refund for a broken kettle", "", "x"]
    queries = ["Where is my parcel? It has not arrived!", "reset my password please", "", "x"]
    found = near_duplicates(queries, corpus, threshold=0.85)
    assert [(m.query, m.match) for m in found] == [(0, 0), (3, 3)]
    assert found[0].similarity == pytest.approx(1.0)
    with pytest.raises(ValueError, match="threshold"):
        near_duplicates(queries, corpus, threshold=0.0)


def test_near_duplicates_finds_partial_overlap_at_lower_threshold() -> None:
    """A ticket with one word changed (Jaccard ~0.6) is found at 0.5 but not at 0.85."""
    corpus = [f"ticket number {i} about something unrelated entirely" for i in range(200)]
    corpus.append("my order arrived damaged and the box was soaking wet")
    query = ["my order arrived damaged and the box was completely wet"]
    assert [m.match for m in near_duplicates(query, corpus, threshold=0.5)] == [200]
    assert near_duplicates(query, corpus, threshold=0.85) == []


def test_driver_cache_skips_the_engine_on_an_unchanged_rerun(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """Through the real driver and HF engine (gen_cache.DriverCache): a re-run answers every
    request from the cache, identically; new adapter weights at the same path miss."""
    from safetensors.torch import load_file, save_file

    from qlgate_core.cases import GoldenCase
    from qlgate_pytest.driver import run_cases
    from qlgate_pytest.engines.base import EngineConfig, GenerateRequest, RankRequest, Role
    from qlgate_pytest.engines.hf import create
    from qlgate_pytest.gen_cache import DriverCache, GenCache, ModelIdentity

    adapter = Path(shutil.copytree(world["adapter"], tmp_path / "adapter"))
    cases = [
        GoldenCase(id="r1", prompt="refund please", system=SYSTEM_PROMPT, expected="returns",
                   labels=("billing", "returns")),
        GoldenCase(id="g1", prompt="hello", expected="hi", scorer="contains", max_new_tokens=3),
    ]  # fmt: skip
    engine = create(EngineConfig(world["base"], {"candidate": adapter, "baseline": None}))
    calls: list[str] = []

    class Counting:
        """The engine, with every bulk call recorded."""

        name = engine.name

        def rank(self, role: Role, requests: list[RankRequest]) -> Any:
            calls.append(f"rank:{role}")
            return engine.rank(role, requests)

        def generate(self, role: Role, requests: list[GenerateRequest]) -> Any:
            calls.append(f"gen:{role}")
            return engine.generate(role, requests)

    store = GenCache(tmp_path / ".qlgate_cache")

    def cache() -> DriverCache:
        identities = {
            "candidate": ModelIdentity.of(world["base"], adapter, world["base"]),
            "baseline": ModelIdentity.of(world["base"], None, world["base"]),
        }
        return DriverCache(store, identities, engine="hf", engine_version="test", sampling={})

    try:
        first = run_cases(Counting(), cases, cache=cache())  # type: ignore[arg-type]
        assert len(calls) == 4 and store.summary().entries == 4
        second = run_cases(Counting(), cases, cache=cache())  # type: ignore[arg-type]
        assert len(calls) == 4 and second == first
        weights = adapter / "adapter_model.safetensors"
        save_file({k: v * 2 for k, v in load_file(str(weights)).items()}, str(weights))
        run_cases(Counting(), cases, cache=cache())  # type: ignore[arg-type]
        assert calls[4:] == ["rank:candidate", "gen:candidate"]  # the baseline is still cached
    finally:
        engine.close()
