"""The base tokenizer's special tokens, found in record text before they reach training.

A turn that holds ``<|im_end|><|im_start|>assistant`` is not text to a tokenizer: its added
tokens are matched in the raw string before any BPE, so the record would train on a forged turn
boundary. Curation quarantines any turn that holds one.

Where the tokens come from (``load_special_tokens``): the base model's own tokenizer files
(``tokenizer.json`` ``added_tokens``, ``tokenizer_config.json`` ``added_tokens_decoder``), read
as JSON, so neither transformers nor the weights are loaded; for the embedded model, the cached
converted directory, else the GGUF's token table. Every added token marked special is screened,
and non-special added tokens that look like markup (no whitespace, a ``<``, ``>``, ``[``, ``]``
or ``|`` in them; Qwen's ``<tool_call>`` is one): plain-word added tokens would match ordinary
text. ``FALLBACK_MARKERS`` are screened always, whether or not a tokenizer was found: a
curated dataset may be trained on another base model than the one named here, and these
chat-template markers are never legitimate content of a turn.

Matching is deliberately wider than the tokenizer's: ASCII case is ignored and whitespace (or
zero-width characters) between a marker's pieces is allowed (``<| IM_START |>``), so a variant
that a normalising tokenizer, or a later template fix-up, maps to the token is caught too.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson

# Chat-template control markers of the common model families (ChatML/Qwen/SmolLM, Llama 2 and 3,
# Mistral, Gemma, Phi-3, DeepSeek, Command-R, GPT-OSS harmony). ``<s>``/``</s>`` are left out:
# they are also HTML, and are screened only when the named tokenizer really has them.
FALLBACK_MARKERS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|im_sep|>",
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>", "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>",
    "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
    "[AVAILABLE_TOOLS]", "[TOOL_CALLS]", "[TOOL_RESULTS]",
    "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endofprompt|>",
    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
    "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
    "<|SYSTEM_TOKEN|>", "<|start|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>",
    "<tool_call>", "</tool_call>",
)  # fmt: skip
_MARKUP = re.compile(r"[<>\[\]|｜]")
# What may sit between a marker's pieces and still be the marker to a lenient reader.
_GAP = r"[\s\u200b-\u200d\u2060\ufeff]*"
# A marker's pieces: runs of word characters, and single other characters.
_PIECE = re.compile(r"\w+|\S", re.UNICODE)


@dataclass(frozen=True)
class SpecialTokens:
    """The tokens screened, and where they came from (recorded in the manifest)."""

    tokens: tuple[str, ...]
    source: str  # short, for quarantine messages: "embedded model's tokenizer"
    location: str | None = None
    notes: tuple[str, ...] = field(default=())

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        # Longest first, so the reported token is the whole marker (``<|im_end|>`` over ``<|im``).
        alternatives = [_variant(t) for t in sorted(set(self.tokens), key=len, reverse=True)]
        return re.compile("|".join(alternatives), re.IGNORECASE)

    @cached_property
    def _firsts(self) -> tuple[str, ...] | None:
        # Every marker starts with one of a few punctuation characters, and ``in`` (a C-level
        # scan) is ~20x cheaper than the regex on text that holds none of them.
        firsts = {t[0] for t in self.tokens if t}
        if len(firsts) > 8 or any(c.isalnum() for c in firsts):
            return None
        return tuple(sorted(firsts))

    def may_hold(self, text: str) -> bool:
        """False when ``text`` certainly holds no token (cheap); True means: look (``find``)."""
        firsts = self._firsts
        if firsts is None:
            return True
        # A plain loop: ``any`` over a generator costs more than the scans themselves.
        for char in firsts:  # noqa: SIM110
            if char in text:
                return True
        return False

    def find(self, text: str) -> str | None:
        """The first special token (as written in ``text``) found in ``text``, or ``None``."""
        if not self.may_hold(text):
            return None
        match = self._pattern.search(text)
        return match.group(0) if match else None

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "location": self.location,
            "count": len(set(self.tokens)),
            "sha256": hashlib.sha256("\n".join(sorted(set(self.tokens))).encode()).hexdigest(),
            "notes": list(self.notes),
        }


def _variant(token: str) -> str:
    pieces = _PIECE.findall(token)
    return _GAP.join(re.escape(p) for p in pieces) if pieces else re.escape(token)


def fallback_tokens(note: str | None = None) -> SpecialTokens:
    source = "common chat-template markers; no base tokenizer"
    return SpecialTokens(FALLBACK_MARKERS, source, None, (note,) if note else ())


def tokens_from_tokenizer_files(directory: Path) -> tuple[str, ...]:
    """The screened added tokens of the tokenizer saved in ``directory`` (may be empty)."""
    found: list[tuple[str, bool]] = []
    tokenizer = directory / "tokenizer.json"
    if tokenizer.is_file():
        data = orjson.loads(tokenizer.read_bytes())
        for entry in data.get("added_tokens") or ():
            found.append((str(entry.get("content", "")), bool(entry.get("special"))))
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file():
        config = orjson.loads(config_path.read_bytes())
        for entry in (config.get("added_tokens_decoder") or {}).values():
            if isinstance(entry, dict):
                found.append((str(entry.get("content", "")), bool(entry.get("special"))))
        for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token"):
            value = config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                found.append((value, True))
        for value in config.get("additional_special_tokens") or ():
            if isinstance(value, str):
                found.append((value, True))
    return screened(found)


def screened(found: Iterable[tuple[str, bool]]) -> tuple[str, ...]:
    """Of ``(content, special)`` pairs, the tokens to screen (see the module docstring)."""
    out: dict[str, None] = {}
    for content, special in found:
        if not content.strip():
            continue
        markup = _MARKUP.search(content) is not None and not any(c.isspace() for c in content)
        if special or markup:
            out[content] = None
    return tuple(out)


def tokens_from_gguf(path: Path) -> tuple[str, ...]:
    """Control and user-defined tokens of a GGUF file's token table (its metadata only)."""
    import numpy as np
    from gguf import GGUFReader, TokenType

    reader = GGUFReader(str(path))
    tokens_field = reader.fields["tokenizer.ggml.tokens"]
    types_field = reader.fields["tokenizer.ggml.token_type"]
    kinds = [int(types_field.parts[i][0]) for i in types_field.data]
    special = {int(TokenType.CONTROL), int(TokenType.USER_DEFINED)}
    pairs = []
    for index, kind in zip(tokens_field.data, kinds, strict=True):
        if kind in special:
            text = bytes(np.asarray(tokens_field.parts[index])).decode("utf-8", "replace")
            pairs.append((text, kind == int(TokenType.CONTROL)))
    return screened(pairs)


