"""The ``hf`` engine: transformers + peft on CPU or CUDA, both roles in one loaded model.

The base model is loaded once; each role's adapter is loaded once under the role's name. The
candidate runs with its adapter active; a base-model baseline runs inside
``model.disable_adapter()``, an adapter baseline by switching with ``set_adapter``. Both roles
therefore share weights, tokenizer, chat template, padding, batching and decoding.

Speed (bench/README.md, sections bench_hf_dtype and bench_hf_gpu):

- an adapter role runs with its LoRA merged into separate copies of the weights, and every LoRA
  layer is replaced by its plain base layer for the pass, then put back
  (:mod:`~qlgate_pytest.engines.hf_merge`); the base weights are never modified, so the base
  baseline is bit-identical to the model without adapters. ``extra["merge"] = False`` keeps
  peft's unmerged LoRA (so do adapters that cannot be merged this way: DoRA, LoRA bias,
  embedding LoRA, ``modules_to_save``);
- batches are sized by a token budget (``extra["max_batch_tokens"]``, default 1,024 on CPU and
  32,768 on CUDA) after sorting by length, with ``batch_size`` as the minimum rows per batch;
- ranking runs a prefix shared by a group's prompts once and each prompt once; the label
  continuations reuse their KV (:mod:`~qlgate_pytest.engines.hf_rank`).

Decoding is greedy and seeded. Prompts are left-padded and position ids come from the attention
mask, so a padded row sees the positions it would alone. dtype ``auto`` is float32 on CPU and
bfloat16 on CUDA.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from qlgate_core.errors import EngineError
from qlgate_pytest.adapter_record import engine_adapter_sha256
from qlgate_pytest.engines import hf_loading as loading
from qlgate_pytest.engines.base import (
    EngineConfig,
    GenerateRequest,
    Generation,
    Message,
    Ranking,
    RankRequest,
    Role,
)
from qlgate_pytest.engines.hf_batching import best_index, cut, plan_batches, shared_prefix_len
from qlgate_pytest.engines.hf_generate import generate_batch
from qlgate_pytest.engines.hf_loading import check_adapter_dir, error_text
from qlgate_pytest.engines.hf_merge import LoraBypass, base_bypass_ok, mergeable
from qlgate_pytest.engines.hf_prompts import Prompts
from qlgate_pytest.engines.hf_rank import RankPasses

__all__ = ["HFEngine", "check_adapter_dir", "create"]

_DEFAULT_BATCH_TOKENS = {"cpu": 1024, "cuda": 32768}


def create(config: EngineConfig) -> HFEngine:
    """Engine factory registered as ``hf``."""
    return HFEngine(config)


class HFEngine:
    """transformers + peft engine; see the module docstring for what it guarantees.

    ``base`` and ``tokenizer`` may be passed already built (benchmarks build random-weight models
    from a config); otherwise both load from ``config.base_model``.
    """

    name = "hf"

    def __init__(self, config: EngineConfig, *, base: Any = None, tokenizer: Any = None) -> None:
        torch = loading.import_stack()
        self._torch = torch
        self._config = config
        self.device = loading.pick_device(config.device, torch)
        self.dtype_name = loading.pick_dtype(config.dtype, self.device)
        self.batch_size = max(1, config.batch_size)
        self.max_batch_tokens = _positive_int(
            config.extra.get(
                "max_batch_tokens", _DEFAULT_BATCH_TOKENS.get(self.device.split(":")[0], 1024)
            ),
            "max_batch_tokens",
        )
        self.seed = config.seed
        if tokenizer is None:
            tokenizer = loading.load_tokenizer(config.base_model)
        else:
            loading.check_tokenizer(tokenizer, str(config.base_model))
        self.tokenizer: Any = tokenizer
        if base is None:
            base = loading.load_base(config.base_model, self.dtype_name, torch)
        self.pad_id, self.eos_ids = loading.end_ids(tokenizer, base)
        self._prompts = Prompts(tokenizer, self.eos_ids)
        base.to(self.device)
        base.eval()
        # The identity of the files as loaded (config and weights): describe() reports it, and
        # the report refuses to vouch for files that changed after this point.
        self.adapter_sha256 = engine_adapter_sha256(config.adapters)
        attached = loading.attach_adapters(base, config)
        self.model: Any = attached.model
        self._adapter_names = attached.adapter_names
        self._is_peft = attached.is_peft
        want_merge = bool(config.extra.get("merge", True))
        self._bypass = LoraBypass(self.model) if self._is_peft else None
        self._base_bypass = want_merge and self._is_peft and base_bypass_ok(self.model)
        self.merge_status: dict[str, str] = {}
        for adapter in (a for a in self._adapter_names.values() if a is not None):
            reason = mergeable(self.model, adapter) if want_merge else "merging is off"
            self.merge_status[adapter] = "merged" if reason is None else f"unmerged: {reason}"
        self._passes = RankPasses(
            self.model, torch, self.device, self.pad_id, loading.cache_kwarg(base)
        )

    # -- identity -----------------------------------------------------------------------------

    def describe(self) -> Mapping[str, Any]:
        import peft
        import transformers

        return {
            "engine": self.name,
            "base_model": str(self._config.base_model),
            "adapters": {r: (str(p) if p else None) for r, p in self._config.adapters.items()},
            "adapter_sha256": dict(self.adapter_sha256),
            "device": self.device,
            "dtype": self.dtype_name,
            "batch_size": self.batch_size,
            "max_batch_tokens": self.max_batch_tokens,
            "lora": dict(self.merge_status),
            "seed": self.seed,
            "decoding": "greedy",
            "versions": {m.__name__: m.__version__ for m in (self._torch, transformers, peft)},
        }

    # -- roles --------------------------------------------------------------------------------

    def _check_role(self, role: Role) -> None:
        if role not in self._adapter_names:
            served = list(self._adapter_names)
            raise EngineError(f"unknown role {role!r}; this engine serves {served}")

    @contextlib.contextmanager
    def _role(self, role: Role) -> Iterator[None]:
        self._check_role(role)
        adapter = self._adapter_names[role]
        with self._torch.inference_mode(), contextlib.ExitStack() as stack:
            if adapter is not None:
                self.model.set_adapter(adapter)
                if self._bypass is not None and self.merge_status.get(adapter) == "merged":
                    stack.enter_context(self._bypass.active(adapter))
            elif self._bypass is not None and self._base_bypass:
                stack.enter_context(self._bypass.active(None))
            elif self._is_peft:
                stack.enter_context(self.model.disable_adapter())
            yield

    # -- prompts ------------------------------------------------------------------------------

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the chat-templated prompt, ending with the assistant generation prompt."""
        return self._prompts.prompt_ids(messages)

    def continuation_ids(self, messages: Sequence[Message], label: str) -> list[int]:
        """Tokens the template emits after the generation prompt when the answer is ``label``."""
        return self._prompts.continuation_ids(messages, label)

    # -- generation ---------------------------------------------------------------------------

    def warm_up(self) -> None:
        probe = (Message("user", "Hello"),)
        for role in self._adapter_names:
            self.generate(role, [GenerateRequest("warm-up", probe, max_new_tokens=2)])
            self.rank(role, [RankRequest("warm-up", probe, ("yes", "no"))])

    def generate(self, role: Role, requests: Sequence[GenerateRequest]) -> list[Generation]:
        self._check_role(role)
        results: list[Generation | None] = [None] * len(requests)
        try:
            prompts = self._prompts.prompts([r.messages for r in requests])
        except Exception as exc:  # a template that rejects these messages fails every request
            return [Generation(r.key, "", 0.0, 0, 0, error_text(exc)) for r in requests]
        # Grouped by length budget (one generate call decodes to its longest budget), then sized
        # by tokens; the plan is the same for both roles, so their numerics match.
        batches = plan_batches(
            [len(p) + r.max_new_tokens for p, r in zip(prompts, requests, strict=True)],
            max_tokens=self.max_batch_tokens,
            min_rows=self.batch_size,
            groups=[r.max_new_tokens for r in requests],
            tie_break=[r.key for r in requests],
        )
        for batch in batches:
            budget = max(requests[i].max_new_tokens for i in batch)
            try:
                with self._role(role):
                    rows, latency_ms = generate_batch(
                        self.model,
                        self._torch,
                        self.device,
                        [prompts[i] for i in batch],
                        budget=budget,
                        pad_id=self.pad_id,
                        eos_ids=self.eos_ids,
                        seed=self.seed,
                    )
            except Exception as exc:  # reported per request; the gate turns it into a red reason
                for i in batch:
                    results[i] = Generation(
                        requests[i].key, "", 0.0, len(prompts[i]), 0, error_text(exc)
                    )
                continue
            for i, row in zip(batch, rows, strict=True):
                tokens = cut(row, requests[i].max_new_tokens, self.pad_id, self.eos_ids)
                text = self.tokenizer.decode(
                    [t for t in tokens if t not in self.eos_ids], skip_special_tokens=True
                )
                results[i] = Generation(
                    requests[i].key, str(text), latency_ms, len(prompts[i]), len(tokens)
                )
        return [r for r in results if r is not None]

    # -- ranking ------------------------------------------------------------------------------

    def rank(self, role: Role, requests: Sequence[RankRequest]) -> list[Ranking]:
        self._check_role(role)
        results: list[Ranking | None] = [None] * len(requests)
        try:
            prompts, conts = self._prompts.prompts_and_continuations(
                [(r.messages, r.labels) for r in requests]
            )
        except Exception as exc:
            return [Ranking(r.key, {}, "", 0.0, 0, 0, error_text(exc)) for r in requests]
        # Requests that differ only in their last message share the template's tokens up to it.
        groups = [r.messages[:-1] for r in requests]
        prefix = _group_prefixes(groups, prompts)
        widths = [
            len(p) - prefix[g][0] + len(r.labels) * max(len(c) for c in cs)
            for p, r, cs, g in zip(prompts, requests, conts, groups, strict=True)
        ]
        batches = plan_batches(
            widths,
            max_tokens=self.max_batch_tokens,
            min_rows=self.batch_size,
            groups=groups,
            tie_break=[r.key for r in requests],
        )
        cache_for: tuple[Any, Any] = (None, None)  # (group, its prefix cache) for this role
        for batch in batches:
            group = groups[batch[0]]
            n, head = prefix[group]
            try:
                with self._role(role):
                    start = time.perf_counter()
                    if n and cache_for[0] != group:
                        cache_for = (group, self._passes.prefix_cache(head))
                    scores = self._passes.score(
                        n,
                        cache_for[1] if n else None,
                        [prompts[i][n:] for i in batch],
                        [conts[i] for i in batch],
                    )
                    latency_ms = (time.perf_counter() - start) * 1000.0
            except Exception as exc:
                for i in batch:
                    results[i] = Ranking(
                        requests[i].key, {}, "", 0.0, len(prompts[i]), 0, error_text(exc)
                    )
                continue
            for i, row in zip(batch, scores, strict=True):
                labels = requests[i].labels
                best = best_index(row)
                results[i] = Ranking(
                    requests[i].key,
                    dict(zip(labels, row, strict=True)),
                    labels[best],
                    latency_ms,
                    len(prompts[i]),
                    len(conts[i][best]),
                )
        return [r for r in results if r is not None]

    # -- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        if self._bypass is not None:
            self._bypass.clear()
        self.model = None
        self._passes.model = None
        gc.collect()
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()


def _group_prefixes(
    groups: Sequence[tuple[Message, ...]], prompts: Sequence[Sequence[int]]
) -> dict[tuple[Message, ...], tuple[int, list[int]]]:
    """Per group: (length, tokens) of the prefix its prompts share, or (0, []) if not worth it."""
    members: dict[tuple[Message, ...], list[Sequence[int]]] = {}
    for group, prompt in zip(groups, prompts, strict=True):
        members.setdefault(group, []).append(prompt)
    out: dict[tuple[Message, ...], tuple[int, list[int]]] = {}
    for group, rows in members.items():
        n = shared_prefix_len(rows)
        out[group] = (n, list(rows[0][:n]))
    return out


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EngineError(f"hf engine option {name} must be a positive integer, got {value!r}")
    return value
