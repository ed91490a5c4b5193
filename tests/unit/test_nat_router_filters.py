"""nat_router filters: defaults, auto-detection, every validation error, and the O(n log n) checks."""

from __future__ import annotations

import re
import time

import netaddr
import pytest
from ansible.errors import AnsibleFilterError
from conftest import acct_map, dnat_tables, make_facts
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrail.intent import nat_router
from nattrail.intent.nat_router import nat_router_interfaces, nat_router_rules


def rules(config: dict | None = None, facts: dict | None = None, host: str = "router") -> dict:
    return nat_router_rules(config or {}, facts or make_facts(), host)


def errors_of(config: dict, facts: dict | None = None, host: str = "router") -> list[str]:
    with pytest.raises(AnsibleFilterError) as info:
        nat_router_rules(config, facts or make_facts(), host)
    return str(info.value.message).splitlines()


def dnat_errors(*entries: object) -> list[str]:
    """The error lines for these nat_router_dnat entries."""
    return errors_of({"dnat": list(entries)})


def assert_error(
    lines: list[str], variable: str, entry: object, *fragments: str, host: str = "router"
) -> None:
    """One line names the host, the variable, the entry and says what is wrong."""
    head = f"nat_router: host {host}: variable nat_router_{variable}, entry {entry} ("
    matching = [line for line in lines if line.startswith(head) and all(f in line for f in fragments)]
    assert matching, f"no error {head}... {fragments} in:\n" + "\n".join(lines)


# ------------------------------------------------------------------------------------------- registry


# --------------------------------------------------------------------------------- defaults, detection


def test_empty_config_gives_masquerading_firewall() -> None:
    result = rules()
    assert result["table"] == "nattrail"
    assert result["interfaces"] == {"external": ["eth0"], "internal": ["eth1"]}
    assert result["internal_networks"] == ["10.77.0.0/24"]
    assert result["nat"] == {"mode": "masquerade", "snat_address": None}
    assert result["input"]["internal_access_all"] is True
    assert result["input"]["inbound_services"] == []
    assert result["input"]["icmp_echo_rate"] == "5/second"
    assert result["input"]["noisy_udp_ports"] == ["67", "137-138", "161", "513", "520", "1985"]
    assert result["log"] == {
        "group": 1,
        "input_prefix": "nattrail-in-drop: ",
        "forward_prefix": "nattrail-fwd-drop: ",
        "spoof_prefix": "nattrail-spoof: ",
    }
    assert result["blocklist_timeout"] == "1h"
    assert result["dnat"] == {"ports": [], "all": [], "ports_forward": [], "all_forward": []}
    assert result["accounting"]["enabled"] is False
    assert result["socks_redirect"]["enabled"] is False


def test_none_values_mean_defaults() -> None:
    config = {key: None for key in nat_router.DEFAULTS}
    assert rules(config) == rules({})


def test_spoof_sources_merge_martians_loopback_and_internal_but_not_test_nets() -> None:
    spoof = netaddr.IPSet(rules()["spoof_sources"])
    for address in ("127.0.0.1", "10.77.0.9", "169.254.1.1", "224.0.0.5", "255.255.255.255", "0.1.2.3"):
        assert address in spoof
    for address in ("203.0.113.20", "198.18.0.1", "198.51.100.1", "192.168.1.1", "172.16.0.1", "10.78.0.1"):
        assert address not in spoof


def test_spoof_martians_are_configurable() -> None:
    spoof = rules({"spoof_martians": ["198.18.0.0/24"]})["spoof_sources"]
    assert spoof == ["10.77.0.0/24", "127.0.0.0/8", "198.18.0.0/24"]


def test_detection_uses_secondaries_and_skips_interfaces_without_ipv4() -> None:
    facts = make_facts(
        {
            "lo": "127.0.0.1/8",
            "eth0": "203.0.113.2/24",
            "eth1": "10.77.0.2/24",
            "eth2": None,
            "br-lan": "10.9.0.1/16",
        },
        secondaries={"eth1": ["10.77.1.1/24", "10.77.0.3/24"]},
    )
    found = nat_router_interfaces(facts)
    assert found == {
        "external": ["eth0"],
        "internal": ["br-lan", "eth1"],
        "internal_networks": ["10.9.0.0/16", "10.77.0.0/23"],
    }


