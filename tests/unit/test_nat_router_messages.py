"""nat_router error messages, pinned whole: what the operator reads when a play stops on a bad inventory.

Each line names the host, the variable, the entry and the offending value, then says what is wrong; one
run reports every problem. The other test files check fragments; these fix the complete wording.
"""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from conftest import make_facts

from nattrail.intent.nat_router import nat_router_interfaces, nat_router_rules

HEAD = "nat_router: host gw1: variable nat_router_"


def error_lines(config: object, facts: object = None, host: object = "gw1") -> list[str]:
    with pytest.raises(AnsibleFilterError) as info:
        nat_router_rules(config, make_facts() if facts is None else facts, host)
    return str(info.value.message).splitlines()


CASES: list[tuple[dict, list[str]]] = [
    (
        {"external_interfaces": "eth0"},
        [
            "external_interfaces, entry value ('eth0'): expected a list of interface names such as ['eth1']",
        ],
    ),
    (
        {"internal_interfaces": ["eth1", "eth1"]},
        ["internal_interfaces, entry 1 ('eth1'): interface listed twice"],
    ),
    (
        {"internal_interfaces": []},
        ["internal_interfaces, entry value ([]): at least one interface is needed"],
    ),
    (
        {"internal_interfaces": ["eth1", "eth 1", 7]},
        [
            "internal_interfaces, entry 1 ('eth 1'): expected an interface name of at most 15 characters "
            "(eth0, ppp*)",
            "internal_interfaces, entry 2 (7): expected an interface name of at most 15 characters "
            "(eth0, ppp*)",
        ],
    ),
    (
        {"internal_interfaces": ["eth9"]},
        [
            "internal_interfaces, entry 0 ('eth9'): no such interface on this host; it has "
            "['eth0', 'eth1', 'lo']"
        ],
    ),
    (
        {"internal_interfaces": ["eth0", "eth1"]},
        ["internal_interfaces, entry 0 ('eth0'): interface is also an external interface"],
    ),
    (
        {"dnat": "8080:10.77.0.10"},
        ["dnat, entry value ('8080:10.77.0.10'): expected a list"],
    ),
    (
        {"log_group": 65536},
        ["log_group, entry value (65536): expected an NFLOG group number in 0..65535"],
    ),
    (
        {"log_prefix_spoof": ""},
        [
            "log_prefix_spoof, entry value (''): expected 1..127 printable ASCII characters without double "
            "quote, backslash or $",
        ],
    ),
    (
        {"router_access_from_internal": "some"},
        [
            "router_access_from_internal, entry value ('some'): expected \"all\" or a list of services such "
            "as [ssh]",
        ],
    ),
    (
        {"icmp_echo_rate": "5/second burst 0 packets"},
        [
            "icmp_echo_rate, entry value ('5/second burst 0 packets'): expected a rate such as \"5/second\" "
            'or "60/minute burst 10 packets"',
        ],
    ),
    (
        {"blocklist_timeout": -5},
        [
            'blocklist_timeout, entry value (-5): expected an nftables time such as "1h", "10m", "1d12h" or '
            "seconds",
        ],
    ),
    (
        {"masquerade": "yes"},
        ["masquerade, entry value ('yes'): expected true or false"],
    ),
    (
        {"snat_address": "203.0.113.2/32"},
        ["snat_address, entry value ('203.0.113.2/32'): expected an IPv4 address such as 10.77.0.10"],
    ),
    (
        {
            "dnat": [
                {"port": 80, "target": "10.77.0.10"},
                "8080:10.77.0.10",
                {"port": 8080},
                {"target": "10.77.0.10"},
                {"port": "ALL", "target": "10.77.0.11", "target_port": 80, "proto": "udp"},
            ]
        },
        [
            "dnat, entry 1 ('8080:10.77.0.10'): expected a mapping with at least port and target",
            "dnat, entry 2 ({'port': 8080}): target is required (an IPv4 address inside the internal "
            "networks)",
            "dnat, entry 3 ({'target': '10.77.0.10'}): port is required (a router port in 1..65535, "
            'or "ALL")',
            "dnat, entry 4 ({'port': 'ALL', 'target': '10.77.0.11', 'target_port': 80, 'proto': 'udp'}): "
            'target_port is not allowed with port "ALL" (every port keeps its number)',
            "dnat, entry 4 ({'port': 'ALL', 'target': '10.77.0.11', 'target_port': 80, 'proto': 'udp'}): "
            'proto is not allowed with port "ALL" (every protocol is forwarded)',
        ],
    ),
    (
        {"socks_redirect": "on"},
        [
            "socks_redirect, entry value ('on'): expected a mapping with enabled, ports, exclude, "
            "listen_port",
        ],
    ),
    (
        {
            "socks_redirect": {
                "enabled": "yes",
                "ports": "80",
                "exclude": "10.0.0.0/8",
                "listen_port": 0,
                "port": 80,
            }
        },
        [
            "socks_redirect, entry value ({'enabled': 'yes', 'ports': '80', 'exclude': '10.0.0.0/8', "
            "'listen_port': 0, 'port': 80}): unknown keys ['port']; allowed are ['enabled', 'ports', "
            "'exclude', 'listen_port']",
            "socks_redirect, entry enabled ('yes'): expected true or false",
            "socks_redirect, entry ports ('80'): expected a list",
            "socks_redirect, entry exclude ('10.0.0.0/8'): expected a list",
            "socks_redirect, entry listen_port (0): listen_port 0 is outside 1..65535",
        ],
    ),
    (
        {"socks_redirect": {"ports": ["53/udp"], "exclude": ["10.0.0.0/40"], "listen_port": "x"}},
        [
            "socks_redirect, entry ports[0] ('53/udp'): only tcp ports are allowed here",
            "socks_redirect, entry exclude[0] ('10.0.0.0/40'): expected an IPv4 network in CIDR notation "
            "such as 10.77.0.0/24, or an IPv4 address",
            "socks_redirect, entry listen_port ('x'): listen_port must be an integer in 1..65535, got 'x'",
        ],
    ),
    (
        {
            "accounting_networks": [
                {"network": "10.1.0.0/16", "name": True},
                {"network": "10.2.0.0/16", "name": "x" * 65},
                {"network": "10.3.0.0/16", "name": "Other"},
                {"network": "10.4.0.0/16", "name": "__"},
                {"network": "10.5.0.0/16", "name": "a", "label": 1},
                {"network": "10.6.0.0/16", "name": ["a"]},
            ]
        },
        [
            "accounting_networks, entry 0 ({'network': '10.1.0.0/16', 'name': True}): name must be a string",
            f"accounting_networks, entry 1 ({{'network': '10.2.0.0/16', 'name': '{'x' * 65}'}}): name must "
            "contain 1..64 letters, digits or underscores",
            "accounting_networks, entry 2 ({'network': '10.3.0.0/16', 'name': 'Other'}): name \"other\" is "
            "reserved for the catch-all counters",
            "accounting_networks, entry 3 ({'network': '10.4.0.0/16', 'name': '__'}): name must contain "
            "1..64 letters, digits or underscores",
            "accounting_networks, entry 4 ({'network': '10.5.0.0/16', 'name': 'a', 'label': 1}): unknown "
            "keys ['label']; allowed are network and name",
            "accounting_networks, entry 5 ({'network': '10.6.0.0/16', 'name': ['a']}): name must be a string",
        ],
    ),
    (
        {
            "accounting_networks": [{"network": "10.9.0.0/24", "name": "3"}],
            "accounting_saved": {
                "acct_0_in": {"packets": True, "bytes": 0},
                "acct_1_in": 5,
                "acct_2_in": {"packets": 2**64, "bytes": 1},
                "acct_3_in": {"packets": 2**64 - 1, "bytes": 0},
            },
        },
        [
            "accounting_saved, entry acct_0_in ({'packets': True, 'bytes': 0}): expected {packets: N, "
            "bytes: N} with N >= 0",
            "accounting_saved, entry acct_1_in (5): expected {packets: N, bytes: N} with N >= 0",
            "accounting_saved, entry acct_2_in ({'packets': 18446744073709551616, 'bytes': 1}): expected "
            "{packets: N, bytes: N} with N >= 0",
        ],
    ),
]


