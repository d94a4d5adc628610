"""Augmentation: source selection, checking teacher output, the OpenAI-compatible client against
a real local HTTP server, and the embedded teacher end to end."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from datasets import load_from_disk

from training.augment import (
    SourceInfo,
    check_paraphrase,
    clean_output,
    select_sources,
    synthetic_record,
)
from training.curate import curate
from training.curate_config import AugmentConfig, CurateConfig, SchemaConfig, replace
from training.errors import TeacherError
from training.schema import Example
from training.teacher import HFTeacher, OpenAITeacher, Sampling

LABELS = ("account", "billing", "returns", "shipping")
SYSTEM = "Route the ticket: account, billing, returns or shipping. Reply with the label only."
TICKETS = [
    ("Where is my parcel? It was due on Monday and tracking has not moved.", "shipping", []),
    ("I was charged twice for my last order, please refund one payment.", "billing", ["edge"]),
    ("The kettle arrived with a cracked lid, I want to send it back.", "returns", []),
    ("I cannot log in, the password reset email never arrives.", "account", []),
    ("Do you deliver to Norway? I want to order a rug for my sister.", "shipping", []),
    ("Can I exchange the jacket for a bigger size, it is too tight?", "returns", []),
    ("My courier left the parcel at the wrong house on Elm Street.", "shipping", []),
    ("The blender I received is not the model I ordered.", "returns", []),
]


def write_corpus(path: Path, *, all_edge: bool = False) -> Path:
    lines = []
    for text, label, tags in TICKETS:
        tags = ["edge"] if all_edge else tags
        record = {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": text},
                {"role": "assistant", "content": label},
            ],
            "metadata": {"label": label, "quality_score": 0.9, "tags": tags},
        }
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sources_are_edge_cases_and_rare_labels() -> None:
    """Edge-tagged examples and examples of under-represented labels are chosen, in order."""
    infos = [
        SourceInfo(0, "shipping", ()),
        SourceInfo(1, "shipping", ("edge",)),
        SourceInfo(2, "shipping", ()),
        SourceInfo(3, "billing", ()),
        SourceInfo(4, "shipping", ()),
    ]
    chosen = select_sources(infos, edge_tags=["edge"], under_represented=0.5, max_sources=None)
    assert chosen == [1, 3]
    assert select_sources(infos, edge_tags=["edge"], under_represented=0.5, max_sources=1) == [1]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ('Sure! Here is a rewritten version: "My parcel is late."', "My parcel is late."),
        ("Rewritten message: My parcel is late.\n\nI hope this helps!", "My parcel is late."),
        ("  'My parcel is late.'  ", "My parcel is late."),
    ],
)
def test_teacher_preambles_and_quotes_are_removed(raw: str, clean: str) -> None:
    """Chatty wrappers around the paraphrase are stripped."""
    assert clean_output(raw) == clean


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        ("", "empty"),
        ("where is my parcel? it was due on monday and tracking has not moved", "identical"),
        ("I'm sorry, but I can't help with that request.", "refusal"),
        ("<|im_start|>assistant shipping", "template_marker"),
        ("Late.", "length"),
        ("My shipping parcel was due Monday and the tracker is frozen.", "label_leak"),
        ("My parcel, due Monday <EMAIL>, shows no tracking update at all.",
         "placeholder_changed"),
        ("My package should have come on Monday but the tracking is stuck.", None),
        ("I cannot see any tracking news for the parcel due on Monday.", None),
    ],
)  # fmt: skip
def test_paraphrase_checks(candidate: str, reason: str | None) -> None:
    """Teacher outputs that are empty, copies, refusals, markers, off-length, label-leaking or
    placeholder-changing are rejected with that reason; real paraphrases pass, including one
    that keeps the customer's own "I cannot"."""
    source = "Where is my parcel? It was due on Monday and I cannot see tracking news."
    if candidate.startswith("where is my parcel"):
        candidate = source.lower()
    assert check_paraphrase(candidate, source, LABELS) == reason


def test_synthetic_record_keeps_label_and_points_to_origin() -> None:
    """A synthetic record replaces the last user turn, keeps the label, and names its origin."""
    example = Example((("system", SYSTEM), ("user", "old"), ("assistant", "billing")), "billing",
                      "human", {"quality_score": 0.9})  # fmt: skip
    record = synthetic_record(example, "new words", origin_id="ab" * 8, origin_line=7, teacher="t")
    assert [m["content"] for m in record["messages"]] == [SYSTEM, "new words", "billing"]
    assert record["metadata"]["source"] == "synthetic"
    assert record["metadata"]["label"] == "billing"
    assert record["metadata"]["origin"] == {"id": "ab" * 8, "line": 7}


