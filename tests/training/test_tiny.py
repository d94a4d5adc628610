"""The tiny random-weight model used by plumbing tests."""

from __future__ import annotations

from pathlib import Path

from training.tiny import build_tiny_model


def test_tiny_model_loads_and_generates(tmp_path: Path) -> None:
    """The tiny model is a loadable Llama with the embedded tokenizer and its chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = build_tiny_model(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert tokenizer.chat_template is not None
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt"
    )
    input_ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    generated = model.generate(input_ids, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == input_ids.shape[1] + 3
