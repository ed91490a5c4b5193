"""ulogd filters, in detail: every error line exactly as a user reads it, boundaries, and output details.

Each bad configuration below pins the complete list of error lines (variable, entry, the value shown and
the message), so that a wrong entry, a missing value or a changed message shows up as a test failure.
"""

# ruff: noqa: E501 - the expected error lines are pinned whole, one per line

from __future__ import annotations

import base64

import pytest
from ansible.errors import AnsibleFilterError

from nattrail.intent.ulogd import (
    log_collector_settings,
    pgsql_scram_matches,
    pgsql_scram_verifier,
    ulogd_config,
)

BASE: dict[str, object] = {
    "packet_stacks": [{"group": 1, "file": "packets.json"}],
    "plugin_dir": "/usr/lib/ulogd",
    "json_device": "router",
}
PGSQL: dict[str, object] = {"pgsql_enabled": True, "pgsql_host": "203.0.113.10", "pgsql_password_set": True}


def c(*parts: dict, **overrides: object) -> dict[str, object]:
    """BASE with these parts and overrides."""
    merged = dict(BASE)
    for part in parts:
        merged.update(part)
    return {**merged, **overrides}


ULOGD_CASES: dict[str, object] = {
    "not_a_mapping": ["x"],
    "flag": c(pgsql_enabled="yes"),
    "text": c(log_dir=5),
    "nflog_not_mapping": c(packet_stacks=[{"group": 1, "nflog": ["bind"]}]),
    "plugin_options": c(
        packet_stacks=[
            {
                "group": 1,
                "nflog": {1: 1, "group": 2, "bind": 2**31, "bufsiz": 1, "unbind": "x"},
                "json": {"device": 5, "timestamp": True, "boolean_label": "\n"},
            }
        ]
    ),
    "files": c(
        packet_stacks=[
            {"group": 1, "file": 5},
            {"group": 2, "file": "/var/log/"},
            {"group": 3, "file": "/var/./x"},
            {"group": 4, "file": "/var/log/.."},
            {"group": 5, "file": "."},
            {"group": 6, "file": ".."},
            {"group": 7, "file": "x" * 220},
        ]
    ),
    "stacks": c(
        packet_stacks=[
            1,
            {"group": 65536, "prefix": 1},
            {"group": None},
            {"group": 2, "pgsql": "yes"},
            {"group": 2},
        ]
    ),
    "packet_stacks_none": c(packet_stacks=5),
    "flow": c(flow_stack={"enabled": "yes", "pgsql": "no", "file": "packets.json"}),
    "flow_keys": c(flow_stack={"enabled": True, "rate": 1, "file": 7}),
    "log_dir_fallback": c(log_dir="var/log", flow_stack={"enabled": True, "file": "packets.json"}),
    "no_stack": c(packet_stacks=[]),
    "pgsql_host_empty": c(PGSQL, pgsql_host=""),
    "pgsql_host_bad": c(PGSQL, pgsql_host="bad host!", pgsql_db="Logs", pgsql_user="u;x"),
    "pgsql_password": c(PGSQL, pgsql_password_set=False),
    "tls": c(PGSQL, pgsql_sslmode="verify-full", pgsql_sslkey="client.key"),
    "sslmode": c(PGSQL, pgsql_sslmode="on"),
    "conninfo_not_mapping": c(PGSQL, pgsql_conninfo=["x"]),
    "conninfo": c(PGSQL, pgsql_conninfo={1: "x", "password": "p", "sslmod": "x", "keepalives": True}),
    "connstring_long": c(PGSQL, pgsql_conninfo={"options": "-c x=" + "y" * 200}),
    "buffer": c(PGSQL, pgsql_backlog_memcap=-1, pgsql_ring_buffer_size=100),
    "ring_and_memcap": c(PGSQL, pgsql_backlog_memcap=10, pgsql_ring_buffer_size=100),
    "oneshot": c(PGSQL, pgsql_backlog_oneshot_requests=2),
    "prefixes": c(PGSQL, log_prefixes={1: "x" * 33, "a": "y" * 40, "b": 5}),
    "repr_long": c(json_device="x" * 300),
}
COLL: dict[str, object] = {
    "clients": ["203.0.113.2/32"],
    "listen_addresses": ["203.0.113.10"],
    "db": "ulogd",
    "user": "ulogd",
    "password": "twelve-chars-at-least",
}
COLLECTOR_CASES: dict[str, object] = {
    "not_a_mapping": ["x"],
    "clients_missing": {k: v for k, v in COLL.items() if k != "clients"},
    "clients": {**COLL, "clients": [5, "0.0.0.0/0", "10.0.0.1/24", "nonsense"]},
    "listen_missing": {k: v for k, v in COLL.items() if k != "listen_addresses"},
    "listen": {**COLL, "listen_addresses": ["collector", "x"]},
    "names": {**COLL, "db": "public", "user": 5},
    "password_missing": {k: v for k, v in COLL.items() if k != "password"},
    "password_short": {**COLL, "password": "x" * 12},
}

