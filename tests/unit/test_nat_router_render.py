"""ruleset.nft.j2: rendered from the filter's data, the ruleset must pass `nft -c -f` (kernel included)."""

from __future__ import annotations

import re
from collections.abc import Callable

import netaddr
import pytest
from conftest import CARRY_INCLUDE, TEMPLATE, check_nft_ok, make_facts, render_ansible, render_jinja
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nattrail.intent import nat_router
from nattrail.intent.nat_router import nat_router_rules

FULL_CONFIG: dict[str, object] = {
    "inbound_services": ["ssh", "domain", "60000-60010/udp", {"port": 443, "proto": "tcp"}],
    "router_access_from_internal": ["ssh", "domain", "ntp"],
    "snat_address": "203.0.113.2",
    "icmp_echo_rate": "60/minute burst 10 packets",
    "noisy_udp_ports": [67, "netbios-ns", "5353"],
    "log_group": 7,
    "log_prefix_input": "in: ",
    "dnat": [
        {"port": 8080, "target": "10.77.0.10", "target_port": 80},
        {"port": 8081, "target": "10.77.0.10", "target_port": 80, "source": "198.51.100.0/24"},
        {"port": 53, "proto": "udp", "target": "10.77.0.11", "source": "198.51.100.0/24"},
        {"port": 53, "proto": "udp", "target": "10.77.0.12", "source": "198.51.101.0/24"},
        {"port": "ALL", "source": "198.18.0.0/24", "target": "10.77.0.13"},
    ],
    "accounting_networks": ["10.77.0.0/26", {"network": "10.77.0.128/25", "name": "Lab Servers"}],
    "accounting_exclude": ["10.77.0.5"],
    "accounting_saved": {
        "acct_0_in": {"packets": 5, "bytes": 600},
        "acct_other_out": {"packets": 1, "bytes": 2},
    },
    "socks_redirect": {"enabled": True, "ports": [80, "https", "8000-8100"], "exclude": ["203.0.113.10"]},
    "blocklist_timeout": "10m",
}


def render(config: dict, facts: dict | None = None) -> str:
    return render_jinja(nat_router_rules(config, facts or make_facts(), "router"))


def rule_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# ------------------------------------------------------------------------------------------ structure


def test_header_and_atomic_replacement_idiom() -> None:
    text = render({})
    assert text.startswith("# Managed by Ansible (nattrail nat_router); edits are overwritten")
    lines = rule_lines(text)
    # Declare (so delete cannot fail), delete, carried counters, define: one transaction, only our
    # table touched.
    assert lines[:4] == [
        "table inet nattrail {}",
        "delete table inet nattrail",
        f'include "{CARRY_INCLUDE}"',
        "table inet nattrail {",
    ]
    assert "flush ruleset" not in text
    assert sum(line.startswith("table ") for line in lines) == 2


def test_empty_config_renders_a_masquerading_firewall(assert_nft_ok: Callable[[str], None]) -> None:
    text = render({})
    lines = rule_lines(text)
    assert 'oifname { "eth0" } ip saddr @internal_nets masquerade' in lines
    assert 'iifname { "eth1" } accept' in lines
    assert 'iifname { "eth1" } oifname { "eth0" } ip saddr @internal_nets accept' in lines
    assert 'counter name drop_in log group 1 prefix "nattrail-in-drop: " drop' in lines
    assert 'counter name drop_fwd log group 1 prefix "nattrail-fwd-drop: " drop' in lines
    assert (
        'iifname { "eth0" } ip saddr @spoof_sources counter name drop_spoof '
        'log group 1 prefix "nattrail-spoof: " drop' in lines
    )
    assert "ip saddr @blocklist counter name drop_blocklist drop" in lines
    assert "tcp dport 113 counter name drop_ident_reset reject with tcp reset" in lines
    assert (
        'iifname { "eth0" } udp dport { 67, 137-138, 161, 513, 520, 1985 } counter name drop_noisy_udp drop'
        in lines
    )
    # The echo limits come before the conntrack accept, per source and overall.
    per_source = (
        "icmp type echo-request update @icmp_echo_sources { ip saddr limit rate over 5/second } "
        "counter name drop_icmp_limit drop"
    )
    overall = "icmp type echo-request limit rate over 50/second counter name drop_icmp_limit drop"
    established = lines.index("ct state established,related accept")
    assert lines.index(per_source) < established and lines.index(overall) < established
    # Every drop counter a rule names is declared, and every declared one is used.
    used = set(re.findall(r"counter name (\w+)", text))
    declared = set(re.findall(r"^  counter (drop_\w+) \{", text, re.MULTILINE))
    assert used == declared and len(declared) == 10
    assert "type filter hook input priority filter; policy drop;" in lines
    assert "type filter hook forward priority filter; policy drop;" in lines
    assert "type filter hook output priority filter; policy accept;" in lines
    # Nothing optional leaks in when unused.
    for absent in ("dnat", "acct_", "redirect", "socks_exclude", "snat"):
        assert absent not in text.replace("ct status dnat", ""), absent
    assert_nft_ok(text)


