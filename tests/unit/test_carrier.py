"""Which TCP connection carries a process, and the confirmation proof built on it, with real sockets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import netns_unavailable

from nattrail import carrier, ruleset

SRC = Path(__file__).resolve().parents[2] / "src"


def connected_pair(family: socket.AddressFamily, listen_on: str, connect_to: str):
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((listen_on, 0))
    listener.listen(1)
    client = socket.create_connection((connect_to, listener.getsockname()[1]))
    served, _ = listener.accept()
    return listener, client, served


def test_the_kernel_tcp_tables_name_each_socket_by_its_addresses_ports_state_and_inode() -> None:
    """Real sockets of three kinds, found in /proc/net/tcp{,6} by their inodes."""
    if not (socket.has_ipv6 and os.path.exists("/proc/net/tcp6")):
        pytest.skip("!!! TCP TABLES NOT CHECKED: this kernel has no IPv6 TCP table !!!")
    pairs = [
        connected_pair(socket.AF_INET, "127.0.0.1", "127.0.0.1"),
        connected_pair(socket.AF_INET6, "::1", "::1"),
        # An IPv4 client of a dual-stack listener: an IPv4-mapped address, named as IPv4.
        connected_pair(socket.AF_INET6, "::", "127.0.0.1"),
    ]
    try:
        table = {s.inode: s for s in carrier.tcp_sockets()}
        expected = [
            "127.0.0.1:{1} -> 127.0.0.1:{0}",
            "[::1]:{1} -> [::1]:{0}",
            "127.0.0.1:{1} -> 127.0.0.1:{0}",
        ]
        for (listener, client, served), text in zip(pairs, expected, strict=True):
            port, peer_port = listener.getsockname()[1], client.getsockname()[1]
            found = table[os.fstat(served.fileno()).st_ino]
            assert (found.tuple, found.state) == (text.format(port, peer_port), carrier.ESTABLISHED)
            assert table[os.fstat(listener.fileno()).st_ino].state == carrier.LISTEN
            assert text.format(port, peer_port) in carrier.open_connections()
    finally:
        for trio in pairs:
            for sock in trio:
                sock.close()


# The asker runs as the child of a holder process: the socket is held by an ancestor, not by the
# asker itself, as sshd holds an administrator's session for the command it runs.
HOLDER = "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1]], check=True)"
ASKER = (
    "import json; from nattrail import carrier; "
    "found = carrier.carrying_connection(); print(json.dumps(found and found.tuple))"
)


def ask_as_descendant(*prefix: str, hold: socket.socket | None = None) -> str | None:
    result = subprocess.run(
        [*prefix, sys.executable, "-c", HOLDER, ASKER],
        pass_fds=(hold.fileno(),) if hold else (),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        check=True,
    )
    return json.loads(result.stdout)


def test_the_connection_held_by_an_ancestor_is_found() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with socket.create_connection(listener.getsockname()) as client:
        served, _ = listener.accept()
        with served:
            listener.close()
            peer = "{}:{}".format(*served.getpeername())
            local = "{}:{}".format(*served.getsockname())
            assert peer == "{}:{}".format(*client.getsockname())
            # The server's end, passed down to the holder: the nearest ancestor that holds one.
            assert ask_as_descendant(hold=served) == f"{peer} -> {local}"


def test_a_process_with_no_connection_among_its_ancestors_has_none() -> None:
    # In a network namespace of its own, no ancestor's connection (this runner's, a developer's SSH
    # session) is in the TCP table the asker reads.
    reason = netns_unavailable()
    if reason:
        pytest.skip(f"!!! A PROCESS WITH NO CARRYING CONNECTION NOT CHECKED: {reason} !!!")
    assert ask_as_descendant("unshare", "--net") is None


def paths(tmp_path: Path) -> ruleset.Paths:
    return ruleset.Paths(tmp_path / "c.nft", tmp_path / "t.nft", tmp_path, "inet", "nattrail")


def socket_for(tuple_text: str) -> carrier.TcpSocket:
    remote, local = tuple_text.split(" -> ")
    return carrier.TcpSocket(1, local, remote, carrier.ESTABLISHED)


def test_a_confirmation_over_a_connection_opened_after_the_apply_is_proof(tmp_path: Path) -> None:
    old = "10.77.0.10:40000 -> 10.77.0.2:22"
    new = "10.77.0.10:40001 -> 10.77.0.2:22"
    paths(tmp_path).baseline.write_text(json.dumps({"applied": "t0", "connections": [old]}))
    assert ruleset.new_connection(paths(tmp_path), socket_for(new)) == new


def test_a_confirmation_over_a_connection_open_at_the_apply_is_refused(tmp_path: Path) -> None:
    old = "10.77.0.10:40000 -> 10.77.0.2:22"
    paths(tmp_path).baseline.write_text(json.dumps({"applied": "t0", "connections": [old]}))
    already_open = r"came over 10\.77\.0\.10:40000 -> 10\.77\.0\.2:22, a connection that was already open"
    with pytest.raises(ruleset.RulesetError, match=already_open + " when the ruleset was applied at t0"):
        ruleset.new_connection(paths(tmp_path), socket_for(old))


def test_a_confirmation_over_no_connection_is_refused(tmp_path: Path) -> None:
    paths(tmp_path).baseline.write_text(json.dumps({"applied": "t0", "connections": []}))
    with pytest.raises(ruleset.RulesetError, match="did not arrive over a network connection"):
        ruleset.new_connection(paths(tmp_path), None)


def test_a_confirmation_without_the_apply_record_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ruleset.RulesetError, match="cannot read the connections recorded at the apply"):
        ruleset.new_connection(paths(tmp_path), socket_for("10.77.0.10:1 -> 10.77.0.2:22"))
