"""A tiny random-weight Llama built locally from a config, for fast plumbing tests only.

It shares the embedded model's tokenizer (so chat templates and label tokens are realistic) but
has two layers of width 64: it loads in milliseconds and its outputs mean nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from training.models import resolve_base_model


def build_tiny_model(out: Path, *, seed: int = 0, tokenizer_from: Path | None = None) -> Path:
    """Write a random tiny Llama (safetensors + the embedded tokenizer) to ``out``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from or resolve_base_model()))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out
