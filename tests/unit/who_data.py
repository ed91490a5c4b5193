"""What the `nattrail who` tests share: the connection asked about, a time zone with daylight saving."""

from __future__ import annotations

# The masqueraded connection the questions are about: alice's ssh, seen outside as 203.0.113.2:666.
KEY = {
    "proto": "tcp",
    "ct_id": 1001,
    "client_ip": "10.77.0.10",
    "client_port": 40001,
    "server_ip": "203.0.113.10",
    "server_port": 22,
    "masq_ip": "203.0.113.2",
    "masq_port": 666,
}

# POSIX rules, so the tests need no tzdata: UTC-5, daylight saving (UTC-4) from March to November.
NEW_YORK = "EST5EDT,M3.2.0,M11.1.0"
