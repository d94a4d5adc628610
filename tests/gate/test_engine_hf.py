"""The hf engine on a tiny random model: role switching, ranking maths, batching, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qlgate_core.errors import EngineError
from qlgate_pytest.engines.base import EngineConfig, GenerateRequest, Message, RankRequest
from qlgate_pytest.engines.hf import HFEngine
from qlgate_pytest.engines.registry import get_engine_factory

Adapters = Any  # tests/gate/conftest.py's Adapters (conftest modules are not importable)

LABELS = ("account", "billing", "returns", "shipping")
TICKETS = (
    "I was charged twice for one order.",
    "Where is my parcel?",
    "I cannot log in.",
    "How do I send the shoes back? They are too small and the box is damaged.",
    "Refund please.",
)


def conversation(text: str) -> tuple[Message, ...]:
    return (Message("system", "Route the ticket."), Message("user", text))


def rank_requests() -> list[RankRequest]:
    return [RankRequest(f"r{i}", conversation(t), LABELS) for i, t in enumerate(TICKETS)]


def gen_requests(max_new_tokens: int = 6) -> list[GenerateRequest]:
    return [
        GenerateRequest(f"g{i}", conversation(t), max_new_tokens) for i, t in enumerate(TICKETS)
    ]


def make(
    adapters: Adapters, candidate: Path, baseline: Path | None = None, batch_size: int = 3
) -> HFEngine:
    return HFEngine(
        EngineConfig(
            adapters.base, {"candidate": candidate, "baseline": baseline}, batch_size=batch_size
        )
    )


@pytest.fixture(scope="module")
def engine(tiny_adapters: Adapters) -> Iterator[HFEngine]:
    """Perturbed adapter as candidate, the base model as baseline."""
    eng = make(tiny_adapters, tiny_adapters.perturbed)
    yield eng
    eng.close()


def test_rank_matches_unbatched_full_sequence_loglikelihood(engine: HFEngine) -> None:
    """Cached, batched, left-padded ranking equals summing log-probs of prompt+label alone."""
    import torch

    for role in ("candidate", "baseline"):
        results = engine.rank(role, rank_requests())
        for request, result in zip(rank_requests(), results, strict=True):
            prompt = engine.prompt_ids(request.messages)
            for label in LABELS:
                cont = engine.continuation_ids(request.messages, label)
                with engine._role(role):
                    logits = engine.model(input_ids=torch.tensor([prompt + cont])).logits[0]
                logp = torch.log_softmax(logits.float(), dim=-1)
                naive = sum(float(logp[len(prompt) - 1 + t, cont[t]]) for t in range(len(cont)))
                assert result.scores[label] == pytest.approx(naive, abs=1e-4)
            assert result.best == max(LABELS, key=result.scores.__getitem__)


def test_continuation_is_the_templates_answer(engine: HFEngine) -> None:
    """A label's continuation is the label's tokens followed by the end-of-turn token."""
    cont = engine.continuation_ids(conversation("x"), "billing")
    assert cont[-1] in engine.eos_ids
    assert engine.tokenizer.decode(cont[:-1]) == "billing"


def test_prompt_uses_the_chat_template(engine: HFEngine) -> None:
    """Prompts are the tokenizer's chat template with the generation prompt."""
    messages = conversation("hello")
    text = engine.tokenizer.apply_chat_template(
        [m.as_dict() for m in messages], add_generation_prompt=True, tokenize=False
    )
    assert engine.tokenizer.decode(engine.prompt_ids(messages)) == text
    assert text.endswith("<|im_start|>assistant\n")


def test_batch_size_does_not_change_results(tiny_adapters: Adapters, engine: HFEngine) -> None:
    """Left padding and mask-derived positions make a batched row equal to the row alone."""
    alone = make(tiny_adapters, tiny_adapters.perturbed, batch_size=1)
    try:
        for got, ref in zip(
            alone.rank("candidate", rank_requests()),
            engine.rank("candidate", rank_requests()),
            strict=True,
        ):
            assert got.scores == pytest.approx(ref.scores, abs=1e-4)
        texts = [g.text for g in alone.generate("candidate", gen_requests())]
        assert texts == [g.text for g in engine.generate("candidate", gen_requests())]
    finally:
        alone.close()