CASES += [
    (
        {"socks_redirect": {"enabled": True, "ports": []}},
        ["socks_redirect, entry ports ([]): redirection is enabled but no port is listed"],
    ),
    (
        {
            "accounting_networks": [
                {"network": "10.1.0.0/16", "name": "a"},
                "bogus",
                {"network": "10.2.0.0/16", "name": "A"},
                {"network": "10.3.0.0/16", "name": "a"},
                "10.1.128.0/17",
                "nope",
            ]
        },
        [
            "accounting_networks, entry 1 ('bogus'): expected an IPv4 network in CIDR notation such as "
            "10.77.0.0/24, or an IPv4 address",
            "accounting_networks, entry 2 ({'network': '10.2.0.0/16', 'name': 'A'}): counter name 'a' "
            "already used by entry 0",
            "accounting_networks, entry 3 ({'network': '10.3.0.0/16', 'name': 'a'}): counter name 'a' "
            "already used by entry 0",
            "accounting_networks, entry 5 ('nope'): expected an IPv4 network in CIDR notation such as "
            "10.77.0.0/24, or an IPv4 address",
            "accounting_networks, entry 4 ('10.1.128.0/17'): 10.1.128.0/17 overlaps 10.1.0.0/16 of entry 0; "
            "accounting networks must be disjoint",
        ],
    ),
    (
        {"accounting_saved": "acct_0_in"},
        [
            "accounting_saved, entry value ('acct_0_in'): expected a mapping counter name -> "
            "{packets, bytes}",
        ],
    ),
]


