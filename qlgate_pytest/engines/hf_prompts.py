"""Chat-templated prompts and label continuations, as token ids, for the ``hf`` engine.

Preparing inputs is pure CPU work that a GPU waits for, so it is done in bulk: each request's
prompt is rendered once (not once more per label), and all texts of a call are tokenized in one
call of the fast tokenizer's Rust backend (the same ids as ``tokenizer(text)``; slow tokenizers
go through the Python API).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qlgate_pytest.engines.base import Message

Messages = Sequence[Message]


class Prompts:
    """Renders messages with the tokenizer's chat template and tokenizes them."""

    def __init__(self, tokenizer: Any, eos_ids: frozenset[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self._backend = getattr(tokenizer, "backend_tokenizer", None)

    def render(self, messages: Messages, *, generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(
            [m.as_dict() for m in messages],
            add_generation_prompt=generation_prompt,
            tokenize=False,
        )
        return str(text)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens added around it."""
        if not texts:
            return []
        if self._backend is not None:
            return [list(e.ids) for e in self._backend.encode_batch(list(texts), False)]
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [[int(t) for t in row] for row in ids]

    def prompts(self, conversations: Sequence[Messages]) -> list[list[int]]:
        """Token ids of each chat-templated prompt, ending with the assistant generation prompt."""
        return self.encode([self.render(m, generation_prompt=True) for m in conversations])

    def prompts_and_continuations(
        self, requests: Sequence[tuple[Messages, Sequence[str]]]
    ) -> tuple[list[list[int]], list[list[list[int]]]]:
        """Prompt ids and, per label, the tokens the template emits when it is the answer.

        A continuation is the text the template adds after the generation prompt for an
        assistant turn holding the label (label plus end-of-turn; trailing whitespace after the
        end-of-turn carries no information); if the template does not extend the prompt that
        way, the label's tokens plus the end-of-sequence token.
        """
        heads = [self.render(m, generation_prompt=True) for m, _ in requests]
        tails: list[str] = []
        fallback: list[bool] = []  # the template did not extend the prompt: label + eos
        for (messages, labels), head in zip(requests, heads, strict=True):
            for label in labels:
                full = self.render(
                    [*messages, Message("assistant", label)], generation_prompt=False
                )
                rest = full[len(head) :] if full.startswith(head) else ""
                fallback.append(not rest.strip())
                tails.append(label if fallback[-1] else rest.rstrip())
        ids = self.encode(heads + tails)
        prompt_ids, tail_ids = ids[: len(heads)], ids[len(heads) :]
        eos = min(self.eos_ids)
        conts: list[list[list[int]]] = []
        k = 0
        for _, labels in requests:
            row = []
            for _ in labels:
                row.append([*tail_ids[k], eos] if fallback[k] else tail_ids[k])
                k += 1
            conts.append(row)
        return prompt_ids, conts

    def prompt_ids(self, messages: Messages) -> list[int]:
        return self.prompts([messages])[0]

    def continuation_ids(self, messages: Messages, label: str) -> list[int]:
        return self.prompts_and_continuations([(messages, [label])])[1][0][0]
