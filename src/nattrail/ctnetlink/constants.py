"""The numbers of the protocol, each named once, from the kernel's uapi headers.

linux/netlink.h (nlmsghdr, attributes, socket options), linux/netfilter/nfnetlink.h (nfgenmsg,
groups) and nfnetlink_conntrack.h (the conntrack attributes), with the :mod:`struct` layouts of their
headers. No logic: the decoders, the encoder and the sockets all read these, so none of them owns them.
"""

from __future__ import annotations

import socket
import struct

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; the socket module does not name it
NETLINK_CAP_ACK = 10  # error replies without a copy of the request

# nlmsghdr
NLMSG_HDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400
NLM_F_EXCL = 0x200

# nfgenmsg follows nlmsghdr: family, version, res_id (network order)
NFGEN_HDR = struct.Struct("!BBH")
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_DESTROY = 3

# netlink attributes
NLA_HDR = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER
NLA_F_NESTED = 0x8000

# enum ctattr_type
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_PROTOINFO = 4
CTA_TIMEOUT = 7
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_ID = 12
CTA_MARK = 8
CTA_TIMESTAMP = 20
CTA_TIMESTAMP_EVENT = 27
CTA_MARK_MASK = 21
# enum ctattr_tuple / ctattr_ip / ctattr_l4proto
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_PROTO_ICMP_ID = 4
CTA_PROTO_ICMP_TYPE = 5
CTA_PROTO_ICMP_CODE = 6
# enum ctattr_counters / ctattr_tstamp
CTA_COUNTERS_PACKETS = 1
CTA_COUNTERS_BYTES = 2
CTA_COUNTERS32_PACKETS = 3
CTA_COUNTERS32_BYTES = 4
CTA_TIMESTAMP_START = 1
CTA_TIMESTAMP_STOP = 2

# enum ip_conntrack_status
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5

PROTO_NAMES: dict[int, str] = {
    socket.IPPROTO_TCP: "tcp",
    socket.IPPROTO_UDP: "udp",
    socket.IPPROTO_ICMP: "icmp",
}

U16 = struct.Struct("!H")
U32 = struct.Struct("!I")
U64 = struct.Struct("!Q")
