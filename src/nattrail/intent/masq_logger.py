"""The masq_logger compiler: inventory -> the masquerade logger's settings, checked by the daemon's parser.

The daemon reads a JSON file (docs/masq_logger.md). Each value is checked here, on the controller, with
``nattrail.masqlog.config.build_config``, the function the daemon itself reads the file with: the
inventory is refused before anything on the router changes, by exactly the daemon's rules, and the role
then writes the file through `nattrail masqlog --check` as a second line of defence.
"""

from __future__ import annotations

from collections.abc import Mapping

from nattrail.intent.errors import Errors
from nattrail.masqlog.config import ConfigError, build_config

PREFIX = "masq_logger_"
# Settings whose role variable is not masq_logger_<key>.
VARIABLES = {"log": "log_path"}


def masq_logger_settings(settings: object, hostname: object = None) -> dict[str, object]:
    """The daemon's settings as given, once every one of them has passed the daemon's checks."""
    errors = Errors("masq_logger", str(hostname or "?"), PREFIX)
    if not isinstance(settings, Mapping):
        errors.add("*", "value", settings, "the filter expects a mapping of the daemon's settings")
        errors.raise_if_any()
    for key, value in settings.items():
        try:
            build_config({key: value})
        except ConfigError as exc:
            errors.add(VARIABLES.get(key, key), "value", value, str(exc).removeprefix(f"{key}: "))
    errors.raise_if_any()
    return dict(settings)
