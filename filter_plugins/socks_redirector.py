"""Ansible's door to the socks_redirector compiler, in ``src/nattrail/intent/socks_redirector.py``.

Only makes the repository's ``src/`` importable and names the filter, for the reason given in
``nat_router.py`` beside this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parent.parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from nattrail.intent.socks_redirector import socks_redirector_settings  # noqa: E402


class FilterModule:
    """nattrail's socks_redirector filter."""

    def filters(self) -> dict[str, object]:
        return {"socks_redirector_settings": socks_redirector_settings}
