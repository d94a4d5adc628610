"""Which optional extra (``pip install 'qlgate[EXTRA]'``) provides which import.

Commands import their optional stacks lazily; when one is absent, the CLIs turn the
``ModuleNotFoundError`` into :class:`~qlgate_core.errors.MissingExtra`, one line naming the
command and the install line, instead of a traceback. Pure: no optional module is imported here.
"""

from __future__ import annotations

from collections.abc import Mapping

from qlgate_core.errors import MissingExtra

# Top-level import name -> the extra in pyproject.toml that installs it. Where a package is in
# several extras (torch in cpu and gpu), the one a CPU machine needs is named: it works anywhere.
EXTRA_OF_MODULE: Mapping[str, str] = {
    # service
    "fastapi": "service",
    "starlette": "service",
    "uvicorn": "service",
    "h11": "service",
    "httpx": "service",
    "httpcore": "service",
    "prometheus_client": "service",
    # model stack
    "torch": "cpu",
    "transformers": "cpu",
    "peft": "cpu",
    "trl": "cpu",
    "accelerate": "cpu",
    "bitsandbytes": "cpu",
    "datasets": "cpu",
    "gguf": "cpu",
    "safetensors": "cpu",
    "phonenumbers": "cpu",
    "stdnum": "cpu",
    "orjson": "cpu",
    "tqdm": "cpu",
    # vllm
    "vllm": "vllm",
    # report
    "matplotlib": "report",
    "pandas": "report",
    "pyarrow": "report",
    "jinja2": "report",
}


def extra_for(module: str | None) -> str | None:
    """The extra providing ``module`` (dotted names count by their top level), or None."""
    if not module:
        return None
    return EXTRA_OF_MODULE.get(module.partition(".")[0])


def as_missing_extra(exc: ImportError, command: str) -> MissingExtra | None:
    """The :class:`MissingExtra` an import failure means, or None when it is not an absent
    optional dependency (a broken install or a bug must keep its traceback)."""
    if not isinstance(exc, ModuleNotFoundError):
        return None
    extra = extra_for(exc.name)
    if extra is None or exc.name is None:
        return None
    return MissingExtra(command, extra, exc.name.partition(".")[0])