ULOGD_ERRORS = {
    "not_a_mapping": [
        "variable ulogd_*, entry value (['x']): the filter expects a mapping of the role's variables",
        "variable ulogd_plugin_dir, entry value (''): expected an absolute path",
        "variable ulogd_packet_stacks, entry value (None): no stack at all: list at least one NFLOG group or enable ulogd_flow_stack",
    ],
    "flag": ["variable ulogd_pgsql_enabled, entry value ('yes'): expected true or false"],
    "text": ["variable ulogd_log_dir, entry value (5): expected a string"],
    "nflog_not_mapping": [
        "variable ulogd_packet_stacks, entry 0.nflog (['bind']): expected a mapping of NFLOG plugin options"
    ],
    "plugin_options": [
        "variable ulogd_packet_stacks, entry 0.nflog.1 (1): unknown NFLOG plugin option 1; ulogd 2.0.8 knows ['attach_conntrack', 'bind', 'bufsize', 'netlink_qthreshold', 'netlink_qtimeout', 'netlink_socket_buffer_maxsize', 'netlink_socket_buffer_size', 'numeric_label', 'seq_global', 'seq_local', 'unbind']",
        "variable ulogd_packet_stacks, entry 0.nflog.bind (2147483648): NFLOG option bind takes an integer in 0..2147483647",
        "variable ulogd_packet_stacks, entry 0.nflog.bufsiz (1): unknown NFLOG plugin option 'bufsiz'; ulogd 2.0.8 knows ['attach_conntrack', 'bind', 'bufsize', 'netlink_qthreshold', 'netlink_qtimeout', 'netlink_socket_buffer_maxsize', 'netlink_socket_buffer_size', 'numeric_label', 'seq_global', 'seq_local', 'unbind']",
        "variable ulogd_packet_stacks, entry 0.nflog.group (2): NFLOG option group is set by the role from the entry's group",
        "variable ulogd_packet_stacks, entry 0.nflog.unbind ('x'): NFLOG option unbind takes an integer in 0..2147483647",
        "variable ulogd_packet_stacks, entry 0.json.boolean_label ('\\n'): JSON option boolean_label takes an integer in 0..2147483647",
        "variable ulogd_packet_stacks, entry 0.json.device (5): JSON option device must be a string",
        "variable ulogd_packet_stacks, entry 0.json.timestamp (True): JSON option timestamp takes an integer in 0..2147483647",
    ],
    "files": [
        "variable ulogd_packet_stacks, entry 0.file (5): expected a file name such as packets.json, or an absolute path",
        "variable ulogd_packet_stacks, entry 1.file ('/var/log/'): expected a normalised absolute path to a file",
        "variable ulogd_packet_stacks, entry 2.file ('/var/./x'): expected a normalised absolute path to a file",
        "variable ulogd_packet_stacks, entry 3.file ('/var/log/..'): expected a normalised absolute path to a file",
        "variable ulogd_packet_stacks, entry 4.file ('.'): expected a file name",
        "variable ulogd_packet_stacks, entry 5.file ('..'): expected a file name",
        "variable ulogd_packet_stacks, entry 6.file ('xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...): the path is 234 characters long; ulogd reads at most 224",
        "variable ulogd_packet_stacks, entry value ([{'group': 1, 'file': 5}, {'group': 2, 'file': '/var/log/'}, {'group': 3, 'file': '/var/./x'}, {'group': 4, 'file': '/var/log/..'}, {'group': 5, 'file': '.'}, {'group': 6, 'file': '..'}, {'group': ...): no stack at all: list at least one NFLOG group or enable ulogd_flow_stack",
    ],
    "stacks": [
        "variable ulogd_packet_stacks, entry 0 (1): expected a mapping {group, file, pgsql, nflog, json}",
        "variable ulogd_packet_stacks, entry 1 ({'group': 65536, 'prefix': 1}): unknown keys ['prefix']; allowed are ['group', 'file', 'pgsql', 'nflog', 'json']",
        "variable ulogd_packet_stacks, entry 1.group (65536): expected an NFLOG group number 0..65535",
        "variable ulogd_packet_stacks, entry 2.group (None): expected an NFLOG group number 0..65535",
        "variable ulogd_packet_stacks, entry 3.pgsql ('yes'): expected true or false",
        "variable ulogd_packet_stacks, entry 4.group (2): NFLOG group 2 is already read by entry 3; the kernel lets one process bind a group, so each group may appear once",
    ],
    "packet_stacks_none": [
        "variable ulogd_packet_stacks, entry value (5): expected a list of {group, file, pgsql, nflog, json}",
        "variable ulogd_packet_stacks, entry value (5): no stack at all: list at least one NFLOG group or enable ulogd_flow_stack",
    ],
    "flow": [
        "variable ulogd_flow_stack, entry enabled ('yes'): expected true or false",
        "variable ulogd_flow_stack, entry pgsql ('no'): expected true or false",
    ],
    "flow_keys": [
        "variable ulogd_flow_stack, entry value ({'enabled': True, 'rate': 1, 'file': 7}): unknown keys ['rate']; allowed are ['enabled', 'file', 'pgsql', 'nfct', 'json']",
        "variable ulogd_flow_stack, entry file (7): expected a file name such as packets.json, or an absolute path",
    ],
    "log_dir_fallback": [
        "variable ulogd_log_dir, entry value ('var/log'): expected an absolute path",
        "variable ulogd_flow_stack, entry file ('packets.json'): /var/log/ulog/packets.json is already written by a packet stack",
    ],
    "no_stack": [
        "variable ulogd_packet_stacks, entry value ([]): no stack at all: list at least one NFLOG group or enable ulogd_flow_stack"
    ],
    "pgsql_host_empty": [
        "variable ulogd_pgsql_host, entry value (''): PostgreSQL output is enabled: name the collector"
    ],
    "pgsql_host_bad": [
        "variable ulogd_pgsql_host, entry value ('bad host!'): expected a host name or an IP address",
        "variable ulogd_pgsql_db, entry value ('Logs'): expected a lower-case SQL name (letters, digits, _)",
        "variable ulogd_pgsql_user, entry value ('u;x'): expected a lower-case SQL name (letters, digits, _)",
    ],
    "pgsql_password": [
        "variable ulogd_pgsql_password, entry value ('(hidden)'): PostgreSQL output is enabled: set the password (from a vault on real sites) or a client certificate (ulogd_pgsql_sslcert)"
    ],
    "tls": [
        "variable ulogd_pgsql_sslkey, entry value ('client.key'): expected an absolute path on the router",
        "variable ulogd_pgsql_sslrootcert, entry value (''): sslmode verify-full checks the server's certificate: name the CA file it is checked against",
    ],
    "sslmode": [
        "variable ulogd_pgsql_sslmode, entry value ('on'): expected one of ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']"
    ],
    "conninfo_not_mapping": [
        "variable ulogd_pgsql_conninfo, entry value (['x']): expected a mapping of libpq keywords"
    ],
    "conninfo": [
        "variable ulogd_pgsql_conninfo, entry 1 ('x'): unknown libpq keyword 1; allowed are ['application_name', 'channel_binding', 'client_encoding', 'gssencmode', 'gsslib', 'keepalives', 'keepalives_count', 'keepalives_idle', 'keepalives_interval', 'krbsrvname', 'options', 'passfile', 'requirepeer', 'ssl_max_protocol_version', 'ssl_min_protocol_version', 'sslcompression', 'sslcrl', 'sslcrldir', 'sslsni', 'target_session_attrs', 'tcp_user_timeout']",
        "variable ulogd_pgsql_conninfo, entry keepalives (True): expected a string or an integer",
        "variable ulogd_pgsql_conninfo, entry password ('p'): password is set by the role from ulogd_pgsql_password",
        "variable ulogd_pgsql_conninfo, entry sslmod ('x'): unknown libpq keyword 'sslmod'; allowed are ['application_name', 'channel_binding', 'client_encoding', 'gssencmode', 'gsslib', 'keepalives', 'keepalives_count', 'keepalives_idle', 'keepalives_interval', 'krbsrvname', 'options', 'passfile', 'requirepeer', 'ssl_max_protocol_version', 'ssl_min_protocol_version', 'sslcompression', 'sslcrl', 'sslcrldir', 'sslsni', 'target_session_attrs', 'tcp_user_timeout']",
    ],
    "connstring_long": [
        "variable ulogd_pgsql_conninfo, entry connstring (\"host=203.0.113.10 port=5432 dbname=ulogd user=ulogd sslmode=prefer connect_timeout=10 options='-c x=yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy...): the connection string built from the ulogd_pgsql_* variables is 301 characters long; ulogd reads at most 224",
        "variable ulogd_*, entry pgsql1 ('connstring'): the line is longer than ulogd's 254",
    ],
    "buffer": [
        "variable ulogd_pgsql_backlog_memcap, entry value (-1): expected an integer in 0..2147483647",
        "variable ulogd_pgsql_ring_buffer_size, entry value (100): the ring buffer and the backlog (ulogd_pgsql_backlog_memcap: 16777216) exclude each other (ulogd would silently drop the backlog); set ulogd_pgsql_backlog_memcap to 0 or null for the ring buffer, or ulogd_pgsql_ring_buffer_size to 0 for the backlog",
    ],
    "ring_and_memcap": [
        "variable ulogd_pgsql_ring_buffer_size, entry value (100): the ring buffer and the backlog (ulogd_pgsql_backlog_memcap: 10) exclude each other (ulogd would silently drop the backlog); set ulogd_pgsql_backlog_memcap to 0 or null for the ring buffer, or ulogd_pgsql_ring_buffer_size to 0 for the backlog"
    ],
    "oneshot": [
        "variable ulogd_pgsql_backlog_oneshot_requests, entry value (2): must be at least 3 (ulogd needs more than 2 requests per event to ever empty its backlog)"
    ],
    "prefixes": [
        "variable 1, entry value ('xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'): is 33 characters; with PostgreSQL output on, log prefixes must fit Debian's schema (oob_prefix varchar(32)), or every insert fails",
        "variable a, entry value ('yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy'): is 40 characters; with PostgreSQL output on, log prefixes must fit Debian's schema (oob_prefix varchar(32)), or every insert fails",
    ],
    "repr_long": [
        "variable ulogd_json_device, entry value ('xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...): is 300 characters long; ulogd reads at most 224"
    ],
}
COLLECTOR_ERRORS = {
    "clients_missing": [
        "variable log_collector_clients, entry value ([]): expected a non-empty list of the routers' addresses or networks (CIDR) that may connect"
    ],
    "clients": [
        "variable log_collector_clients, entry 0 (5): expected an address or a network in CIDR notation",
        "variable log_collector_clients, entry 1 ('0.0.0.0/0'): the whole address space is not a list of routers",
        "variable log_collector_clients, entry 2 ('10.0.0.1/24'): 10.0.0.1/24 has host bits set",
        "variable log_collector_clients, entry 3 ('nonsense'): 'nonsense' does not appear to be an IPv4 or IPv6 network",
    ],
    "listen_missing": [
        "variable log_collector_listen_addresses, entry value ([]): expected a non-empty list of addresses"
    ],
    "listen": [
        "variable log_collector_listen_addresses, entry 0 ('collector'): expected an IP address of this host",
        "variable log_collector_listen_addresses, entry 1 ('x'): expected an IP address of this host",
    ],
    "names": [
        "variable log_collector_db, entry value ('public'): expected a lower-case SQL name (letters, digits, _)",
        "variable log_collector_user, entry value (5): expected a lower-case SQL name (letters, digits, _)",
    ],
    "password_missing": [
        "variable log_collector_password, entry value ('(hidden)'): set the database password (from a vault on real sites, see docs/ulogd.md)"
    ],
}


