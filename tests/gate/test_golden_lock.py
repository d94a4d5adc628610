"""The golden-set lock: a vanished, emptied, renamed, hidden or edited golden file is red.

Unit tests pin the pure comparison, the lock file format and the file classification; the
end-to-end runs (pytester, tiny model) pin each way of losing golden cases that issue 20 found
green before: each is now red with a reason naming the file and the case ids.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from qlgate_core.cases import load_golden_set
from qlgate_core.golden_lock import (
    LOCK_NAME,
    Difference,
    GoldenLock,
    LockedFile,
    LockFileError,
    compare,
    content_sha256,
    dumps,
    loads,
    render,
)
from qlgate_core.golden_tree import classify, is_case_path, scan
from qlgate_pytest.__main__ import main

REPO = Path(__file__).resolve().parents[2]
Adapters = Any  # tests/gate/conftest.py's Adapters
Writer = Callable[..., Path]

H = {c: c * 64 for c in "0123456789abcdef"}  # fake but well-formed sha256 digests


def locked(files: dict[str, LockedFile], golden: str = H["0"]) -> GoldenLock:
    return GoldenLock(files, golden)


def cases(*ids: str, digest: str = H["1"]) -> dict[str, str]:
    return {cid: digest for cid in ids}


# -- the pure comparison ----------------------------------------------------------------------


def test_identical_locks_have_no_difference() -> None:
    """A set that equals its lock compares clean."""
    lock = locked({"a.yaml": LockedFile("cases", H["a"], cases("x", "y"))})
    assert compare(lock, lock) == []


def test_emptied_file_names_every_vanished_id() -> None:
    """A case file whose cases are gone (emptied, comment-only, cases: []) names each id."""
    old = locked({"critical.yaml": LockedFile("cases", H["a"], cases("c-1", "c-2"))})
    new = locked({"critical.yaml": LockedFile("cases", H["b"], {})})
    diffs = compare(old, new)
    assert diffs == [Difference("cases_vanished", "critical.yaml", "cases", ("c-1", "c-2"))]
    assert render(diffs[0]) == "critical.yaml: 2 case(s) vanished: c-1, c-2"


def test_vanished_file_and_a_skipped_newcomer_are_both_named() -> None:
    """Renaming critical.yaml to .YAML: the file vanished with its ids, the new one is skipped."""
    old = locked({"critical.yaml": LockedFile("cases", H["a"], cases("c-1"))})
    new = locked({"critical.YAML": LockedFile("skipped", H["a"], None, "suffix '.YAML' ...")})
    lines = [render(d) for d in compare(old, new)]
    assert lines == [
        "critical.yaml: case file vanished, and with it 1 case(s): c-1",
        "critical.YAML: not in the lock, and the collector skips it (suffix '.YAML' ...)",
    ]


def test_case_moved_between_files_is_a_move_not_a_loss() -> None:
    """An id that leaves one file for another is reported as moved, not vanished and added."""
    old = locked(
        {
            "a.yaml": LockedFile("cases", H["a"], cases("x", "y")),
            "b.yaml": LockedFile("cases", H["b"], cases("z")),
        }
    )
    new = locked(
        {
            "a.yaml": LockedFile("cases", H["c"], cases("x")),
            "b.yaml": LockedFile("cases", H["d"], {"z": H["1"], "y": H["2"]}),
        }
    )
    diffs = compare(old, new)
    assert [render(d) for d in diffs] == [
        "a.yaml: case y moved to b.yaml (and its content changed)"
    ]


def test_changed_and_added_cases_and_formatting_only_edits() -> None:
    """Edited case content names the case; a comment-only edit says no case differs."""
    old = locked(
        {
            "a.yaml": LockedFile("cases", H["a"], cases("x", "y")),
            "b.yaml": LockedFile("cases", H["b"], cases("z")),
        }
    )
    new = locked(
        {
            "a.yaml": LockedFile("cases", H["c"], {"x": H["1"], "y": H["2"], "w": H["1"]}),
            "b.yaml": LockedFile("cases", H["d"], cases("z")),
        }
    )
    lines = [render(d) for d in compare(old, new)]
    assert lines == [  # losses and edits before additions
        "a.yaml: 1 case(s) changed: y",
        "b.yaml: content changed (sha256 bbbbbbbbbbbb -> dddddddddddd; no case differs: "
        "comments, order or formatting)",
        "a.yaml: 1 case(s) added: w",
    ]


def test_python_files_are_locked_by_hash() -> None:
    """A deleted, added or edited golden test file is a difference (its checks are the set's)."""
    old = locked({"test_a.py": LockedFile("python", H["a"])})
    assert [render(d) for d in compare(old, locked({}))] == [
        "test_a.py: golden test file vanished (its checks no longer run)"
    ]
    assert [render(d) for d in compare(locked({}), old)] == [
        "test_a.py: golden test file not in the lock"
    ]
    edited = locked({"test_a.py": LockedFile("python", H["b"])})
    assert compare(old, edited)[0].kind == "file_changed"


def test_unreadable_file_is_a_change_without_invented_ids() -> None:
    """A case file that no longer parses is 'changed', not 'every case vanished'."""
    old = locked({"a.yaml": LockedFile("cases", H["a"], cases("x"))})
    new = locked({"a.yaml": LockedFile("cases", H["b"], None)})
    assert [render(d) for d in compare(old, new)] == [
        "a.yaml: content changed (sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb; it cannot be read now "
        "(see its error))"
    ]


def test_set_hash_alone_differs_when_defaults_change() -> None:
    """Same files but another golden-set hash (the schema's defaults moved) is a difference."""
    files = {"a.yaml": LockedFile("cases", H["a"], cases("x"))}
    diffs = compare(locked(files, H["0"]), locked(files, H["9"]))
    assert [d.kind for d in diffs] == ["set_changed"]


def test_render_limits_long_id_lists() -> None:
    """The gate's one-line reason lists a few ids and counts the rest."""
    diff = Difference("cases_vanished", "a.yaml", "cases", tuple(f"c{i}" for i in range(12)))
    assert render(diff, limit=3) == "a.yaml: 12 case(s) vanished: c0, c1, c2 (+9 more)"


# -- the lock file ----------------------------------------------------------------------------


def test_lock_text_round_trips_and_is_stable() -> None:
    """dumps/loads round-trip, and the text is the same however the input was ordered."""
    a = locked(
        {
            "b.yaml": LockedFile("cases", H["b"], {"z": H["1"], "y": H["2"]}),
            "a.json": LockedFile("skipped", H["a"], None, "why"),
            "test_x.py": LockedFile("python", H["c"]),
        }
    )
    b = locked(dict(reversed(list(a.files.items()))))
    assert dumps(a) == dumps(b)
    assert loads(dumps(a)) == loads(dumps(b))
    assert compare(loads(dumps(a)), a) == []


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.update(version=99), "field 'version': 99 is not 1"),
        (lambda d: d["files"]["a.yaml"].update(sha256="nope"), "files.a.yaml.sha256"),
        (lambda d: d["files"]["a.yaml"].update(kind="data"), "files.a.yaml.kind"),
        (lambda d: d.update(extra=1), "field 'extra': unknown key"),
    ],
)
def test_malformed_lock_names_the_field(mutate: Callable[[Any], None], fragment: str) -> None:
    """A lock of another version or with a bad field is refused, naming the field."""
    data = json.loads(dumps(locked({"a.yaml": LockedFile("cases", H["a"], cases("x"))})))
    mutate(data)
    with pytest.raises(LockFileError, match=fragment.replace(".", r"\.")):
        loads(json.dumps(data))


