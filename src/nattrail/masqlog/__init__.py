"""`nattrail masqlog`: log every masqueraded connection, with the user behind it.

The daemon follows conntrack's NEW and DESTROY events over netlink and keeps the source-NATed ones. For each
it writes JSON lines to its log (see docs/masq_logger.md for every field):

- ``open``: client, server and masquerader addresses and ports, and the conntrack id that joins the events;
- ``ident`` (TCP): the user the client's identd names for the connection, or why there is none;
- ``close``: start, end, duration, packets and bytes both ways.

Nothing is lost silently. The receive buffer is large, and when the kernel still overruns it (ENOBUFS)
an ``events_lost`` record is written and the conntrack table is dumped, so connections opened during the
gap are logged (``"resync": true``) and those closed during it are closed (``"lost": true``). Ident queries
run concurrently, under a global cap and a per-client rate; a connection past the caps is still logged,
with ``"ident_error": "skipped:<reason>"``, and the skips are counted in periodic ``ident_skips`` records.

One job per module; callers import from the module that does the job (this package only hands the
subcommand to ``nattrail.cli``):

- ``config``: the settings file, checked key by key (also by the masq_logger role, on the controller);
- ``tunables``: the daemon's fixed policy numbers, each with the reason for its value;
- ``records``: the open and close records' JSON, from templates (the per-event path);
- ``tracker``: which events are ours, what is open, the records written, resyncs (no socket: the tests
  feed it decoded events);
- ``daemon``: the netlink socket and the event loop around the tracker: batched reads, resyncs, reaping;
- ``kernel``: what the daemon reads from the kernel's conntrack settings;
- ``service``: one run, start to stop: parts put together, signals, timers;
- ``command``: the ``nattrail masqlog`` subcommand.
"""

from nattrail.masqlog.command import register as register
