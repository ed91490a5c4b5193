"""Read NFLOG records captured by tcpdump (`-i nflog:N -w FILE`): log prefix and IPv4/TCP/UDP fields.

tcpdump's text output leaves out the log prefix, which is what tells the router's log rules
apart, so tests decode the capture file (pcap, link type 239) themselves.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

NFULA_PAYLOAD = 9
NFULA_PREFIX = 10


@dataclass(frozen=True)
class LoggedPacket:
    prefix: str
    src: str
    dst: str
    proto: int
    sport: int | None
    dport: int | None
    tcp_flags: int | None


def _tlvs(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    offset = 4  # nflog header: family, version, resource id
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("<HH", data, offset)
        if length < 4:
            break
        found[kind & 0x7FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


def _packet(prefix: str, payload: bytes) -> LoggedPacket | None:
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 0x0F) * 4
    proto = payload[9]
    src, dst = socket.inet_ntoa(payload[12:16]), socket.inet_ntoa(payload[16:20])
    sport = dport = flags = None
    if proto in (6, 17) and len(payload) >= ihl + 4:
        sport, dport = struct.unpack_from("!HH", payload, ihl)
    if proto == 6 and len(payload) >= ihl + 14:
        flags = payload[ihl + 13]
    return LoggedPacket(prefix, src, dst, proto, sport, dport, flags)


def parse_pcap(blob: bytes) -> list[LoggedPacket]:
    if len(blob) < 24:
        return []
    magic = struct.unpack_from("<I", blob)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack_from(endian + "I", blob, 20)[0]
    assert linktype == 239, f"not an NFLOG capture (link type {linktype})"
    packets = []
    offset = 24
    while offset + 16 <= len(blob):
        incl_len = struct.unpack_from(endian + "I", blob, offset + 8)[0]
        record = blob[offset + 16 : offset + 16 + incl_len]
        offset += 16 + incl_len
        tlvs = _tlvs(record)
        prefix = tlvs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode("ascii", "replace")
        packet = _packet(prefix, tlvs.get(NFULA_PAYLOAD, b""))
        if packet:
            packets.append(packet)
    return packets