def test_detection_accepts_hostvars_style_fact_names() -> None:
    facts = {f"ansible_{key}": value for key, value in make_facts().items()}
    assert nat_router_interfaces(facts)["internal"] == ["eth1"]


def test_given_interfaces_and_networks_win_over_detection() -> None:
    facts = make_facts({"lo": "127.0.0.1/8", "eth0": "203.0.113.2/24", "eth1": "10.77.0.2/24", "eth2": None})
    result = rules(
        {
            "external_interfaces": ["eth0", "ppp*"],
            "internal_interfaces": ["eth2"],
            "internal_networks": ["10.50.0.0/16", "10.50.3.0/24"],
        },
        facts,
    )
    assert result["interfaces"] == {"external": ["eth0", "ppp*"], "internal": ["eth2"]}
    assert result["internal_networks"] == ["10.50.0.0/16"]


def test_interfaces_filter_reports_unknown_interface() -> None:
    with pytest.raises(AnsibleFilterError) as info:
        nat_router_interfaces(make_facts(), ["eth9"], None, "gw1")
    assert_error(
        str(info.value.message).splitlines(),
        "external_interfaces",
        0,
        "'eth9'",
        "no such interface",
        host="gw1",
    )


def test_hostname_defaults_to_the_hostname_fact() -> None:
    with pytest.raises(AnsibleFilterError) as info:
        nat_router_rules({"dnat": "nope"}, make_facts(hostname="gw7"), None)
    assert str(info.value.message).startswith("nat_router: host gw7: variable nat_router_dnat")


# ---------------------------------------------------------------------------------- interface errors


def test_no_default_route_and_no_external_interfaces() -> None:
    lines = errors_of({}, make_facts(default=None))
    assert_error(lines, "external_interfaces", "value", "no IPv4 default route")


def test_no_internal_interface_detected() -> None:
    facts = make_facts({"lo": "127.0.0.1/8", "eth0": "203.0.113.2/24", "eth1": None})
    assert_error(errors_of({}, facts), "internal_interfaces", "value", "no interface with an IPv4 address")


def test_internal_interface_without_network_needs_internal_networks() -> None:
    facts = make_facts({"lo": "127.0.0.1/8", "eth0": "203.0.113.2/24", "eth1": None})
    lines = errors_of({"internal_interfaces": ["eth1"]}, facts)
    assert_error(lines, "internal_networks", "value", "no IPv4 network to detect")
    assert rules({"internal_interfaces": ["eth1"], "internal_networks": ["10.1.0.0/16"]}, facts)


@pytest.mark.parametrize(
    ("variable", "value", "entry", "fragment"),
    [
        ("internal_interfaces", ["eth9"], 0, "no such interface"),
        ("internal_interfaces", ["eth1", "eth1"], 1, "listed twice"),
        ("internal_interfaces", ["eth0"], 0, "also an external interface"),
        ("internal_interfaces", ['eth1"; flush ruleset'], 0, "at most 15 characters"),
        ("internal_interfaces", [], "value", "at least one interface"),
        ("external_interfaces", "eth0", "value", "expected a list"),
        ("internal_networks", [], "value", "at least one internal network"),
        ("internal_networks", "10.0.0.0/8", "value", "expected a list"),
        ("external_interfaces", ["averyveryverylongname"], 0, "at most 15 characters"),
    ],
)
def test_interface_errors(variable: str, value: object, entry: object, fragment: str) -> None:
    assert_error(errors_of({variable: value}), variable, entry, fragment)


