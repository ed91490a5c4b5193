"""Ansible's door to the ulogd and log_collector compiler, in ``src/nattrail/intent/ulogd.py``.

Only makes the repository's ``src/`` importable and names the filters, for the reason given in
``nat_router.py`` beside this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parent.parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from nattrail.intent.ulogd import (  # noqa: E402
    log_collector_settings,
    pgsql_scram_matches,
    pgsql_scram_verifier,
    ulogd_config,
)


class FilterModule:
    """nattrail's ulogd and log_collector filters."""

    def filters(self) -> dict[str, object]:
        return {
            "ulogd_config": ulogd_config,
            "log_collector_settings": log_collector_settings,
            "pgsql_scram_verifier": pgsql_scram_verifier,
            "pgsql_scram_matches": pgsql_scram_matches,
        }