@functools.lru_cache(maxsize=8)
def load_special_tokens(spec: str | None) -> SpecialTokens:
    """The tokens to screen for base model ``spec`` (``embedded``, a model directory or a
    cached hub id; ``none``: the fallback markers only). Never raises for a missing model: the
    fallback list is used and the reason is kept in ``notes`` (and so in the manifest)."""
    from training.errors import TrainingError
    from training.models import EMBEDDED, embedded_tokenizer_source, resolve

    name = (spec or EMBEDDED).strip() or EMBEDDED
    if name.lower() == "none":
        return fallback_tokens("no base tokenizer requested (--base-model none)")
    try:
        if name == EMBEDDED:
            kind, where = embedded_tokenizer_source()
            found = tokens_from_tokenizer_files(where) if kind == "dir" else tokens_from_gguf(where)
        else:
            where = resolve(name).path
            found = tokens_from_tokenizer_files(where)
    except (TrainingError, OSError, ValueError, KeyError, TypeError, ImportError) as exc:
        return fallback_tokens(f"tokenizer of {name!r} unavailable: {exc}")
    if not found:
        return fallback_tokens(f"tokenizer of {name!r} declares no special tokens")
    source = "embedded model's tokenizer" if name == EMBEDDED else f"{name}'s tokenizer"
    return SpecialTokens((*found, *FALLBACK_MARKERS), source, str(where))
