"""Teacher models for augmentation: a local transformers model (the embedded one by default) or
an OpenAI-compatible chat endpoint, behind one small protocol.

Both sample ``n`` completions per prompt with a seed. The local teacher batches prompts with left
padding and runs in bf16 (about 3x faster than fp32 for generation on this CPU, DESIGN.md §6);
the endpoint client uses the standard library so augmentation adds no dependency.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from training.errors import TeacherError

Chat = Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class Sampling:
    """Sampling settings shared by every teacher."""

    max_new_tokens: int = 64
    temperature: float = 0.9
    top_p: float = 0.95
    batch_size: int = 8
    timeout_s: float = 60.0
    threads: int = 1


class Teacher(Protocol):
    """Writes ``n`` sampled completions for each chat prompt."""

    def complete(self, prompts: Sequence[Chat], *, n: int, seed: int) -> list[list[str]]: ...

    def describe(self) -> dict[str, Any]: ...


def load_teacher(
    spec: str, *, sampling: Sampling, model_name: str = "default", api_key_env: str = ""
) -> Teacher:
    """``spec``: "embedded", a local model directory or cached hub id, or an http(s) base URL of
    an OpenAI-compatible server (e.g. ``http://127.0.0.1:8000/v1``)."""
    if spec.startswith(("http://", "https://")):
        api_key = os.environ.get(api_key_env) if api_key_env else None
        return OpenAITeacher(spec, model_name, sampling, api_key=api_key)
    from training.errors import ModelResolutionError
    from training.models import resolve

    try:
        resolved = resolve(spec)
    except ModelResolutionError as exc:
        raise TeacherError(f"teacher {spec!r}: {exc}") from None
    return HFTeacher(resolved.path, sampling, spec=spec)


class HFTeacher:
    """A causal LM from a local directory, generating with transformers."""

    def __init__(self, model_dir: Path, sampling: Sampling, *, spec: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(sampling.threads)
        self.sampling = sampling
        self.spec = spec or str(model_dir)
        self.model_dir = model_dir
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
        except (OSError, ValueError) as exc:
            raise TeacherError(f"cannot load teacher model from {model_dir}: {exc}") from None
        self.model.eval()  # type: ignore[no-untyped-call]
        # Decoder-only batches must be left-padded so every row's last token is real.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def describe(self) -> dict[str, Any]:
        return {"kind": "transformers", "spec": self.spec, "path": str(self.model_dir)}

    def complete(self, prompts: Sequence[Chat], *, n: int, seed: int) -> list[list[str]]:
        import torch

        results: list[list[str]] = []
        size = self.sampling.batch_size
        for start in range(0, len(prompts), size):
            batch = prompts[start : start + size]
            texts = [
                self.tokenizer.apply_chat_template(
                    [dict(m) for m in chat], tokenize=False, add_generation_prompt=True
                )
                for chat in batch
            ]
            encoded = self.tokenizer(texts, return_tensors="pt", padding=True)
            # One seed per batch position, so a rerun with the same inputs repeats itself.
            torch.manual_seed(seed + start)
            with torch.inference_mode():
                output = self.model.generate(
                    **encoded,
                    do_sample=True,
                    temperature=self.sampling.temperature,
                    top_p=self.sampling.top_p,
                    max_new_tokens=self.sampling.max_new_tokens,
                    num_return_sequences=n,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for row in range(len(batch)):
                results.append([text.strip() for text in decoded[row * n : (row + 1) * n]])
        return results


class OpenAITeacher:
    """``POST {base_url}/chat/completions`` with ``n`` choices and a seed per prompt."""

    def __init__(
        self, base_url: str, model: str, sampling: Sampling, *, api_key: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.sampling = sampling
        self._api_key = api_key

    def describe(self) -> dict[str, Any]:
        return {"kind": "openai-compatible", "base_url": self.base_url, "model": self.model}

    def complete(self, prompts: Sequence[Chat], *, n: int, seed: int) -> list[list[str]]:
        results = []
        for index, chat in enumerate(prompts):
            choices: list[str] = []
            attempt = 0
            # Some servers ignore ``n`` and return one choice; ask again with a new seed.
            while len(choices) < n and attempt < n:
                choices.extend(self._request(chat, n - len(choices), seed + index * 1000 + attempt))
                attempt += 1
            results.append(choices[:n])
        return results

    def _request(self, chat: Chat, n: int, seed: int) -> list[str]:
        body = {
            "model": self.model,
            "messages": [dict(m) for m in chat],
            "n": n,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "max_tokens": self.sampling.max_new_tokens,
            "seed": seed,
        }
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = f"{self.base_url}/chat/completions"
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.sampling.timeout_s) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise TeacherError(f"teacher endpoint {url} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise TeacherError(f"teacher endpoint {url} unreachable: {exc}") from None
        except ValueError:
            raise TeacherError(f"teacher endpoint {url} returned invalid JSON") from None
        try:
            choices = payload["choices"]
            return [str(choice["message"]["content"] or "").strip() for choice in choices]
        except (KeyError, TypeError):
            raise TeacherError(
                f"teacher endpoint {url} returned no choices[].message.content"
            ) from None
