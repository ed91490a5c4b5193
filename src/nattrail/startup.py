"""What the daemons' commands do alike at start: read their JSON settings file and open their log, each
failure said in the command's own words (the messages are part of each command's interface)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from nattrail.jsonlog import JsonLog


def read_json_object(path: str, error: type[Exception], prefix: str = "") -> dict[str, Any]:
    """The JSON object a settings file holds; ``error`` (its message after ``prefix``) names the file
    and what is wrong with it: unreadable, not JSON, or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{prefix}cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{prefix}{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{prefix}{path} must hold a JSON object")
    return data


def open_log(path: str, daemon: str, failure: str) -> JsonLog | None:
    """The daemon's JSON log, or None once ``failure`` (a format of ``path`` and ``reason``) is on
    stderr: the command then exits 1."""
    try:
        return JsonLog(path, fields={"daemon": daemon})
    except OSError as exc:
        print(failure.format(path=path, reason=exc.strerror), file=sys.stderr)
        return None