# ------------------------------------------------------------------------------------------- services


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("ssh", [("tcp", 22, 22)]),
        ("SMTP", [("tcp", 25, 25)]),
        ("22", [("tcp", 22, 22)]),
        (22, [("tcp", 22, 22)]),
        ("22/tcp", [("tcp", 22, 22)]),
        ("53/udp", [("udp", 53, 53)]),
        ("domain/udp", [("udp", 53, 53)]),
        ("domain", [("udp", 53, 53), ("tcp", 53, 53)]),
        ("60000-60010/udp", [("udp", 60000, 60010)]),
        ({"port": 443, "proto": "tcp"}, [("tcp", 443, 443)]),
        ({"port": "ntp"}, [("udp", 123, 123)]),
        ("wireguard", [("udp", 51820, 51820)]),
        ("ipsec", [("udp", 500, 500), ("udp", 4500, 4500)]),
        ("isakmp", [("udp", 500, 500)]),
        ("auth", [("tcp", 113, 113)]),
        ("ident", [("tcp", 113, 113)]),
    ],
)
def test_service_syntax(service: object, expected: list) -> None:
    assert nat_router._parse_service(service) == expected


def test_builtin_table_covers_the_promised_names() -> None:
    promised = (
        "ssh smtp domain http https pop3 imap imaps pop3s submission rsync ntp snmp ident auth ftp telnet "
        "ldap bgp openvpn wireguard ipsec isakmp"
    )
    assert set(promised.split()) <= set(nat_router.SERVICES)


def test_services_are_grouped_and_merged_per_protocol() -> None:
    result = rules({"inbound_services": ["ssh", "20-25", "http", "domain", "81", "53/udp"]})
    assert result["input"]["inbound_services"] == [
        {"proto": "tcp", "ports": ["20-25", "53", "80-81"]},
        {"proto": "udp", "ports": ["53"]},
    ]


def test_router_access_list() -> None:
    result = rules({"router_access_from_internal": ["ssh", "domain"]})["input"]
    assert result["internal_access_all"] is False
    assert result["internal_services"] == [
        {"proto": "tcp", "ports": ["22", "53"]},
        {"proto": "udp", "ports": ["53"]},
    ]


@pytest.mark.parametrize(
    ("service", "fragment"),
    [
        ("gopherspace", "unknown service name 'gopherspace'"),
        ("0", "outside 1..65535"),
        ("65536/udp", "outside 1..65535"),
        ("100-20", "reversed"),
        ("22/sctp", "unknown protocol 'sctp'"),
        ("22 tcp", "expected a service"),
        (True, "expected a service"),
        ({"port": 22, "protocol": "tcp"}, "unknown keys ['protocol']"),
        ({"proto": "tcp"}, "needs a port"),
    ],
)
def test_service_errors(service: object, fragment: str) -> None:
    lines = errors_of({"inbound_services": ["ssh", service]})
    assert_error(lines, "inbound_services", 1, repr(service), fragment)


def test_router_access_errors() -> None:
    assert_error(
        errors_of({"router_access_from_internal": "some"}), "router_access_from_internal", "value", '"all"'
    )
    lines = errors_of({"router_access_from_internal": ["nosuch"]})
    assert_error(lines, "router_access_from_internal", 0, "unknown service name")


def test_noisy_udp_ports_take_names_and_refuse_tcp() -> None:
    assert rules({"noisy_udp_ports": ["snmp", 5353, "who"]})["input"]["noisy_udp_ports"] == [
        "161",
        "513",
        "5353",
    ]
    assert_error(errors_of({"noisy_udp_ports": [67, "22/tcp"]}), "noisy_udp_ports", 1, "only udp ports")


# ------------------------------------------------------------------------------- scalars and logging


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("icmp_echo_rate", "5/fortnight", "expected a rate"),
        ("icmp_echo_rate", "0/second", "expected a rate"),
        ("icmp_echo_rate", 5, "expected a rate"),
        ("log_group", 70000, "0..65535"),
        ("log_group", True, "0..65535"),
        ("log_prefix_input", "x" * 128, "1..127 printable ASCII"),
        ("log_prefix_forward", 'say "hi"', "double quote"),
        ("log_prefix_spoof", "cost $5", "double quote"),
        ("log_prefix_spoof", "", "1..127"),
        ("log_prefix_input", "tab\there", "printable"),
        ("masquerade", "yes", "true or false"),
        ("snat_address", "203.0.113.300", "IPv4 address"),
        ("snat_address", "203.0.113.0/24", "IPv4 address"),
        ("blocklist_timeout", "1 hour", "nftables time"),
        ("blocklist_timeout", "0s", "nftables time"),
        ("accounting_saved", ["acct_0_in"], "expected a mapping"),
        ("socks_redirect", "on", "expected a mapping"),
    ],
)
def test_scalar_errors(variable: str, value: object, fragment: str) -> None:
    assert_error(errors_of({variable: value}), variable, "value", repr(value)[:50], fragment)


