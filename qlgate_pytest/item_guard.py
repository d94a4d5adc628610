"""Which reports may carry qlgate's results (pure).

Case results, flip-rate rows and run counters travel from where items run to the controller on
``report.user_properties`` under keys starting with ``qlgate_``. Any test can append to its own
``user_properties`` (``record_property``), so a Python test file in ``golden/`` could otherwise
forge a case's result and turn a red gate green. Two rules close that:

- where items run, a report of an item that is not one of qlgate's golden case items must not
  carry a reserved key: such a report is turned into a failure (a red gate) naming the keys;
- on the controller, a case result is taken only from the report of the golden item of that
  very case (node id ``<case file>::<case id>``), and must agree with the golden case's own
  ``must_pass``, tags and weight, which the controller reads from the files itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath, PurePosixPath

RESERVED_PREFIX = "qlgate_"


def reserved_keys(properties: Iterable[tuple[str, object]]) -> list[str]:
    """The reserved (``qlgate_*``) keys among ``properties``, in order, without repeats."""
    seen: list[str] = []
    for key, _ in properties:
        if str(key).startswith(RESERVED_PREFIX) and key not in seen:
            seen.append(str(key))
    return seen


def forgery_message(nodeid: str, keys: Iterable[str]) -> str:
    names = ", ".join(sorted(set(keys)))
    return (
        f"{nodeid} recorded qlgate's reserved result properties ({names}): case results come "
        "only from qlgate's own golden case items, so the gate fails closed"
    )


def case_item_mismatch(nodeid: str, case_id: str, case_file: PurePath | None) -> str | None:
    """Why the report ``nodeid`` may not carry the result of ``case_id`` (None: it may).

    ``case_file`` is the golden file that holds ``case_id`` (None: no such case). A golden
    item's node id is ``<path of its case file>::<case id>``, the path relative to the rootdir
    (with ``..`` steps when the golden root lies outside it), so the path is matched against the
    trailing components of the case file's own path.
    """
    path, sep, name = nodeid.rpartition("::")
    if not sep or case_file is None:
        return f"{nodeid} is not a golden case item but carried the result of case {case_id}"
    if name != case_id:
        return f"{nodeid} carried the result of another case ({case_id})"
    parts = [p for p in PurePosixPath(path.replace("\\", "/")).parts if p not in ("..", ".")]
    if not parts or tuple(case_file.parts[-len(parts) :]) != tuple(parts):
        return f"{nodeid} is not a golden case item but carried the result of case {case_id}"
    return None