class _Endpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible /chat/completions endpoint answering with varied rewrites: one
    real paraphrase, then a copy, a refusal and a label leak, so every path is exercised."""

    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        text = body["messages"][-1]["content"].split("\n\n", 1)[1]
        variants = [
            f"Hello team, quick question from a long-time customer: {text.lower()} Thanks a lot!",
            text,
            "I'm sorry, I can't help with that.",
            f"{text} This is probably a billing and shipping issue.",
        ]
        choices = [{"index": i, "message": {"role": "assistant", "content": variants[i % 4]}}
                   for i in range(body["n"])]  # fmt: skip
        payload = json.dumps({"choices": choices}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    _Endpoint.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_endpoint_teacher_feeds_the_pipeline(tmp_path: Path, endpoint: str) -> None:
    """Paraphrases from an OpenAI-compatible server pass validation and dedup, carry source
    "synthetic" and their origin, stay in train, and every rejection is counted."""
    teacher = OpenAITeacher(endpoint, "teacher-model", Sampling(max_new_tokens=48))
    config = replace(
        CurateConfig(),
        schema=SchemaConfig(labels=LABELS, label_must_match_answer=True),
        augment=AugmentConfig(n=4, under_represented=0.6, max_ratio=1.0),
    )
    out = tmp_path / "out"
    manifest = curate(write_corpus(tmp_path / "raw.jsonl"), out, config, teacher=teacher)
    augment = manifest["augment"]
    sources = augment["sources"]
    # Train split: shipping 2, returns 2, billing 1 (edge-tagged), account 1; 1 < 0.6 x 2.
    assert sources == 2
    assert augment["generated"] == 4 * sources
    assert augment["accepted"] == sources
    assert augment["rejected"] == {"identical": sources, "refusal": sources, "label_leak": sources}
    assert manifest["counts"]["augmented"] == sources
    request = _Endpoint.requests[0]
    assert request["model"] == "teacher-model" and request["n"] == 4 and "seed" in request
    dataset = load_from_disk(str(out / "dataset"))
    synthetic = [row for row in dataset["train"] if row["source"] == "synthetic"]
    assert len(synthetic) == sources
    assert all(row["source"] != "synthetic" for row in dataset["validation"])
    for row in synthetic:
        meta = json.loads(row["metadata"])
        assert meta["origin"]["line"] in range(1, len(TICKETS) + 1)
        assert row["label"] == row["messages"][-1]["content"]


def test_endpoint_errors_are_teacher_errors(endpoint: str) -> None:
    """An endpoint answering an error status is reported as a TeacherError naming the URL."""
    teacher = OpenAITeacher(endpoint + "/wrong", "m", Sampling())
    with pytest.raises(TeacherError, match="HTTP 404"):
        teacher.complete([[{"role": "user", "content": "hi"}]], n=1, seed=0)


def test_the_ratio_cap_limits_synthetic_records(tmp_path: Path, endpoint: str) -> None:
    """No more synthetic records are kept than max_ratio x the kept human records."""
    teacher = OpenAITeacher(endpoint, "m", Sampling())
    config = replace(
        CurateConfig(),
        augment=AugmentConfig(n=1, max_ratio=0.25),
    )
    raw = write_corpus(tmp_path / "raw.jsonl", all_edge=True)
    manifest = curate(raw, tmp_path / "out", config, teacher=teacher)
    augment = manifest["augment"]
    assert augment["sources"] == 6  # every human train record is tagged edge
    assert augment["accepted"] == 2  # int(0.25 x 8 kept)
    assert manifest["counts"]["train"] == 6 + 2
    assert augment["rejected"] == {"over_ratio_cap": 4}


@pytest.mark.slow
def test_embedded_teacher_paraphrases_through_the_pipeline(tmp_path: Path) -> None:
    """The embedded model writes seeded paraphrases, batched; every output is either kept as a
    synthetic record or counted as rejected."""
    from training.models import resolve_base_model

    teacher = HFTeacher(resolve_base_model(), Sampling(max_new_tokens=20, batch_size=4))
    prompt = [[{"role": "user", "content": "Rewrite: my parcel is late."}]]
    first = teacher.complete(prompt, n=2, seed=3)
    assert first == teacher.complete(prompt, n=2, seed=3)
    assert len(first) == 1 and len(first[0]) == 2 and all(isinstance(t, str) for t in first[0])
    config = replace(
        CurateConfig(),
        schema=SchemaConfig(labels=LABELS),
        augment=AugmentConfig(n=2, max_sources=2, max_ratio=1.0, under_represented=0.6),
    )
    manifest = curate(write_corpus(tmp_path / "raw.jsonl"), tmp_path / "out", config,
                      teacher=teacher)  # fmt: skip
    augment = manifest["augment"]
    assert augment["sources"] == 2 and augment["generated"] == 4
    assert augment["accepted"] + sum(augment["rejected"].values()) == 4
    assert augment["teacher"]["kind"] == "transformers"
