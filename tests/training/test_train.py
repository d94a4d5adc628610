"""The trainer end to end: adapters with provenance, the guard, OOM handling, the CLI, and the
parts it is built from (formatting, label ranking). Plumbing on the tiny random model; behaviour
that needs a real model on the embedded one (``slow``)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from qlgate_core.fingerprint import (
    chat_template_sha256,
    read_chat_template,
    sha256_file,
    tokenizer_sha256,
    weights_sha256,
)
from training.errors import ConfigError, DataError, DivergenceDetected, OutOfMemory
from training.formatting import load_curated, render_continuation, render_prompt, to_example
from training.label_eval import best_label, evaluate_labels, label_metrics, rank_labels
from training.provenance import FILENAME, read_provenance
from training.sample_task import LABELS, SYSTEM_PROMPT
from training.train import choose_threads, is_out_of_memory, next_oom_step, train_adapter

torch.set_num_threads(1)

# Plumbing runs on the tiny random model, whose loss sits at ln(vocab) ~ 10.8 forever: the
# absolute threshold is raised so only the rule under test can fire.
TINY = {"max_steps": 3, "micro_batch_size": 2, "guard.max_loss": 50.0, "eval.batch_size": 8}

_TICKETS = {
    "account": ["I cannot log in to my account", "Please reset my password", "Change my email"],
    "billing": ["I was charged twice", "My card was declined", "Send me an invoice please"],
    "returns": ["I want to return these shoes", "How do I send back the blender", "Exchange size"],
    "shipping": [
        "My package has not arrived",
        "Tracking says delivered, nothing here",
        "Ship to Canada?",
    ],
}


def build_curated(out: Path, n_train: int = 24, n_val: int = 8) -> Path:
    """A curated dataset directory in the contract's format (dataset/ + manifest.json)."""
    from datasets import Dataset, DatasetDict

    def rows(n: int, offset: int) -> list[dict[str, Any]]:
        result = []
        for i in range(n):
            label = LABELS[i % len(LABELS)]
            text = _TICKETS[label][(i // len(LABELS) + offset) % 3] + f" (order {1000 + i})"
            messages = [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": text},
                {"role": "assistant", "content": label},
            ]
            digest = hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:16]
            result.append(
                {
                    "id": digest,
                    "messages": messages,
                    "label": label,
                    "source": "human",
                    "metadata": "{}",
                }
            )
        return result

    DatasetDict(
        {
            "train": Dataset.from_list(rows(n_train, 0)),
            "validation": Dataset.from_list(rows(n_val, 1)),
        }
    ).save_to_disk(str(out / "dataset"))
    manifest = {
        "schema_version": 1,
        "content_sha256": "0" * 64,
        "labels": list(LABELS),
        "counts": {"train": n_train, "validation": n_val},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_curated(tmp_path_factory.mktemp("curated"))


def _leftovers(parent: Path) -> list[str]:
    """Scratch or staging directories a run left beside its output."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


class PoisonAt(TrainerCallback):
    """Fills one LoRA weight with NaN at the start of a step (an injected divergence)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        if state.global_step + 1 == self.step:
            _name, param = next((n, p) for n, p in model.named_parameters() if "lora_B" in n)
            with torch.no_grad():
                param.fill_(float("nan"))


class ZeroGrads(TrainerCallback):
    """Zeroes every gradient before the optimizer step, as the bitsandbytes CPU defect does."""

    def on_pre_optimizer_step(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.zero_()


class OomWhenBatchAbove(TrainerCallback):
    """Raises CUDA's OutOfMemoryError on the first step when the micro-batch is too large."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sizes: list[int] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.sizes.append(args.per_device_train_batch_size)
        if args.per_device_train_batch_size > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


# ---- plumbing on the tiny model ----------------------------------------------------------


def test_tiny_run_promotes_adapter_with_provenance(tiny: Path, data: Path, tmp_path: Path) -> None:
    """A few steps produce ADAPTER_DIR with peft files, the base tokenizer and template, and a
    provenance whose hashes match what the gate recomputes."""
    out = train_adapter(data, tmp_path / "adapter", overrides={**TINY, "base_model": str(tiny)})
    names = {p.name for p in out.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        FILENAME,
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    } <= names
    record = read_provenance(out)
    assert record.base_model.path == str(tiny)
    assert record.base_model.weights_sha256 == weights_sha256(tiny)
    assert record.tokenizer_sha256 == tokenizer_sha256(tiny) == tokenizer_sha256(out)
    assert record.chat_template_sha256 == chat_template_sha256(read_chat_template(tiny))
    assert record.chat_template_sha256 == chat_template_sha256(read_chat_template(out))
    assert record.dataset.manifest_sha256 == sha256_file(data / "manifest.json")
    assert record.dataset.content_sha256 == "0" * 64
    assert record.adapter_weights_sha256 == weights_sha256(out)
    assert record.config["train"]["max_steps"] == 3
    assert record.config["resolved"]["device"] == "cpu"
    assert record.metrics["steps"] == 3 and len(record.metrics["train_losses"]) == 3
    assert "eval_loss" in record.metrics and 0.0 <= record.metrics["eval_macro_f1"] <= 1.0
    assert "baseline_macro_f1" in record.metrics
    assert record.tokens_per_s > 0 and record.wall_time_s > 0
    assert _leftovers(tmp_path) == []


def test_adapter_reloads_with_peft_and_changes_outputs(
    tiny: Path, data: Path, tmp_path: Path
) -> None:
    """The promoted adapter loads with peft onto the base and changes the logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = train_adapter(
        data,
        tmp_path / "adapter",
        overrides={**TINY, "base_model": str(tiny), "learning_rate": 1e-2},
    )
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny))
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, str(out))
        after = tuned(ids).logits
    assert (after - before).abs().max().item() > 1e-4