def errors_of(function: object, cfg: object, host: object) -> list[str]:
    with pytest.raises(AnsibleFilterError) as info:
        function(cfg, host)  # type: ignore[operator]
    return str(info.value.message).splitlines()


@pytest.mark.parametrize("name", sorted(ULOGD_ERRORS))
def test_ulogd_error_lines_are_exact(name: str) -> None:
    expected = [f"ulogd: host router: {line}" for line in ULOGD_ERRORS[name]]
    assert errors_of(ulogd_config, ULOGD_CASES[name], "router") == expected


@pytest.mark.parametrize("name", sorted(COLLECTOR_ERRORS))
def test_collector_error_lines_are_exact(name: str) -> None:
    expected = [f"log_collector: host server: {line}" for line in COLLECTOR_ERRORS[name]]
    assert errors_of(log_collector_settings, COLLECTOR_CASES[name], "server") == expected


def test_collector_configuration_that_is_not_a_mapping_is_an_error() -> None:
    lines = errors_of(log_collector_settings, ["x"], "server")
    assert lines[0] == (
        "log_collector: host server: variable log_collector_*, entry value (['x']): "
        "the filter expects a mapping of the role's variables"
    )
    assert len(lines) == 4, "clients, listen_addresses and password are then missing too"


@pytest.mark.parametrize(
    ("function", "role"), [(ulogd_config, "ulogd"), (log_collector_settings, "log_collector")]
)
@pytest.mark.parametrize("host", [None, ""])
def test_error_without_a_host_name_says_so(function: object, role: str, host: object) -> None:
    assert errors_of(function, {}, host)[0].startswith(f"{role}: host ?: variable ")