CASES += [
    (
        {"inbound_services": [{"proto": "udp"}, {"port": True}, {"port": [22]}, {"port": 22, "proto": 6}]},
        [
            "inbound_services, entry 0 ({'proto': 'udp'}): a service mapping needs a port (and optionally "
            "proto: tcp or udp)",
            "inbound_services, entry 1 ({'port': True}): port must be a number, a range such as "
            "60000-60010 or a service name",
            "inbound_services, entry 2 ({'port': [22]}): port must be a number, a range such as "
            "60000-60010 or a service name",
            "inbound_services, entry 3 ({'port': 22, 'proto': 6}): port must be a number, a range such as "
            "60000-60010 or a service name",
        ],
    ),
]


@pytest.mark.parametrize(("config", "expected"), CASES)
def test_error_lines_are_complete(config: dict, expected: list[str]) -> None:
    assert error_lines(config) == [HEAD + line for line in expected]


def test_dnat_overlap_messages() -> None:
    lines = error_lines(
        {
            "dnat": [
                {"port": 25, "target": "10.77.0.10", "source": "198.51.100.0/24"},
                {"port": 25, "target": "10.77.0.11", "source": "198.51.100.128/25"},
                {"port": 25, "target": "10.77.0.12", "source": "198.51.100.0/24"},
                {"port": "ALL", "target": "10.77.0.13", "source": "198.18.0.0/24"},
                {"port": "ALL", "target": "10.77.0.14", "source": "198.18.0.0/25"},
                {"port": 22, "target": "10.77.0.15", "source": "198.18.0.0/24"},
            ]
        }
    )
    assert sorted(lines) == [
        HEAD + "dnat, entry 1 ({'port': 25, 'target': '10.77.0.11', 'source': '198.51.100.128/25'}): "
        "source overlaps 198.51.100.0/24 of (tcp, 25, 198.51.100.128/25) / entry 0; keys must be unique",
        HEAD + "dnat, entry 2 ({'port': 25, 'target': '10.77.0.12', 'source': '198.51.100.0/24'}): "
        "duplicate DNAT key (tcp, 25, 198.51.100.0/24) / entry 0; keys must be unique",
        HEAD + "dnat, entry 4 ({'port': 'ALL', 'target': '10.77.0.14', 'source': '198.18.0.0/25'}): "
        "ALL source overlaps 198.18.0.0/24 of (ALL, 198.18.0.0/25) / entry 3; keys must be unique",
        HEAD + "dnat, entry 5 ({'port': 22, 'target': '10.77.0.15', 'source': '198.18.0.0/24'}): "
        'port "ALL" entry 3 and port entry 5 (tcp/22) have the same source 198.18.0.0/24; one source '
        "either forwards everything or chosen ports",
    ]