def test_spoof_martian_errors() -> None:
    lines = errors_of({"spoof_martians": ["0.0.0.0/8", "240.0.0.0/33"]})
    assert_error(lines, "spoof_martians", 1, "'240.0.0.0/33'", "CIDR")


def test_log_prefix_at_the_kernel_limit_is_accepted() -> None:
    assert rules({"log_prefix_input": "p" * 127})["log"]["input_prefix"] == "p" * 127


def test_icmp_rate_with_burst_and_timeout_forms() -> None:
    result = rules({"icmp_echo_rate": "60/minute burst 10 packets", "blocklist_timeout": 600})
    assert result["input"]["icmp_echo_rate"] == "60/minute burst 10 packets"
    assert result["blocklist_timeout"] == "600s"
    assert rules({"blocklist_timeout": "1d12h"})["blocklist_timeout"] == "1d12h"


def test_nat_modes() -> None:
    assert rules({"snat_address": "203.0.113.2"})["nat"] == {"mode": "snat", "snat_address": "203.0.113.2"}
    assert rules({"masquerade": False})["nat"] == {"mode": "none", "snat_address": None}


# ----------------------------------------------------------------------------------------------- CIDRs


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("10.77.0.0/33", "CIDR notation"),
        ("10.77.0.256/24", "CIDR notation"),
        ("10.077.0.0/24", "CIDR notation"),
        ("10.77/16", "CIDR notation"),
        ("10.77.0.1/24", "host bits are set; did you mean 10.77.0.0/24?"),
        ("fd00::/8", "CIDR notation"),
        (24, "CIDR notation"),
    ],
)
def test_cidr_errors(value: object, fragment: str) -> None:
    lines = errors_of({"internal_networks": ["10.1.0.0/16", value]})
    assert_error(lines, "internal_networks", 1, repr(value), fragment)


def test_plain_address_is_a_host_network() -> None:
    assert rules({"accounting_exclude": ["10.77.0.5"]})["accounting"]["exclude"] == ["10.77.0.5/32"]


# ------------------------------------------------------------------------------------------------ DNAT


def test_dnat_rows_and_forward_sets() -> None:
    result = rules(
        {
            "dnat": [
                {"port": 8080, "target": "10.77.0.10", "target_port": 80},
                {"port": "8081", "target": "10.77.0.10", "target_port": 80, "source": "198.51.100.0/24"},
                {"port": 53, "proto": "udp", "target": "10.77.0.11", "source": "198.51.100.0/24"},
                {"port": 53, "proto": "udp", "target": "10.77.0.12", "source": "198.51.101.0/24"},
                {"port": "ALL", "source": "198.18.0.0/25", "target": "10.77.0.13"},
                {"port": "all", "source": "198.18.0.128/25", "target": "10.77.0.13", "comment": "lab"},
            ]
        }
    )["dnat"]
    assert result == dnat_tables(
        "0.0.0.0/0 . tcp . 8080 : 10.77.0.10 . 80",
        "198.51.100.0/24 . tcp . 8081 : 10.77.0.10 . 80",
        "198.51.100.0/24 . udp . 53 : 10.77.0.11 . 53",
        "198.51.101.0/24 . udp . 53 : 10.77.0.12 . 53",
        "198.18.0.0/25 : 10.77.0.13",
        "198.18.0.128/25 : 10.77.0.13",
        # Overlapping sources for one target port merge, or the kernel would refuse the set.
        "10.77.0.10 . tcp . 80 . 0.0.0.0/0",
        "10.77.0.11 . udp . 53 . 198.51.100.0/24",
        "10.77.0.12 . udp . 53 . 198.51.101.0/24",
        "10.77.0.13 . 198.18.0.0/24",
    )


