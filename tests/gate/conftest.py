"""Shared fixtures for the gate's tests: models and adapters built once per session.

- a tiny random Llama (plumbing only: its answers mean nothing) with peft adapters built
  directly: ``zero`` (LoRA B = 0, so it changes nothing), ``perturbed`` and ``other`` (random
  non-zero LoRA weights, two different seeds);
- on the real embedded model (slow tests): a zero-effect adapter and an adapter trained for a
  few steps on sample-task tickets, with held-out tickets for a small golden set.

Everything the inner pytester runs import lazily (transformers generation, peft, the hf engine)
is imported here first: pytester restores ``sys.modules`` after each test, and re-importing
torch's submodules in one process is not safe.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from training.sample_task import LABELS, SYSTEM_PROMPT

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "raw.jsonl"


# Modules a gate run may import for the first time. pytester restores ``sys.modules`` after each
# in-process run, and C extensions (numpy, scipy) cannot be imported twice in one process, so
# they are imported once, before any inner run, by the session fixture below.
_INNER_RUN_IMPORTS = (
    "numpy", "scipy.stats", "pydantic", "yaml", "jsonschema", "filelock",
    "qlgate_pytest.gate", "qlgate_pytest.report", "qlgate_core.scoring", "qlgate_core.stats",
    "qlgate_core.cases", "qlgate_pytest.session", "qlgate_pytest.collect",
    "qlgate_core.golden_lock", "qlgate_core.golden_tree",
    "qlgate_pytest.driver", "qlgate_pytest.fixtures", "qlgate_pytest.harness_train",
    "safetensors", "safetensors.numpy", "qlgate_pytest.preflight", "qlgate_pytest.leakage",
    "qlgate_pytest.perturb", "qlgate_pytest.gen_cache", "qlgate_pytest.gate_cache",
    "qlgate_pytest.preflight_hook", "qlgate_pytest.lazy_engine", "qlgate_pytest.run_extras",
    "qlgate_pytest.report_writers", "qlgate_pytest.xdist_gpu", "qlgate_pytest.base_model",
    "qlgate_core.fingerprint", "training.models",
    # pyarrow refuses to register datasets' extension types twice: a test body that imports
    # datasets after pytester's snapshot (test_train_data_...) must not be its first import.
    "datasets",
)  # fmt: skip


@pytest.fixture(scope="session")
def _inner_run_imports() -> None:
    import importlib

    for name in _INNER_RUN_IMPORTS:
        importlib.import_module(name)


@pytest.fixture
def pytester(_inner_run_imports: None, pytester: pytest.Pytester) -> pytest.Pytester:
    """pytest's pytester, after the imports an inner gate run needs (see _INNER_RUN_IMPORTS)."""
    return pytester


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # 2 shared cores: more threads only thrash (DESIGN.md §6)


@dataclass(frozen=True)
class Adapters:
    """Adapter directories for one base model."""

    base: Path
    zero: Path
    perturbed: Path
    other: Path


def _lora(model: Any, seed: int, *, zero: bool, out: Path, modules: Sequence[str]) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=list(modules), init_lora_weights=zero or False
    )
    peft_model = get_peft_model(model, config)
    if zero:
        # peft's default init already sets B = 0; say so explicitly, it is the point.
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.zeros_(param)
    peft_model.save_pretrained(str(out))
    peft_model.unload()
    return out


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory: pytest.TempPathFactory) -> Adapters:
    """A tiny random base model and three adapters for it (see the module docstring)."""
    from transformers import AutoModelForCausalLM

    from qlgate_pytest.engines.base import EngineConfig, GenerateRequest, Message, RankRequest
    from qlgate_pytest.engines.hf import HFEngine
    from training.tiny import build_tiny_model

    _one_thread()
    root = tmp_path_factory.mktemp("tiny")
    base = build_tiny_model(root / "base")
    modules = ("q_proj", "v_proj", "down_proj")
    paths = {}
    for name, seed, zero in (("zero", 0, True), ("perturbed", 1, False), ("other", 2, False)):
        model = AutoModelForCausalLM.from_pretrained(str(base))
        paths[name] = _lora(model, seed, zero=zero, out=root / name, modules=modules)
    adapters = Adapters(base, paths["zero"], paths["perturbed"], paths["other"])
    # Import every lazily imported module of an engine run now (see the module docstring).
    engine = HFEngine(
        EngineConfig(base, {"candidate": adapters.perturbed, "baseline": adapters.other})
    )
    engine.warm_up()
    probe = (Message("user", "hi"),)
    engine.generate("baseline", [GenerateRequest("p", probe, 2)])
    engine.rank("candidate", [RankRequest("p", probe, ("a", "b"))])
    engine.close()
    return adapters


# -- golden files for inner runs --------------------------------------------------------------


