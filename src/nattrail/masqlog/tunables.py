"""The daemon's policy numbers: the fixed choices behind its reading, reaping and memory, one place
for all of them (the settings an administrator may change are in config.py)."""

from __future__ import annotations

GC_THRESHOLDS = (10_000, 10, 10)
READ_BUDGET = 512  # datagrams read per wake-up before the loop lets ident tasks and timers run
# Datagrams read at once before a resync reconciles or after a table walk: more than a full receive
# buffer holds, so the drain ends when the queue does, yet a kernel that produces events faster than
# we read cannot hold the loop forever.
DRAIN_BUDGET = 200_000
# A connection found alive is looked up again when conntrack says it expires, and at least this often
# (seconds), since a packet can shorten its timeout: a reset turns five days into ten seconds.
RECHECK_MAX = 30.0
# Looking one connection up costs the kernel about as much as walking 64 buckets of its hash table.
BUCKETS_PER_LOOKUP = 64