@pytest.mark.parametrize(("length", "shown"), [(198, "'" + "y" * 198 + "'"), (199, "'" + "y" * 196 + "...")])
def test_long_values_are_shortened_to_200_characters(length: int, shown: str) -> None:
    lines = errors_of(ulogd_config, c(log_dir="y" * length), "router")
    assert lines == [
        f"ulogd: host router: variable ulogd_log_dir, entry value ({shown}): expected an absolute path"
    ]


# ------------------------------------------------------------------------------------ boundaries


def test_largest_accepted_values() -> None:
    result = ulogd_config(
        c(
            PGSQL,
            loglevel=8,
            json_device="d" * 224,
            pgsql_port=65535,
            pgsql_ring_buffer_size=10,
            pgsql_backlog_oneshot_requests=0,
            packet_stacks=[{"group": 65535, "nflog": {"bind": 2**31 - 1}}],
        ),
        None,
    )
    assert result["loglevel"] == 8
    assert result["packet_groups"] == [65535]
    assert (
        dict(next(s["options"] for s in result["sections"] if s["id"] == "nflog65535"))["bind"]
        == "2147483647"
    )
    assert result["pgsql"]["port"] == 65535 and result["pgsql"]["mode"] == "ring"


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", 'a"b', "d" * 225])
def test_device_ulogd_could_not_read_is_refused(bad: str) -> None:
    (line,) = errors_of(ulogd_config, c(json_device=bad), "router")
    assert line.startswith("ulogd: host router: variable ulogd_json_device, entry value (")


