"""Engines behind one Protocol; importing this package never imports torch (engines load lazily)."""

from __future__ import annotations

from qlgate_pytest.engines.base import (
    ROLES,
    Engine,
    EngineConfig,
    EngineFactory,
    GenerateRequest,
    Generation,
    Message,
    Ranking,
    RankRequest,
    Role,
)
from qlgate_pytest.engines.registry import (
    ENTRY_POINT_GROUP,
    available_engines,
    get_engine_factory,
    register_engine,
    unregister_engine,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ROLES",
    "Engine",
    "EngineConfig",
    "EngineFactory",
    "GenerateRequest",
    "Generation",
    "Message",
    "RankRequest",
    "Ranking",
    "Role",
    "available_engines",
    "get_engine_factory",
    "register_engine",
    "unregister_engine",
]