def test_dnat_all_may_overlap_a_port_entry_with_a_different_source() -> None:
    result = rules(
        {
            "dnat": [
                {"port": 22, "target": "10.77.0.10"},
                {"port": "ALL", "source": "198.18.0.0/24", "target": "10.77.0.11"},
            ]
        }
    )
    assert len(result["dnat"]["ports"]) == 1
    assert len(result["dnat"]["all"]) == 1


DNAT_OK = {"port": 8080, "target": "10.77.0.10"}


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("8080:10.77.0.10", "expected a mapping"),
        ({"port": 8080}, "target is required"),
        ({"target": "10.77.0.10"}, "port is required"),
        ({"port": 0, "target": "10.77.0.10"}, "port 0 is outside 1..65535"),
        ({"port": 65536, "target": "10.77.0.10"}, "port 65536 is outside 1..65535"),
        ({"port": True, "target": "10.77.0.10"}, "must be an integer"),
        ({"port": 80, "target": "10.77.0.10", "target_port": 70000}, "target_port 70000 is outside"),
        ({"port": 80, "target": "10.77.0.10", "proto": "icmp"}, "proto must be tcp or udp"),
        ({"port": 80, "target": "10.78.0.10"}, "target 10.78.0.10 is not inside any internal network"),
        ({"port": 80, "target": "10.77.0.0/24"}, "target: expected an IPv4 address"),
        ({"port": 80, "target": "10.77.0.10", "source": "198.51.100.1/24"}, "source: host bits are set"),
        ({"port": 80, "target": "10.77.0.10", "source": "nowhere"}, "source: expected an IPv4 network"),
        ({"port": 80, "target": "10.77.0.10", "targetport": 81}, "unknown keys ['targetport']"),
        (
            {"port": "ALL", "target": "10.77.0.10", "target_port": 80},
            'target_port is not allowed with port "ALL"',
        ),
        ({"port": "ALL", "target": "10.77.0.10", "proto": "udp"}, 'proto is not allowed with port "ALL"'),
    ],
)
def test_dnat_entry_errors(entry: object, fragment: str) -> None:
    lines = dnat_errors(DNAT_OK, entry)
    assert_error(lines, "dnat", 1, repr(entry)[:40], fragment)


def test_dnat_duplicate_key() -> None:
    lines = dnat_errors(
        {"port": 8080, "target": "10.77.0.10"},
        {"port": 8080, "target": "10.77.0.11", "proto": "udp"},
        {"port": 8080, "target": "10.77.0.12", "target_port": 80},
    )
    assert_error(lines, "dnat", 2, "duplicate DNAT key (tcp, 8080, 0.0.0.0/0)", "entry 0")
    assert len(lines) == 1


def test_dnat_overlapping_sources_for_the_same_port() -> None:
    lines = dnat_errors(
        {"port": 25, "target": "10.77.0.10", "source": "198.51.100.0/24"},
        {"port": 25, "target": "10.77.0.11", "source": "198.51.101.0/24"},
        {"port": 25, "target": "10.77.0.12", "source": "198.51.100.128/25"},
    )
    assert_error(lines, "dnat", 2, "source overlaps 198.51.100.0/24", "entry 0")
    assert len(lines) == 1


def test_dnat_all_sources_must_not_overlap() -> None:
    lines = dnat_errors(
        {"port": "ALL", "target": "10.77.0.10"},
        {"port": "ALL", "target": "10.77.0.11", "source": "198.18.0.0/24"},
    )
    assert_error(lines, "dnat", 1, "ALL source overlaps 0.0.0.0/0", "entry 0")


def test_dnat_all_and_port_entry_with_the_same_source() -> None:
    lines = dnat_errors(
        {"port": "ALL", "target": "10.77.0.10", "source": "198.18.0.0/24"},
        {"port": 22, "target": "10.77.0.11", "source": "198.18.0.0/24"},
    )
    assert_error(
        lines, "dnat", 1, 'port "ALL" entry 0 and port entry 1 (tcp/22) have the same source 198.18.0.0/24'
    )