def label_case(case_id: str, prompt: str, expected: str, **extra: Any) -> dict[str, Any]:
    """A sample-task label case as a dict."""
    return {"id": case_id, "prompt": prompt, "expected": expected, **extra}


def write_golden(root: Path, cases: Sequence[dict[str, Any]], name: str = "cases.yaml") -> Path:
    """Write ``cases`` as a YAML golden file with the sample task's defaults."""
    golden = root / "golden"
    golden.mkdir(exist_ok=True)
    doc = {
        "defaults": {"system": SYSTEM_PROMPT, "labels": list(LABELS), "tags": ["core"]},
        "cases": list(cases),
    }
    path = golden / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    lock_golden(root)
    return path


def lock_golden(root: Path) -> Path:
    """(Re)write ``root/golden/golden.lock`` for the files there now, as ``lock-golden`` does.

    A gate run is red when its golden set differs from the lock, so every helper that writes
    golden files for a test that expects a matching set calls this last. Unlike the command it
    also locks a broken file (as unreadable), for tests of broken sets.
    """
    from qlgate_core.cases import load_golden_set
    from qlgate_core.golden_lock import LOCK_NAME, write_lock

    golden = root / "golden"
    lock = golden / LOCK_NAME
    write_lock(load_golden_set(golden).current_lock(), lock)
    return lock


PLUMBING_CASES = [
    label_case("bill-1", "I was charged twice for one order.", "billing"),
    label_case("ship-1", "Where is my parcel? It is a week late.", "shipping"),
    label_case("acct-1", "I cannot log in to my account.", "account", tags=["core", "edge"]),
    label_case("ret-1", "How do I send the shoes back?", "returns"),
    # regex '^' matches any output: right for every role, whatever the tiny model says.
    {
        "id": "free-1",
        "prompt": "Say hello.",
        "expected": "^",
        "scorer": "regex",
        "max_new_tokens": 4,
        "tags": ["generate"],
    },
]


@pytest.fixture(scope="session")
def plumbing_cases() -> list[dict[str, Any]]:
    """Four label cases and one free-generation case that any model answers 'right'."""
    return [dict(c) for c in PLUMBING_CASES]


@pytest.fixture(scope="session")
def golden_writer() -> Callable[..., Path]:
    """``write(root, cases, name="cases.yaml")``: a YAML golden file with the task defaults."""
    return write_golden


@pytest.fixture(scope="session")
def golden_locker() -> Callable[[Path], Path]:
    """``lock(root)``: rewrite ``root/golden/golden.lock`` after a test wrote golden files."""
    return lock_golden


@pytest.fixture(scope="session")
def held_out_cases() -> list[dict[str, Any]]:
    """Twelve held-out sample tickets (three per label) as label cases."""
    tickets = sample_tickets(6, 3).held_out
    return [label_case(f"held-{i:02d}", text, label) for i, (text, label) in enumerate(tickets)]


@pytest.fixture(scope="session")
def wide_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA for a model of another width: it cannot load onto the tiny base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    lora = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("wide") / "adapter"
    get_peft_model(LlamaForCausalLM(config), lora).save_pretrained(str(out))
    return out


# A registered engine for plumbing runs: the candidate always right by keyword, the baseline
# always "account"; it writes engine-built when constructed (a cached run builds none).
ORACLE_CONFTEST = """
from pathlib import Path

from qlgate_pytest.engines import Generation, Ranking, register_engine

# Route by keyword: the candidate always right, the baseline always "account".
KEYWORDS = {"charged": "billing", "invoice": "billing", "parcel": "shipping",
            "courier": "shipping", "password": "account", "login": "account",
            "refund": "returns", "send back": "returns"}


class Oracle:
    name = "oracle"

    def __init__(self, config):
        Path("engine-built").write_text("yes")
        self.roles = set(config.adapters)

    def describe(self):
        return {"engine": "oracle"}

    def warm_up(self):
        pass

    def close(self):
        pass

    def rank(self, role, requests):
        out = []
        for r in requests:
            text = r.messages[-1].content.lower()
            truth = next(lab for key, lab in KEYWORDS.items() if key in text)
            best = truth if role == "candidate" else "account"
            scores = {lab: (0.0 if lab == best else -5.0) for lab in r.labels}
            out.append(Ranking(r.key, scores, best, 10.0, 20, 2))
        return out

    def generate(self, role, requests):
        return [Generation(r.key, "ok", 10.0, 20, 1) for r in requests]


register_engine("oracle", Oracle)
"""


@pytest.fixture
def oracle_conftest() -> str:
    """The conftest text that registers the ``oracle`` engine (``--engine=oracle``)."""
    return ORACLE_CONFTEST


STRICT_INI = '[tool.pytest.ini_options]\ntestpaths = ["tests"]\njunit_family = "xunit1"\n'
# The plumbing adapters are built directly with peft and carry no provenance, so no training data
# is known and the leakage check (red by default) cannot run: these projects accept that, as a
# user would with --allow-unchecked-leakage. Tests of that check rewrite it with STRICT_INI.
PLUMBING_INI = STRICT_INI + "qlgate_allow_unchecked_leakage = true\n"


