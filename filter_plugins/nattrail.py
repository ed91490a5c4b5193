"""Ansible's one door to nattrail's compilers, which live in ``src/nattrail/intent/`` (one module per role).

Ansible imports each file here under a synthetic module name, so the compilers cannot live here and
share code; this file only makes the checkout's own ``src/`` importable (first on the path, whatever
Python runs ansible-playbook) and names each role's filters. docs/architecture.md explains the layout.
"""

from __future__ import annotations

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parent.parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from nattrail.intent import masq_logger, nat_router, socks_redirector, ulogd  # noqa: E402


class FilterModule:
    """nattrail's filters: one or more per role, named after the role."""

    def filters(self) -> dict[str, object]:
        return {
            "nat_router_rules": nat_router.nat_router_rules,
            "nat_router_interfaces": nat_router.nat_router_interfaces,
            "ulogd_config": ulogd.ulogd_config,
            "log_collector_settings": ulogd.log_collector_settings,
            "pgsql_scram_verifier": ulogd.pgsql_scram_verifier,
            "pgsql_scram_matches": ulogd.pgsql_scram_matches,
            "masq_logger_settings": masq_logger.masq_logger_settings,
            "socks_redirector_settings": socks_redirector.socks_redirector_settings,
        }
