"""Request and response bodies of the gate service (pydantic: the service's I/O boundary).

Unknown keys are refused (a misspelt ``treshold`` must not silently gate with the default), and
every number has the same bounds the gate's own option validators apply, so a request that
passes validation never turns into a pytest usage error later. Numbers must be JSON numbers:
``true`` is not the integer 1, nor ``"0.1"`` the float 0.1 (pydantic's lax mode would take
both); an integral ``8.0`` is the integer 8, as JSON Schema's ``integer`` says.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator
from pydantic_core import PydanticCustomError

from qlgate_pytest.service.paths import GOLDEN_SET_ID

_INTS = ("batch_size", "seed")
_FLOATS = ("baseline_f1", "threshold", "confidence", "max_p99_ms", "max_slice_drop")


def _json_number(value: object, kind: str) -> object:
    if isinstance(value, bool | str):
        got = "boolean" if isinstance(value, bool) else "string"
        what = "an integer" if kind == "int" else "a number"
        raise PydanticCustomError(f"{kind}_type", f"Input should be {what}, not a JSON {got}")
    return value


JobStatus = Literal["queued", "running", "approved", "rejected", "failed"]
MAX_PATH = 4096


class EvaluateRequest(BaseModel):
    """What to gate, against which golden set, with which thresholds."""

    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, protected_namespaces=(), str_max_length=MAX_PATH
    )

    model_path: str = Field(
        min_length=1,
        max_length=MAX_PATH,
        description="adapter directory, absolute or relative to a configured model root",
    )
    golden_set_id: str = Field(
        pattern=GOLDEN_SET_ID, description="name of a golden set directory under the golden root"
    )
    baseline: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PATH,
        description="'base' (default), or an adapter directory / REPORT.json under a model root",
    )
    baseline_f1: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="absolute floor: the candidate's macro-F1 must reach baseline_f1 + threshold "
        "(needs a gate with --min-f1)",
    )
    threshold: float | None = Field(
        default=None,
        ge=-1.0,
        lt=1.0,
        description="required macro-F1 gain over the baseline (--min-f1-gain)",
    )
    confidence: float | None = Field(default=None, ge=0.5, lt=1.0)
    max_p99_ms: float | None = Field(default=None, gt=0.0)
    max_slice_drop: float | None = Field(default=None, ge=0.0, le=1.0)
    engine: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    base_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PATH,
        description="'embedded' or a model directory under a model root",
    )
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    # Strict: "false" or 0 must not be read as a choice to skip a check.
    allow_unchecked_leakage: StrictBool = Field(
        default=False,
        description="let the gate pass when the adapter's training data cannot be found or "
        "verified (--allow-unchecked-leakage); the report says the leakage check did not run",
    )

    # A field validator, not a strict type: strict ints refuse 8.0, which JSON Schema (and so
    # every client generated from the schema) calls an integer.
    @field_validator(*_INTS, mode="before")
    @classmethod
    def _int_is_a_json_number(cls, value: object) -> object:
        return _json_number(value, "int")

    @field_validator(*_FLOATS, mode="before")
    @classmethod
    def _float_is_a_json_number(cls, value: object) -> object:
        return _json_number(value, "float")


class JobResult(BaseModel):
    """A job's state; once finished, the gate's verdict and the full report."""

    model_config = ConfigDict(populate_by_name=True)

    job_id: str
    status: JobStatus
    passed: bool | None = Field(
        default=None, alias="pass", description="true approved, false rejected, null not decided"
    )
    f1_score: float | None = Field(default=None, description="candidate macro-F1")
    latency_ms_p99: float | None = Field(default=None, description="candidate p99 latency (ms)")
    message: str
    report: dict[str, Any] | None = Field(default=None, description="the full gate report")
    exit_code: int | None = Field(default=None, description="the gate process's exit status")
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None


class Problem(BaseModel):
    """An error answer: what was wrong, in one line."""

    detail: Any


class Health(BaseModel):
    status: Literal["ok"]
    queued: int
    running: int
    workers: int
    max_queued: int