def test_all_errors_are_reported_at_once() -> None:
    lines = errors_of(
        {
            "inbound_services": ["nosuch"],
            "dnat": [{"port": 0, "target": "10.77.0.10"}, {"port": 80, "target": "8.8.8.8"}],
            "accounting_networks": ["10.0.0.0/8", "10.1.0.0/16"],
            "log_group": -1,
        }
    )
    assert len(lines) == 5
    assert all(line.startswith("nat_router: host router: variable nat_router_") for line in lines)


# ------------------------------------------------------------------------------------------ accounting


def test_accounting_counters_maps_and_saved_values() -> None:
    acct = rules(
        {
            "accounting_networks": ["10.77.0.0/26", {"network": "10.77.0.128/25", "name": "Lab Servers"}],
            "accounting_exclude": ["10.77.0.5", "10.77.0.4/31"],
            "accounting_saved": {
                "acct_0_in": {"packets": 5, "bytes": 600, "comment": "10.77.0.0/26"},
            },
        }
    )["accounting"]
    assert acct["enabled"] is True
    assert acct["exclude"] == ["10.77.0.4/31"]
    assert acct["counters"] == [
        {"name": "acct_0_in", "comment": "10.77.0.0/26", "packets": 5, "bytes": 600},
        {"name": "acct_0_out", "comment": "10.77.0.0/26", "packets": 0, "bytes": 0},
        {"name": "acct_lab_servers_in", "comment": "10.77.0.128/25", "packets": 0, "bytes": 0},
        {"name": "acct_lab_servers_out", "comment": "10.77.0.128/25", "packets": 0, "bytes": 0},
        {"name": "acct_other_in", "comment": "other", "packets": 0, "bytes": 0},
        {"name": "acct_other_out", "comment": "other", "packets": 0, "bytes": 0},
    ]
    assert acct["in_map"] == acct_map(
        "0.0.0.0-10.76.255.255 : acct_other_in",
        "10.77.0.0/26 : acct_0_in",
        "10.77.0.64-10.77.0.127 : acct_other_in",
        "10.77.0.128/25 : acct_lab_servers_in",
        "10.77.1.0-255.255.255.255 : acct_other_in",
    )
    assert [e["counter"] for e in acct["out_map"]] == [
        c.replace("_in", "_out") for c in (e["counter"] for e in acct["in_map"])
    ]


def test_accounting_map_covers_every_address_exactly_once() -> None:
    acct = rules({"accounting_networks": ["0.0.0.0/1", "128.0.0.0/2", "255.255.255.255"]})["accounting"]
    covered = netaddr.IPSet()
    total = 0
    for element in acct["in_map"]:
        first, _, last = element["key"].partition("-")
        block = netaddr.IPRange(first, last) if last else netaddr.IPNetwork(first)
        covered.add(block)
        total += block.size
    assert total == covered.size == 2**32


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("10.77.0.0/33", "CIDR notation"),
        ({"network": "10.77.1.0/24", "name": "other"}, 'name "other" is reserved'),
        ({"network": "10.77.1.0/24", "name": "!!"}, "1..64 letters"),
        ({"network": "10.77.1.0/24", "label": "x"}, "unknown keys ['label']"),
        ({"network": "10.77.1.0/24", "name": "Zero"}, "counter name 'zero' already used by entry 0"),
        ("10.77.0.128/25", "10.77.0.128/25 overlaps 10.77.0.0/24 of entry 0"),
    ],
)
def test_accounting_errors(entry: object, fragment: str) -> None:
    lines = errors_of({"accounting_networks": [{"network": "10.77.0.0/24", "name": "zero"}, entry]})
    assert_error(lines, "accounting_networks", 1, fragment)


def test_accounting_saved_errors() -> None:
    lines = errors_of({"accounting_saved": {"acct_0_in": {"packets": -1, "bytes": 0}}})
    assert_error(lines, "accounting_saved", "acct_0_in", "packets: N, bytes: N")