def test_content_hash_reads_crlf_as_lf() -> None:
    """A Windows checkout of the same commit does not look like an edit."""
    assert content_sha256(b"a: 1\r\nb: 2\r\n") == content_sha256(b"a: 1\nb: 2\n")


# -- which files count ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "kind", "fragment"),
    [
        ("core.yaml", "cases", None),
        ("sub/x.jsonl", "cases", None),
        ("test_team.py", "python", None),
        ("critical.YAML", "skipped", "rename it to '.yaml'"),
        ("critical.yml~", "skipped", "suffix '.yml~'"),
        ("cases.json", "skipped", "'.jsonl'"),
        (".old/critical.yaml", "skipped", "hidden folder '.old'"),
        (".critical.yaml", "skipped", "a hidden file"),
        ("data.csv", "skipped", "suffix '.csv'"),
        ("README.md", None, None),
        ("__pycache__/test_team.cpython-311.pyc", None, None),
        (".pytest_cache/v/cache/nodeids", None, None),
    ],
)
def test_classify_names_why_the_collector_skips(
    rel: str, kind: str | None, fragment: str | None
) -> None:
    """Case, Python and skipped files (with the reason); tool output and prose are not counted."""
    found = classify(PurePosixPath(rel))
    if kind is None:
        assert found is None
        return
    assert found is not None and found[0] == kind
    if fragment is not None:
        assert found[1] is not None and fragment in found[1]