@pytest.fixture
def gate_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester project with the plumbing golden set and the repo's pytest settings."""
    pytester.makepyprojecttoml(PLUMBING_INI)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_project.py").write_text(
        "def test_project_test():\n    assert True\n", encoding="utf-8"
    )
    write_golden(pytester.path, PLUMBING_CASES)
    return pytester


# -- the real embedded model ------------------------------------------------------------------


@dataclass(frozen=True)
class Tickets:
    """Sample-task tickets: (text, label) for training and a disjoint held-out set."""

    train: tuple[tuple[str, str], ...]
    held_out: tuple[tuple[str, str], ...]


def sample_tickets(n_train_per_label: int, n_held_per_label: int) -> Tickets:
    """Well-formed sample tickets, balanced by label, in file order (deterministic)."""
    by_label: dict[str, list[str]] = {label: [] for label in LABELS}
    seen: set[str] = set()
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            label = row["metadata"]["label"]
            text = next(m["content"] for m in row["messages"] if m["role"] == "user")
        except (ValueError, KeyError, TypeError, StopIteration):
            continue  # the raw file has deliberately broken lines for curation
        if label in by_label and isinstance(text, str) and text not in seen:
            seen.add(text)
            by_label[label].append(text)
    need = n_train_per_label + n_held_per_label
    if any(len(v) < need for v in by_label.values()):
        pytest.skip(f"{SAMPLE} has fewer than {need} usable tickets per label")
    train = [
        (t, lab) for i in range(n_train_per_label) for lab in LABELS for t in [by_label[lab][i]]
    ]
    held = [
        (t, lab)
        for i in range(n_train_per_label, need)
        for lab in LABELS
        for t in [by_label[lab][i]]
    ]
    return Tickets(tuple(train), tuple(held))


SEVEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def train_label_lora(
    base: Path,
    tickets: Sequence[tuple[str, str]],
    out: Path,
    *,
    top_layers: int = 2,
    steps: int = 16,
    lr: float = 5e-3,
) -> Path:
    """Train a LoRA on the top ``top_layers`` layers to answer each ticket with its label.

    Real gradient descent on real data, made cheap for a CPU test: the frozen layers below the
    adapter are run once and their output cached (exact, since the adapter cannot change
    them), and the loss covers the answer tokens only (label + end of turn).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok: Any = AutoTokenizer.from_pretrained(str(base))
    model: Any = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    n_layers = model.config.num_hidden_layers
    first = n_layers - top_layers
    rows = []
    for text, label in tickets:
        msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(
            [*msgs, {"role": "assistant", "content": label}], tokenize=False
        )
        answer = full[len(prompt) :].rstrip()
        rows.append(
            (
                tok(prompt, add_special_tokens=False).input_ids,
                tok(answer, add_special_tokens=False).input_ids,
            )
        )
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    where: list[tuple[int, int, int]] = []
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        mask[i, : len(p) + len(c)] = 1
        where += [(i, len(p) - 1 + t, c[t]) for t in range(len(c))]
    row_idx, pos_idx, target = (torch.tensor(col) for col in zip(*where, strict=True))
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    cached = hidden.hidden_states[first]  # input of the first adapted layer
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=list(SEVEN),
        layers_to_transform=list(range(first, n_layers)),
    )
    peft_model: Any = get_peft_model(model, config)
    inner = peft_model.base_model.model.model
    all_layers = inner.layers
    inner.layers = torch.nn.ModuleList(list(all_layers)[first:])
    torch.manual_seed(0)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    try:
        for _ in range(steps):
            states = inner(inputs_embeds=cached, attention_mask=mask).last_hidden_state
            logits = peft_model.base_model.model.lm_head(states[row_idx, pos_idx])
            loss: Any = torch.nn.functional.cross_entropy(logits.float(), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        inner.layers = all_layers
    assert loss.item() < 1.0, f"training did not converge (loss {loss.item():.3f})"
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def embedded_adapters(tmp_path_factory: pytest.TempPathFactory) -> Adapters:
    """On the embedded model: a zero-effect adapter and one trained on sample tickets."""
    from transformers import AutoModelForCausalLM

    from training.models import resolve_base_model

    _one_thread()
    base = resolve_base_model("embedded")
    root = tmp_path_factory.mktemp("embedded")
    zero = _lora(
        AutoModelForCausalLM.from_pretrained(str(base)),
        0,
        zero=True,
        out=root / "zero",
        modules=("q_proj", "v_proj"),
    )
    trained = train_label_lora(base, sample_tickets(6, 3).train, root / "trained")
    return Adapters(base, zero, trained, trained)
