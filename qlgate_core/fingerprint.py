"""Content hashes shared by the dataset manifest, adapter provenance and the gate's preflight.

Hashes are over file *contents* in a canonical order, so a copied or re-saved directory with the
same bytes has the same identity, and a retrained adapter at the same path does not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20

# Files that define a model's weights; tokenizer files are hashed separately so a tokenizer change
# is reported as such (the "silent tokenizer" failure) rather than as a different model.
WEIGHT_SUFFIXES = (".safetensors",)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON value in canonical form (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return sha256_bytes(text.encode("utf-8"))


def sha256_files(root: Path, names: Iterable[str]) -> str:
    """Hash of several files under ``root``: each name and content, in sorted order."""
    digest = hashlib.sha256()
    for name in sorted(set(names)):
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(sha256_file(root / name).encode("ascii") + b"\n")
    return digest.hexdigest()


def weights_sha256(model_dir: Path) -> str:
    """Hash of every safetensors file in a model or adapter directory."""
    names = [p.name for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    return sha256_files(model_dir, names)


def tokenizer_sha256(model_dir: Path) -> str:
    """Hash of the tokenizer files present (vocabulary, merges, special tokens, config)."""
    names = [n for n in TOKENIZER_FILES if (model_dir / n).is_file()]
    return sha256_files(model_dir, names)


def chat_template_sha256(template: str | None) -> str:
    """Hash of a chat template string; ``None`` (no template) hashes to a fixed marker."""
    return sha256_bytes((template if template is not None else "<no chat template>").encode())


def read_chat_template(model_dir: Path) -> str | None:
    """The chat template as saved by transformers 5 (``chat_template.jinja``) or older versions."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(value, str):
            return value
    return None