# --------------------------------------------------------------------------------------- socks redirect


def test_socks_redirect_defaults_and_settings() -> None:
    default = rules()["socks_redirect"]
    assert default == {
        "enabled": False,
        "ports": ["80", "443"],
        "exclude": ["10.77.0.0/24"],
        "listen_port": 12345,
    }
    socks = rules(
        {
            "socks_redirect": {
                "enabled": True,
                "ports": ["http", 8080, "8000-8100"],
                "exclude": ["203.0.113.10"],
            }
        }
    )["socks_redirect"]
    assert socks == {
        "enabled": True,
        "ports": ["80", "8000-8100"],
        "exclude": ["10.77.0.0/24", "203.0.113.10/32"],
        "listen_port": 12345,
    }


@pytest.mark.parametrize(
    ("value", "entry", "fragment"),
    [
        ({"enabled": "yes"}, "enabled", "true or false"),
        ({"enabled": True, "ports": []}, "ports", "no port is listed"),
        ({"ports": ["53/udp"]}, "ports[0]", "only tcp ports"),
        ({"exclude": ["1.2.3.4/40"]}, "exclude[0]", "CIDR"),
        ({"listen_port": 0}, "listen_port", "outside 1..65535"),
        ({"port": 80}, "value", "unknown keys ['port']"),
    ],
)
def test_socks_redirect_errors(value: dict, entry: str, fragment: str) -> None:
    assert_error(errors_of({"socks_redirect": value}), "socks_redirect", entry, fragment)


# ---------------------------------------------------------------------------------------- properties

INTERNAL = netaddr.IPNetwork("10.77.0.0/24")


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=20).filter(lambda s: not re.fullmatch(r"[\d./]+", s)))
def test_bad_cidr_is_reported(text: str) -> None:
    lines = errors_of({"accounting_networks": [text]})
    assert_error(lines, "accounting_networks", 0, repr(text)[:40])


@settings(max_examples=50, deadline=None)
@given(st.one_of(st.integers(max_value=0), st.integers(min_value=65536)))
def test_port_out_of_range_is_reported(port: int) -> None:
    lines = dnat_errors({"port": port, "target": "10.77.0.10"})
    assert_error(lines, "dnat", 0, f"port {port} is outside 1..65535")
    assert_error(errors_of({"inbound_services": [port]}), "inbound_services", 0, repr(port))


@settings(max_examples=50, deadline=None)
@given(st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True).filter(lambda n: n not in nat_router.SERVICES))
def test_unknown_service_name_is_reported(name: str) -> None:
    lines = errors_of({"inbound_services": [f"{name}/tcp"]})
    assert_error(lines, "inbound_services", 0, f"unknown service name {name!r}")


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1).filter(lambda a: netaddr.IPAddress(a) not in INTERNAL))
def test_target_outside_internal_networks_is_reported(address: int) -> None:
    target = str(netaddr.IPAddress(address))
    lines = dnat_errors({"port": 80, "target": target})
    assert_error(lines, "dnat", 0, f"target {target} is not inside any internal network")


@settings(max_examples=50, deadline=None)
@given(
    st.sampled_from(["tcp", "udp"]),
    st.integers(min_value=1, max_value=65535),
    st.integers(min_value=0, max_value=32),
    st.integers(min_value=0, max_value=5),
)
def test_duplicate_dnat_key_is_reported(proto: str, port: int, prefix: int, others: int) -> None:
    source = str(netaddr.IPNetwork(f"198.51.100.0/{prefix}").cidr)
    entry = {"port": port, "proto": proto, "source": source, "target": "10.77.0.10"}
    fillers = [
        {"port": 1 + (port + i) % 65535, "target": "10.77.0.20", "proto": proto} for i in range(1, others + 1)
    ]
    lines = dnat_errors(entry, *fillers, dict(entry, target="10.77.0.11"))
    assert_error(lines, "dnat", others + 1, f"duplicate DNAT key ({proto}, {port}, {source})", "entry 0")