def test_invalid_dnat_entry_takes_no_part_in_the_overlap_checks() -> None:
    """An entry already reported (here for an unknown key) must not also be reported as a duplicate."""
    lines = error_lines(
        {"dnat": [{"port": 80, "target": "10.77.0.10"}, {"port": 80, "target": "10.77.0.10", "note": "x"}]}
    )
    assert lines == [
        HEAD + "dnat, entry 1 ({'port': 80, 'target': '10.77.0.10', 'note': 'x'}): unknown keys ['note']; "
        "allowed are ['source', 'port', 'target', 'target_port', 'proto', 'comment']"
    ]


def test_long_values_are_cut_to_200_characters() -> None:
    # repr of a 198-character string is exactly 200 characters: shown whole.
    whole = "$" * 198
    (line,) = error_lines({"log_prefix_input": whole})
    assert f"entry value ({whole!r}): expected" in line
    # One more character and the shown value is cut to 197 characters plus "...".
    longer = "$" * 199
    (line,) = error_lines({"log_prefix_input": longer})
    assert f"entry value ({repr(longer)[:197]}...): expected" in line


def test_facts_that_are_not_a_mapping() -> None:
    assert error_lines({}, facts=[]) == [
        HEAD + "external_interfaces, entry value (None): no ansible facts given; gather facts first"
    ]


def test_configuration_that_is_not_a_mapping() -> None:
    assert error_lines("cfg") == [
        HEAD + "*, entry value ('cfg'): the configuration must be a mapping of nat_router_ variables"
    ]


def test_detection_failures_say_what_to_set() -> None:
    facts = make_facts({"lo": "127.0.0.1/8", "eth0": "203.0.113.2/24", "eth1": None}, default=None)
    assert error_lines({}, facts) == [
        HEAD + "external_interfaces, entry value (None): this host has no IPv4 default route to detect the "
        "external interface from; set nat_router_external_interfaces (a list such as ['eth0'])"
    ]
    facts = make_facts({"lo": "127.0.0.1/8", "eth0": "203.0.113.2/24", "eth1": None})
    assert error_lines({}, facts) == [
        HEAD + "internal_interfaces, entry value (None): no interface with an IPv4 address besides the "
        "external and loopback ones; set nat_router_internal_interfaces"
    ]
    assert error_lines({"internal_interfaces": ["eth1"]}, facts) == [
        HEAD + "internal_networks, entry value (None): the internal interfaces ['eth1'] have no IPv4 "
        "network to detect; set nat_router_internal_networks"
    ]


def test_interfaces_filter_reports_undetectable_internal_networks() -> None:
    facts = make_facts({"lo": "127.0.0.1/8", "eth0": "203.0.113.2/24", "eth1": None}, hostname="gw1")
    with pytest.raises(AnsibleFilterError) as info:
        nat_router_interfaces(facts, None, ["eth1"])
    assert str(info.value.message) == (
        HEAD + "internal_networks, entry value (None): the internal interfaces ['eth1'] have no IPv4 "
        "network to detect; set nat_router_internal_networks"
    )


def test_nested_networks_sharing_a_start_are_each_reported_once() -> None:
    """Nested networks sharing a start: one error per entry after the first, naming an entry it overlaps."""
    lines = error_lines({"accounting_networks": ["10.0.0.0/24", "10.0.0.0/8", "10.0.0.0/16"]})
    assert sorted(lines) == [
        HEAD + "accounting_networks, entry 1 ('10.0.0.0/8'): 10.0.0.0/8 overlaps 10.0.0.0/24 of entry 0; "
        "accounting networks must be disjoint",
        HEAD + "accounting_networks, entry 2 ('10.0.0.0/16'): 10.0.0.0/16 overlaps 10.0.0.0/8 of entry 1; "
        "accounting networks must be disjoint",
    ]


def test_missing_interface_facts_are_reported_not_fatal() -> None:
    facts = make_facts()
    del facts["interfaces"]
    assert error_lines({"external_interfaces": ["eth0"]}, facts) == [
        HEAD + "external_interfaces, entry 0 ('eth0'): no such interface on this host; it has []"
    ]
    facts = make_facts()
    del facts["default_ipv4"]
    assert error_lines({}, facts) == [
        HEAD + "external_interfaces, entry value (None): this host has no IPv4 default route to detect the "
        "external interface from; set nat_router_external_interfaces (a list such as ['eth0'])"
    ]


def test_empty_internal_networks() -> None:
    assert error_lines({"internal_networks": []}) == [
        HEAD + "internal_networks, entry value ([]): at least one internal network is needed"
    ]
