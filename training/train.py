"""Training orchestration: curated data + config -> a promoted, traceable adapter directory.

``train_adapter`` loads the curated dataset, resolves the config for this machine, trains with
trl's SFTTrainer (prompt/completion, loss on the answer only) under the divergence guard,
evaluates each epoch (loss and label macro-F1), keeps the best checkpoint, and only then writes
ADAPTER_DIR atomically: built in a staging directory beside it and renamed into place. A run that
fails for any reason (divergence, zero gradients, out of memory, an exception) leaves ADAPTER_DIR
as it was. Multi-GPU: run the same command under ``accelerate launch -m training train ...``.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qlgate_core.fingerprint import TOKENIZER_FILES, weights_sha256
from training.config import (
    Hardware,
    RunPlan,
    TrainConfig,
    load_config,
    resolve_plan,
    with_overrides,
)
from training.errors import ConfigError, OutOfMemory, OutputError
from training.formatting import CuratedData, load_curated
from training.manifest import promote
from training.models import resolve
from training.outputs import (
    OwnedDir,
    describe_os_error,
    output_errors,
    owned_dir,
    refuse_input_inside_output,
    sweep_stale,
)
from training.provenance import (
    FILENAME,
    Provenance,
    base_model_record,
    dataset_record,
    git_commit,
    library_versions,
    tokenizer_hashes,
    write_provenance,
)

# Tokenizer files copied byte-for-byte from the base, so the gate's hash comparison is exact.
_TOKENIZER_COPY = (*TOKENIZER_FILES, "chat_template.jinja")


@dataclass(frozen=True)
class OomStep:
    """The next setting after an out-of-memory: same effective batch, half the micro-batch."""

    micro_batch_size: int
    gradient_accumulation_steps: int

    def advice(self) -> str:
        return (
            f"set train.micro_batch_size = {self.micro_batch_size} and "
            f"train.gradient_accumulation_steps = {self.gradient_accumulation_steps} "
            "(same effective batch), or set oom.retry = true to do this automatically"
        )


def next_oom_step(micro: int, accum: int, floor: int = 1) -> OomStep | None:
    """Halve the micro-batch and double accumulation; None when already at ``floor``."""
    half = micro // 2
    if half < max(floor, 1):
        return None
    return OomStep(half, math.ceil(micro * accum / half))


@dataclass(frozen=True)
class RunInputs:
    """What one training attempt reads, resolved once by ``train_adapter``."""

    data: CuratedData
    base_spec: str
    base_path: Path
    out_dir: Path
    config_path: Path | None
    started: float
    threads: int


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a plain RuntimeError)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


def train_adapter(
    data_dir: Path,
    out_dir: Path,
    *,
    config_path: Path | None = None,
    overrides: Mapping[str, object] | None = None,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Train an adapter on the curated dataset in ``data_dir`` and promote it to ``out_dir``.

    ``overrides`` take dotted (``train.max_steps``) or unique bare keys (``max_steps``).
    ``callbacks`` are extra transformers ``TrainerCallback``s, run before the guard.
    Returns ``out_dir``; raises ``TrainingFailed`` (no adapter promoted) when the run stops itself.
    """
    started = time.perf_counter()
    config = load_config(config_path, overrides)
    out_dir = Path(out_dir).absolute()
    refuse_input_inside_output(Path(data_dir), out_dir, "--data")
    with output_errors(out_dir):
        _check_out_dir(out_dir)
    data = load_curated(Path(data_dir))
    base = resolve(config.model.base_model)
    plan = resolve_plan(config, _hardware(config))
    threads = _set_threads(config, plan)
    inputs = RunInputs(data, base.spec, base.path, out_dir, config_path, started, threads)

    retries: list[dict[str, int]] = []
    while True:
        try:
            return _train_once(config, plan, inputs, callbacks, retries)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        # Out of the except block, the traceback (and the failed attempt's model) is released.
        _free_memory()
        t = config.train
        step = next_oom_step(
            t.micro_batch_size, t.gradient_accumulation_steps, config.oom.min_micro_batch
        )
        where = f"out of memory at micro_batch_size {t.micro_batch_size}"
        if step is None:
            raise OutOfMemory(
                f"{where}, already the smallest allowed; shorten train.max_length or use "
                "model.quantization = 'nf4'",
                micro_batch_size=t.micro_batch_size,
                accumulation=t.gradient_accumulation_steps,
            )
        if not config.oom.retry:
            raise OutOfMemory(
                f"{where}: {step.advice()}",
                micro_batch_size=t.micro_batch_size,
                accumulation=t.gradient_accumulation_steps,
            )
        retries.append({"from_micro_batch": t.micro_batch_size, **asdict(step)})
        print(
            f"qlgate: {where}; retrying with micro_batch_size {step.micro_batch_size}, "
            f"gradient_accumulation_steps {step.gradient_accumulation_steps}"
        )
        config = with_overrides(config, train=asdict(step))


