"""`nattrail drops`: the drop counters, per reason, as a table and as JSON."""

from __future__ import annotations

from nattrail import accounting, drops


def test_reasons_are_listed_most_packets_first_with_their_words() -> None:
    counters = [
        accounting.Counter("drop_in", 3, 180, "to the router, not allowed (logged)"),
        accounting.Counter("drop_spoof", 9, 540, "spoofed source on an external interface"),
        accounting.Counter("drop_fwd", 3, 200, None),
    ]
    rows = drops.rows(counters)
    assert [r["name"] for r in rows] == ["drop_spoof", "drop_fwd", "drop_in"]
    assert rows[1]["reason"] == "drop_fwd", "a counter without a comment is named by itself"
    table = drops.format_table(rows).splitlines()
    assert table[0].split(" | ")[0].strip() == "reason"
    assert table[2] == "spoofed source on an external interface | drop_spoof |       9 |   540"


def test_only_drop_counters_are_read() -> None:
    document = {
        "nftables": [
            {
                "counter": {
                    "family": "inet",
                    "table": "nattrail",
                    "name": "drop_in",
                    "packets": 1,
                    "bytes": 60,
                }
            },
            {
                "counter": {
                    "family": "inet",
                    "table": "nattrail",
                    "name": "acct_0_in",
                    "packets": 5,
                    "bytes": 9,
                }
            },
        ]
    }
    assert list(accounting.parse_nft_json(document, "inet", "nattrail", drops.DROP_NAME)) == ["drop_in"]
    assert list(accounting.parse_nft_json(document, "inet", "nattrail")) == ["acct_0_in"]
