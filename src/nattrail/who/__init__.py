"""`nattrail who`: which inside host (and user) used a masquerade port at a given time.

Reads the masquerade logger's JSON lines (``/var/log/nattrail/masq.log`` and every rotated file next to
it, plain or compressed), joins the ``open``/``ident``/``close`` records of each connection, and lists
the connections through the masquerade port whose lifetime touches ``--at`` ± ``--window``, newest
first, marking the one(s) open at ``--at``.

One job per module, each importing from the others by name (import from them, not from here):

- ``tunables``: what the command chooses (tolerances, limits, accepted spellings), each with its reason;
- ``times``: reading a record's time, writing a time (UTC, with Z);
- ``query``: the question (port, moment, window, filters) and parsing it;
- ``logs``: finding, opening and scanning the log files (the log format's constants live here);
- ``join``: records into connections, bounded where their close is missing;
- ``answer``: the connections that meet the window, and warnings about the logs' coverage;
- ``report``: the human and JSON reports;
- ``command``: the subcommand's options, default log, exit status.
"""

from __future__ import annotations

# What `nattrail.cli` reaches through the package; `python -m nattrail.who` runs command.main itself.
from nattrail.who.command import register as register
