"""The daemon's settings: what its JSON file may say, checked key by key.

The same parser serves the router and the controller: ``nattrail masqlog --check`` reads the file with
:func:`load_config`, and the masq_logger role's compiler (``nattrail.intent.masq_logger``) checks each
inventory value with :func:`build_config` before anything on the router changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

from nattrail import names
from nattrail.startup import read_json_object

# The values of the ``protocols`` setting: those whose events the daemon decodes and logs.
PROTOCOLS = ("tcp", "udp", "icmp")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Config:
    """The daemon's settings; every key may appear in the JSON configuration file."""

    log: str = names.MASQ_LOG
    protocols: tuple[str, ...] = ("tcp",)
    ident: bool = True
    ident_timeout: float = 5.0
    ident_port: int = 113
    ident_max_concurrent: int = 64
    ident_rate: float = 5.0
    ident_burst: int = 10
    ident_max_clients: int = 4096
    rcvbuf: int = 8 * 1024 * 1024
    skips_interval: float = 60.0
    stats_interval: float = 300.0
    reap_interval: float = 2.0
    # Seconds to let events gather after the buffer was drained, so a busy router costs one wake-up
    # per batch; the receive buffer holds them meanwhile (at 8,000 events/s, 50 ms is about 0.5 MB
    # of the 8 MiB asked for).
    read_coalesce: float = 0.05
    max_tracked: int = 1_000_000
    syslog: bool = False


def _check_number(key: str, value: object, default: object) -> None:
    kind = type(default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}: must be a number above 0, got {value!r}")


def _check(key: str, value: Any, default: Any) -> Any:  # noqa: ANN401
    """Validate one setting against the type of its default; return it in that type."""
    if key == "protocols":
        if not isinstance(value, list | tuple) or not value:
            raise ConfigError(f"protocols: expected a non-empty list, got {value!r}")
        bad = [p for p in value if p not in PROTOCOLS]
        if bad:
            raise ConfigError(f"protocols: unknown {bad!r}; choose from {', '.join(PROTOCOLS)}")
        return tuple(dict.fromkeys(value))
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
        return value
    _check_number(key, value, default)
    if key == "ident_port" and value > 65535:
        raise ConfigError(f"ident_port: must be a port number (1-65535), got {value!r}")
    return float(value) if isinstance(default, float) else value


def build_config(data: dict[str, Any]) -> Config:
    """Validate a configuration mapping; every problem names its key and value."""
    defaults = Config()
    known = {f.name: getattr(defaults, f.name) for f in dataclass_fields(Config)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = {key: _check(key, value, known[key]) for key, value in data.items()}
    return Config(**values)


def load_config(path: str) -> Config:
    data = read_json_object(path, ConfigError)
    try:
        return build_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
