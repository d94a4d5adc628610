"""Building one training run: the base model (optionally 4-bit), the LoRA config, trl's
SFTConfig from our config and plan, and the trainer with per-epoch label evaluation.

Kept apart from ``train.py`` (which owns the run's life cycle: retries, staging, promotion) so
each stays one concept. Nothing here writes outside the run's scratch directory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from trl.trainer.sft_config import SFTConfig
from trl.trainer.sft_trainer import SFTTrainer

from training.config import RunPlan, TrainConfig
from training.errors import ConfigError
from training.formatting import CuratedData, Example, to_trl_dataset
from training.guard import GuardCallback, GuardPolicy
from training.label_eval import evaluate_labels, labelled

_ZERO_GRAD_HINT = (
    "4-bit on CPU: bitsandbytes zeroes LoRA gradients after any eval-mode forward of the model"
)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class LabelEval:
    """The labelled validation rows and label set scored at every evaluation."""

    examples: tuple[Example, ...]
    labels: tuple[str, ...]
    batch_size: int


class QlgateTrainer(SFTTrainer):
    """SFTTrainer whose evaluation also ranks labels (macro-F1) and keeps an eval history.

    The label metrics are added to the dict ``evaluate`` returns, which is what the Trainer uses
    to pick the best checkpoint, so ``metric_for_best_model = "eval_macro_f1"`` works.
    """

    def __init__(
        self,
        *args: Any,
        label_eval: LabelEval | None = None,
        compact_loss: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.label_eval = label_eval
        self.compact_loss = compact_loss
        self.eval_seconds = 0.0
        self.eval_history: list[dict[str, float]] = []

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """On CPU, project only the positions under the loss through the LM head.

        trl's fused head scores every position unless Triton is present; on CPU that costs a
        (tokens x vocab) projection and its backward for a handful of answer tokens (90% of a
        tiny-model step, ~15% of an embedded-model step here). This is trl's own compact path,
        without the Triton kernel: the same loss, normalised the same way.
        """
        if not self.compact_loss or return_outputs:
            return super().compute_loss(  # type: ignore[no-untyped-call]
                model, inputs, return_outputs, num_items_in_batch
            )
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        backbone = getattr(causal_lm, causal_lm.base_model_prefix)
        features = {k: v for k, v in inputs.items() if k != "labels"}
        hidden = backbone(**features, use_cache=False).last_hidden_state[:, :-1]
        labels = inputs["labels"][:, 1:]
        mask = labels != -100
        logits = causal_lm.get_output_embeddings()(hidden[mask]).float()
        total = torch.nn.functional.cross_entropy(logits, labels[mask], reduction="sum")
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return total / torch.as_tensor(count, device=total.device)

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        started = time.perf_counter()
        metrics: dict[str, float] = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.label_eval is not None and eval_dataset is None:
            scored = evaluate_labels(
                self.model,
                self.processing_class,
                self.label_eval.examples,
                self.label_eval.labels,
                batch_size=self.label_eval.batch_size,
            )
            extra = {
                f"{metric_key_prefix}_macro_f1": scored.macro_f1,
                f"{metric_key_prefix}_accuracy": scored.accuracy,
            }
            metrics.update(extra)
            self.log(dict(extra))
        self.eval_seconds += time.perf_counter() - started
        self.eval_history.append({"step": float(self.state.global_step), **metrics})
        return metrics


@dataclass
class TrainerRun:
    """A built trainer plus what the orchestration needs to report on it."""

    trainer: Any
    config: TrainConfig
    plan: RunPlan
    label_eval: LabelEval | None
    guard: GuardCallback | None
    best_metric: str | None
    evaluate_baseline: bool
    notes: list[str] = field(default_factory=list)

    def baseline_metrics(self) -> dict[str, Any]:
        """Label metrics of the untrained model (LoRA B = 0, so exactly the base model)."""
        if self.label_eval is None:
            return {}
        scored = evaluate_labels(
            self.trainer.model,
            self.trainer.processing_class,
            self.label_eval.examples,
            self.label_eval.labels,
            batch_size=self.label_eval.batch_size,
        )
        return {"baseline_macro_f1": scored.macro_f1, "baseline_accuracy": scored.accuracy}

    def final_metrics(self, result: Any) -> dict[str, Any]:
        """Metrics of the finished run; the best checkpoint is already loaded back."""
        trainer = self.trainer
        state = trainer.state
        out: dict[str, Any] = {
            "steps": int(state.global_step),
            "epochs": float(state.epoch or 0.0),
            "train_loss": float(result.training_loss),
            "train_losses": [
                [int(e["step"]), float(e["loss"])] for e in state.log_history if "loss" in e
            ],
        }
        if not self.plan.evaluate_in_process and self.config.eval.enabled:
            # 4-bit on CPU: no evaluation while training; training is over now, so the
            # bitsandbytes repack after an eval-mode forward can no longer hurt.
            trainer.label_eval = self.label_eval
            trainer.evaluate()
        history = trainer.eval_history
        if history:
            out["eval_history"] = history
            best = _best_entry(history, state.best_model_checkpoint)
            out.update({k: v for k, v in best.items() if k.startswith("eval_")})
            out["best_step"] = int(best["step"])
        if self.best_metric:
            out["best_metric"] = self.best_metric
        train_seconds = float(result.metrics.get("train_runtime", 0.0)) - trainer.eval_seconds
        tokens = float(state.num_input_tokens_seen or 0)
        out["train_tokens"] = int(tokens)
        out["train_seconds"] = round(train_seconds, 3)
        out["train_tokens_per_s"] = round(tokens / train_seconds, 2) if train_seconds > 0 else 0.0
        if self.plan.device == "cuda":
            out["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _best_entry(history: list[dict[str, float]], checkpoint: str | None) -> dict[str, float]:
    """The eval entry of the checkpoint the Trainer kept (its step is in the directory name)."""
    if checkpoint:
        step = float(Path(checkpoint).name.rpartition("-")[2] or -1)
        for entry in history:
            if entry["step"] == step:
                return entry
    return history[-1]


def load_model(base_path: Path, config: TrainConfig, plan: RunPlan) -> Any:
    """The base model on its device, 4-bit when the plan says so."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = _DTYPES[plan.compute_dtype]
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": config.model.attn_implementation,
    }
    if plan.quantization != "none":
        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type=plan.quantization,
            bnb_4bit_use_double_quant=config.model.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    if plan.device == "cuda":
        from accelerate import PartialState

        kwargs["device_map"] = {"": PartialState().local_process_index}
    elif plan.quantization != "none":
        kwargs["device_map"] = {"": "cpu"}
    return AutoModelForCausalLM.from_pretrained(str(base_path), **kwargs)


def lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def sft_config(
    config: TrainConfig, plan: RunPlan, output_dir: Path, best_metric: str | None, evaluate: bool
) -> SFTConfig:
    t = config.train
    checkpointing_kwargs: dict[str, Any] = {"use_reentrant": False}
    if t.selective_checkpointing:
        checkpointing_kwargs["selective"] = True
    if t.checkpoint_every_n_layers > 1:
        checkpointing_kwargs["every_n_layers"] = t.checkpoint_every_n_layers
    strategy = "epoch" if evaluate else "no"
    args = SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=config.eval.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=plan.optimizer,
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs=checkpointing_kwargs if t.gradient_checkpointing else None,
        bf16=plan.compute_dtype == "bf16",
        fp16=plan.compute_dtype == "fp16",
        use_cpu=plan.device == "cpu",
        seed=t.seed,
        max_length=t.max_length,
        packing=t.packing,
        padding_free=t.packing,
        completion_only_loss=True,
        eval_strategy=strategy,
        save_strategy=strategy,
        save_only_model=True,
        load_best_model_at_end=evaluate and best_metric is not None,
        metric_for_best_model=best_metric,
        greater_is_better=best_metric == "eval_macro_f1" if best_metric else None,
        logging_steps=t.logging_steps,
        # The guard must see NaN losses; the default filter would replace them by an average.
        logging_nan_inf_filter=False,
        # Padding-free rows hold no padding, and "non_padding" would miss every real
        # <|im_end|> (SmolLM2's pad token is its end-of-turn token).
        include_num_input_tokens_seen="all" if t.packing else "non_padding",
        use_liger_kernel=config.model.liger_kernels,
        report_to="none",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        disable_tqdm=False,
    )
    if plan.device == "cuda" and args.world_size == 1 and args.n_gpu > 1:
        # One process that sees several GPUs would get nn.DataParallel, which trl refuses; the
        # model is placed on one GPU, so this process trains there. Several GPUs: DDP through
        # `accelerate launch -m training train ...`.
        args._n_gpu = 1
    return args