def test_full_config_renders_every_feature(assert_nft_ok: Callable[[str], None]) -> None:
    text = render(FULL_CONFIG)
    lines = rule_lines(text)
    assert "0.0.0.0/0 . tcp . 8080 : 10.77.0.10 . 80," in lines
    assert "198.18.0.0/24 : 10.77.0.13," in lines
    assert (
        'iifname { "eth0" } fib daddr type local meta l4proto { tcp, udp } '
        "dnat ip to ip saddr . meta l4proto . th dport map @dnat_ports" in lines
    )
    assert 'iifname { "eth0" } fib daddr type local dnat ip to ip saddr map @dnat_all' in lines
    assert 'oifname { "eth0" } ip saddr @internal_nets snat ip to 203.0.113.2' in lines
    assert "packets 5 bytes 600" in lines
    assert "packets 1 bytes 2" in lines
    assert '10.77.0.128/25 : "acct_lab_servers_in",' in lines
    assert 'iifname { "eth1" } tcp dport { 22, 53 } accept' in lines
    assert 'iifname { "eth1" } udp dport { 53, 123 } accept' in lines
    assert 'iifname { "eth0" } udp dport { 53, 60000-60010 } accept' in lines
    assert (
        "icmp type echo-request update @icmp_echo_sources "
        "{ ip saddr limit rate over 60/minute burst 10 packets } counter name drop_icmp_limit drop"
    ) in lines
    assert 'counter name drop_in log group 7 prefix "in: " drop' in lines
    assert "timeout 10m" in lines
    assert any(line.endswith("tcp dport { 80, 443, 8000-8100 } redirect to :12345") for line in lines)
    assert 'iifname { "eth1" } ct status dnat tcp dport 12345 accept' in lines
    assert "counter name ip daddr map @acct_in_map" in text
    assert_nft_ok(text)


def test_ansible_templar_renders_the_same_text() -> None:
    """The role renders with the template module; plain Jinja in these tests must agree with it."""
    for config in ({}, FULL_CONFIG):
        data = nat_router_rules(config, make_facts(), "router")
        assert render_ansible(data) == render_jinja(data)


def test_template_has_no_logic_beyond_loops_and_conditionals() -> None:
    source = TEMPLATE.read_text()
    filters = set(re.findall(r"\|\s*(\w+)", source))
    assert filters <= {"join", "length"}, filters
    assert "nat_router_rules" in source
    assert "{% set r = nat_router_rules %}" in source


@pytest.mark.parametrize(
    "config",
    [
        {"masquerade": False},
        {"external_interfaces": ["eth0", "ppp*"], "internal_interfaces": ["eth1", "eth2"]},
        {"dnat": [{"port": "ALL", "target": "10.77.0.10"}]},
        {
            "dnat": [
                {"port": 22, "target": "10.77.0.10"},
                {"port": "ALL", "source": "198.18.0.0/24", "target": "10.77.0.11"},
            ]
        },
        {"accounting_networks": ["0.0.0.0/0"]},
        {"accounting_networks": ["10.77.0.0/24"], "accounting_exclude": []},
        {"router_access_from_internal": []},
        {"noisy_udp_ports": [], "spoof_martians": []},
        {"socks_redirect": {"enabled": True}},
        {"inbound_services": ["ipsec", "wireguard", "openvpn", "bgp", "1-65535/udp"]},
    ],
)
def test_edge_configs_pass_nft(config: dict, assert_nft_ok: Callable[[str], None]) -> None:
    facts = make_facts(
        {"lo": "127.0.0.1/8", "eth0": "203.0.113.2/24", "eth1": "10.77.0.2/24", "eth2": "10.78.0.1/24"}
    )
    assert_nft_ok(render(config, facts))


def test_nft_rejects_what_the_filter_must_prevent(assert_nft_ok: Callable[[str], None]) -> None:
    """Guards the reason for the overlap checks: the kernel refuses overlapping interval map elements."""
    from conftest import nft_check  # noqa: PLC0415

    data = nat_router_rules({"dnat": [{"port": 80, "target": "10.77.0.10"}]}, make_facts(), "router")
    data["dnat"]["ports"].append(dict(data["dnat"]["ports"][0], source="10.0.0.0/8", target="10.77.0.11"))
    assert nft_check(render_jinja(data)).returncode != 0


