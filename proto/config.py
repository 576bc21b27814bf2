"""The broker's persistent settings: names, defaults and validation.

Keys are normalised (``-`` and ``_`` are the same; ``backoff-base`` is
another name for ``base_backoff``). Values arrive as strings from the CLI or
as numbers from the Python API; both are checked here, by the client for
early errors and by the broker, which is the authority.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """An unknown key or a bad value."""


@dataclass(frozen=True)
class Setting:
    default: int | float
    integer: bool
    check: Callable[[float], bool]
    rule: str
    help: str
    agents: bool = False  # agents use it too: a change goes to every agent (Welcome)


SETTINGS: dict[str, Setting] = {
    "max_retries": Setting(3, True, lambda v: 1 <= v <= 1_000_000, "an integer >= 1",
                           "failed attempts after which a job moves to the DLQ"),
    "base_backoff": Setting(2, False, lambda v: 1 <= v <= 1e6, "a number >= 1",
                            "retry n waits base_backoff ** n seconds"),
    "max_backoff": Setting(3600, False, lambda v: 0 <= v <= 1e9, "a number of seconds >= 0",
                           "upper bound of one retry delay"),
    "timeout_sec": Setting(60, False, lambda v: 0 < v <= 1e9, "a number of seconds > 0",
                           "default timeout of a job"),
    "heartbeat_sec": Setting(1.0, False, lambda v: 0.05 <= v <= 60, "0.05 to 60 seconds",
                             "how often broker and agents exchange heartbeats", agents=True),
    "lease_sec": Setting(6.0, False, lambda v: 0.5 <= v <= 3600, "0.5 to 3600 seconds",
                         "silence after which an agent is lost and its jobs run again",
                         agents=True),
    "kill_grace_sec": Setting(5.0, False, lambda v: 0 <= v <= 3600, "0 to 3600 seconds",
                              "SIGTERM-to-SIGKILL grace on timeout and cancel", agents=True),
    "output_limit": Setting(1024 * 1024, True, lambda v: 1024 <= v <= 256 * 1024 * 1024,
                            "an integer from 1024 to 268435456",
                            "bytes of stdout and of stderr kept per attempt (the last ones)",
                            agents=True),
    "batch_idle_sec": Setting(120.0, False, lambda v: 1 <= v <= 86400, "1 to 86400 seconds",
                              "a streamed batch whose client sends nothing for this long is "
                              "aborted"),
}

ALIASES = {"backoff_base": "base_backoff"}
SENT_TO_AGENTS = frozenset(key for key, setting in SETTINGS.items() if setting.agents)


def normalize_key(key: str) -> str:
    name = key.strip().lower().replace("-", "_")
    name = ALIASES.get(name, name)
    if name not in SETTINGS:
        known = ", ".join(sorted(SETTINGS))
        raise ConfigError(f"unknown config key {key!r} (known keys: {known})")
    return name


def parse_value(key: str, value: Any) -> int | float:
    """Validate ``value`` for the normalised ``key``; returns an int or a float."""
    setting = SETTINGS[key]
    number: int | float
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be {setting.rule}")
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise ConfigError(f"{key} must be {setting.rule}, got {value!r}") from None
    else:
        raise ConfigError(f"{key} must be {setting.rule}")
    if isinstance(number, float):
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be {setting.rule}, got {value!r}")
        if setting.integer:
            if not number.is_integer():
                raise ConfigError(f"{key} must be {setting.rule}, got {value!r}")
            number = int(number)
    if not setting.check(number):
        raise ConfigError(f"{key} must be {setting.rule}, got {value!r}")
    return number


def defaults() -> dict[str, int | float]:
    return {name: setting.default for name, setting in SETTINGS.items()}