def test_backlog_of_three_requests_per_event_is_enough() -> None:
    result = ulogd_config(c(PGSQL, pgsql_backlog_oneshot_requests=3), "router")
    assert (
        dict(next(s["options"] for s in result["sections"] if s["id"] == "pgsql1"))[
            "backlog_oneshot_requests"
        ]
        == "3"
    )


def test_empty_backlog_memcap_means_the_default_backlog() -> None:
    result = ulogd_config(c(PGSQL, pgsql_backlog_memcap=""), "router")
    assert result["pgsql"]["mode"] == "backlog"


# ------------------------------------------------------------------------------------ output details


def test_json_section_lists_each_option_once_in_order() -> None:
    result = ulogd_config(c(packet_stacks=[{"group": 1, "json": {"sync": 0, "device": "gw"}}]), "router")
    options = next(s["options"] for s in result["sections"] if s["id"] == "json1")
    assert options == [("file", '"/var/log/ulog/packets-1.json"'), ("device", '"gw"'), ("sync", "0")]


def test_json_section_without_a_device_name_has_no_device() -> None:
    result = ulogd_config(c(json_device=""), "router")
    options = next(s["options"] for s in result["sections"] if s["id"] == "json1")
    assert options == [("file", '"/var/log/ulog/packets.json"'), ("sync", "1")]


