"""Curated rows -> trl's conversational prompt/completion format.

A curated row's ``messages`` end with the assistant turn to learn. It becomes ``prompt`` (every
message before it) and ``completion`` (that turn), so trl renders both with the base model's chat
template and masks the loss to the completion tokens: the assistant's answer and its end-of-turn
token. SmolLM2's template has no ``{% generation %}`` markers, so ``assistant_only_loss`` cannot be
used; prompt/completion gives the same mask for the final turn. Earlier assistant turns of a
multi-turn row are context, not targets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

ROLES = frozenset({"system", "user", "assistant"})
Message = dict[str, str]


@dataclass(frozen=True)
class Example:
    """One training/validation example: the conversation split at its last assistant turn."""

    id: str
    prompt: tuple[tuple[str, str], ...]  # (role, content) pairs
    completion: str
    label: str | None

    def prompt_messages(self) -> list[Message]:
        return [{"role": role, "content": content} for role, content in self.prompt]

    def completion_messages(self) -> list[Message]:
        return [{"role": "assistant", "content": self.completion}]


def to_example(row: Mapping[str, Any], where: str) -> Example:
    """Split one curated row; ``where`` (e.g. ``data/dataset[train] row 7``) prefixes errors."""
    row_id = str(row.get("id", "?"))
    messages = row.get("messages")
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise DataError(f"{where} (id {row_id}): field 'messages' must be a non-empty list")
    pairs: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise DataError(f"{where} (id {row_id}): messages[{i}] is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(
                f"{where} (id {row_id}): messages[{i}].role = {role!r} is not one of "
                f"{sorted(ROLES)}"
            )
        if not isinstance(content, str):
            raise DataError(f"{where} (id {row_id}): messages[{i}].content must be a string")
        pairs.append((str(role), content))
    if pairs[-1][0] != "assistant":
        raise DataError(
            f"{where} (id {row_id}): field 'messages' must end with an assistant turn, "
            f"got {pairs[-1][0]!r}"
        )
    if len(pairs) < 2:
        raise DataError(f"{where} (id {row_id}): field 'messages' has no prompt before the answer")
    label = row.get("label")
    return Example(
        row_id, tuple(pairs[:-1]), pairs[-1][1], label if isinstance(label, str) else None
    )


def examples_of(dataset: Dataset, where: str) -> list[Example]:
    """Every row of one split, validated; the first bad row raises ``DataError``."""
    missing = {"id", "messages"} - set(dataset.column_names)
    if missing:
        raise DataError(
            f"{where}: missing column(s) {sorted(missing)}; found {dataset.column_names}"
        )
    return [to_example(row, f"{where} row {i}") for i, row in enumerate(dataset)]


def to_trl_dataset(examples: Sequence[Example]) -> Dataset:
    """The prompt/completion dataset SFTTrainer tokenizes with the chat template."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [e.prompt_messages() for e in examples],
            "completion": [e.completion_messages() for e in examples],
        }
    )


def render_prompt(tokenizer: Any, example: Example) -> list[int]:
    """Token ids of the prompt exactly as training renders it (generation prompt appended)."""
    return _ids(
        tokenizer.apply_chat_template(example.prompt_messages(), add_generation_prompt=True)
    )


def render_continuation(tokenizer: Any, example: Example, answer: str) -> list[int]:
    """Token ids that ``answer`` adds after the prompt, end-of-turn included: the tokens that
    training puts under the loss for that answer."""
    prompt = render_prompt(tokenizer, example)
    full = _ids(
        tokenizer.apply_chat_template(
            [*example.prompt_messages(), {"role": "assistant", "content": answer}]
        )
    )
    common = 0
    for a, b in zip(prompt, full, strict=False):
        if a != b:
            break
        common += 1
    if common < len(prompt):
        raise DataError("the chat template renders the prompt differently when an answer follows")
    return full[common:]


def _ids(rendered: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True).
    if isinstance(rendered, Mapping) or hasattr(rendered, "keys"):
        rendered = rendered["input_ids"]
    return [int(i) for i in rendered]


@dataclass(frozen=True)
class CuratedData:
    """A curated dataset directory, validated: both splits as examples, and the label set."""

    path: Path
    train: list[Example]
    validation: list[Example]
    labels: tuple[str, ...]


def load_curated(data_dir: Path) -> CuratedData:
    """Load ``DIR/dataset`` (splits ``train`` and ``validation``) as written by curation."""
    from datasets import DatasetDict, load_from_disk

    dataset_dir = data_dir / "dataset"
    if not dataset_dir.is_dir():
        raise DataError(
            f"{dataset_dir}: not found; expected a curated dataset (python -m training curate "
            f"RAW --out {data_dir})"
        )
    try:
        loaded = load_from_disk(str(dataset_dir))
    except (OSError, ValueError) as exc:
        raise DataError(f"{dataset_dir}: not a saved datasets.DatasetDict ({exc})") from None
    if not isinstance(loaded, DatasetDict) or "train" not in loaded:
        raise DataError(f"{dataset_dir}: needs a DatasetDict with a 'train' split")
    train = examples_of(loaded["train"], f"{dataset_dir}[train]")
    if not train:
        raise DataError(f"{dataset_dir}[train]: no rows")
    validation = (
        examples_of(loaded["validation"], f"{dataset_dir}[validation]")
        if "validation" in loaded
        else []
    )
    return CuratedData(data_dir, train, validation, _labels(data_dir, train + validation))


def _labels(data_dir: Path, examples: Sequence[Example]) -> tuple[str, ...]:
    """The label set: the labels seen in the data, plus the manifest's ``labels`` when that is a
    list or a label -> count mapping; sorted, so ranking order is stable."""
    seen = {e.label for e in examples if e.label is not None}
    manifest = data_dir / "manifest.json"
    try:
        declared = json.loads(manifest.read_text(encoding="utf-8")).get("labels")
    except (OSError, ValueError, AttributeError):
        declared = None
    if isinstance(declared, Mapping) and all(isinstance(v, int) for v in declared.values()):
        declared = list(declared)
    if isinstance(declared, list) and declared and all(isinstance(x, str) for x in declared):
        return tuple(sorted(set(declared) | seen))
    return tuple(sorted(seen))  # any other shape (e.g. per-split counts) is not a label list