def test_best_checkpoint_is_kept_by_the_chosen_metric(
    tiny: Path, data: Path, tmp_path: Path
) -> None:
    """With an evaluation per epoch, the recorded metrics are those of the best epoch by the
    chosen metric, and the history holds every epoch."""
    out = train_adapter(
        data,
        tmp_path / "adapter",
        overrides={
            **TINY,
            "base_model": str(tiny),
            "max_steps": None,
            "epochs": 2.0,
            "micro_batch_size": 8,
            "eval.metric": "loss",
            "learning_rate": 5e-3,
        },
    )
    metrics = read_provenance(out).metrics
    history = metrics["eval_history"]
    assert [entry["step"] for entry in history] == [3.0, 6.0]
    best = min(history, key=lambda entry: entry["eval_loss"])
    assert metrics["best_metric"] == "eval_loss"
    assert metrics["best_step"] == int(best["step"])
    assert metrics["eval_loss"] == best["eval_loss"]


def test_4bit_on_cpu_is_scored_only_after_training(tiny: Path, data: Path, tmp_path: Path) -> None:
    """QLoRA on CPU trains with no evaluation in the loop (the bitsandbytes defect) and is
    scored once when training is over; the plan records why."""
    out = train_adapter(
        data,
        tmp_path / "adapter",
        overrides={**TINY, "base_model": str(tiny), "quantization": "nf4"},
    )
    record = read_provenance(out)
    resolved = record.config["resolved"]
    assert resolved["quantization"] == "nf4" and not resolved["evaluate_in_process"]
    assert any("4-bit on CPU" in note for note in resolved["notes"])
    assert [entry["step"] for entry in record.metrics["eval_history"]] == [3.0]
    assert "eval_loss" in record.metrics and "eval_macro_f1" in record.metrics
    assert "baseline_macro_f1" not in record.metrics


