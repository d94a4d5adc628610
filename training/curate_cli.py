"""``python -m training curate RAW.jsonl --out DIR``: the command line around ``curate.curate``.

Progress goes to stderr (a rich bar, hidden when stderr is not a terminal or with
``--no-progress``); the one-screen summary goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from training.errors import DataError

_STAGE_ROWS = (
    ("read", "lines read"),
    ("invalid_json", "bad line / JSON"),
    ("schema", "schema + labels"),
    ("quality", "quality filter"),
    ("exact_dup", "exact duplicates"),
    ("near_dup", "near duplicates"),
    ("poison_quarantined", "poisoning"),
    ("leakage", "golden leakage"),
    ("quarantined", "quarantined, total"),
    ("kept", "kept (human)"),
    ("augmented", "augmented (synthetic)"),
    ("train", "train split"),
    ("validation", "validation split"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, metavar="RAW.jsonl", help="raw chat JSONL")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument("--config", type=Path, help="curation config (TOML)")
    parser.add_argument("--golden", type=Path, help="golden case directory or file (leakage)")
    parser.add_argument(
        "--teacher", help="augmentation teacher: 'embedded', a model directory, or an http(s) URL"
    )
    parser.add_argument("--teacher-model", help="model name to request from a teacher endpoint")
    parser.add_argument(
        "--augment", type=int, metavar="N", help="paraphrases per selected example (0: none)"
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="processes for parsing and scrubbing (default 1)"
    )
    parser.add_argument(
        "--base-model",
        default="embedded",
        metavar="SPEC",
        help="base model whose tokenizer's special tokens are refused in any turn: 'embedded' "
        "(default), a model directory, a cached hub id, or 'none' (common chat markers only)",
    )
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="write the dataset even when no record is kept (otherwise an error)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """The command, with its process-level behaviour: SIGTERM and Ctrl-C remove the staging
    directory and end with one line (exit 143 / 130), and a closed stdout (``| head -1``) ends
    the summary quietly."""
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("error: interrupted; no output was promoted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through curate's cleanup (the staging directory is removed).
    print("error: terminated; no output was promoted", file=sys.stderr)
    sys.exit(128 + signum)


def _run(args: argparse.Namespace) -> int:
    from training.curate import curate
    from training.curate_config import load_config, with_overrides
    from training.leakage import load_golden_prompts
    from training.outputs import refuse_input_inside_output
    from training.special_tokens import load_special_tokens

    if not args.input.is_file():
        raise DataError(f"input file {args.input} does not exist")
    for what, path in (("input file", args.input), ("--golden", args.golden),
                       ("--config", args.config)):  # fmt: skip
        if path is not None:
            refuse_input_inside_output(path, args.out, what)
    special = load_special_tokens(args.base_model)
    augment = {"n": args.augment, "teacher": args.teacher, "teacher_model": args.teacher_model}
    config = with_overrides(load_config(args.config), augment=augment,
                            read={"workers": args.workers})  # fmt: skip
    golden = load_golden_prompts(args.golden) if args.golden else None
    teacher = None
    if config.augment.n > 0:
        from training.teacher import Sampling, load_teacher

        aug = config.augment
        sampling = Sampling(
            max_new_tokens=aug.max_new_tokens, temperature=aug.temperature, top_p=aug.top_p,
            batch_size=aug.batch_size, timeout_s=aug.timeout_s, threads=aug.threads,
        )  # fmt: skip
        teacher = load_teacher(
            aug.teacher, sampling=sampling, model_name=aug.teacher_model,
            api_key_env=aug.api_key_env,
        )  # fmt: skip
    err = Console(stderr=True)
    started = time.perf_counter()
    with _RichProgress(err, enabled=not args.no_progress) as progress:
        manifest = curate(args.input, args.out, config, golden=golden, teacher=teacher,
                          progress=progress, special_tokens=special,
                          allow_empty=args.allow_empty)  # fmt: skip
    elapsed = time.perf_counter() - started
    try:
        _SummaryConsole().print(summary_table(manifest, args.out, elapsed))
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
    return 0


def _stdout_to_devnull() -> None:
    # The reader went away (``| head``); the output is promoted, so this is still success.
    # stdout points at /dev/null from here, so the interpreter's final flush cannot fail.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class _SummaryConsole(Console):
    """rich's console, but a closed stdout ends the summary instead of the process (rich's
    own handler exits 1 after the run has succeeded)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _stdout_to_devnull()


class _RichProgress:
    """``curate.Progress`` on a rich progress display; one task per stage."""

    def __init__(self, console: Console, *, enabled: bool) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not enabled or not console.is_terminal,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> _RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def stage(self, name: str, total: int | None = None) -> None:
        if self._task is not None:
            self._progress.stop_task(self._task)
        self._task = self._progress.add_task(name, total=total)

    def advance(self, amount: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)


def summary_table(manifest: Mapping[str, Any], out: Path, elapsed: float) -> Table:
    """One screen: counts per stage, labels before/after, PII found, poisoning, augmentation."""
    counts = manifest["counts"]
    rate = counts["read"] / elapsed if elapsed > 0 else 0.0
    table = Table(
        title=f"curated {counts['read']} lines -> {out}  ({elapsed:.1f} s, {rate:,.0f} lines/s)",
        show_header=True,
        header_style="bold",
    )
    table.add_column("stage")
    table.add_column("lines", justify="right")
    table.add_column("labels", justify="left")
    labels = manifest["labels"]
    label_rows = [f"{k}: {labels['before'].get(k, 0)} -> {v}" for k, v in labels["after"].items()]
    pii = manifest["pii"]["by_type"]
    pii_text = ", ".join(f"{k} {v}" for k, v in pii.items() if v) or "none"
    triggers = manifest["poison"]["triggers"]
    side = [
        "before -> after:",
        *label_rows,
        "",
        f"PII scrubbed in {counts['pii_scrubbed']} records: {pii_text}",
        f"poison flagged: {counts['poison_flagged']} "
        f"(triggers: {', '.join(t['ngram'] for t in triggers) or 'none'})",
    ]
    augment = manifest.get("augment", {})
    if augment.get("n"):
        rejected = augment.get("rejected", {})
        side.append(
            f"augment: {augment.get('generated', 0)} generated, {augment.get('accepted', 0)} kept, "
            f"rejected {sum(rejected.values())} {dict(rejected)}"
        )
    for position, (key, title) in enumerate(_STAGE_ROWS):
        extra = side[position] if position < len(side) else ""
        table.add_row(title, str(counts.get(key, 0)), extra)
    for extra in side[len(_STAGE_ROWS) :]:
        table.add_row("", "", extra)
    return table
