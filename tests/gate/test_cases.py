"""Golden case files: schema, JSONL/YAML loading, file:line: field errors, the set's hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qlgate_core.cases import (
    GoldenCase,
    case_files,
    golden_sha256,
    load_case_file,
    load_golden,
    load_golden_set,
)
from qlgate_core.errors import GoldenCaseError

REPO = Path(__file__).resolve().parents[2]

YAML_WITH_DEFAULTS = """\
defaults:
  system: Route the ticket.
  labels: [account, billing, returns, shipping]
  tags: [core]
cases:
  - id: bill-1
    prompt: I was charged twice.
    expected: billing
  - id: ship-1
    prompt: Where is my parcel?
    expected: shipping
    tags: [core, edge]
    must_pass: true
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> GoldenCaseError:
    with pytest.raises(GoldenCaseError) as info:
        load_case_file(path)
    return info.value


def test_yaml_cases_are_merged_over_defaults(tmp_path: Path) -> None:
    """Each YAML case takes the file's defaults, and its own keys win."""
    cases = load_case_file(write(tmp_path, "a.yaml", YAML_WITH_DEFAULTS))
    assert [c.id for c in cases] == ["bill-1", "ship-1"]
    assert cases[0].labels == ("account", "billing", "returns", "shipping")
    assert cases[0].tags == ("core",) and cases[1].tags == ("core", "edge")
    assert cases[1].must_pass and not cases[0].must_pass
    assert cases[0].source.endswith("a.yaml:6")


def test_prompt_and_system_expand_to_a_conversation(tmp_path: Path) -> None:
    """``system`` + ``prompt`` become system and user turns; prompt_text is the user text."""
    case = load_case_file(write(tmp_path, "a.yaml", YAML_WITH_DEFAULTS))[0]
    assert case.conversation() == [
        {"role": "system", "content": "Route the ticket."},
        {"role": "user", "content": "I was charged twice."},
    ]
    assert case.prompt_text() == "I was charged twice."


def test_prompt_text_joins_every_user_turn() -> None:
    """Multi-turn cases expose all user turns (what leakage checks compare with training)."""
    case = GoldenCase.model_validate(
        {
            "id": "m",
            "expected": "x",
            "scorer": "contains",
            "messages": [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "second"},
            ],
        }
    )
    assert case.prompt_text() == "first\nsecond"


def test_label_cases_rank_by_default_and_others_generate() -> None:
    """``mode`` defaults to rank for label cases and generate for every other scorer."""
    label = GoldenCase(id="a", prompt="p", expected="x", labels=("x", "y"))
    regex = GoldenCase(id="b", prompt="p", expected="^x", scorer="regex")
    assert label.effective_mode == "rank"
    assert regex.effective_mode == "generate"
    assert GoldenCase(id="c", prompt="p", expected="x", labels=("x", "y"), mode="generate")


def test_jsonl_skips_blank_and_comment_lines(tmp_path: Path) -> None:
    """JSONL: one case per line; blank and ``#`` lines are ignored."""
    text = (
        "# routing cases\n\n"
        '{"id": "j1", "prompt": "hi", "expected": "hello", "scorer": "contains"}\n'
        '{"id": "j2", "prompt": "hi", "expected": "x", "labels": ["x", "y"]}\n'
    )
    cases = load_case_file(write(tmp_path, "c.jsonl", text))
    assert [c.id for c in cases] == ["j1", "j2"]
    assert cases[1].source.endswith("c.jsonl:4")


def test_unknown_key_names_file_line_and_field(tmp_path: Path) -> None:
    """A misspelled key is rejected at the line of that key, naming it."""
    text = YAML_WITH_DEFAULTS.replace("    must_pass: true", "    must_pas: true")
    err = error_of(write(tmp_path, "a.yaml", text))
    assert err.line == 13 and err.field == "must_pas"
    assert str(err).startswith(f"{tmp_path / 'a.yaml'}:13: field 'must_pas':")


def test_expected_outside_labels_points_at_expected(tmp_path: Path) -> None:
    """A label case whose expected is not an allowed label names 'expected' and its line."""
    text = YAML_WITH_DEFAULTS.replace("expected: shipping", "expected: shiping")
    err = error_of(write(tmp_path, "a.yaml", text))
    assert (err.line, err.field) == (11, "expected")
    assert "ship-1" in str(err)


def test_nested_field_error_points_at_the_nested_line(tmp_path: Path) -> None:
    """An error inside messages[1] is reported at that message's line."""
    text = """\
- id: m1
  scorer: contains
  expected: hi
  messages:
    - role: user
      content: hello
    - role: robot
      content: beep
"""
    err = error_of(write(tmp_path, "m.yaml", text))
    assert err.field == "messages.1.role" and err.line == 7


def test_missing_field_points_at_the_case(tmp_path: Path) -> None:
    """A missing required field is reported at the first line of its case."""
    err = error_of(write(tmp_path, "a.yaml", "- id: x1\n  prompt: hi\n- id: x2\n  prompt: yo\n"))
    assert (err.line, err.field) == (1, "expected")


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    """Bad JSON and schema errors in JSONL name the line."""
    good = '{"id": "a", "prompt": "p", "expected": "x", "labels": ["x"]}\n'
    err = error_of(write(tmp_path, "b.jsonl", good + '{"id": "b", "prompt": \n'))
    assert err.line == 2 and "invalid JSON" in str(err)
    err = error_of(
        write(
            tmp_path,
            "c.jsonl",
            good + '{"id": "c d", "prompt": "p", "expected": "x", "scorer": "exact"}\n',
        )
    )
    assert (err.line, err.field) == (2, "id")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    """Broken YAML is reported at the line the parser stopped on."""
    err = error_of(write(tmp_path, "a.yaml", "- id: a\n  prompt: [unclosed\n  expected: x\n"))
    assert err.line is not None and err.line >= 2 and "invalid YAML" in str(err)


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    """YAML would silently keep the last of two equal keys; the loader refuses instead."""
    text = "- id: a\n  prompt: p\n  expected: x\n  expected: y\n  scorer: exact\n"
    err = error_of(write(tmp_path, "a.yaml", text))
    assert (err.line, err.field) == (4, "expected")