@settings(max_examples=50, deadline=None)
@given(
    st.from_regex(r"[a-z]{2,6}[0-9]{0,3}", fullmatch=True).filter(lambda n: n not in ("lo", "eth0", "eth1"))
)
def test_unknown_interface_is_reported(name: str) -> None:
    lines = errors_of({"internal_interfaces": ["eth1", name]})
    assert_error(lines, "internal_interfaces", 1, repr(name), "no such interface")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(16, 32)), max_size=30))
def test_overlap_sweep_agrees_with_pairwise_check(blocks: list[tuple[int, int]]) -> None:
    networks = [netaddr.IPNetwork((address, prefix)).cidr for address, prefix in blocks]
    spans = [nat_router._Span(n.first, n.last, i) for i, n in enumerate(networks)]
    flagged = {later.index for _, later in nat_router._overlaps(spans)} | {
        earlier.index for earlier, _ in nat_router._overlaps(spans)
    }
    pairwise = {
        i
        for i, a in enumerate(networks)
        for j, b in enumerate(networks)
        if i != j and a.first <= b.last and b.first <= a.last
    }
    assert flagged == pairwise


# -------------------------------------------------------------------------------------------- scale


def test_large_inventories_are_checked_in_n_log_n() -> None:
    count = 10_000
    dnat = [
        {
            "port": 1 + i % 60000,
            "proto": "tcp",
            "source": f"100.{64 + i // 60000}.0.0/16",
            "target": "10.77.0.10",
        }
        for i in range(count)
    ]
    accounting = [
        str(netaddr.IPNetwork((int(netaddr.IPAddress("172.16.0.0")) + 16 * i, 28))) for i in range(count)
    ]
    started = time.perf_counter()
    result = rules({"dnat": dnat, "accounting_networks": accounting})
    elapsed = time.perf_counter() - started
    assert len(result["dnat"]["ports"]) == count
    assert len(result["accounting"]["counters"]) == 2 * count + 2
    # Pairwise checks would take minutes here; the sweeps take well under a few seconds.
    assert elapsed < 20, f"{elapsed:.1f}s for {count} DNAT entries and {count} accounting networks"


# ------------------------------------------------------------------------------------ service names


@pytest.mark.parametrize(
    ("name", "port"), [("whois", 43), ("cvspserver", 2401), ("dict", 2628), ("ircs", 994), ("nntps", 563)]
)
def test_registry_service_names_an_ipmasq_site_uses_are_known(name: str, port: int) -> None:
    """The names ipmasq sites wrote in their redirected and forwarded ports (issue 13 found each refused)."""
    accepted = rules({"inbound_services": [name]})["input"]["inbound_services"]
    assert {"proto": "tcp", "ports": [str(port)]} in accepted, accepted


def test_noisy_udp_ports_take_names_as_documented() -> None:
    assert rules({"noisy_udp_ports": ["bootps", "snmp", "5353"]})["input"]["noisy_udp_ports"] == [
        "67",
        "161",
        "5353",
    ]


def test_an_unknown_service_name_says_where_the_names_come_from() -> None:
    with pytest.raises(AnsibleFilterError) as caught:
        rules({"inbound_services": ["ssh-but-typo"]})
    assert "unknown service name 'ssh-but-typo'; use a port number or a name of the IANA registry" in str(
        caught.value.message
    )


def test_a_saved_value_for_a_counter_that_does_not_exist_is_an_error() -> None:
    """A typo in nat_router_accounting_saved must not be silently ignored."""
    config = {
        "accounting_networks": [{"network": "10.1.0.0/24", "name": "lan"}],
        "accounting_saved": {"acct_lan_inn": {"packets": 1, "bytes": 2}},
    }
    assert errors_of(config) == [
        "nat_router: host router: variable nat_router_accounting_saved, entry acct_lan_inn ((1, 2)): "
        "no accounting counter has this name "
        "(counters: acct_lan_in, acct_lan_out, acct_other_in, acct_other_out)"
    ]
    lines = errors_of({"accounting_saved": {"acct_lan_in": {"packets": 1, "bytes": 2}}})
    assert lines[0].endswith("(counters: none: nat_router_accounting_networks is empty)")
