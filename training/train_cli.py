"""``python -m training train``: train a (Q)LoRA adapter on a curated dataset.

    python -m training train --data DIR --out ADAPTER_DIR [--config qlora.toml]
        [--base-model embedded|PATH|HUB_ID] [--max-steps N] [--epochs N] [--set KEY=VALUE ...]

Exit 0 with the adapter promoted to ADAPTER_DIR; exit 2 with a one-line reason otherwise (bad
config or data, divergence, zero gradients, out of memory), ADAPTER_DIR untouched. Several GPUs:
``accelerate launch -m training train ...`` (DDP), same arguments.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

from training.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="curated dataset directory (from `curate`)")
    parser.add_argument("--out", type=Path, help="adapter directory, written only on success")
    parser.add_argument("--config", type=Path, help="TOML config (see --list-options)")
    parser.add_argument("--base-model", help="'embedded', a model directory, or a cached hub id")
    parser.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    parser.add_argument("--epochs", type=float, help="passes over the training split")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any option, e.g. --set train.learning_rate=1e-4 (VALUE is TOML)",
    )
    parser.add_argument(
        "--list-options", action="store_true", help="print every config option and exit"
    )


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    """Config overrides from the command line; explicit flags win over ``--set``."""
    out: dict[str, object] = {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = parse_value(raw.strip())
    if args.base_model is not None:
        out["model.base_model"] = args.base_model
    if args.max_steps is not None:
        out["train.max_steps"] = args.max_steps
    if args.epochs is not None:
        out["train.epochs"] = args.epochs
    return out


def parse_value(raw: str) -> Any:
    """A TOML value (``1e-4``, ``true``, ``["q_proj"]``); anything else is a bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def run(args: argparse.Namespace) -> int:
    if args.list_options:
        from training.config import options

        for key, default, help_text in options():
            print(f"{key} = {default!r}\n    {help_text}")
        return 0
    if args.data is None or args.out is None:
        raise ConfigError("--data and --out are required (or --list-options)")
    overrides = overrides_from(args)
    # A killed run must still remove its scratch directory: SIGTERM becomes SystemExit, so the
    # trainer's cleanup (finally blocks) runs.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    import datasets

    datasets.disable_progress_bars()  # the training progress bar is the one worth seeing
    from training.provenance import read_provenance
    from training.train import train_adapter

    try:
        out = train_adapter(args.data, args.out, config_path=args.config, overrides=overrides)
    except KeyboardInterrupt:
        # The trainer's finally blocks have removed the scratch directory by now.
        print("error: interrupted; no adapter was promoted", file=sys.stderr)
        return 130
    if _is_main_process():
        record = read_provenance(out)
        try:
            _summary(out, record.metrics, record.wall_time_s, record.tokens_per_s)
            sys.stdout.flush()
        except BrokenPipeError:
            # The adapter is promoted; only the summary's reader went away (``| head``).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    _end_distributed()
    return 0


def _is_main_process() -> bool:
    """Under ``accelerate launch`` every rank runs this command; one summary is enough."""
    return os.environ.get("RANK", "0") == "0"


def _end_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    print("error: terminated; no adapter was promoted", file=sys.stderr)
    sys.exit(128 + signum)


def _summary(out: Path, metrics: dict[str, Any], wall: float, tokens_per_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"adapter written: {out}", show_header=False)
    rows: list[tuple[str, object]] = [
        ("steps", metrics.get("steps")),
        ("train loss", _fmt(metrics.get("train_loss"))),
        ("eval loss", _fmt(metrics.get("eval_loss"))),
        (
            "macro-F1 base -> adapter",
            f"{_fmt(metrics.get('baseline_macro_f1')) or '-'} -> "
            f"{_fmt(metrics.get('eval_macro_f1')) or '-'}",
        ),
        ("best step", metrics.get("best_step")),
        ("tokens/s (training)", _fmt(tokens_per_s)),
        ("wall time (s)", _fmt(wall)),
    ]
    for name, value in rows:
        table.add_row(name, "-" if value is None else str(value))
    Console().print(table)


def _fmt(value: object) -> str | None:
    if value is None:
        return None
    return f"{value:.4g}" if isinstance(value, float) else str(value)