def test_collector_and_scan_agree(tmp_path: Path) -> None:
    """is_case_path (the pytest collector) accepts exactly the files scan calls case files."""
    for rel in ("a.yaml", ".old/b.yaml", "c.YAML", "sub/d.jsonl", "test_e.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("", encoding="utf-8")
    scanned = {f.rel for f in scan(tmp_path) if f.kind == "cases"}
    collected = {
        p.relative_to(tmp_path).as_posix()
        for p in tmp_path.rglob("*")
        if p.is_file() and is_case_path(tmp_path, p)
    }
    assert scanned == collected == {"a.yaml", "sub/d.jsonl"}


def test_shipped_golden_set_matches_its_lock() -> None:
    """golden/golden.lock is current: edit golden/ and rerun `lock-golden` in the same change."""
    golden = load_golden_set(REPO / "golden", lock=REPO / "golden" / LOCK_NAME)
    assert dict(golden.errors) == {}


# -- end to end: every attack of issue 20 is red ----------------------------------------------

CRITICAL = [
    # regex '^' matches any output: right for every role, so only the lock can turn these red.
    {"id": f"crit-{i}", "prompt": f"Say hi {i}.", "expected": "^", "scorer": "regex",
     "must_pass": True, "max_new_tokens": 2, "tags": ["critical"]}
    for i in (1, 2)
]  # fmt: skip
TEAM_TEST = "def test_team_rule(qlgate_engine):\n    assert qlgate_engine is not None\n"
NON_INFERIOR = "--min-f1-gain=-1"  # plumbing: any candidate that runs may pass


@pytest.fixture
def locked_project(
    gate_project: pytest.Pytester, golden_writer: Writer, golden_locker: Writer
) -> pytest.Pytester:
    """The plumbing project plus a must_pass critical.yaml and a golden test file, locked."""
    golden_writer(gate_project.path, CRITICAL, name="critical.yaml")
    (gate_project.path / "golden" / "test_team.py").write_text(TEAM_TEST, encoding="utf-8")
    golden_locker(gate_project.path)
    return gate_project


def gate(project: pytest.Pytester, adapter: Path, *args: str) -> pytest.RunResult:
    return project.runpytest(
        f"--candidate={adapter}", "--gate-report=out/report.json", NON_INFERIOR, *args
    )


def reasons_of(project: pytest.Pytester) -> list[str]:
    report = json.loads((project.path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["passed"] is False
    return [str(r) for r in report["reasons"]]


def assert_red(project: pytest.Pytester, result: pytest.RunResult, *fragments: str) -> str:
    """Exit 1, a red report, one reason holding every fragment, no traceback."""
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    reasons = reasons_of(project)
    hits = [r for r in reasons if all(f in r for f in fragments)]
    assert hits, reasons
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    return hits[0]


def _empty(g: Path) -> None:
    (g / "critical.yaml").write_text("", encoding="utf-8")


def _comment_only(g: Path) -> None:
    (g / "critical.yaml").write_text("# nothing to see here\n", encoding="utf-8")


def _no_cases(g: Path) -> None:
    (g / "critical.yaml").write_text("cases: []\n", encoding="utf-8")


def _rename_upper(g: Path) -> None:
    (g / "critical.yaml").rename(g / "critical.YAML")


def _hide(g: Path) -> None:
    (g / ".old").mkdir()
    shutil.move(g / "critical.yaml", g / ".old" / "critical.yaml")


VANISHED = "critical.yaml: 2 case(s) vanished: crit-1, crit-2"
FILE_GONE = "critical.yaml: case file vanished, and with it 2 case(s): crit-1, crit-2"


@pytest.mark.parametrize(
    ("attack", "fragments"),
    [
        (_empty, (VANISHED,)),
        (_comment_only, (VANISHED,)),
        (_no_cases, (VANISHED,)),
        (_rename_upper, (FILE_GONE, "critical.YAML: not in the lock, and the collector skips it",
                         "rename it to '.yaml'")),
        (_hide, (FILE_GONE, ".old/critical.yaml: not in the lock", "hidden folder '.old'")),
        (lambda g: (g / "test_team.py").unlink(),
         ("test_team.py: golden test file vanished (its checks no longer run)",)),
        (lambda g: (g / LOCK_NAME).unlink(),
         ("golden.lock: no golden-set lock", "python -m qlgate_pytest lock-golden --golden")),
        (lambda g: (g / "critical.yaml").write_text(
            (g / "critical.yaml").read_text(encoding="utf-8").replace("Say hi 1.", "Say bye."),
            encoding="utf-8"),
         ("critical.yaml: 1 case(s) changed: crit-1",)),
    ],
    ids=["emptied", "comment_only", "cases_empty_list", "renamed_YAML", "hidden_folder",
         "deleted_test_file", "deleted_lock", "edited_case_text"],
)  # fmt: skip
def test_lost_golden_cases_turn_the_gate_red(
    locked_project: pytest.Pytester,
    tiny_adapters: Adapters,
    attack: Callable[[Path], None],
    fragments: tuple[str, ...],
) -> None:
    """Each way of losing or changing golden checks unnoticed is red, naming file and ids."""
    attack(locked_project.path / "golden")
    assert_red(locked_project, gate(locked_project, tiny_adapters.perturbed), *fragments)


def test_locked_project_is_green(locked_project: pytest.Pytester, tiny_adapters: Adapters) -> None:
    """The unattacked project passes: the reds above come from the lock, not the setup."""
    result = gate(locked_project, tiny_adapters.perturbed)
    assert result.ret == 0, result.stdout.str()


def test_partial_selection_still_checks_the_whole_set(
    locked_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """-k selecting untouched cases (partial runs allowed) is still red for an emptied file."""
    _empty(locked_project.path / "golden")
    result = gate(locked_project, tiny_adapters.perturbed, "-k", "bill", "--allow-partial")
    assert_red(locked_project, result, VANISHED)


@pytest.mark.slow
def test_lock_difference_is_red_under_xdist(
    locked_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """-n 2: the controller, which decides without collecting, checks the lock as well."""
    _empty(locked_project.path / "golden")
    result = locked_project.runpytest_subprocess(
        f"--candidate={tiny_adapters.perturbed}",
        "--gate-report=out/report.json",
        NON_INFERIOR,
        "-n",
        "2",
        "-p",
        "no:randomly",
    )
    assert_red(locked_project, result, VANISHED)


def test_allow_unlocked_golden_is_printed_and_recorded(
    locked_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """--allow-unlocked-golden lets a set without a lock pass, says so and records it."""
    (locked_project.path / "golden" / LOCK_NAME).unlink()
    result = gate(locked_project, tiny_adapters.perturbed, "--allow-unlocked-golden")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*qlgate: golden-set lock check off: no lock at *golden.lock*"])
    report = json.loads((locked_project.path / "out" / "report.json").read_text("utf-8"))
    assert report["passed"] is True
    assert report["run"]["options"]["allow_unlocked_golden"] is True


def test_allow_unlocked_golden_still_checks_an_existing_lock(
    locked_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """The opt-out covers a missing lock only: an emptied file against a lock stays red."""
    _empty(locked_project.path / "golden")
    result = gate(locked_project, tiny_adapters.perturbed, "--allow-unlocked-golden")
    assert_red(locked_project, result, VANISHED)


def test_golden_lock_option_points_elsewhere(
    locked_project: pytest.Pytester, tiny_adapters: Adapters
) -> None:
    """--golden-lock PATH is the lock read; a missing one there is red, naming that path."""
    result = gate(locked_project, tiny_adapters.perturbed, "--golden-lock=locks/other.lock")
    assert_red(locked_project, result, "other.lock: no golden-set lock", "--lock")


# -- the lock command -------------------------------------------------------------------------


def lock_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["lock-golden", *args])
    return code, capsys.readouterr().out


def test_lock_command_prints_vanished_ids_and_rewrites(
    tmp_path: Path, golden_writer: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """lock-golden names every vanished id before rewriting; --check exits 1 until it has."""
    golden_writer(tmp_path, CRITICAL, name="critical.yaml")
    golden = tmp_path / "golden"
    assert lock_cli(capsys, "--golden", str(golden), "--check")[0] == 0
    _no_cases(golden)
    (golden / "cases.json").write_text("{}", encoding="utf-8")
    code, out = lock_cli(capsys, "--golden", str(golden), "--check")
    assert code == 1
    assert "WARNING: 2 case(s) vanished from the golden set:" in out
    assert "  - crit-1 (was in critical.yaml)" in out and "  - crit-2 (was in critical.yaml)" in out
    assert "cases.json: not in the lock, and the collector skips it" in out
    assert load_golden_set(golden, lock=golden / LOCK_NAME).errors  # --check wrote nothing
    code, out = lock_cli(capsys, "--golden", str(golden))
    assert code == 0 and "crit-1 (was in critical.yaml)" in out and "wrote " in out
    assert "  ! cases.json: suffix '.json'" in out  # skipped files are named on every rewrite
    assert dict(load_golden_set(golden, lock=golden / LOCK_NAME).errors) == {}
    assert lock_cli(capsys, "--golden", str(golden), "--check")[0] == 0


def test_lock_command_refuses_a_broken_set(
    tmp_path: Path, golden_writer: Writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A golden set with a broken case file is never locked: exit 2 naming file:line."""
    golden_writer(tmp_path, CRITICAL, name="critical.yaml")
    golden = tmp_path / "golden"
    before = (golden / LOCK_NAME).read_text(encoding="utf-8")
    (golden / "bad.jsonl").write_text('{"id": "b-1", "pro\n', encoding="utf-8")
    code, out = lock_cli(capsys, "--golden", str(golden))
    assert code == 2 and "bad.jsonl:1" in out
    assert (golden / LOCK_NAME).read_text(encoding="utf-8") == before
