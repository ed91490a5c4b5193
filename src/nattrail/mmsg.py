"""Read many datagrams per system call: recvmmsg(2) through ctypes, or recvmsg one at a time.

A conntrack event is one netlink datagram, so a busy router hands the masquerade logger thousands of
them a second. Python's socket module has no recvmmsg, and a system call plus a method call per
datagram was a third of the logger's CPU; with recvmmsg one call fetches a whole batch. Where libc has
no recvmmsg (or ctypes cannot be loaded) the same interface falls back to ``recvmsg_into``.

Both readers return memoryviews into their own buffer: a batch is valid until the next ``read``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from typing import Protocol

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20


class BatchReader(Protocol):
    name: str  # which system call reads: said in the daemon's start record
    size: int  # the largest datagram a slot holds

    def read(self) -> tuple[list[memoryview], int]:
        """The whole datagrams queued now (up to the batch size), and how many more were left out
        because they did not fit a slot and were cut short; ``([], 0)`` when none is queued. Socket
        errors (ENOBUFS) are raised, after any datagrams received before them have been returned."""
        ...


class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


def _libc_recvmmsg() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.POINTER(_MMsgHdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
    func.restype = ctypes.c_int
    return func


class MMsgReader:
    """recvmmsg(2): up to ``count`` datagrams of up to ``size`` bytes per system call."""

    name = "recvmmsg"

    def __init__(self, sock: socket.socket, count: int = 64, size: int = 16384) -> None:
        func = _libc_recvmmsg()
        if func is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available from libc")
        self._recvmmsg = func
        self._fd = sock.fileno()
        self._sock = sock  # keeps the descriptor alive as long as the reader
        self.size = size
        self.count = count
        self._buffer = (ctypes.c_char * (count * size))()
        self._iovecs = (_IoVec * count)()
        self._headers = (_MMsgHdr * count)()
        base = ctypes.addressof(self._buffer)
        for i in range(count):
            self._iovecs[i].iov_base = base + i * size
            self._iovecs[i].iov_len = size
            self._headers[i].msg_hdr.msg_iov = ctypes.pointer(self._iovecs[i])
            self._headers[i].msg_hdr.msg_iovlen = 1
        # The kernel writes each message's flags and length into the header array: read them with
        # one struct pass over its bytes rather than a ctypes attribute access per field.
        flags_at = _MMsgHdr.msg_hdr.offset + _MsgHdr.msg_flags.offset
        len_at = _MMsgHdr.msg_len.offset
        stride = ctypes.sizeof(_MMsgHdr)
        self._result = struct.Struct(f"={flags_at}xi{len_at - flags_at - 4}xI{stride - len_at - 4}x")
        self._header_bytes = memoryview(self._headers).cast("B")
        self._data = memoryview(self._buffer).cast("B")

    def read(self) -> tuple[list[memoryview], int]:
        received = self._recvmmsg(self._fd, self._headers, self.count, MSG_DONTWAIT, None)
        if received < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                return [], 0
            raise OSError(code, os.strerror(code))
        data, size = self._data, self.size
        views = []
        truncated = 0
        results = self._result.iter_unpack(self._header_bytes[: received * self._result.size])
        for i, (flags, length) in enumerate(results):
            if flags & MSG_TRUNC:
                truncated += 1
            else:
                views.append(data[i * size : i * size + length])
        return views, truncated


class RecvReader:
    """One datagram per ``recvmsg_into``: the fallback where recvmmsg cannot be called."""

    name = "recvmsg"

    def __init__(self, sock: socket.socket, size: int = 65536) -> None:
        self._sock = sock
        self.size = size
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)

    def read(self) -> tuple[list[memoryview], int]:
        try:
            length, _, flags, _ = self._sock.recvmsg_into([self._buffer])
        except BlockingIOError:
            return [], 0
        if flags & MSG_TRUNC:
            return [], 1
        return [self._view[:length]], 0


def batch_reader(sock: socket.socket, count: int = 64, size: int = 16384) -> BatchReader:
    """recvmmsg where libc has it, else recv one datagram at a time."""
    try:
        return MMsgReader(sock, count, size)
    except OSError:
        return RecvReader(sock)
