"""Training throughput on a GPU: the reference QLoRA script against qlgate's trainer.

Both variants train LoRA r16 on all seven projections of the same random-weight model (a
Llama-3.1-8B shape by default) on the same random token sequences, with the loss on every token,
and are timed in this one process:

- ``reference``: the hard-coded recipe as such scripts are written: ``transformers.Trainer``,
  nf4 + double quant, bf16 compute, ``prepare_model_for_kbit_training``, gradient checkpointing,
  micro-batch 4, paged AdamW 8-bit, cosine LR 2e-4, warm-up .05, clipping .3; the model's own
  loss (full fp32 logits over the vocabulary).
- ``default``: qlgate's trainer (``training.trainer_setup``: trl's SFTTrainer with the fused,
  chunked LM head, the divergence guard) with qlgate's default config resolved for this GPU.
- other names: the default with the overrides listed in ``VARIANTS`` (levers, for the record).

Each variant loads the model afresh (patches such as Liger or selective checkpointing must not
leak into the next), runs ``--warmup`` untimed and ``--steps`` timed optimizer steps, and
reports tokens/s and peak allocated GPU memory. Results go to stdout as a table (ratio against
``reference``) and, one JSON object per variant, to ``--out``.

    python bench/bench_train_gpu.py --shape llama-8b --seq 512 --out results.jsonl
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES: dict[str, dict[str, Any]] = {
    "llama-8b": {
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
    },
    "llama-1b": {
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
    },
    "tiny": {
        "vocab_size": 49152,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}

# qlgate variants: overrides of the default config. Throughput only: no evaluation, and no
# absolute loss threshold (a random model's loss is ln(vocab) ~ 11.8); the guard's NaN, spike
# and zero-gradient checks stay on.
BENCH_OVERRIDES: dict[str, object] = {"eval.enabled": False, "guard.max_loss": None}
_PLAIN_GC = {"selective_checkpointing": False, "checkpoint_every_n_layers": 1}
VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "nf4-gc-mb4": {"micro_batch_size": 4, **_PLAIN_GC},
    "nf4-gc-mb16": {"micro_batch_size": 16, **_PLAIN_GC},
    "nf4-gc-mb32": {"micro_batch_size": 32, **_PLAIN_GC},
    "nf4-sac-mb16": {"micro_batch_size": 16, "selective_checkpointing": True},
    "nf4-gc2-mb16": {"micro_batch_size": 16, "checkpoint_every_n_layers": 2},
    "nf4-gc-mb16-liger": {"micro_batch_size": 16, "liger_kernels": True, **_PLAIN_GC},
    "nf4-gc-mb8-liger": {"micro_batch_size": 8, "liger_kernels": True, **_PLAIN_GC},
    "bf16-gc-mb16": {"quantization": "none", "micro_batch_size": 16, **_PLAIN_GC},
}


class StepTimer:
    """Wall time of each optimizer step, with the device synchronised at both ends."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.times: list[float] = []
        self._t0 = 0.0

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self._t0)


def as_callback(timer: StepTimer) -> Any:
    from transformers import TrainerCallback

    class _Callback(TrainerCallback):
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            timer.on_step_begin()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            timer.on_step_end()

    return _Callback()


def build_model_dir(shape: str, directory: Path, tokenizer_dir: Path) -> Path:
    """Random bf16 weights for ``shape`` saved once (from_pretrained is how both variants load)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (directory / "config.json").is_file():
        return directory
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, tie_word_embeddings=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model: Any = LlamaForCausalLM(config)
        model = model.to(torch.bfloat16)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=directory.parent))
    model.save_pretrained(str(staging), max_shard_size="5GB")
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(staging))
    del model
    free_memory()
    staging.rename(directory)
    return directory


def token_rows(n: int, seq: int, vocab: int, seed: int = 0) -> dict[str, list[list[int]]]:
    """Random full-length sequences; every token is under the loss."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq), generator=generator).tolist()
    return {"input_ids": ids, "labels": [list(r) for r in ids], "attention_mask": [[1] * seq] * n}


def run_reference(model_dir: Path, rows: dict[str, Any], steps: int, work: Path) -> StepTimer:
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        BitsAndBytesConfig,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    cuda = torch.cuda.is_available()
    quant = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(model_dir),
        quantization_config=quant,
        dtype=torch.bfloat16,
        device_map={"": 0 if cuda else "cpu"},
    )
    model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
        model, use_gradient_checkpointing=True
    )
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    )
    model = get_peft_model(model, lora)
    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        max_grad_norm=0.3,
        optim="paged_adamw_8bit" if cuda else "adamw_torch",
        bf16=True,
        use_cpu=not cuda,
        activation_checkpointing=True,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    timer = StepTimer("cuda" if cuda else "cpu")
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(rows),
        data_collator=default_data_collator,
        callbacks=[as_callback(timer)],
    )
    trainer.train()
    del trainer, model
    return timer