def test_injected_nan_stops_and_promotes_nothing(tiny: Path, data: Path, tmp_path: Path) -> None:
    """A NaN injected into a LoRA weight stops the run at that step; ADAPTER_DIR stays absent
    and no scratch directory is left behind."""
    out = tmp_path / "adapter"
    with pytest.raises(DivergenceDetected) as info:
        train_adapter(
            data,
            out,
            overrides={**TINY, "base_model": str(tiny), "max_steps": 5},
            callbacks=[PoisonAt(2)],
        )
    assert info.value.step == 2 and math.isnan(info.value.value)
    assert "step 2" in str(info.value) and "nan" in str(info.value)
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_zero_gradients_stop_the_run(tiny: Path, data: Path, tmp_path: Path) -> None:
    """Zero LoRA gradients (the bitsandbytes CPU defect's symptom) stop the run, no adapter."""
    out = tmp_path / "adapter"
    with pytest.raises(DivergenceDetected, match="step 1: LoRA gradient norm is 0"):
        train_adapter(
            data, out, overrides={**TINY, "base_model": str(tiny)}, callbacks=[ZeroGrads()]
        )
    assert not out.exists()


def test_failed_run_keeps_the_previous_adapter(tiny: Path, data: Path, tmp_path: Path) -> None:
    """A diverging retrain leaves the adapter already at ADAPTER_DIR untouched."""
    out = train_adapter(data, tmp_path / "adapter", overrides={**TINY, "base_model": str(tiny)})
    before = read_provenance(out).adapter_weights_sha256
    with pytest.raises(DivergenceDetected):
        train_adapter(
            data, out, overrides={**TINY, "base_model": str(tiny)}, callbacks=[PoisonAt(1)]
        )
    assert read_provenance(out).adapter_weights_sha256 == before == weights_sha256(out)


def test_packing_gives_the_same_loss_as_padding(tiny: Path, tmp_path: Path) -> None:
    """Padding-free packing (all rows in one packed sequence) scores the same first-step loss as
    one padded batch of the same rows: packed examples do not attend across their boundaries."""
    data = build_curated(tmp_path / "d", n_train=6, n_val=2)
    common = {**TINY, "base_model": str(tiny), "max_steps": 1, "eval.enabled": False}
    padded = train_adapter(data, tmp_path / "padded", overrides={**common, "micro_batch_size": 6})
    packed = train_adapter(
        data, tmp_path / "packed", overrides={**common, "micro_batch_size": 1, "packing": True}
    )
    loss_padded = read_provenance(padded).metrics["train_losses"][0][1]
    loss_packed = read_provenance(packed).metrics["train_losses"][0][1]
    assert loss_packed == pytest.approx(loss_padded, abs=1e-4)
    assert (
        read_provenance(packed).metrics["train_tokens"]
        == read_provenance(padded).metrics["train_tokens"]
    )


def test_out_of_memory_names_next_setting(tiny: Path, data: Path, tmp_path: Path) -> None:
    """Out of memory exits with the concrete next setting; with oom.retry the run succeeds at
    half the micro-batch and double accumulation, recorded in provenance."""
    out = tmp_path / "adapter"
    overrides = {**TINY, "base_model": str(tiny), "micro_batch_size": 4}
    with pytest.raises(
        OutOfMemory, match=r"micro_batch_size = 2 and train\.gradient_accumulation_steps = 2"
    ):
        train_adapter(data, out, overrides=overrides, callbacks=[OomWhenBatchAbove(2)])
    assert not out.exists()
    oom = OomWhenBatchAbove(2)
    train_adapter(data, out, overrides={**overrides, "oom.retry": True}, callbacks=[oom])
    assert oom.sizes[0] == 4 and set(oom.sizes[1:]) == {2}
    record = read_provenance(out)
    assert record.metrics["oom_retries"] == [
        {"from_micro_batch": 4, "micro_batch_size": 2, "gradient_accumulation_steps": 2}
    ]


