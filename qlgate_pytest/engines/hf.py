"""The ``hf`` engine: transformers + peft on CPU or CUDA, both roles in one loaded model.

The base model is loaded once; each role's adapter is loaded once under the role's name. The
candidate runs with its adapter active; a base-model baseline runs inside
``model.disable_adapter()``, an adapter baseline by switching with ``set_adapter``. Both roles
therefore share weights, tokenizer, chat template, padding, batching and decoding.

Decoding is greedy and seeded. Prompts are left-padded so every row of a batch ends at the same
position, and position ids are derived from the attention mask exactly as ``generate`` does, so
a padded row sees the same positions as it would alone.

Ranking (``mode: rank``) scores each allowed label as the assistant's *whole* answer: the tokens
the chat template would emit after the generation prompt (label plus end-of-turn), summed
log-probabilities. The prompt is run once per request; its KV cache is then shared by all the
label continuations, which are scored in one more forward pass.

dtype: ``auto`` is float32 on CPU and bfloat16 on CUDA. On this project's CPU, unmerged LoRA
layers in bfloat16 ran slower than float32 (bench/bench_hf_dtype.py, bench/README.md).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from qlgate_pytest.errors import EngineError

if TYPE_CHECKING:
    import torch

_INSTALL = "pip install 'qlgate[cpu]'"
_DTYPES = ("float32", "bfloat16", "float16")


def create(config: EngineConfig) -> HFEngine:
    """Engine factory registered as ``hf``."""
    return HFEngine(config)


def check_adapter_dir(path: Path) -> None:
    """Refuse a directory that is not a safetensors peft adapter (pickles are never loaded)."""
    if not path.is_dir():
        raise EngineError(f"adapter directory {path} does not exist")
    if not (path / "adapter_config.json").is_file():
        raise EngineError(f"{path} has no adapter_config.json; it is not a peft adapter")
    if not (path / "adapter_model.safetensors").is_file():
        raise EngineError(
            f"{path} has no adapter_model.safetensors; only safetensors adapters are loaded"
        )


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


class HFEngine:
    """transformers + peft engine; see the module docstring for what it guarantees."""

    name = "hf"

    def __init__(self, config: EngineConfig) -> None:
        try:
            import torch
            from peft import PeftModel
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise EngineError(
                f"the hf engine needs torch, transformers and peft: {_INSTALL}"
            ) from exc
        self._torch = torch
        self._config = config
        self.device = _pick_device(config.device, torch)
        self.dtype_name = _pick_dtype(config.dtype, self.device)
        self.batch_size = max(1, config.batch_size)
        self.seed = config.seed
        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(str(config.base_model))
            base: Any = AutoModelForCausalLM.from_pretrained(
                str(config.base_model), dtype=getattr(torch, self.dtype_name)
            )
        except (OSError, ValueError) as exc:
            raise EngineError(
                f"cannot load base model {config.base_model}: {_error_text(exc)}"
            ) from exc
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise EngineError(f"the tokenizer of {config.base_model} has no chat template")
        tok = self.tokenizer
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        eos = base.generation_config.eos_token_id
        eos = tok.eos_token_id if eos is None else eos
        self.eos_ids: frozenset[int] = frozenset(eos if isinstance(eos, list) else [int(eos)])
        base.to(self.device)
        base.eval()
        self._adapter_names: dict[Role, str | None] = {}
        model: Any = None
        for role in ROLES:
            if role not in config.adapters:
                continue  # a role nobody asked for is not served
            path = config.adapters[role]
            if path is None:
                self._adapter_names[role] = None
                continue
            check_adapter_dir(path)
            try:
                if model is None:
                    model = PeftModel.from_pretrained(
                        base, str(path), adapter_name=role, is_trainable=False
                    )
                else:
                    model.load_adapter(str(path), adapter_name=role, is_trainable=False)
            except (RuntimeError, ValueError, KeyError, OSError) as exc:
                raise EngineError(
                    f"adapter {path} does not load onto base model {config.base_model}: "
                    f"{_error_text(exc)}"
                ) from exc
            self._adapter_names[role] = role
        self.model: Any = model if model is not None else base
        self.model.eval()
        self._is_peft = model is not None
        # transformers 5.2x renamed the forward's ``past_key_values`` to ``cache``.
        forward = inspect.signature(base.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward else "past_key_values"

    # -- identity -----------------------------------------------------------------------------

    def describe(self) -> Mapping[str, Any]:
        import peft
        import transformers

        return {
            "engine": self.name,
            "base_model": str(self._config.base_model),
            "adapters": {r: (str(p) if p else None) for r, p in self._config.adapters.items()},
            "device": self.device,
            "dtype": self.dtype_name,
            "batch_size": self.batch_size,
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
            elif self._is_peft:
                stack.enter_context(self.model.disable_adapter())
            yield

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
        """Token ids of the chat-templated prompt, ending with the assistant generation prompt."""
        return self._ids(self._render(messages, generation_prompt=True))

    def continuation_ids(self, messages: Sequence[Message], label: str) -> list[int]:
        """Tokens the template emits after the generation prompt when the answer is ``label``."""
        prefix = self._render(messages, generation_prompt=True)
        full = self._render([*messages, Message("assistant", label)], generation_prompt=False)
        if full.startswith(prefix) and full[len(prefix) :].strip():
            # Trailing whitespace after the end-of-turn token carries no information.
            return self._ids(full[len(prefix) :].rstrip())
        return [*self._ids(label), min(self.eos_ids)]

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        torch = self._torch
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
                mask[i, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

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
            prompts = [self.prompt_ids(r.messages) for r in requests]
        except Exception as exc:  # a template that rejects these messages fails every request
            return [Generation(r.key, "", 0.0, 0, 0, _error_text(exc)) for r in requests]
        # Group by length budget, then prompt length: less padding, and identical batches for
        # both roles, so the paired comparison sees identical numerics.
        order = sorted(
            range(len(requests)),
            key=lambda i: (requests[i].max_new_tokens, len(prompts[i]), requests[i].key),
        )
        for batch in _chunks(order, self.batch_size):
            budget = max(requests[i].max_new_tokens for i in batch)
            try:
                rows, latency_ms = self._generate_batch(role, [prompts[i] for i in batch], budget)
            except Exception as exc:  # reported per request; the gate turns it into a red reason
                for i in batch:
                    results[i] = Generation(
                        requests[i].key, "", 0.0, len(prompts[i]), 0, _error_text(exc)
                    )
                continue
            for i, row in zip(batch, rows, strict=True):
                tokens = self._cut(row, requests[i].max_new_tokens)
                text = self.tokenizer.decode(
                    [t for t in tokens if t not in self.eos_ids], skip_special_tokens=True
                )
                results[i] = Generation(
                    requests[i].key, str(text), latency_ms, len(prompts[i]), len(tokens)
                )
        return [r for r in results if r is not None]

    def _cut(self, row: Sequence[int], budget: int) -> list[int]:
        """Generated tokens up to and including the first end token, within ``budget``."""
        out: list[int] = []
        for token in row[:budget]:
            if token == self.pad_id and token not in self.eos_ids:
                break
            out.append(token)
            if token in self.eos_ids:
                break
        return out

    def _generate_batch(
        self, role: Role, prompts: Sequence[Sequence[int]], budget: int
    ) -> tuple[list[list[int]], float]:
        from transformers import GenerationConfig

        torch = self._torch
        ids, mask = self._left_pad(prompts)
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=False,
            num_beams=1,
            max_new_tokens=budget,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids),
        )
        torch.manual_seed(self.seed)
        start = time.perf_counter()
        with self._role(role):
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        latency_ms = (time.perf_counter() - start) * 1000.0
        new = out[:, ids.shape[1] :].tolist()
        return [[int(t) for t in row] for row in new], latency_ms

    # -- ranking ------------------------------------------------------------------------------

    def rank(self, role: Role, requests: Sequence[RankRequest]) -> list[Ranking]:
        self._check_role(role)
        results: list[Ranking | None] = [None] * len(requests)
        try:
            prompts = [self.prompt_ids(r.messages) for r in requests]
            conts = [[self.continuation_ids(r.messages, lab) for lab in r.labels] for r in requests]
        except Exception as exc:
            return [Ranking(r.key, {}, "", 0.0, 0, 0, _error_text(exc)) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: (len(prompts[i]), requests[i].key))
        for batch in _chunks(order, self.batch_size):
            try:
                scores, latency_ms = self._rank_batch(
                    role, [prompts[i] for i in batch], [conts[i] for i in batch]
                )
            except Exception as exc:
                for i in batch:
                    results[i] = Ranking(
                        requests[i].key, {}, "", 0.0, len(prompts[i]), 0, _error_text(exc)
                    )
                continue
            for i, row in zip(batch, scores, strict=True):
                labels = requests[i].labels
                best = _best_index(row)
                results[i] = Ranking(
                    requests[i].key,
                    dict(zip(labels, row, strict=True)),
                    labels[best],
                    latency_ms,
                    len(prompts[i]),
                    len(conts[i][best]),
                )
        return [r for r in results if r is not None]

    def _rank_batch(
        self,
        role: Role,
        prompts: Sequence[Sequence[int]],
        conts: Sequence[Sequence[Sequence[int]]],
    ) -> tuple[list[list[float]], float]:
        torch = self._torch
        ids, mask = self._left_pad(prompts)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        rows = [(b, j) for b in range(len(prompts)) for j in range(len(conts[b]))]
        start = time.perf_counter()
        with self._role(role):
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
            )
            first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
            firsts = torch.tensor([conts[b][j][0] for b, j in rows], device=self.device)
            owner = torch.tensor([b for b, _ in rows], device=self.device)
            totals = first[owner, firsts]
            width = max(len(conts[b][j]) for b, j in rows) - 1
            if width > 0:
                # The rest of every continuation in one pass over the shared prompt cache.
                cache = getattr(out, "cache", None)
                if cache is None:
                    cache = out.past_key_values
                cache.batch_select_indices(owner)
                # Feed each continuation but its last token; predict each but its first.
                ins = [list(conts[b][j][:-1]) for b, j in rows]
                pad = [[0] * (width - len(r)) for r in ins]
                tail, tail_mask, target = (
                    torch.tensor(t, dtype=torch.long, device=self.device)
                    for t in (
                        [r + [self.pad_id] * len(p) for r, p in zip(ins, pad, strict=True)],
                        [[1] * len(r) + p for r, p in zip(ins, pad, strict=True)],
                        [list(conts[b][j][1:]) + p for (b, j), p in zip(rows, pad, strict=True)],
                    )
                )
                row_mask = mask[owner]
                tail_positions = row_mask.sum(-1, keepdim=True) + torch.arange(
                    width, device=self.device
                )
                out2 = self.model(
                    input_ids=tail,
                    attention_mask=torch.cat([row_mask, tail_mask], dim=1),
                    position_ids=tail_positions,
                    use_cache=True,
                    **{self._cache_kwarg: cache},
                )
                logp = torch.log_softmax(out2.logits.float(), dim=-1)
                picked = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                totals = totals + (picked * tail_mask).sum(-1)
        latency_ms = (time.perf_counter() - start) * 1000.0
        flat = [float(x) for x in totals.tolist()]
        scores: list[list[float]] = [[] for _ in prompts]
        for (b, _), value in zip(rows, flat, strict=True):
            scores[b].append(value)
        return scores, latency_ms

    # -- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        self.model = None
        gc.collect()
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()


def _best_index(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the earlier label, deterministically."""
    best = 0
    for j, value in enumerate(scores):
        if value > scores[best]:
            best = j
    return best


def _pick_device(requested: str, torch: Any) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device {requested!r} requested but CUDA is not available")
    return requested


def _pick_dtype(requested: str, device: str) -> str:
    if requested == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if requested not in _DTYPES:
        raise EngineError(f"dtype {requested!r} is not one of {', '.join(_DTYPES)}")
    return requested