def test_zero_adapter_equals_the_base_model(tiny_adapters: Adapters) -> None:
    """An adapter with LoRA B = 0 gives the baseline's scores and text exactly."""
    eng = make(tiny_adapters, tiny_adapters.zero)
    try:
        cand, base = eng.rank("candidate", rank_requests()), eng.rank("baseline", rank_requests())
        for c, b in zip(cand, base, strict=True):
            assert c.scores == pytest.approx(b.scores, abs=1e-6)
        assert [g.text for g in eng.generate("candidate", gen_requests())] == [
            g.text for g in eng.generate("baseline", gen_requests())
        ]
    finally:
        eng.close()


def test_perturbed_adapter_changes_scores_and_baseline_is_unadapted(
    tiny_adapters: Adapters, engine: HFEngine
) -> None:
    """The candidate role applies the adapter; the base baseline runs with it disabled."""
    cand = engine.rank("candidate", rank_requests())
    base = engine.rank("baseline", rank_requests())
    assert any(
        abs(c.scores["billing"] - b.scores["billing"]) > 1e-3
        for c, b in zip(cand, base, strict=True)
    )
    plain = make(tiny_adapters, tiny_adapters.zero)  # zero adapter == the base model
    try:
        for b, p in zip(base, plain.rank("candidate", rank_requests()), strict=True):
            assert b.scores == pytest.approx(p.scores, abs=1e-5)
    finally:
        plain.close()


def test_adapter_baseline_is_served_by_name(tiny_adapters: Adapters) -> None:
    """A second adapter as baseline scores exactly as that adapter does as a candidate."""
    both = make(tiny_adapters, tiny_adapters.perturbed, baseline=tiny_adapters.other)
    alone = make(tiny_adapters, tiny_adapters.other)
    try:
        for b, a in zip(
            both.rank("baseline", rank_requests()),
            alone.rank("candidate", rank_requests()),
            strict=True,
        ):
            assert b.scores == pytest.approx(a.scores, abs=1e-5)
        # and switching back restores the candidate
        first = both.rank("candidate", rank_requests()[:1])[0]
        again = make(tiny_adapters, tiny_adapters.perturbed).rank("candidate", rank_requests()[:1])
        assert first.scores == pytest.approx(again[0].scores, abs=1e-5)
    finally:
        both.close()
        alone.close()


def test_generation_is_greedy_ordered_and_counted(engine: HFEngine) -> None:
    """Generation is repeatable, in request order, within budget, with latency and counts."""
    requests = [*gen_requests(6), GenerateRequest("short", conversation("hi"), 2)]
    first = engine.generate("candidate", requests)
    second = engine.generate("candidate", requests)
    assert [g.key for g in first] == [r.key for r in requests]
    assert [g.text for g in first] == [g.text for g in second]
    for g, r in zip(first, requests, strict=True):
        assert g.error is None and 0 < g.output_tokens <= r.max_new_tokens
        assert g.prompt_tokens > 0 and g.latency_ms > 0


def test_describe_reports_cpu_float32(engine: HFEngine) -> None:
    """On CPU, dtype 'auto' is float32 (bench/README.md: bf16 LoRA layers are slower here)."""
    info = engine.describe()
    assert (info["engine"], info["device"], info["dtype"]) == ("hf", "cpu", "float32")
    assert set(info["versions"]) == {"torch", "transformers", "peft"}


def test_registry_builds_the_hf_engine(tiny_adapters: Adapters) -> None:
    """'hf' resolves through the registry to this engine's factory."""
    factory = get_engine_factory("hf")
    eng = factory(EngineConfig(tiny_adapters.base, {"candidate": tiny_adapters.zero}))
    try:
        assert eng.name == "hf"
        with pytest.raises(EngineError, match="unknown role"):
            eng.rank("baseline", rank_requests())
    finally:
        eng.close()


def test_bad_adapters_raise_engine_errors(
    tiny_adapters: Adapters, wide_adapter: Path, tmp_path: Path
) -> None:
    """Missing, pickled-only and mismatched adapters fail to load with a clear EngineError."""
    import shutil

    with pytest.raises(EngineError, match="does not exist"):
        make(tiny_adapters, tmp_path / "missing")
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_adapters.perturbed, pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(EngineError, match="only safetensors"):
        make(tiny_adapters, pickled)
    with pytest.raises(EngineError, match="does not load onto base model"):
        make(tiny_adapters, wide_adapter)