def build_trainer(
    config: TrainConfig,
    plan: RunPlan,
    data: CuratedData,
    base_path: Path,
    output_dir: Path,
    callbacks: Sequence[Any],
) -> TrainerRun:
    """Model, tokenizer, datasets, guard and trainer for one attempt."""
    from transformers import AutoTokenizer

    notes = list(plan.notes)
    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    if tokenizer.chat_template is None:
        raise ConfigError(f"base model {base_path} has no chat template; qlgate trains chat models")
    validation = (
        data.validation[: config.eval.max_examples] if config.eval.max_examples else data.validation
    )
    evaluate = config.eval.enabled and bool(validation)
    if config.eval.enabled and not validation:
        notes.append("no validation rows: evaluation and best-checkpoint selection skipped")
    scored = labelled(validation, data.labels)
    label_eval = (
        LabelEval(tuple(scored), data.labels, config.eval.batch_size)
        if config.eval.label_f1 and scored and len(data.labels) >= 2
        else None
    )
    metric = config.eval.metric
    if metric == "auto":
        metric = "macro_f1" if label_eval is not None else "loss"
    if metric == "macro_f1" and label_eval is None and evaluate:
        raise ConfigError("eval.metric = 'macro_f1' but the validation rows carry no labels")
    in_process = evaluate and plan.evaluate_in_process
    best_metric = f"eval_{metric}" if in_process else None

    guard: GuardCallback | None = None
    all_callbacks = list(callbacks)
    if config.guard.enabled:
        g = config.guard
        policy = GuardPolicy(
            max_loss=g.max_loss,
            warmup_steps=g.warmup_steps if g.warmup_steps is not None else 0,
            spike_factor=g.spike_factor,
            spike_min_delta=g.spike_min_delta,
            spike_patience=g.spike_patience,
            median_window=g.median_window,
            min_history=g.min_history,
        )
        guard = GuardCallback(
            policy,
            check_gradients=g.check_gradients,
            warmup_ratio=config.train.warmup_ratio if g.warmup_steps is None else None,
            zero_gradient_hint=_ZERO_GRAD_HINT
            if plan.device == "cpu" and plan.quantization != "none"
            else "",
        )
        all_callbacks.append(guard)

    model = load_model(base_path, config, plan)
    trainer = QlgateTrainer(
        model=model,
        args=sft_config(config, plan, output_dir, best_metric, in_process),
        train_dataset=to_trl_dataset(data.train),
        eval_dataset=to_trl_dataset(validation) if evaluate else None,
        processing_class=tokenizer,
        peft_config=lora_config(config),
        callbacks=all_callbacks,
        label_eval=label_eval if in_process else None,
        compact_loss=plan.device == "cpu",
    )
    return TrainerRun(
        trainer=trainer,
        config=config,
        plan=plan,
        label_eval=label_eval,
        guard=guard,
        best_metric=best_metric,
        evaluate_baseline=in_process and config.eval.baseline and label_eval is not None,
        notes=notes,
    )
