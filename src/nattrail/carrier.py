"""Which TCP connection carries this process: the proof behind `nattrail ruleset confirm`.

A command run over SSH descends from the sshd processes that hold the session's TCP socket. Walking
this process's ancestors and matching their socket descriptors against the kernel's TCP table
(``/proc/net/tcp`` and ``tcp6``, in this network namespace) names that connection, whatever ran in
between (a shell, sudo, Ansible's module wrapper). A command run from a console, by ``docker exec``
or by Ansible's ``local`` connection has no such ancestor.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
ESTABLISHED = "01"
LISTEN = "0A"


@dataclass(frozen=True)
class TcpSocket:
    inode: int
    local: str
    remote: str
    state: str

    @property
    def tuple(self) -> str:
        """``peer -> this host``: for an SSH session, the administrator's end first."""
        return f"{self.remote} -> {self.local}"


def _endpoint(hex_endpoint: str) -> str:
    """``0200000A:0016`` (the kernel's host-order words) as ``10.0.0.2:22``; IPv6 as ``[addr]:port``."""
    address_hex, port_hex = hex_endpoint.split(":")
    raw = bytes.fromhex(address_hex)
    # Each 32-bit word is printed in host (little-endian) byte order.
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(packed)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    port = int(port_hex, 16)
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def parse_tcp_table(text: str) -> list[TcpSocket]:
    """The sockets of one ``/proc/net/tcp`` or ``/proc/net/tcp6`` listing (header line skipped)."""
    sockets = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        sockets.append(TcpSocket(inode, _endpoint(local), _endpoint(remote), state))
    return sockets


def tcp_sockets(proc: Path = PROC) -> list[TcpSocket]:
    """Every TCP socket of this network namespace, IPv4 and IPv6."""
    found: list[TcpSocket] = []
    for name in ("tcp", "tcp6"):
        try:
            found.extend(parse_tcp_table((proc / "net" / name).read_text(encoding="ascii")))
        except FileNotFoundError:
            continue
    return found


def open_connections(proc: Path = PROC) -> list[str]:
    """The tuples of every connection that exists now (any state but listening), sorted."""
    return sorted({s.tuple for s in tcp_sockets(proc) if s.state != LISTEN and s.inode})


def ancestors(pid: int, proc: Path = PROC) -> list[int]:
    """``pid`` and its ancestors, nearest first, up to (not including) PID 0."""
    chain = []
    while pid > 0 and pid not in chain:
        chain.append(pid)
        try:
            stat = (proc / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            break
        # The command name may hold spaces and parentheses: the fields start after the last ")".
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return chain


def socket_inodes(pid: int, proc: Path = PROC) -> set[int]:
    inodes = set()
    try:
        descriptors = list((proc / str(pid) / "fd").iterdir())
    except OSError:
        return inodes
    for fd in descriptors:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def carrying_connection(pid: int | None = None, proc: Path = PROC) -> TcpSocket | None:
    """The established TCP connection held by the nearest ancestor of ``pid`` that holds one."""
    established = {s.inode: s for s in tcp_sockets(proc) if s.state == ESTABLISHED and s.inode}
    for ancestor in ancestors(os.getpid() if pid is None else pid, proc):
        held = sorted(socket_inodes(ancestor, proc) & established.keys())
        if held:
            return established[held[0]]
    return None