def _train_once(
    config: TrainConfig,
    plan: RunPlan,
    inputs: RunInputs,
    callbacks: Sequence[Any],
    retries: list[dict[str, int]],
) -> Path:
    from accelerate import PartialState

    state = PartialState()
    with output_errors(inputs.out_dir):
        owned = _shared_work_dir(inputs.out_dir, state)
    work = owned.path
    try:
        return _train_in(config, plan, inputs, callbacks, retries, state, work)
    except OSError as exc:
        # A full or read-only disk under a checkpoint or the adapter: one line, not a traceback.
        raise OutputError(describe_os_error(exc, inputs.out_dir)) from None
    finally:
        if state.is_main_process:
            shutil.rmtree(work, ignore_errors=True)
        owned.release()


def _train_in(
    config: TrainConfig,
    plan: RunPlan,
    inputs: RunInputs,
    callbacks: Sequence[Any],
    retries: list[dict[str, int]],
    state: Any,
    work: Path,
) -> Path:
    from training.trainer_setup import build_trainer

    run = build_trainer(
        config, plan, inputs.data, inputs.base_path, work / "checkpoints", callbacks
    )
    metrics: dict[str, Any] = {}
    if run.evaluate_baseline:
        metrics.update(run.baseline_metrics())
    result = run.trainer.train()
    metrics.update(run.final_metrics(result))
    if retries:
        metrics["oom_retries"] = list(retries)
    if state.is_main_process:
        staging = work / "adapter"
        run.trainer.model.save_pretrained(str(staging))
        _copy_tokenizer(inputs.base_path, staging)
        tokenizer_hash, template_hash = tokenizer_hashes(inputs.base_path)
        if tokenizer_hashes(staging) != (tokenizer_hash, template_hash):
            raise ConfigError(
                f"tokenizer copied from {inputs.base_path} does not hash like the base"
            )
        record = Provenance(
            base_model=base_model_record(inputs.base_spec, inputs.base_path),
            tokenizer_sha256=tokenizer_hash,
            chat_template_sha256=template_hash,
            dataset=dataset_record(inputs.data.path),
            config={
                **config.to_dict(),
                "source": str(inputs.config_path) if inputs.config_path else None,
                "resolved": {
                    **asdict(plan),
                    "world_size": state.num_processes,
                    "threads": inputs.threads,
                },
            },
            versions=library_versions(),
            git_commit=git_commit(),
            metrics=metrics,
            wall_time_s=round(time.perf_counter() - inputs.started, 3),
            tokens_per_s=float(metrics.get("train_tokens_per_s", 0.0)),
            adapter_weights_sha256=weights_sha256(staging),
        )
        write_provenance(staging, record)
        promote(staging, inputs.out_dir)
    state.wait_for_everyone()
    return inputs.out_dir


def _hardware(config: TrainConfig) -> Hardware:
    import torch

    cuda = torch.cuda.is_available() and config.model.device != "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:  # oneDNN's own test for native bf16 (AVX512-BF16 / AMX); absent on some builds
        cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        cpu_bf16 = False
    return Hardware(
        cuda=cuda,
        cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
        cpu_bf16_native=cpu_bf16,
        world_size=world,
    )


def choose_threads(configured: int, env: str | None, cores: int, load: float) -> int:
    """Torch threads for this run: the config's value, else ``$OMP_NUM_THREADS``, else the cores
    idle at start (cores minus the 1-minute load average, at least 1).

    Deliberate, because oversubscription is ruinous here: two processes with two threads each on
    two cores ran steps 5-8x slower (DESIGN.md §6), and a 2-thread run beside one busy process
    measured ~10x slower per step than alone.
    """
    if configured > 0:
        return configured
    if env and env.strip().isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(cores, cores - round(load)))


def _set_threads(config: TrainConfig, plan: RunPlan) -> int:
    import torch

    n = choose_threads(
        config.train.threads,
        os.environ.get("OMP_NUM_THREADS"),
        len(os.sched_getaffinity(0)),
        os.getloadavg()[0],
    )
    if plan.device == "cuda":
        n = min(n, 4)  # the GPU does the work; extra threads only contend with the dataloader
    torch.set_num_threads(n)
    return n


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a non-empty directory that is not a previous adapter (nothing lost)."""
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / FILENAME).is_file())
    ):
        raise ConfigError(
            f"--out {out_dir}: exists and is not a qlgate adapter directory; refusing to replace it"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A run that died between swapping the old adapter out and the new one in left it aside.
    sweep_stale(out_dir.parent, f".{out_dir.name}.old-", restore=out_dir)


def _shared_work_dir(out_dir: Path, state: Any) -> OwnedDir:
    """A scratch directory beside ``out_dir`` (same filesystem, so promotion is a rename),
    created and held under a lock by the main process (``outputs.owned_dir``: work dirs of
    dead runs are swept), and shared with every DDP rank."""
    path = ""
    owned = None
    if state.is_main_process:
        owned = owned_dir(out_dir.parent, f".{out_dir.name}.work-")
        path = str(owned.path)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [path]
        broadcast_object_list(box)
        path = box[0]
    return owned if owned is not None else OwnedDir(Path(path), None)


def _copy_tokenizer(base: Path, staging: Path) -> None:
    for name in _TOKENIZER_COPY:
        source = base / name
        if source.is_file():
            shutil.copyfile(source, staging / name)


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
