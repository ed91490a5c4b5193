"""The nat_router compiler: inventory intent -> validated nftables rule data.

The template roles/nat_router/templates/ruleset.nft.j2 only prints what ``nat_router_rules`` returns, so
every decision (defaults, interface auto-detection, validation, merging, sorting) lives here, where it can
be unit-tested on the controller without a router. The reference is docs/nat_router.md.

Ansible reaches this module through ``filter_plugins/nattrail.py``, which only puts the repository's
``src/`` on the import path and registers the filters (see docs/architecture.md).

Per-packet cost must not grow with the inventory: DNAT entries and accounting networks become nftables
interval maps (one lookup each), never one rule per entry. Checks on the controller are O(n log n): sort
once, then sweep.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import netaddr

from nattrail.intent.errors import Errors, is_list
from nattrail.intent.services import SERVICES
from nattrail.names import FAMILY, TABLE

PREFIX = "nat_router_"

# Ports dropped silently on external interfaces: chatty LAN protocols that would only flood the log.
DEFAULT_NOISY_UDP_PORTS: tuple[int, ...] = (67, 137, 138, 161, 513, 520, 1985)
# TEST-NET and RFC 1918 ranges are absent on purpose: the lab's outside is 203.0.113.0/24 and RFC 1918 is
# spoofing only when it is one of our internal networks (added separately, as is 127.0.0.0/8).
DEFAULT_SPOOF_MARTIANS: tuple[str, ...] = ("0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
ALWAYS_SPOOFED: tuple[str, ...] = ("127.0.0.0/8",)

DEFAULTS: dict[str, object] = {
    "external_interfaces": None,
    "internal_interfaces": None,
    "internal_networks": None,
    "router_access_from_internal": "all",
    "inbound_services": [],
    "icmp_echo_rate": "5/second",
    "icmp_echo_rate_total": "50/second",
    "noisy_udp_ports": list(DEFAULT_NOISY_UDP_PORTS),
    "log_group": 1,
    "log_prefix_input": "nattrail-in-drop: ",
    "log_prefix_forward": "nattrail-fwd-drop: ",
    "log_prefix_spoof": "nattrail-spoof: ",
    "masquerade": True,
    "snat_address": None,
    "dnat": [],
    "accounting_networks": [],
    "accounting_exclude": [],
    "accounting_saved": {},
    "socks_redirect": {},
    "blocklist_timeout": "1h",
    "spoof_martians": list(DEFAULT_SPOOF_MARTIANS),
}

SOCKS_DEFAULTS: dict[str, object] = {
    "enabled": False,
    "ports": [80, 443],
    "exclude": [],
    "listen_port": 12345,
}


PROTOS = ("tcp", "udp")
MAX_LOG_PREFIX = 127  # the kernel's NF_LOG_PREFIXLEN is 128 bytes including the trailing NUL
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_RE = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_CIDR_RE = re.compile(rf"({_IPV4_RE.pattern})(?:/(3[0-2]|[12]?\d))?")
# IFNAMSIZ is 16 including the NUL; a trailing "*" is nftables' wildcard (ppp*), checked only for syntax.
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.:@+-]{1,15}\*?")
_SERVICE_RE = re.compile(r"(?P<port>[a-z][a-z0-9_-]*|\d+|\d+-\d+)(?:/(?P<proto>[a-z]+))?")
_RATE_RE = re.compile(r"(?P<n>\d+)/(?:second|minute|hour|day)(?: burst (?P<burst>\d+) packets)?")
_TIMEOUT_RE = re.compile(r"(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?")
_COUNTER_NAME_RE = re.compile(r"[^a-z0-9_]+")


class _Span(NamedTuple):
    """An inclusive integer interval (addresses or ports) and the entry that produced it."""

    first: int
    last: int
    index: int


class _DnatEntry(NamedTuple):
    index: int
    source: netaddr.IPNetwork
    proto: str | None  # None for "ALL"
    port: int | None  # None for "ALL"
    target: netaddr.IPAddress
    target_port: int | None


# ---------------------------------------------------------------------------------------------- parsing


def _errors(hostname: str) -> Errors:
    return Errors("nat_router", hostname, PREFIX)


def _parse_cidr(value: object) -> netaddr.IPNetwork:
    if not isinstance(value, str) or not _CIDR_RE.fullmatch(value.strip()):
        raise ValueError("expected an IPv4 network in CIDR notation such as 10.77.0.0/24, or an IPv4 address")
    net = netaddr.IPNetwork(value.strip())
    if net.ip != net.network:
        raise ValueError(f"host bits are set; did you mean {net.cidr}?")
    return net.cidr


def _parse_address(value: object) -> netaddr.IPAddress:
    if not isinstance(value, str) or not _IPV4_RE.fullmatch(value.strip()):
        raise ValueError("expected an IPv4 address such as 10.77.0.10")
    return netaddr.IPAddress(value.strip())


def _parse_port(value: object, what: str = "port") -> int:
    # bool is an int subclass; "yes" turned into True by YAML must not become port 1.
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer in 1..65535, got {value!r}")
    if not 1 <= value <= 65535:
        raise ValueError(f"{what} {value} is outside 1..65535")
    return value


_SERVICE_HINT = 'expected a service such as "ssh", "22", "53/udp", "60000-60010/udp" or {port, proto}'


def _service_text(value: object) -> str:
    """Reduce the mapping and integer forms of a service to the string form."""
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in ("port", "proto"))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; a service mapping has keys port and proto")
        if value.get("port") is None:
            raise ValueError("a service mapping needs a port (and optionally proto: tcp or udp)")
        port, proto = value["port"], value.get("proto")
        text = str(port) if isinstance(port, int) and not isinstance(port, bool) else port
        if not isinstance(text, str) or (proto is not None and not isinstance(proto, str)):
            raise ValueError("port must be a number, a range such as 60000-60010 or a service name")
        return f"{text}/{proto}" if proto else text
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(_SERVICE_HINT)
    return value


def _parse_service(value: object, only_proto: str | None = None) -> list[tuple[str, int, int]]:
    """Service syntax -> [(proto, first port, last port)].

    ``only_proto`` is for lists that name ports of one protocol (noisy UDP, redirected TCP): a named service
    then contributes its port numbers whatever protocol the table gives them.
    """
    match = _SERVICE_RE.fullmatch(_service_text(value).strip().lower())
    if not match:
        raise ValueError(_SERVICE_HINT)
    port_text, proto = match["port"], match["proto"]
    if proto is not None and proto not in PROTOS:
        raise ValueError(f"unknown protocol {proto!r}; expected tcp or udp")
    if only_proto is not None and proto not in (None, only_proto):
        raise ValueError(f"only {only_proto} ports are allowed here")
    if port_text[0].isalpha():
        known = SERVICES.get(port_text)
        if known is None:
            raise ValueError(
                f"unknown service name {port_text!r}; use a port number or a name of the IANA registry "
                "(Debian's /etc/services; docs/nat_router.md)"
            )
        wanted = proto or only_proto
        if wanted:
            return sorted({(wanted, port, port) for port, _ in known})
        return [(p, port, port) for port, p in known]
    low_text, _, high_text = port_text.partition("-")
    low, high = _parse_port(int(low_text)), _parse_port(int(high_text or low_text))
    if low > high:
        raise ValueError(f"port range {port_text} is reversed; write {high}-{low}")
    return [(proto or only_proto or "tcp", low, high)]


def _merge_port_spans(spans: Iterable[tuple[str, int, int]]) -> list[dict[str, object]]:
    """Group by protocol and merge touching ranges: nftables rejects overlapping set intervals."""
    result: list[dict[str, object]] = []
    for proto in PROTOS:
        merged: list[list[int]] = []
        for _, low, high in sorted(s for s in spans if s[0] == proto):
            if merged and low <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        if merged:
            ports = [str(low) if low == high else f"{low}-{high}" for low, high in merged]
            result.append({"proto": proto, "ports": ports})
    return result


def _overlaps(spans: Iterable[_Span]) -> list[tuple[_Span, _Span]]:
    """Pairs (earlier-reaching span, later span) that overlap, in O(n log n).

    After sorting by start, a span overlaps an earlier one exactly when it starts before the furthest end
    reached so far, so comparing with that one span finds every overlapping entry.
    """
    found: list[tuple[_Span, _Span]] = []
    reach: _Span | None = None
    for span in sorted(spans, key=lambda s: (s.first, -s.last, s.index)):
        if reach is not None and span.first <= reach.last:
            found.append((reach, span))
        if reach is None or span.last > reach.last:
            reach = span
    return found


def _cidr_strings(networks: Iterable[netaddr.IPNetwork]) -> list[str]:
    return [str(n) for n in netaddr.cidr_merge(list(networks))]


def _range_text(first: int, last: int) -> str:
    if first == last:
        return str(netaddr.IPAddress(first))
    return f"{netaddr.IPAddress(first)}-{netaddr.IPAddress(last)}"


# ------------------------------------------------------------------------------------------------ facts


def _fact(facts: Mapping, key: str) -> object:
    # Accept both ansible_facts (eth0, default_ipv4) and hostvars-style (ansible_eth0, ansible_default_ipv4).
    value = facts.get(key)
    return facts.get(f"ansible_{key}") if value is None else value


def _interface_facts(facts: Mapping, name: str) -> Mapping:
    # Fact names have "-" replaced by "_" (br-lan -> br_lan) while the interfaces list keeps the real name.
    for key in (name, name.replace("-", "_")):
        value = _fact(facts, key)
        if isinstance(value, Mapping):
            return value
    return {}


def _interface_networks(ifacts: Mapping) -> list[netaddr.IPNetwork]:
    records: list[Mapping] = []
    if isinstance(ifacts.get("ipv4"), Mapping):
        records.append(ifacts["ipv4"])
    secondaries = ifacts.get("ipv4_secondaries")
    if is_list(secondaries):
        records.extend(r for r in secondaries if isinstance(r, Mapping))
    networks = []
    for record in records:
        address, netmask = record.get("network") or record.get("address"), record.get("netmask")
        if not address or not netmask:
            continue
        try:
            networks.append(netaddr.IPNetwork(f"{address}/{netmask}").cidr)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            continue  # facts are machine-made; an odd record is not the inventory's fault
    return networks


def _has_ipv4(ifacts: Mapping) -> bool:
    ipv4 = ifacts.get("ipv4")
    return isinstance(ipv4, Mapping) and bool(ipv4.get("address"))


def _facts_hostname(facts: object) -> str:
    if isinstance(facts, Mapping):
        for key in ("hostname", "fqdn", "nodename"):
            value = _fact(facts, key)
            if isinstance(value, str) and value:
                return value
    return "(unknown)"


def _check_interface_list(value: object, var: str, known: set[str], errors: Errors) -> list[str] | None:
    if not is_list(value):
        errors.add(var, "value", value, "expected a list of interface names such as ['eth1']")
        return None
    names: list[str] = []
    for index, name in enumerate(value):
        if not isinstance(name, str) or not _IFNAME_RE.fullmatch(name):
            errors.add(var, index, name, "expected an interface name of at most 15 characters (eth0, ppp*)")
        elif not name.endswith("*") and name not in known:
            errors.add(var, index, name, f"no such interface on this host; it has {sorted(known)}")
        elif name in names:
            errors.add(var, index, name, "interface listed twice")
        else:
            names.append(name)
    if not value:
        errors.add(var, "value", value, "at least one interface is needed")
    return names


def _detect_interfaces(
    facts: object, external: object, internal: object, errors: Errors
) -> tuple[list[str], list[str]]:
    if not isinstance(facts, Mapping):
        errors.add("external_interfaces", "value", None, "no ansible facts given; gather facts first")
        return [], []
    listed = _fact(facts, "interfaces")
    known = {str(n) for n in listed} if is_list(listed) else set()

    if external is None:
        default = _fact(facts, "default_ipv4")
        name = default.get("interface") if isinstance(default, Mapping) else None
        if not name:
            errors.add(
                "external_interfaces",
                "value",
                None,
                "this host has no IPv4 default route to detect the external interface from; "
                "set nat_router_external_interfaces (a list such as ['eth0'])",
            )
            ext: list[str] = []
        else:
            ext = [str(name)]
    else:
        ext = _check_interface_list(external, "external_interfaces", known, errors) or []

    if internal is None:
        excluded = {"lo", *ext}
        candidates = sorted(n for n in known if n not in excluded)
        intl = [n for n in candidates if _has_ipv4(_interface_facts(facts, n))]
        if ext and not intl:
            errors.add(
                "internal_interfaces",
                "value",
                None,
                "no interface with an IPv4 address besides the external and loopback ones; "
                "set nat_router_internal_interfaces",
            )
    else:
        intl = _check_interface_list(internal, "internal_interfaces", known, errors) or []
        both = [n for n in intl if n in ext]
        for name in both:
            errors.add(
                "internal_interfaces", intl.index(name), name, "interface is also an external interface"
            )
        intl = [n for n in intl if n not in both]
    return ext, intl


# ------------------------------------------------------------------------------------------- sections


class _Context:
    """The configuration with defaults applied, plus the error collector."""

    def __init__(self, config: object, errors: Errors) -> None:
        self.errors = errors
        self.config: Mapping = config if isinstance(config, Mapping) else {}
        if config is not None and not isinstance(config, Mapping):
            errors.add("*", "value", config, "the configuration must be a mapping of nat_router_ variables")

    def get(self, key: str) -> object:
        value = self.config.get(key)
        return DEFAULTS[key] if value is None else value

    def given(self, key: str) -> bool:
        return self.config.get(key) is not None

    def list(self, key: str) -> list:
        value = self.get(key)
        if not is_list(value):
            self.errors.add(key, "value", value, "expected a list")
            return []
        return list(value)


def _networks_list(ctx: _Context, key: str) -> list[netaddr.IPNetwork]:
    networks = []
    for index, entry in enumerate(ctx.list(key)):
        try:
            networks.append(_parse_cidr(entry))
        except ValueError as exc:
            ctx.errors.add(key, index, entry, str(exc))
    return networks


def _internal_networks(ctx: _Context, facts: object, internal: list[str]) -> list[netaddr.IPNetwork]:
    if ctx.given("internal_networks"):
        networks = _networks_list(ctx, "internal_networks")
        if ctx.get("internal_networks") == []:
            ctx.errors.add("internal_networks", "value", [], "at least one internal network is needed")
        return netaddr.cidr_merge(networks)
    networks = []
    if isinstance(facts, Mapping):
        for name in internal:
            networks.extend(_interface_networks(_interface_facts(facts, name)))
    if internal and not networks:
        ctx.errors.add(
            "internal_networks",
            "value",
            None,
            f"the internal interfaces {internal} have no IPv4 network to detect; "
            "set nat_router_internal_networks",
        )
    return netaddr.cidr_merge(networks)


def _services(ctx: _Context, key: str, only_proto: str | None = None) -> list[dict[str, object]]:
    spans: list[tuple[str, int, int]] = []
    for index, entry in enumerate(ctx.list(key)):
        try:
            spans.extend(_parse_service(entry, only_proto))
        except ValueError as exc:
            ctx.errors.add(key, index, entry, str(exc))
    return _merge_port_spans(spans)


def _log_settings(ctx: _Context) -> dict[str, object]:
    group = ctx.get("log_group")
    if isinstance(group, str) and group.isdigit():
        group = int(group)
    if isinstance(group, bool) or not isinstance(group, int) or not 0 <= group <= 65535:
        ctx.errors.add("log_group", "value", group, "expected an NFLOG group number in 0..65535")
    prefixes = {}
    for kind in ("input", "forward", "spoof"):
        key = f"log_prefix_{kind}"
        prefix = ctx.get(key)
        if (
            not isinstance(prefix, str)
            or not 1 <= len(prefix) <= MAX_LOG_PREFIX
            or not all(" " <= c <= "~" and c not in '"\\$' for c in prefix)
        ):
            # nft would read $ as a variable and cannot escape a double quote inside a string.
            ctx.errors.add(
                key,
                "value",
                prefix,
                f"expected 1..{MAX_LOG_PREFIX} printable ASCII characters "
                "without double quote, backslash or $",
            )
        prefixes[f"{kind}_prefix"] = prefix
    return {"group": group, **prefixes}


def _router_access(ctx: _Context) -> tuple[bool, list[dict[str, object]]]:
    value = ctx.get("router_access_from_internal")
    if value == "all":
        return True, []
    if not is_list(value):
        ctx.errors.add(
            "router_access_from_internal",
            "value",
            value,
            'expected "all" or a list of services such as [ssh]',
        )
        return False, []
    return False, _services(ctx, "router_access_from_internal")


# Every reason the ruleset drops or rejects a packet, each counted by a named counter of its own.
DROP_COUNTERS: tuple[tuple[str, str], ...] = (
    ("drop_spoof", "spoofed source on an external interface"),
    ("drop_blocklist", "source in the blocklist"),
    ("drop_icmp_limit", "echo request over the rate limit"),
    ("drop_in_invalid", "invalid connection state, to the router"),
    ("drop_ident_reset", "ident (113/tcp) answered with a reset"),
    ("drop_broadcast", "broadcast or multicast to the router"),
    ("drop_noisy_udp", "noisy UDP from outside, not logged"),
    ("drop_in", "to the router, not allowed (logged)"),
    ("drop_fwd_invalid", "invalid connection state, forwarded"),
    ("drop_fwd", "forwarded, not allowed (logged)"),
)


def _icmp_rate(ctx: _Context, key: str) -> str:
    rate = ctx.get(key)
    match = _RATE_RE.fullmatch(rate) if isinstance(rate, str) else None
    if not match or int(match["n"]) == 0 or match["burst"] == "0":
        ctx.errors.add(
            key,
            "value",
            rate,
            'expected a rate such as "5/second" or "60/minute burst 10 packets"',
        )
    return str(rate)


def _blocklist_timeout(ctx: _Context) -> str:
    value = ctx.get("blocklist_timeout")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return f"{value}s"
    if (
        not isinstance(value, str)
        or not value
        or not _TIMEOUT_RE.fullmatch(value)
        or not re.search("[1-9]", value)
    ):
        ctx.errors.add(
            "blocklist_timeout",
            "value",
            value,
            'expected an nftables time such as "1h", "10m", "1d12h" or seconds',
        )
    return str(value)


def _nat_mode(ctx: _Context) -> dict[str, object]:
    masquerade = ctx.get("masquerade")
    if not isinstance(masquerade, bool):
        ctx.errors.add("masquerade", "value", masquerade, "expected true or false")
    if ctx.given("snat_address"):
        value = ctx.get("snat_address")
        try:
            return {"mode": "snat", "snat_address": str(_parse_address(value))}
        except ValueError as exc:
            ctx.errors.add("snat_address", "value", value, str(exc))
    return {"mode": "masquerade" if masquerade is not False else "none", "snat_address": None}


def _spoof_sources(ctx: _Context, internal_networks: list[netaddr.IPNetwork]) -> list[str]:
    martians = _networks_list(ctx, "spoof_martians")
    always = [netaddr.IPNetwork(n) for n in ALWAYS_SPOOFED]
    return _cidr_strings([*martians, *always, *internal_networks])


class _InternalRanges:
    """Membership test in O(log n) against merged, sorted internal networks."""

    def __init__(self, networks: list[netaddr.IPNetwork]) -> None:
        self.firsts = [n.first for n in networks]
        self.lasts = [n.last for n in networks]

    def __contains__(self, address: int) -> bool:
        pos = bisect_right(self.firsts, address) - 1
        return pos >= 0 and address <= self.lasts[pos]


_DNAT_KEYS = ("source", "port", "target", "target_port", "proto", "comment")


def _dnat_ports(entry: Mapping, problems: list[str]) -> tuple[str | None, int | None, int | None]:
    """(proto, port, target_port) of a DNAT entry; all None for port "ALL"."""
    raw_port = entry.get("port")
    if isinstance(raw_port, str) and raw_port.strip().upper() == "ALL":
        if entry.get("target_port") is not None:
            problems.append('target_port is not allowed with port "ALL" (every port keeps its number)')
        if entry.get("proto") is not None:
            problems.append('proto is not allowed with port "ALL" (every protocol is forwarded)')
        return None, None, None
    proto = entry.get("proto") or "tcp"
    if proto not in PROTOS:
        problems.append(f"proto must be tcp or udp, got {proto!r}")
    if raw_port is None:
        problems.append('port is required (a router port in 1..65535, or "ALL")')
        return proto, None, None
    try:
        port = _parse_port(raw_port)
    except ValueError as exc:
        problems.append(str(exc))
        return proto, None, None
    try:
        raw_target_port = entry.get("target_port")
        target_port = _parse_port(port if raw_target_port is None else raw_target_port, "target_port")
    except ValueError as exc:
        problems.append(str(exc))
        return proto, port, None
    return proto, port, target_port


def _dnat_target(entry: Mapping, internal: _InternalRanges, problems: list[str]) -> netaddr.IPAddress | None:
    if entry.get("target") is None:
        problems.append("target is required (an IPv4 address inside the internal networks)")
        return None
    try:
        target = _parse_address(entry["target"])
    except ValueError as exc:
        problems.append(f"target: {exc}")
        return None
    if int(target) not in internal:
        problems.append(f"target {target} is not inside any internal network")
        return None
    return target


def _parse_dnat_entry(
    index: int, entry: object, internal: _InternalRanges, errors: Errors
) -> _DnatEntry | None:
    if not isinstance(entry, Mapping):
        errors.add("dnat", index, entry, "expected a mapping with at least port and target")
        return None
    problems: list[str] = []
    unknown = sorted(str(k) for k in entry if k not in _DNAT_KEYS)
    if unknown:
        problems.append(f"unknown keys {unknown}; allowed are {list(_DNAT_KEYS)}")
    source = None
    try:
        source = _parse_cidr(entry.get("source") or "0.0.0.0/0")
    except ValueError as exc:
        problems.append(f"source: {exc}")
    proto, port, target_port = _dnat_ports(entry, problems)
    target = _dnat_target(entry, internal, problems)
    for problem in problems:
        errors.add("dnat", index, entry, problem)
    if problems or source is None or target is None:
        return None
    return _DnatEntry(index, source, proto, port, target, target_port)


def _dnat(ctx: _Context, internal_networks: list[netaddr.IPNetwork]) -> dict[str, list[dict[str, object]]]:
    errors, raw = ctx.errors, ctx.list("dnat")
    internal = _InternalRanges(internal_networks)
    entries = [e for i, item in enumerate(raw) if (e := _parse_dnat_entry(i, item, internal, errors))]
    by_index = {e.index: e for e in entries}
    ports = [e for e in entries if e.port is not None]
    alls = [e for e in entries if e.port is None]

    def span(entry: _DnatEntry) -> _Span:
        return _Span(entry.source.first, entry.source.last, entry.index)

    # The kernel refuses overlapping elements of an interval map, and overlap would make the target
    # ambiguous anyway, so sources may only overlap when protocol or port differ.
    by_key: dict[tuple[str | None, int | None], list[_Span]] = {}
    for entry in ports:
        by_key.setdefault((entry.proto, entry.port), []).append(span(entry))
    groups = [("", spans) for spans in by_key.values()] + [("ALL ", [span(e) for e in alls])]
    for label, spans in groups:
        for earlier, later in _overlaps(spans):
            first, second = sorted((earlier.index, later.index))
            a, b = by_index[first], by_index[second]
            key = f"({b.proto}, {b.port}, {b.source})" if b.port else f"(ALL, {b.source})"
            what = "duplicate DNAT key" if a.source == b.source else f"source overlaps {a.source} of"
            errors.add(
                "dnat", second, raw[second], f"{label}{what} {key} / entry {first}; keys must be unique"
            )
    # The same source with "ALL" and with a port contradicts itself; a narrower or wider source is fine
    # because the per-port map is looked up first (documented precedence).
    port_sources: dict[netaddr.IPNetwork, _DnatEntry] = {}
    for entry in ports:
        port_sources.setdefault(entry.source, entry)
    for a in alls:
        if (p := port_sources.get(a.source)) is not None:
            later = max(p.index, a.index)
            errors.add(
                "dnat",
                later,
                raw[later],
                f'port "ALL" entry {a.index} and port entry {p.index} ({p.proto}/{p.port}) have the same '
                f"source {a.source}; one source either forwards everything or chosen ports",
            )

    port_rows = [
        {
            "source": str(e.source),
            "proto": e.proto,
            "port": e.port,
            "target": str(e.target),
            "target_port": e.target_port,
        }
        for e in sorted(ports, key=lambda e: (e.proto, e.port, e.source.first, e.source.last))
    ]
    all_rows = [
        {"source": str(e.source), "target": str(e.target)} for e in sorted(alls, key=lambda e: e.source)
    ]
    # Forward acceptance: many DNAT keys may lead to the same target port; their sources are merged so the
    # set holds no overlapping elements (the kernel refuses those too).
    fwd: dict[tuple[str, str, int], list[netaddr.IPNetwork]] = {}
    for e in ports:
        fwd.setdefault((str(e.target), str(e.proto), int(e.target_port or 0)), []).append(e.source)
    fwd_all: dict[str, list[netaddr.IPNetwork]] = {}
    for e in alls:
        fwd_all.setdefault(str(e.target), []).append(e.source)
    fwd_rows = [
        {"target": t, "proto": p, "target_port": tp, "source": s}
        for (t, p, tp), sources in sorted(
            fwd.items(), key=lambda kv: (netaddr.IPAddress(kv[0][0]), kv[0][1:])
        )
        for s in _cidr_strings(sources)
    ]
    fwd_all_rows = [
        {"target": t, "source": s}
        for t, sources in sorted(fwd_all.items(), key=lambda kv: netaddr.IPAddress(kv[0]))
        for s in _cidr_strings(sources)
    ]
    return {"ports": port_rows, "all": all_rows, "ports_forward": fwd_rows, "all_forward": fwd_all_rows}


def _socks(ctx: _Context, internal_networks: list[netaddr.IPNetwork]) -> dict[str, object]:
    raw = ctx.get("socks_redirect")
    if not isinstance(raw, Mapping):
        ctx.errors.add(
            "socks_redirect", "value", raw, "expected a mapping with enabled, ports, exclude, listen_port"
        )
        raw = {}
    unknown = sorted(str(k) for k in raw if k not in SOCKS_DEFAULTS)
    if unknown:
        ctx.errors.add(
            "socks_redirect", "value", raw, f"unknown keys {unknown}; allowed are {list(SOCKS_DEFAULTS)}"
        )
    settings = {k: SOCKS_DEFAULTS[k] if raw.get(k) is None else raw[k] for k in SOCKS_DEFAULTS}
    enabled = settings["enabled"]
    if not isinstance(enabled, bool):
        ctx.errors.add("socks_redirect", "enabled", enabled, "expected true or false")
    tcp_spans: list[tuple[str, int, int]] = []
    exclude: list[netaddr.IPNetwork] = []
    for key, value in (("ports", settings["ports"]), ("exclude", settings["exclude"])):
        if not is_list(value):
            ctx.errors.add("socks_redirect", key, value, "expected a list")
            continue
        for index, item in enumerate(value):
            try:
                if key == "ports":
                    tcp_spans.extend(_parse_service(item, "tcp"))
                else:
                    exclude.append(_parse_cidr(item))
            except ValueError as exc:
                ctx.errors.add("socks_redirect", f"{key}[{index}]", item, str(exc))
    listen_port = settings["listen_port"]
    try:
        listen_port = _parse_port(listen_port, "listen_port")
    except ValueError as exc:
        ctx.errors.add("socks_redirect", "listen_port", listen_port, str(exc))
    if enabled is True and not tcp_spans:
        ctx.errors.add(
            "socks_redirect", "ports", settings["ports"], "redirection is enabled but no port is listed"
        )
    merged = _merge_port_spans(tcp_spans)
    return {
        "enabled": enabled is True,
        "ports": merged[0]["ports"] if merged else [],
        # Never redirect traffic that stays inside: internal networks are always excluded.
        "exclude": _cidr_strings([*exclude, *internal_networks]),
        "listen_port": listen_port,
    }


def _accounting_entry(index: int, entry: object) -> tuple[netaddr.IPNetwork, str]:
    if isinstance(entry, Mapping):
        unknown = sorted(str(k) for k in entry if k not in ("network", "name"))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; allowed are network and name")
        network, name = _parse_cidr(entry.get("network")), entry.get("name", index)
    else:
        network, name = _parse_cidr(entry), index
    if isinstance(name, bool) or not isinstance(name, str | int):
        raise ValueError("name must be a string")
    label = _COUNTER_NAME_RE.sub("_", str(name).lower()).strip("_")
    if not label or len(label) > 64:
        raise ValueError("name must contain 1..64 letters, digits or underscores")
    if label == "other":
        raise ValueError('name "other" is reserved for the catch-all counters')
    return network, label


def _saved_counters(ctx: _Context) -> dict[str, tuple[int, int]]:
    raw = ctx.get("accounting_saved")
    if not isinstance(raw, Mapping):
        ctx.errors.add(
            "accounting_saved", "value", raw, "expected a mapping counter name -> {packets, bytes}"
        )
        return {}
    saved = {}
    for name, values in raw.items():
        numbers = [values.get(k) for k in ("packets", "bytes")] if isinstance(values, Mapping) else []
        if len(numbers) != 2 or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**64 for n in numbers
        ):
            ctx.errors.add("accounting_saved", name, values, "expected {packets: N, bytes: N} with N >= 0")
            continue
        saved[str(name)] = (numbers[0], numbers[1])
    return saved


def _accounting(ctx: _Context) -> dict[str, object]:
    errors, raw = ctx.errors, ctx.list("accounting_networks")
    exclude = _cidr_strings(_networks_list(ctx, "accounting_exclude"))
    saved = _saved_counters(ctx)
    parsed: list[tuple[int, netaddr.IPNetwork, str]] = []
    names: dict[str, int] = {}
    for index, entry in enumerate(raw):
        try:
            network, label = _accounting_entry(index, entry)
        except ValueError as exc:
            errors.add("accounting_networks", index, entry, str(exc))
            continue
        if label in names:
            errors.add(
                "accounting_networks",
                index,
                entry,
                f"counter name {label!r} already used by entry {names[label]}",
            )
            continue
        names[label] = index
        parsed.append((index, network, label))
    # Overlap is an error rather than "most specific wins": every byte lands in exactly one counter and
    # the inventory says plainly which one.
    by_index = {index: network for index, network, _ in parsed}
    for earlier, later in _overlaps(_Span(n.first, n.last, i) for i, n, _ in parsed):
        first, second = sorted((earlier.index, later.index))
        errors.add(
            "accounting_networks",
            second,
            raw[second],
            f"{by_index[second]} overlaps {by_index[first]} of entry {first}; "
            "accounting networks must be disjoint",
        )
    if not parsed:
        _unknown_saved(ctx, saved, set())
        return {"enabled": False, "counters": [], "in_map": [], "out_map": [], "exclude": exclude}

    counters = []
    in_map, out_map = [], []
    cursor = 0
    for _, network, label in sorted(parsed, key=lambda p: p[1].first):
        if network.first > cursor:  # the gap before this network belongs to "other"
            gap = _range_text(cursor, network.first - 1)
            in_map.append({"key": gap, "counter": "acct_other_in"})
            out_map.append({"key": gap, "counter": "acct_other_out"})
        in_map.append({"key": str(network), "counter": f"acct_{label}_in"})
        out_map.append({"key": str(network), "counter": f"acct_{label}_out"})
        cursor = network.last + 1
    if cursor <= 2**32 - 1:
        gap = _range_text(cursor, 2**32 - 1)
        in_map.append({"key": gap, "counter": "acct_other_in"})
        out_map.append({"key": gap, "counter": "acct_other_out"})
    for _, network, label in sorted(parsed, key=lambda p: p[0]):
        counters.extend(_counter(f"acct_{label}_{d}", str(network), saved) for d in ("in", "out"))
    counters.extend(_counter(f"acct_other_{d}", "other", saved) for d in ("in", "out"))
    _unknown_saved(ctx, saved, {str(c["name"]) for c in counters})
    return {"enabled": True, "counters": counters, "in_map": in_map, "out_map": out_map, "exclude": exclude}


def _unknown_saved(ctx: _Context, saved: Mapping[str, tuple[int, int]], names: set[str]) -> None:
    """A start value for a counter the ruleset does not have is a typo, not something to ignore."""
    for name in sorted(set(saved) - names):
        known = ", ".join(sorted(names)) or "none: nat_router_accounting_networks is empty"
        ctx.errors.add(
            "accounting_saved", name, saved[name], f"no accounting counter has this name (counters: {known})"
        )


def _counter(name: str, comment: str, saved: Mapping[str, tuple[int, int]]) -> dict[str, object]:
    packets, octets = saved.get(name, (0, 0))
    return {"name": name, "comment": comment, "packets": packets, "bytes": octets}


# ---------------------------------------------------------------------------------------------- filters


def nat_router_interfaces(
    facts: object, external: object = None, internal: object = None, hostname: object = None
) -> dict[str, list[str]]:
    """External and internal interface names and the internal networks, detected from facts when not given."""
    errors = _errors(str(hostname) if hostname else _facts_hostname(facts))
    ext, intl = _detect_interfaces(facts, external, internal, errors)
    ctx = _Context({}, errors)
    networks = _internal_networks(ctx, facts, intl)
    errors.raise_if_any()
    return {"external": ext, "internal": intl, "internal_networks": [str(n) for n in networks]}


def nat_router_rules(config: object, facts: object, hostname: object = None) -> dict[str, object]:
    """Validated rule data for ruleset.nft.j2 from the nat_router_ variables (prefix stripped) and facts."""
    errors = _errors(str(hostname) if hostname else _facts_hostname(facts))
    ctx = _Context(config, errors)
    ext, intl = _detect_interfaces(
        facts, ctx.config.get("external_interfaces"), ctx.config.get("internal_interfaces"), errors
    )
    internal_networks = _internal_networks(ctx, facts, intl)
    access_all, access_services = _router_access(ctx)
    rules = {
        "family": FAMILY,
        "table": TABLE,
        "hostname": errors.hostname,
        "interfaces": {"external": ext, "internal": intl},
        "internal_networks": [str(n) for n in internal_networks],
        "spoof_sources": _spoof_sources(ctx, internal_networks),
        "blocklist_timeout": _blocklist_timeout(ctx),
        "log": _log_settings(ctx),
        "input": {
            "internal_access_all": access_all,
            "internal_services": access_services,
            "inbound_services": _services(ctx, "inbound_services"),
            "icmp_echo_rate": _icmp_rate(ctx, "icmp_echo_rate"),
            "icmp_echo_rate_total": _icmp_rate(ctx, "icmp_echo_rate_total"),
            "noisy_udp_ports": [p for row in _services(ctx, "noisy_udp_ports", "udp") for p in row["ports"]],
        },
        "nat": _nat_mode(ctx),
        "dnat": _dnat(ctx, internal_networks),
        "socks_redirect": _socks(ctx, internal_networks),
        "accounting": _accounting(ctx),
        "drop_counters": [{"name": name, "comment": comment} for name, comment in DROP_COUNTERS],
    }
    errors.raise_if_any()
    return rules