# ---------------------------------------------------------------------------------------- properties


@st.composite
def valid_configs(draw: st.DrawFn) -> tuple[dict, dict]:
    """A random but valid inventory and the facts of a two-interface router."""
    blocks = draw(st.lists(st.integers(0, 255 * 256), min_size=1, max_size=3, unique=True))
    prefixes = [draw(st.integers(16, 28)) for _ in blocks]
    internal = [
        netaddr.IPNetwork((int(netaddr.IPAddress("10.0.0.0")) + block * 256, 24)).supernet(p)[0]
        if p < 24
        else netaddr.IPNetwork((int(netaddr.IPAddress("10.0.0.0")) + block * 256, p))
        for block, p in zip(blocks, prefixes, strict=True)
    ]
    internal = netaddr.cidr_merge(internal)
    first = internal[0]
    facts = make_facts(
        {"lo": "127.0.0.1/8", "eth0": "203.0.113.2/24", "eth1": f"{first[1]}/{first.prefixlen}"}
    )

    def host(net: netaddr.IPNetwork) -> str:
        return str(netaddr.IPAddress(draw(st.integers(net.first, net.last))))

    sources = ["0.0.0.0/0", "198.51.100.0/24", "198.51.101.0/25", "198.18.0.0/24", "203.0.113.128/25"]
    keys = draw(
        st.lists(
            st.tuples(st.sampled_from(["tcp", "udp"]), st.integers(1, 65535), st.sampled_from(sources[1:])),
            max_size=12,
            unique=True,
        )
    )
    if draw(st.booleans()):
        keys.append(("tcp", 1, sources[0]) if not any(k[:2] == ("tcp", 1) for k in keys) else keys[0])
        keys = list(dict.fromkeys(keys))
    dnat: list[dict[str, object]] = []
    for proto, port, source in keys:
        entry: dict[str, object] = {"proto": proto, "port": port, "source": source}
        entry["target"] = host(draw(st.sampled_from(internal)))
        if draw(st.booleans()):
            entry["target_port"] = draw(st.integers(1, 65535))
        dnat.append(entry)
    all_sources = draw(
        st.lists(st.sampled_from(["100.64.0.0/24", "100.64.1.0/24", "100.64.2.0/23"]), unique=True)
    )
    dnat += [
        {"port": "ALL", "source": s, "target": host(draw(st.sampled_from(internal)))} for s in all_sources
    ]
    dnat = draw(st.permutations(dnat))

    acct_blocks = draw(st.lists(st.integers(0, 4095), max_size=8, unique=True))
    accounting: list[object] = []
    for i, block in enumerate(acct_blocks):
        network = str(
            netaddr.IPNetwork((int(netaddr.IPAddress("172.16.0.0")) + block * 256, draw(st.integers(24, 32))))
        )
        accounting.append({"network": network, "name": f"net {i}"} if draw(st.booleans()) else network)

    service = st.one_of(
        st.sampled_from(sorted(nat_router.SERVICES)),
        st.integers(1, 65535),
        st.tuples(st.integers(1, 65535), st.sampled_from(["tcp", "udp"])).map(lambda t: f"{t[0]}/{t[1]}"),
        st.tuples(st.integers(1, 30000), st.integers(0, 30000)).map(lambda t: f"{t[0]}-{t[0] + t[1]}/udp"),
    )
    config = {
        "internal_networks": [str(n) for n in internal],
        "dnat": dnat,
        "accounting_networks": accounting,
        "accounting_exclude": draw(
            st.lists(st.sampled_from(["172.16.0.0/28", "8.8.8.8", "198.18.0.0/24"]), unique=True)
        ),
        "inbound_services": draw(st.lists(service, max_size=6)),
        "router_access_from_internal": draw(st.one_of(st.just("all"), st.lists(service, max_size=4))),
        "socks_redirect": {
            "enabled": draw(st.booleans()),
            "ports": draw(st.lists(st.integers(1, 65535), min_size=1)),
        },
        "masquerade": draw(st.booleans()),
    }
    if draw(st.booleans()):
        config["snat_address"] = "203.0.113.2"
    return config, facts


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=valid_configs())
def test_random_valid_inventories_pass_nft(case: tuple[dict, dict]) -> None:
    config, facts = case
    data = nat_router_rules(config, facts, "router")
    assert len(data["dnat"]["ports"]) + len(data["dnat"]["all"]) == len(config["dnat"])
    check_nft_ok(render_jinja(data))
