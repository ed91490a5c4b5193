"""What every compiler reports errors with: one line per problem, naming the role, host, variable and entry.

A compiler collects all the problems of an inventory before it raises, so one run shows every mistake.
The line reads the same for every role:

    nat_router: host gw1: variable nat_router_dnat, entry 2 ({'port': 99999}): port 99999 is not 1..65535
"""

from __future__ import annotations

from collections.abc import Sequence

from ansible.errors import AnsibleFilterError

# Long values (a whole list pasted in the wrong place) are cut: the line must stay readable.
REPR_MAX = 200


class IntentError(AnsibleFilterError):
    """The inventory asks for something the role cannot do; the message holds one line per problem."""


class Errors:
    """Collects problems; ``prefix`` is prepended to variable names given without it."""

    def __init__(self, role: str, hostname: str, prefix: str = "") -> None:
        self.role = role
        self.hostname = hostname
        self.prefix = prefix
        self.lines: list[str] = []

    def add(self, var: str, entry: object, value: object, message: str) -> None:
        shown = repr(value)
        if len(shown) > REPR_MAX:
            shown = shown[: REPR_MAX - 3] + "..."
        where = f"{self.role}: host {self.hostname}: variable {self.prefix}{var}, entry {entry}"
        self.lines.append(f"{where} ({shown}): {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise IntentError("\n".join(self.lines))


def is_list(value: object) -> bool:
    """A YAML list (not a string, which is a sequence too)."""
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)