def test_cli_bad_config_names_the_key(
    tiny: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m training train` with a misspelt key exits 2 naming file:line and the key."""
    from training.__main__ import main

    config = tmp_path / "qlora.toml"
    config.write_text("[train]\nmax_steps = 2\nlearnig_rate = 0.1\n")
    code = main(
        ["train", "--data", str(data), "--out", str(tmp_path / "a"), "--config", str(config)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"{config}:3: unknown key 'train.learnig_rate'" in err
    assert not (tmp_path / "a").exists()


def test_cli_trains_and_prints_summary(
    tiny: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI with --base-model/--max-steps/--set trains and prints the one-screen summary."""
    from training.__main__ import main

    out = tmp_path / "a"
    argv = [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--base-model",
        str(tiny),
        "--max-steps",
        "2",
        "--set",
        "guard.max_loss=50.0",
        "--set",
        "micro_batch_size=2",
    ]
    assert main(argv) == 0
    assert "adapter written" in capsys.readouterr().out
    assert read_provenance(out).metrics["steps"] == 2


def test_refuses_to_replace_a_foreign_directory(data: Path, tmp_path: Path) -> None:
    """An existing non-adapter directory at --out is never replaced."""
    out = tmp_path / "important"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a qlgate adapter directory"):
        train_adapter(data, out, overrides={"max_steps": 1})
    assert (out / "notes.txt").read_text() == "keep me"


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    """A data directory without dataset/ names the path and the command that makes it."""
    with pytest.raises(DataError, match=r"dataset: not found.*python -m training curate"):
        train_adapter(tmp_path, tmp_path / "out")


# ---- pure parts ----------------------------------------------------------------------------


def test_next_oom_step_keeps_the_effective_batch() -> None:
    """Halving the micro-batch doubles accumulation; at the floor there is no next step."""
    step = next_oom_step(8, 1)
    assert step is not None and (step.micro_batch_size, step.gradient_accumulation_steps) == (4, 2)
    odd = next_oom_step(5, 2)
    assert (
        odd is not None
        and odd.micro_batch_size == 2
        and odd.micro_batch_size * odd.gradient_accumulation_steps >= 10
    )
    assert next_oom_step(1, 4) is None and next_oom_step(4, 1, floor=4) is None
    assert "micro_batch_size = 4" in step.advice() and "oom.retry" in step.advice()


def test_choose_threads_avoids_oversubscription() -> None:
    """Threads: the config wins, then $OMP_NUM_THREADS, else the cores idle at start (>= 1)."""
    assert choose_threads(3, "1", 2, 0.0) == 3
    assert choose_threads(0, "1", 2, 0.0) == 1
    assert choose_threads(0, None, 2, 0.1) == 2
    assert choose_threads(0, None, 2, 1.2) == 1
    assert choose_threads(0, "", 2, 7.0) == 1
    assert choose_threads(0, "junk", 16, -1.0) == 16


def test_is_out_of_memory() -> None:
    """CUDA OOM and the CPU allocator's failure count as out of memory; other errors do not."""
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_formatting_errors_name_row_and_field() -> None:
    """A row without a final assistant turn or with a bad role names where and which field."""
    good = {
        "id": "r1",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "billing"},
        ],
    }
    example = to_example(good, "d[train] row 0")
    assert example.prompt == (("user", "hi"),) and example.completion == "billing"
    bad_end = {"id": "r2", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(DataError, match=r"d\[train\] row 3 \(id r2\): field 'messages' must end"):
        to_example(bad_end, "d[train] row 3")
    bad_role = {
        "id": "r3",
        "messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}],
    }
    with pytest.raises(DataError, match=r"messages\[0\].role = 'robot'"):
        to_example(bad_role, "d[validation] row 1")


def test_load_curated_reads_splits_and_labels(data: Path) -> None:
    """The curated directory loads both splits and the manifest's label set."""
    curated = load_curated(data)
    assert len(curated.train) == 24 and len(curated.validation) == 8
    assert curated.labels == tuple(sorted(LABELS))


def test_labels_come_from_the_data_when_the_manifest_has_counts(tmp_path: Path) -> None:
    """A manifest whose ``labels`` are per-split counts (curation's format) does not leak its
    keys into the label set; the labels seen in the data are used."""
    data = build_curated(tmp_path / "d", n_train=8, n_val=4)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["labels"] = {"train": {"billing": 2}, "validation": {"billing": 1}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert load_curated(data).labels == tuple(sorted(LABELS))


def test_continuation_is_the_trained_completion(tiny: Path, data: Path) -> None:
    """The scored continuation is the answer plus end-of-turn, right after the generation prompt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny))
    example = load_curated(data).validation[0]
    cont = render_continuation(tokenizer, example, "billing")
    assert str(tokenizer.decode(cont)).startswith("billing<|im_end|>")
    assert str(tokenizer.decode(render_prompt(tokenizer, example))).endswith(
        "<|im_start|>assistant\n"
    )


def test_rank_labels_matches_unpadded_scoring(tiny: Path, data: Path) -> None:
    """Batched, left-padded ranking equals scoring each (prompt, label) alone with full logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny))
    examples = load_curated(data).validation[:3]
    labels = ["billing", "returns", "account"]
    scores = rank_labels(model, tokenizer, examples, labels, batch_size=4)
    for example, got in zip(examples, scores, strict=True):
        prompt = render_prompt(tokenizer, example)
        for label in labels:
            cont = render_continuation(tokenizer, example, label)
            ids = torch.tensor([prompt + cont])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
            expected = sum(float(logprobs[len(prompt) - 1 + k, t]) for k, t in enumerate(cont))
            assert got[label] == pytest.approx(expected, abs=1e-3)
    metrics = evaluate_labels(model, tokenizer, examples, labels, batch_size=5)
    assert metrics.n == sum(e.label in labels for e in examples)


def test_best_label_and_metrics() -> None:
    """The top score wins, ties go to the first label; metrics use the gate's macro-F1."""
    assert best_label({"a": -1.0, "b": -0.5}, ["a", "b"]) == "b"
    assert best_label({"a": -1.0, "b": -1.0}, ["b", "a"]) == "b"
    perfect = label_metrics(["a", "b"], ["a", "b"])
    assert (perfect.macro_f1, perfect.accuracy, perfect.n) == (1.0, 1.0, 2)
    assert label_metrics(["a", "b"], ["a", "a"]).accuracy == 0.5


# ---- the real embedded model ---------------------------------------------------------------


@pytest.mark.slow
def test_embedded_model_trains_a_loadable_adapter(data: Path, tmp_path: Path) -> None:
    """A few steps on SmolLM2 produce an adapter with provenance of the embedded base that peft
    reloads and that changes the model's outputs."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.models import resolve_base_model

    out = train_adapter(
        data,
        tmp_path / "adapter",
        overrides={
            "max_steps": 3,
            "micro_batch_size": 4,
            "eval.batch_size": 16,
            "eval.baseline": False,
            "guard.max_loss": None,
        },
    )
    base_dir = resolve_base_model()
    record = read_provenance(out)
    assert record.base_model.spec == "embedded"
    assert record.base_model.weights_sha256 == weights_sha256(base_dir)
    assert record.tokenizer_sha256 == tokenizer_sha256(base_dir)
    assert record.metrics["steps"] == 3 and "eval_macro_f1" in record.metrics
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    example = load_curated(data).validation[0]
    ids = torch.tensor([render_prompt(tokenizer, example)])
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    with torch.no_grad():
        before = base(ids).logits[0, -1]
        after = PeftModel.from_pretrained(base, str(out))(ids).logits[0, -1]
    assert (after - before).abs().max().item() > 1e-3


@pytest.mark.slow
def test_embedded_huge_learning_rate_trips_the_guard(data: Path, tmp_path: Path) -> None:
    """A learning rate of 1.0 on the real model trips the guard under the default thresholds,
    and nothing is promoted."""
    out = tmp_path / "adapter"
    with pytest.raises(DivergenceDetected, match=r"training stopped at step \d+: ") as info:
        train_adapter(
            data,
            out,
            overrides={
                "max_steps": 10,
                "micro_batch_size": 2,
                "learning_rate": 1.0,
                "eval.enabled": False,
            },
        )
    assert info.value.step <= 6
    assert not out.exists()
