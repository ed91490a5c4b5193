"""The sockets: subscribing to events, dumping and reaping the table, looking connections up.

Everything here talks to the kernel; the bytes sent and read are built and decoded by
:mod:`nattrail.ctnetlink.encode` and :mod:`nattrail.ctnetlink.decode`.
"""

from __future__ import annotations

import errno
import os
import select
import socket

from nattrail import mmsg
from nattrail.ctnetlink.constants import (
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_CAP_ACK,
    NETLINK_NETFILTER,
    NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW,
    SO_RCVBUFFORCE,
    SOL_NETLINK,
)
from nattrail.ctnetlink.decode import _replies, decode_datagram
from nattrail.ctnetlink.encode import _get_fast, dump_request
from nattrail.ctnetlink.records import Conntrack, NetlinkError, Tuple


def event_socket(rcvbuf: int) -> socket.socket:
    """A non-blocking ctnetlink socket subscribed to NEW and DESTROY events.

    SO_RCVBUFFORCE (CAP_NET_ADMIN, which subscribing needs anyway) lifts the buffer above
    net.core.rmem_max; without it the kernel silently caps the size, so the size granted is checked.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                         NETLINK_NETFILTER)  # fmt: skip
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, 0))
        for group in (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY):
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    except BaseException:
        sock.close()
        raise
    return sock


def granted_rcvbuf(sock: socket.socket) -> int:
    # The kernel reports twice the requested size (it counts its bookkeeping); halve it back.
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2


def dump_table(family: int = socket.AF_INET, bufsize: int = 1 << 20, mark: tuple[int, int] | None = None,
               ) -> list[Conntrack]:  # fmt: skip
    """Return every entry of the conntrack table (blocking; used at start and after lost events)."""
    entries: list[Conntrack] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
        sock.bind((0, 0))
        sock.settimeout(10.0)
        sock.send(dump_request(family=family, mark=mark))
        while True:
            data = sock.recv(bufsize)
            for item in decode_datagram(data):
                if item is None:
                    return entries
                if isinstance(item, NetlinkError):
                    if item.code:
                        raise OSError(item.code, f"conntrack dump: {os.strerror(item.code)}")
                    continue
                entries.append(item)


# A mark no entry is expected to carry: the reaping dump returns (next to) nothing.
REAP_MARK = (0x6E7A7A6C, 0xFFFFFFFF)


def reap_expired(family: int = socket.AF_INET) -> int:
    """Make the kernel delete expired entries now, so their DESTROY events (and stop timestamps) come
    when the connection ended, not when the garbage collector next passes (up to a minute later
    on a quiet table). A table dump deletes every expired entry it walks over; the mark filter
    keeps the answer empty, so this costs the kernel one walk and us almost nothing.
    Returns how many entries matched the mark anyway (normally 0).
    """
    return len(dump_table(family, bufsize=1 << 16, mark=REAP_MARK))


def is_enobufs(exc: OSError) -> bool:
    return exc.errno == errno.ENOBUFS


class Lookup:
    """Looks connections up by their original tuple and conntrack id, on a socket kept open.

    Looking an entry up makes the kernel delete every expired entry it meets, as its garbage
    collector would, so a connection that ended is gone now and its DESTROY event follows. Called
    with a list of (id, original tuple); returns per connection the seconds it has left, or None
    when it is gone. Blocking, but the kernel answers each batch within its send.
    """

    def __init__(self, chunk: int = 256) -> None:
        self.chunk = chunk
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self.reader = mmsg.batch_reader(self.sock, 64, 4096)
        # Sequence numbers keep counting across calls, so a late reply to an earlier call (after
        # an error cut it short) is recognised as not ours and ignored.
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Lookup:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __call__(self, connections: list[tuple[int | None, Tuple]]) -> list[int | None]:
        answers: list[int | None] = [None] * len(connections)
        for first in range(0, len(connections), self.chunk):
            batch = connections[first : first + self.chunk]
            base = self.seq + 1 if self.seq + 1 + len(batch) < 1 << 32 else 1
            self.seq = base + len(batch) - 1
            # One datagram carries the whole batch: the kernel answers each request in turn, before
            # send returns; the wait below is only a guard, and short, since the daemon waits in
            # its event loop's thread.
            self.sock.send(b"".join(_get_fast(orig, base + i) for i, (_, orig) in enumerate(batch)))
            view: list[int | None] = [None] * len(batch)
            ids = [ct_id for ct_id, _ in batch]
            pending = len(batch)
            while pending > 0:
                datagrams, truncated = self.reader.read()
                pending -= truncated  # a reply too large to read: its connection counts as gone
                if not datagrams and not truncated and not select.select([self.sock], [], [], 1.0)[0]:
                    raise OSError(errno.ETIMEDOUT, "conntrack lookup: no reply within 1 s")
                for datagram in datagrams:
                    pending -= _replies(datagram, view, ids, base)
            answers[first : first + len(batch)] = view
        return answers


def lookup(connections: list[tuple[int | None, Tuple]]) -> list[int | None]:
    """:class:`Lookup` on a socket of its own."""
    with Lookup() as looker:
        return looker(connections)