@pytest.mark.parametrize(
    ("fields", "blamed"),
    [
        ({"prompt": "p", "messages": [{"role": "user", "content": "p"}]}, "messages"),
        ({"prompt": "p", "scorer": "label"}, "labels"),
        ({"prompt": "p", "scorer": "regex", "expected": "("}, "expected"),
        ({"prompt": "p", "scorer": "exact", "mode": "rank"}, "mode"),
        ({"prompt": "p", "scorer": "exact", "tags": ["skip"]}, "tags"),
        ({"prompt": "p", "scorer": "exact", "weight": 0}, "weight"),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                ],
                "scorer": "exact",
            },
            "messages",
        ),
    ],
)
def test_cross_field_rules_blame_the_right_field(
    tmp_path: Path, fields: dict[str, object], blamed: str
) -> None:
    """Cross-field rules name the field at fault (not just 'the case')."""
    row = {"id": "r", "expected": "x", "scorer": "exact", **fields}
    err = error_of(write(tmp_path, "r.jsonl", json.dumps(row) + "\n"))
    assert err.field == blamed and err.line == 1


def test_duplicate_ids_across_files_name_both_places(tmp_path: Path) -> None:
    """The same id in two files is an error on the later file naming both file:lines."""
    write(tmp_path, "a.yaml", YAML_WITH_DEFAULTS)
    write(
        tmp_path, "b.jsonl", '{"id": "ship-1", "prompt": "p", "expected": "x", "labels": ["x"]}\n'
    )
    golden = load_golden_set(tmp_path)
    assert list(golden.errors) == [tmp_path / "b.jsonl"]
    message = str(golden.errors[tmp_path / "b.jsonl"])
    assert f"{tmp_path / 'b.jsonl'}:1" in message and f"{tmp_path / 'a.yaml'}:9" in message
    with pytest.raises(GoldenCaseError, match="duplicate case id 'ship-1'"):
        load_golden(tmp_path)


def test_case_files_are_sorted_and_skip_hidden_dirs(tmp_path: Path) -> None:
    """Only JSONL/YAML files count, in sorted order, outside hidden directories."""
    for name in ("b.yaml", "a.jsonl", "sub/c.yml", ".hidden/d.yaml", "notes.md", "test_x.py"):
        write(tmp_path, name, "")
    assert [p.relative_to(tmp_path).as_posix() for p in case_files(tmp_path)] == [
        "a.jsonl",
        "b.yaml",
        "sub/c.yml",
    ]


def test_hash_ignores_file_layout_and_sees_content(tmp_path: Path) -> None:
    """The golden hash is the same however cases are split over files, and changes with them."""
    one = load_golden(write(tmp_path / "one", "a.yaml", YAML_WITH_DEFAULTS))
    split = YAML_WITH_DEFAULTS.split("  - id: ship-1")
    write(tmp_path / "two", "a.yaml", split[0])
    write(
        tmp_path / "two",
        "b.yaml",
        split[0].split("cases:")[0] + "cases:\n  - id: ship-1" + split[1],
    )
    two = load_golden(tmp_path / "two")
    assert golden_sha256(one) == golden_sha256(two)
    changed = load_golden(
        write(tmp_path / "three", "a.yaml", YAML_WITH_DEFAULTS.replace("twice", "three times"))
    )
    assert golden_sha256(changed) != golden_sha256(one)


ids = st.lists(
    st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True), min_size=1, max_size=8, unique=True
)


@settings(max_examples=50, deadline=None)
@given(ids=ids, data=st.data())
def test_hash_is_order_independent(ids: list[str], data: st.DataObject) -> None:
    """Any permutation of the same cases hashes identically."""
    cases = [GoldenCase(id=i, prompt=f"ticket {i}", expected="x", labels=("x", "y")) for i in ids]
    shuffled = data.draw(st.permutations(cases))
    assert golden_sha256(shuffled) == golden_sha256(cases)


def test_the_shipped_golden_set_loads() -> None:
    """golden/ in this repo loads cleanly: >= 150 unique cases with the documented slices."""
    cases = load_golden(REPO / "golden")
    assert len(cases) >= 150
    tags = {t for c in cases for t in c.tags}
    assert {"core", "hard_negative", "edge", "long", "critical"} <= tags
    assert all(c.must_pass for c in cases if "critical" in c.tags)


def test_lock_problem_is_kept_under_the_lock_path(tmp_path: Path) -> None:
    """Checked against a missing lock, the set keeps one error under the lock's path (a red
    reason), apart from case files' errors; the opt-out turns it into a printed note."""
    write(tmp_path, "a.yaml", YAML_WITH_DEFAULTS)
    lock = tmp_path / "golden.lock"
    golden = load_golden_set(tmp_path, lock=lock)
    assert list(golden.errors) == [lock] and len(golden.cases) == 2
    assert "no golden-set lock" in str(golden.errors[lock])
    allowed = load_golden_set(tmp_path, lock=lock, allow_unlocked=True)
    assert dict(allowed.errors) == {} and "lock check off" in allowed.notes[0]
    assert dict(load_golden_set(tmp_path).errors) == {}  # library use: nothing compared
