"""The daemon's policy numbers: the fixed choices behind its reading, reaping and memory, each with the
reason for its value (docs/masq_logger.md tabulates them). What an administrator may change is in
config.py; these change with the code, after measuring (docs/benchmarks.md).

The modules import each number by name, so a number read per event costs what a module constant of its
own would (see bench/same_bytecode.py); to try another value, set it in the module that reads it.
"""

from __future__ import annotations

# Datagrams read per wake-up (eight recvmmsg batches of 64) before the event loop lets ident queries
# and timers run: 4-11 ms of work at the 8-22 µs an event costs (docs/benchmarks.md), so a burst
# delays them that long at most, while a busy router still reads most of its queue in one go.
READ_BUDGET = 512
# Datagrams read at once before a resync reconciles or after a table walk: more than a full receive
# buffer holds, so the drain ends when the queue does, yet a kernel that produces events faster than
# we read cannot hold the loop forever.
DRAIN_BUDGET = 200_000
# A connection found alive is looked up again when conntrack says it expires, and at least this often
# (seconds), since a packet can shorten its timeout: a reset turns five days into ten seconds. Its cost:
# a long-lived connection that ends between two lookups is logged closed up to this late.
RECHECK_MAX = 30.0
# Looking one connection up costs the kernel about as much as walking 64 buckets of its hash table
# (a walk of 262,144 buckets took about 10 ms of system CPU, a lookup a few microseconds).
BUCKETS_PER_LOOKUP = 64
# The hash table's size when the kernel's settings cannot be read: the largest Linux gives by itself
# (memory / 16,384, at most 262,144 buckets), as on the benchmark machine. Guessing high errs towards
# lookups, whose cost stays bounded: at most 4,096 a pass, about 10 ms of the kernel's time.
FALLBACK_BUCKETS = 262_144
# Connections due in one pass above which a table walk costs less than the lookups: for the table
# above, 4,096. The default of daemon.Reaping, which tests build without a kernel.
WALK_ABOVE = FALLBACK_BUCKETS // BUCKETS_PER_LOOKUP
# Seconds after its open that a connection can first have expired, if the kernel's timeouts cannot be
# read: conntrack's default CLOSE timeout, TCP's shortest (TCP is what is logged by default). Also the
# default of tracker.MasqLogger.first_check.
FALLBACK_TIMEOUT = 10.0
# Garbage collection: the young generation is collected per 10,000 allocations rather than Python's
# 700, since every open connection keeps a few small objects alive that each collection walks again.
# Once the start-up objects were frozen (command.main) it made no measurable difference
# (docs/benchmarks.md): kept, since it costs nothing; the freeze is what counts.
GC_THRESHOLDS = (10_000, 10, 10)