def test_directories_with_a_trailing_slash_give_clean_paths() -> None:
    result = ulogd_config(c(log_dir="/srv/log/", plugin_dir="/usr/lib/ulogd/"), "router")
    assert result["files"] == ["/srv/log/packets.json"]
    assert result["log_dir"] == "/srv/log/"
    assert result["plugins"][0] == "/usr/lib/ulogd/ulogd_inppkt_NFLOG.so"
    assert result["packets"] == [{"group": 1, "file": "/srv/log/packets.json", "pgsql": False}]


def test_flow_stack_alone_without_packet_stacks_variable() -> None:
    cfg = c(flow_stack={"enabled": True})
    del cfg["packet_stacks"]
    result = ulogd_config(cfg, "router")
    assert result["packets"] == [] and result["flow"]["enabled"] is True


@pytest.mark.parametrize(
    ("packet_pgsql", "flow_pgsql", "enabled"),
    [(True, False, True), (False, True, True), (False, False, False)],
)
def test_pgsql_is_enabled_when_any_stack_writes_to_it(
    packet_pgsql: bool, flow_pgsql: bool, enabled: bool
) -> None:
    cfg = c(
        PGSQL,
        packet_stacks=[{"group": 1, "pgsql": packet_pgsql}],
        flow_stack={"enabled": True, "pgsql": flow_pgsql},
    )
    assert ulogd_config(cfg, "router")["pgsql"]["enabled"] is enabled


@pytest.mark.parametrize("host", ["2001:db8::10", "collector.example.net", "DB1"])
def test_collector_named_by_ipv6_address_or_host_name(host: str) -> None:
    result = ulogd_config(c(PGSQL, pgsql_host=host), "router")
    assert result["pgsql"]["host"] == host


def test_connection_string_keeps_upper_case_values_unquoted_and_integers() -> None:
    result = ulogd_config(c(PGSQL, pgsql_conninfo={"application_name": "ULOGD", "keepalives": 1}), "router")
    options = dict(next(s["options"] for s in result["sections"] if s["id"] == "pgsql1"))
    assert options["connstring"].endswith(' connect_timeout=10 application_name=ULOGD keepalives=1"')


def test_verify_ca_with_root_certificate_is_accepted() -> None:
    result = ulogd_config(c(PGSQL, pgsql_sslmode="verify-ca", pgsql_sslrootcert="/etc/ssl/ca.pem"), "router")
    options = dict(next(s["options"] for s in result["sections"] if s["id"] == "pgsql1"))
    assert "sslmode=verify-ca sslrootcert=/etc/ssl/ca.pem" in options["connstring"]


# ---------------------------------------------------------------------------------- log_collector


def test_collector_defaults_and_a_twelve_character_password() -> None:
    result = log_collector_settings(
        {"clients": [" 203.0.113.0/24 "], "listen_addresses": [" 203.0.113.10 "], "password": "x" * 12},
        "server",
    )
    assert result == {
        "clients": ["203.0.113.0/24"],
        "listen_addresses": ["203.0.113.10"],
        "db": "ulogd",
        "user": "ulogd",
    }


def test_collector_password_of_eleven_characters_is_too_short() -> None:
    lines = errors_of(log_collector_settings, {**COLL, "password": "x" * 11}, "server")
    assert lines == [
        "log_collector: host server: variable log_collector_password, entry value ('(hidden)'): use at least 12 characters"
    ]


def test_collector_password_outside_printable_ascii_is_refused() -> None:
    lines = errors_of(log_collector_settings, {**COLL, "password": "twelve-chars\tat-least"}, "server")
    assert lines == [
        "log_collector: host server: variable log_collector_password, entry value ('(hidden)'): use printable ASCII characters only"
    ]


