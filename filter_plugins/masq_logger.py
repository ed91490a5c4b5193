"""Ansible's door to the masq_logger compiler, in ``src/nattrail/intent/masq_logger.py``.

Only makes the repository's ``src/`` importable and names the filter, for the reason given in
``nat_router.py`` beside this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parent.parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from nattrail.intent.masq_logger import masq_logger_settings  # noqa: E402


class FilterModule:
    """nattrail's masq_logger filter."""

    def filters(self) -> dict[str, object]:
        return {"masq_logger_settings": masq_logger_settings}
