"""The process-wide default configuration set by ``DataStorer.configure``."""

from __future__ import annotations

from typing import Any

from ._config import SystemConfig, load_config
from ._exceptions import ConfigError

_default: SystemConfig | None = None


def set_default(cfg: SystemConfig) -> None:
    global _default
    _default = cfg


def resolve_config(config: Any, who: str) -> SystemConfig:
    """``config`` validated, else the configured default.

    :raises ConfigError: neither was given, or ``config`` is invalid.
    """
    if config is not None:
        return load_config(config)
    if _default is None:
        raise ConfigError(
            "", f"{who} has no configuration: pass config=... or call DataStorer.configure(...)"
        )
    return _default
