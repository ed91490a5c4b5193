"""nat_router boundaries: limits accepted at their edge, fact variants, ordering of the rule data."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from conftest import acct_map, dnat_tables, make_facts

from nattrail.intent.nat_router import nat_router_interfaces, nat_router_rules


def rules(config: dict, facts: dict | None = None) -> dict:
    return nat_router_rules(config, facts or make_facts(), "router")


def rejected(config: dict) -> bool:
    try:
        rules(config)
    except AnsibleFilterError:
        return True
    return False


# ------------------------------------------------------------------------------------- facts, hostname


def iface(ipv4: dict | None = None, secondaries: list | None = None) -> dict:
    facts: dict[str, object] = {"active": True}
    if ipv4 is not None:
        facts["ipv4"] = ipv4
    if secondaries is not None:
        facts["ipv4_secondaries"] = secondaries
    return facts


def router_facts(eth1: dict, **extra: object) -> dict:
    facts = make_facts()
    facts["eth1"] = eth1
    facts.update(extra)
    return facts


@pytest.mark.parametrize(
    ("record", "network"),
    [
        ({"network": "10.9.0.0", "netmask": "255.255.0.0"}, "10.9.0.0/16"),
        ({"address": "10.9.3.4", "netmask": "255.255.0.0"}, "10.9.0.0/16"),
        ({"address": "10.9.3.4", "network": "10.9.0.0", "netmask": "255.255.0.0"}, "10.9.0.0/16"),
    ],
)
def test_network_is_detected_from_network_or_address(record: dict, network: str) -> None:
    found = nat_router_interfaces(router_facts(iface(record)), None, ["eth1"])
    assert found["internal_networks"] == [network]


@pytest.mark.parametrize(
    "odd",
    [
        {"address": "10.9.3.4"},  # no netmask
        {"address": "10.9.3.4", "netmask": "bogus"},  # unparsable
    ],
)
def test_odd_fact_records_are_skipped_not_fatal(odd: dict) -> None:
    secondary = {"address": "10.8.0.1", "netmask": "255.255.255.0"}
    facts = router_facts(iface(dict(odd), [dict(odd), secondary]))
    assert nat_router_interfaces(facts)["internal_networks"] == ["10.8.0.0/24"]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ({"hostname": "", "fqdn": "gw.example.net", "nodename": "node"}, "gw.example.net"),
        ({"hostname": None, "fqdn": "", "nodename": "node"}, "node"),
        ({"ansible_nodename": "node"}, "node"),
        ({"hostname": 5}, "(unknown)"),
        ({}, "(unknown)"),
    ],
)
def test_hostname_falls_back_through_fqdn_and_nodename(names: dict, expected: str) -> None:
    facts = make_facts()
    del facts["hostname"]
    facts.update(names)
    with pytest.raises(AnsibleFilterError) as info:
        nat_router_interfaces(facts, ["eth9"])
    assert str(info.value.message).startswith(f"nat_router: host {expected}: variable ")


def test_interfaces_filter_without_facts_names_an_unknown_host() -> None:
    with pytest.raises(AnsibleFilterError) as info:
        nat_router_interfaces(None)
    assert str(info.value.message).startswith("nat_router: host (unknown): variable ")


def test_interfaces_filter_takes_given_internal_interfaces() -> None:
    facts = make_facts(
        {"lo": "127.0.0.1/8", "eth0": "203.0.113.2/24", "eth1": "10.77.0.2/24", "eth2": "10.78.0.1/24"}
    )
    assert nat_router_interfaces(facts, None, ["eth2"], "gw1") == {
        "external": ["eth0"],
        "internal": ["eth2"],
        "internal_networks": ["10.78.0.0/24"],
    }


# --------------------------------------------------------------------------------- scalars at the edge


@pytest.mark.parametrize(("given", "group"), [(0, 0), (65535, 65535), ("7", 7)])
def test_log_group_limits(given: object, group: int) -> None:
    assert rules({"log_group": given})["log"]["group"] == group


def test_log_group_beyond_limits_is_rejected() -> None:
    assert rejected({"log_group": 65536})
    assert rejected({"log_group": -1})


@pytest.mark.parametrize("prefix", ["x", "~", "X", "X~ :"])
def test_log_prefix_edge_characters_are_accepted(prefix: str) -> None:
    assert rules({"log_prefix_forward": prefix})["log"]["forward_prefix"] == prefix


@pytest.mark.parametrize("prefix", ["a\\b", "a\x7fb", "\u00e9t\u00e9"])
def test_log_prefix_outside_printable_ascii_is_rejected(prefix: str) -> None:
    assert rejected({"log_prefix_forward": prefix})


@pytest.mark.parametrize(("given", "shown"), [(1, "1s"), ("30s", "30s"), ("2m", "2m")])
def test_blocklist_timeout_smallest_values(given: object, shown: str) -> None:
    assert rules({"blocklist_timeout": given})["blocklist_timeout"] == shown


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "", "0h0m"])
def test_blocklist_timeout_without_time_is_rejected(value: object) -> None:
    assert rejected({"blocklist_timeout": value})


def test_icmp_rate_burst_zero_is_rejected() -> None:
    assert rejected({"icmp_echo_rate_total": "50/second burst 0 packets"})
    assert rules({"icmp_echo_rate_total": "50/second burst 1 packets"})


# ------------------------------------------------------------------------------------ services, merging


def test_ports_two_apart_stay_separate() -> None:
    result = rules({"inbound_services": ["80", "82", "83", 84]})["input"]["inbound_services"]
    assert result == [{"proto": "tcp", "ports": ["80", "82-84"]}]


def test_service_mapping_proto_is_used() -> None:
    services = rules(
        {"inbound_services": [{"port": 53, "proto": "udp"}, {"port": "60000-60001", "proto": "UDP"}]}
    )
    assert services["input"]["inbound_services"] == [{"proto": "udp", "ports": ["53", "60000-60001"]}]


# ---------------------------------------------------------------------------------------------- DNAT


def test_dnat_target_may_be_the_last_address_of_an_internal_network() -> None:
    config = {
        "internal_networks": ["10.77.0.0/24", "10.77.9.7/32"],
        "dnat": [{"port": 80, "target": "10.77.9.7"}, {"port": 81, "target": "10.77.0.255"}],
    }
    assert [row["target"] for row in rules(config)["dnat"]["ports"]] == ["10.77.9.7", "10.77.0.255"]
    assert rejected(dict(config, dnat=[{"port": 80, "target": "10.77.9.8"}]))


def test_dnat_rows_are_ordered_by_protocol_port_and_source() -> None:
    dnat = rules(
        {
            "dnat": [
                {"port": 53, "proto": "udp", "target": "10.77.0.10", "source": "198.51.100.0/24"},
                {"port": 80, "target": "10.77.0.10", "source": "198.51.101.0/24"},
                {"port": 80, "target": "10.77.0.10", "source": "198.51.100.0/24"},
                {"port": 22, "target": "10.77.0.9"},
                {"port": "ALL", "source": "198.18.1.0/24", "target": "10.77.0.10"},
                {"port": "ALL", "source": "198.18.0.0/24", "target": "10.77.0.9"},
                {"port": "ALL", "source": "100.64.0.0/24", "target": "10.77.0.10"},
            ]
        }
    )["dnat"]
    assert dnat == dnat_tables(
        "0.0.0.0/0 . tcp . 22 : 10.77.0.9 . 22",
        "198.51.100.0/24 . tcp . 80 : 10.77.0.10 . 80",
        "198.51.101.0/24 . tcp . 80 : 10.77.0.10 . 80",
        "198.51.100.0/24 . udp . 53 : 10.77.0.10 . 53",
        "100.64.0.0/24 : 10.77.0.10",
        "198.18.0.0/24 : 10.77.0.9",
        "198.18.1.0/24 : 10.77.0.10",
        # Forward acceptance: targets in address order (10.77.0.9 before 10.77.0.10), then protocol,
        # then port.
        "10.77.0.9 . tcp . 22 . 0.0.0.0/0",
        "10.77.0.10 . tcp . 80 . 198.51.100.0/23",
        "10.77.0.10 . udp . 53 . 198.51.100.0/24",
        "10.77.0.9 . 198.18.0.0/24",
        "10.77.0.10 . 100.64.0.0/24",
        "10.77.0.10 . 198.18.1.0/24",
    )


def test_forward_rows_of_one_target_are_ordered_by_protocol_then_port() -> None:
    rows = rules(
        {
            "dnat": [
                {"port": 2000, "proto": "udp", "target": "10.77.0.10", "target_port": 900},
                {"port": 1000, "proto": "udp", "target": "10.77.0.10", "target_port": 100},
                {"port": 3000, "proto": "tcp", "target": "10.77.0.10", "target_port": 500},
            ]
        }
    )["dnat"]["ports_forward"]
    assert [(r["proto"], r["target_port"]) for r in rows] == [("tcp", 500), ("udp", 100), ("udp", 900)]


# ------------------------------------------------------------------------------------------- SOCKS


def test_socks_settings_given_as_strings() -> None:
    socks = rules({"socks_redirect": {"enabled": False, "ports": ["8080"], "listen_port": "3129"}})
    assert socks["socks_redirect"] == {
        "enabled": False,
        "ports": ["8080"],
        "exclude": ["10.77.0.0/24"],
        "listen_port": 3129,
    }


def test_socks_disabled_with_no_ports_is_fine() -> None:
    assert rules({"socks_redirect": {"enabled": False, "ports": []}})["socks_redirect"]["ports"] == []


# -------------------------------------------------------------------------------------- accounting


def test_accounting_disabled_without_networks() -> None:
    assert rules({"accounting_exclude": ["10.77.0.5"]})["accounting"] == {
        "enabled": False,
        "counters": [],
        "in_map": [],
        "out_map": [],
        "exclude": ["10.77.0.5/32"],
    }


def test_accounting_names_default_to_the_entry_index() -> None:
    acct = rules(
        {
            "accounting_networks": [
                {"network": "10.77.0.0/26", "name": 7},
                {"network": "10.77.0.64/26"},
                {"network": "10.77.0.128/26", "name": "_Lab-Net_"},
                {"network": "10.77.0.192/26", "name": "n" * 64},
            ]
        }
    )["accounting"]
    assert [c["name"] for c in acct["counters"][::2]] == [
        "acct_7_in",
        "acct_1_in",
        "acct_lab_net_in",
        f"acct_{'n' * 64}_in",
        "acct_other_in",
    ]


def test_accounting_counters_follow_entry_order_and_map_follows_addresses() -> None:
    acct = rules({"accounting_networks": ["10.77.0.128/25", "0.0.0.1", "10.77.0.0/25"]})["accounting"]
    assert [c["comment"] for c in acct["counters"]] == [
        "10.77.0.128/25",
        "10.77.0.128/25",
        "0.0.0.1/32",
        "0.0.0.1/32",
        "10.77.0.0/25",
        "10.77.0.0/25",
        "other",
        "other",
    ]
    # A one-address gap is written as a single address, not a range.
    assert acct["in_map"] == acct_map(
        "0.0.0.0 : acct_other_in",
        "0.0.0.1/32 : acct_1_in",
        "0.0.0.2-10.76.255.255 : acct_other_in",
        "10.77.0.0/25 : acct_2_in",
        "10.77.0.128/25 : acct_0_in",
        "10.77.1.0-255.255.255.255 : acct_other_in",
    )


def test_accounting_last_address_alone_goes_to_other() -> None:
    acct = rules({"accounting_networks": ["255.255.255.254"]})["accounting"]
    assert acct["in_map"] == acct_map(
        "0.0.0.0-255.255.255.253 : acct_other_in",
        "255.255.255.254/32 : acct_0_in",
        "255.255.255.255 : acct_other_in",
    )


def test_saved_counter_at_the_64_bit_limit_is_restored() -> None:
    acct = rules(
        {
            "accounting_networks": ["10.77.0.0/24"],
            "accounting_saved": {"acct_0_out": {"packets": 2**64 - 1, "bytes": 0}},
        }
    )["accounting"]
    assert acct["counters"][1] == {
        "name": "acct_0_out",
        "comment": "10.77.0.0/24",
        "packets": 2**64 - 1,
        "bytes": 0,
    }
