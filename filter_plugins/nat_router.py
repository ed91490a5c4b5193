"""Ansible's door to the nat_router compiler, which lives in ``src/nattrail/intent/nat_router.py``.

Ansible imports each file here under a synthetic module name, so this file only makes the repository's own
``src/`` importable (whatever Python runs ansible-playbook, and before any other installed copy) and names
the filters. Why the compiler is not here: docs/architecture.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parent.parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from nattrail.intent.nat_router import nat_router_interfaces, nat_router_rules  # noqa: E402


class FilterModule:
    """nattrail's nat_router filters."""

    def filters(self) -> dict[str, object]:
        return {"nat_router_rules": nat_router_rules, "nat_router_interfaces": nat_router_interfaces}
