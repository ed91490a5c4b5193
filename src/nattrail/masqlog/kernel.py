"""What the daemon reads from the kernel's conntrack settings at start: the shortest timeout of the
protocols it logs (when a connection can first have expired) and the hash table's size (when walking
the table costs less than looking connections up).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from nattrail.masqlog.tunables import BUCKETS_PER_LOOKUP, FALLBACK_BUCKETS, FALLBACK_TIMEOUT

SYSCTL = Path("/proc/sys/net/netfilter")


def shortest_timeout(protocols: tuple[str, ...], sysctl: Path = SYSCTL) -> float:
    """Conntrack's shortest timeout in seconds for the protocols logged (TCP's CLOSE, 10 s, by
    default): none of their connections can expire sooner after its last packet."""
    values = []
    for proto in protocols:
        for path in sysctl.glob(f"nf_conntrack_{proto}_timeout*"):
            with contextlib.suppress(OSError, ValueError):
                values.append(int(path.read_text()))
    return float(max(1, min((v for v in values if v > 0), default=FALLBACK_TIMEOUT)))


def walk_threshold(sysctl: Path = SYSCTL) -> int:
    """How many connections may be looked up in one pass before walking the table costs less."""
    try:
        buckets = int((sysctl / "nf_conntrack_buckets").read_text())
    except (OSError, ValueError):
        buckets = FALLBACK_BUCKETS
    return max(1, buckets // BUCKETS_PER_LOOKUP)
