"""Batch reads: recvmmsg through ctypes and the recvmsg fallback, on real datagram sockets."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest

from nattrail import mmsg


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.setblocking(False)
    with sender, receiver:
        yield sender, receiver


READERS = {
    "recvmmsg": lambda sock: mmsg.MMsgReader(sock, count=8, size=64),
    "recvmsg": lambda sock: mmsg.RecvReader(sock, size=64),
}


@pytest.mark.parametrize("kind", sorted(READERS))
def test_reads_every_datagram_whole_in_order(kind: str, pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    reader = READERS[kind](receiver)
    assert reader.read() == ([], 0)  # nothing queued: no error, no data
    sent = [bytes([i]) * (i + 1) for i in range(20)]
    for datagram in sent:
        sender.send(datagram)
    got: list[bytes] = []
    while True:
        views, truncated = reader.read()
        assert truncated == 0
        if not views:
            break
        got.extend(bytes(view) for view in views)  # a batch is valid until the next read
    assert got == sent


@pytest.mark.parametrize("kind", sorted(READERS))
def test_datagram_larger_than_a_slot_is_counted_not_returned(
    kind: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    sender, receiver = pair
    reader = READERS[kind](receiver)
    sender.send(b"a")
    sender.send(b"x" * 100)
    sender.send(b"b")
    got, truncated = [], 0
    for _ in range(4):
        views, cut = reader.read()
        got.extend(bytes(view) for view in views)
        truncated += cut
    assert got == [b"a", b"b"]
    assert truncated == 1


def test_recvmmsg_takes_a_whole_batch_in_one_call(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    reader = mmsg.MMsgReader(receiver, count=8, size=64)
    for i in range(20):
        sender.send(b"%d" % i)
    sizes = []
    while views := reader.read()[0]:
        sizes.append(len(views))
    assert sizes == [8, 8, 4]


def test_socket_errors_are_raised(pair: tuple[socket.socket, socket.socket]) -> None:
    receiver = pair[1]
    reader = mmsg.MMsgReader(receiver)
    receiver.close()
    with pytest.raises(OSError) as caught:
        reader.read()
    assert caught.value.errno == errno.EBADF


def test_batch_reader_prefers_recvmmsg(pair: tuple[socket.socket, socket.socket]) -> None:
    assert isinstance(mmsg.batch_reader(pair[1]), mmsg.MMsgReader)