# ------------------------------------------------------------------------------------------- SCRAM


def test_verifier_with_data_after_the_padding_does_not_match() -> None:
    good = pgsql_scram_verifier("twelve-chars-at-least", iterations=16)
    assert good.startswith("SCRAM-SHA-256$16:")
    assert pgsql_scram_matches(good, "twelve-chars-at-least")
    head, keys = good.rsplit("$", 1)
    stored, server = keys.split(":")
    method, salt = head.split(":")
    for bad in (
        f"{method}:{salt}QQ==${stored}:{server}",
        f"{head}${stored}QQ==:{server}",
        f"{head}${stored}:{server}QQ==",
        f"{head}$QQ=:{server}",
    ):
        assert not pgsql_scram_matches(bad, "twelve-chars-at-least"), bad


def test_verifier_needs_both_keys_to_match() -> None:
    good = pgsql_scram_verifier("twelve-chars-at-least", iterations=16)
    head, keys = good.rsplit("$", 1)
    stored, server = keys.split(":")
    other = base64.b64encode(bytes(32)).decode()
    assert not pgsql_scram_matches(f"{head}${stored}:{other}", "twelve-chars-at-least")
    assert not pgsql_scram_matches(f"{head}${other}:{server}", "twelve-chars-at-least")
    assert not pgsql_scram_matches(good, None)


def test_device_with_a_double_quote_is_refused_with_the_reason() -> None:
    lines = errors_of(ulogd_config, c(json_device='gw "a"'), "router")
    assert lines == [
        "ulogd: host router: variable ulogd_json_device, entry value ('gw \"a\"'): must not contain double quotes or line breaks (ulogd's config has no escapes)"
    ]


def test_flow_stack_that_is_not_a_mapping_is_named() -> None:
    lines = errors_of(ulogd_config, c(flow_stack=["enabled"]), "router")
    assert lines == [
        "ulogd: host router: variable ulogd_flow_stack, entry value (['enabled']): expected a mapping {enabled, file, pgsql, nfct, json}"
    ]


def test_absolute_file_ending_in_a_dot_is_refused() -> None:
    lines = errors_of(ulogd_config, c(packet_stacks=[{"group": 1, "file": "/var/log/."}]), "router")
    assert lines[0] == (
        "ulogd: host router: variable ulogd_packet_stacks, entry 0.file ('/var/log/.'): expected a normalised absolute path to a file"
    )


def test_directory_names_keep_their_last_letter() -> None:
    result = ulogd_config(c(log_dir="/srv/X", plugin_dir="/opt/X"), "router")
    assert result["files"] == ["/srv/X/packets.json"]
    assert result["plugins"][0] == "/opt/X/ulogd_inppkt_NFLOG.so"


def test_flow_stacks_write_their_file_and_name_their_destination() -> None:
    result = ulogd_config(
        c(PGSQL, packet_stacks=[], flow_stack={"enabled": True, "file": "/srv/flows.json"}), "router"
    )
    assert [s["name"] for s in result["stacks"]] == [
        "finished flows to /srv/flows.json",
        "finished flows to PostgreSQL",
    ]
    jsonflow = next(s["options"] for s in result["sections"] if s["id"] == "jsonflow")
    assert jsonflow == [("file", '"/srv/flows.json"'), ("sync", "1"), ("device", '"router"')]


@pytest.mark.parametrize(("name_length", "too_long"), [(138, False), (139, True)])
def test_line_longer_than_ulogd_reads_is_named(name_length: int, too_long: bool) -> None:
    """connstring="..." is 254 characters with a 138-character application name, 255 with 139."""
    cfg = c(PGSQL, pgsql_conninfo={"application_name": "a" * name_length})
    lines = errors_of(ulogd_config, cfg, "router")
    assert lines[0].startswith("ulogd: host router: variable ulogd_pgsql_conninfo, entry connstring (")
    line_error = "ulogd: host router: variable ulogd_*, entry pgsql1 ('connstring'): the line is longer than ulogd's 254"
    assert (line_error in lines) is too_long
    assert len(lines) == 1 + too_long