def run_qlgate(
    model_dir: Path, rows: dict[str, Any], steps: int, work: Path, overrides: dict[str, object]
) -> tuple[StepTimer, dict[str, Any]]:
    from datasets import Dataset
    from transformers import AutoTokenizer

    from training.config import Hardware, load_config, resolve_plan
    from training.guard import GuardCallback, GuardPolicy
    from training.trainer_setup import QlgateTrainer, load_model, lora_config, sft_config

    config = load_config(None, {**BENCH_OVERRIDES, **overrides, "max_steps": steps})
    cuda = torch.cuda.is_available()
    hw = Hardware(cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported())
    plan = resolve_plan(config, hw)
    timer = StepTimer(plan.device)
    guard = GuardCallback(GuardPolicy(max_loss=None), check_gradients=True)
    trainer = QlgateTrainer(
        model=load_model(model_dir, config, plan),
        args=sft_config(config, plan, work, None, False),
        train_dataset=Dataset.from_dict(rows),
        processing_class=AutoTokenizer.from_pretrained(str(model_dir)),
        peft_config=lora_config(config),
        callbacks=[as_callback(timer), guard],
        compact_loss=plan.device == "cpu",
    )
    trainer.train()
    del trainer
    return timer, {
        "plan": plan.__dict__,
        "train": config.train.__dict__,
        "model": config.model.__dict__,
    }


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure(name: str, args: argparse.Namespace, model_dir: Path, vocab: int) -> dict[str, Any]:
    from training.config import load_config

    overrides = VARIANTS.get(name, {})
    micro = (
        4
        if name == "reference"
        else load_config(None, {**BENCH_OVERRIDES, **overrides}).train.micro_batch_size
    )
    total_steps = args.warmup + args.steps
    rows = token_rows(micro * total_steps, args.seq, vocab)
    free_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    detail: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        if name == "reference":
            timer = run_reference(model_dir, rows, total_steps, Path(work))
        else:
            timer, detail = run_qlgate(model_dir, rows, total_steps, Path(work), overrides)
    timed = timer.times[args.warmup :]
    tokens = micro * args.seq * len(timed)
    result = {
        "variant": name,
        "micro_batch": micro,
        "seq": args.seq,
        "timed_steps": len(timed),
        "step_s_median": sorted(timed)[len(timed) // 2] if timed else None,
        "tokens_per_s": tokens / sum(timed) if timed else None,
        "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30
        if torch.cuda.is_available()
        else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30
        if torch.cuda.is_available()
        else None,
        "wall_s": time.perf_counter() - started,
        **detail,
    }
    free_memory()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-8b")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument(
        "--variants", default="reference,default," + ",".join(v for v in VARIANTS if v != "default")
    )
    parser.add_argument(
        "--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "qlgate-bench"
    )
    parser.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer directory")
    parser.add_argument("--out", type=Path, help="append one JSON line per variant here")
    parser.add_argument("--time-budget", type=float, default=1e9, help="start no variant after N s")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    started = time.perf_counter()
    args.model_dir.mkdir(parents=True, exist_ok=True)
    model_dir = build_model_dir(args.shape, args.model_dir / args.shape, args.tokenizer)
    print(f"model ready in {time.perf_counter() - started:.0f} s: {model_dir}", flush=True)
    results: list[dict[str, Any]] = []
    for name in args.variants.split(","):
        if time.perf_counter() - started > args.time_budget:
            print(f"skipped {name}: time budget spent", flush=True)
            continue
        try:
            result = measure(name, args, model_dir, SHAPES[args.shape]["vocab_size"])
        except Exception as exc:  # one failing lever must not lose the others' numbers
            result = {"variant": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            free_memory()
        results.append(result)
        print(json.dumps(result, default=str), flush=True)
        if args.out:
            with args.out.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(result, default=str) + "\n")
    print_table(results)
    return 0


def print_table(results: list[dict[str, Any]]) -> None:
    ref = next((r.get("tokens_per_s") for r in results if r["variant"] == "reference"), None)
    print(f"\n{'variant':<20} {'mb':>3} {'tokens/s':>10} {'vs ref':>7} {'peak alloc GiB':>15}")
    for r in results:
        if "error" in r:
            print(f"{r['variant']:<20} error: {r['error'][:80]}")
            continue
        tps = r["tokens_per_s"] or 0.0
        ratio = f"{tps / ref:.2f}x" if ref else "-"
        peak = f"{r['peak_alloc_gib']:.1f}" if r["peak_alloc_gib"] is not None else "-"
        print(f"{r['variant']:<20} {r['micro_batch']:>3} {tps:>10.0f} {ratio:>7} {peak:>15}")


if __name__ == "__main__":
    sys.exit(main())
