"""ulogd filters: stack layout, defaults, every validation error, the collector's settings, SCRAM."""

from __future__ import annotations

import base64
import re

import pytest
from ansible.errors import AnsibleFilterError
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrail.intent import ulogd
from nattrail.intent.ulogd import (
    log_collector_settings,
    pgsql_scram_matches,
    pgsql_scram_verifier,
    ulogd_config,
)

PLUGIN_DIR = "/usr/lib/x86_64-linux-gnu/ulogd"
BASE: dict[str, object] = {
    "packet_stacks": [{"group": 1, "file": "packets.json"}],
    "plugin_dir": PLUGIN_DIR,
    "json_device": "router",
}
PGSQL: dict[str, object] = {
    "pgsql_enabled": True,
    "pgsql_host": "203.0.113.10",
    "pgsql_password_set": True,
}
COLLECTOR: dict[str, object] = {
    "clients": ["203.0.113.2/32"],
    "listen_addresses": ["203.0.113.10"],
    "db": "ulogd",
    "user": "ulogd",
    "password": "twelve-chars-at-least",
}
# Made by PostgreSQL 15 itself: SET password_encryption = 'scram-sha-256';
# CREATE ROLE r PASSWORD 'correct horse battery staple'; SELECT rolpassword FROM pg_authid ...
PG_VERIFIER = (
    "SCRAM-SHA-256$4096:oUqD9WdVmYecLRGfDpglPQ==$IK+6c+Br9kmMjCHTy0yt+w/xokY1+lTJCexpAvGWods="
    ":0Usoo11C2Zkob/ZCDYgjBxJwMxu/G+r+zmvOFK7Z4m0="
)


PS, FS = "ulogd_packet_stacks", "ulogd_flow_stack"
PO, PC = "ulogd_pgsql_options", "ulogd_pgsql_conninfo"


def stack(**entry: object) -> dict[str, object]:
    """A packet_stacks setting of one entry for group 1 with these keys."""
    return {"packet_stacks": [{"group": 1, **entry}]}


def config(*parts: dict, **overrides: object) -> dict[str, object]:
    merged = dict(BASE)
    for part in parts:
        merged.update(part)
    return {**merged, **overrides}


def errors_of(cfg: dict, host: str = "router") -> list[str]:
    with pytest.raises(AnsibleFilterError) as info:
        ulogd_config(cfg, host)
    return str(info.value.message).splitlines()


def assert_error(
    lines: list[str], variable: str, entry: object, *fragments: str, role: str = "ulogd"
) -> None:
    """One line names the role, the host, the variable and the entry, and says what is wrong."""
    head = f"{role}: host router: variable {variable}, entry {entry} ("
    matching = [line for line in lines if line.startswith(head) and all(f in line for f in fragments)]
    assert matching, f"no error {head}... {fragments} in:\n" + "\n".join(lines)


def section(result: dict, ident: str) -> dict[str, str]:
    found = [s for s in result["sections"] if s["id"] == ident]
    assert len(found) == 1, f"section {ident} appears {len(found)} times"
    return dict(found[0]["options"])


# ------------------------------------------------------------------------------------------ registry


# ------------------------------------------------------------------------------------------- stacks


def test_default_packet_stack_reads_the_group_into_json_lines() -> None:
    result = ulogd_config(config(), "router")
    assert [s["line"] for s in result["stacks"]] == [
        "nflog1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,hwhdr1:HWHDR,json1:JSON"
    ]
    assert section(result, "nflog1") == {"group": "1"}
    assert section(result, "json1") == {
        "file": '"/var/log/ulog/packets.json"',
        "sync": "1",
        "device": '"router"',
    }
    assert result["files"] == ["/var/log/ulog/packets.json"]
    assert result["packet_groups"] == [1]
    assert result["flow"] == {"enabled": False}
    assert result["pgsql"] == {"enabled": False}
    assert result["plugins"] == [
        f"{PLUGIN_DIR}/{name}"
        for name in (
            "ulogd_inppkt_NFLOG.so",
            "ulogd_raw2packet_BASE.so",
            "ulogd_filter_IFINDEX.so",
            "ulogd_filter_IP2STR.so",
            "ulogd_filter_HWHDR.so",
            "ulogd_output_JSON.so",
        )
    ]


def test_group_given_as_a_templated_string_is_a_number() -> None:
    result = ulogd_config(config(packet_stacks=[{"group": "7"}]), "router")
    assert result["packet_groups"] == [7]
    assert result["files"] == ["/var/log/ulog/packets-7.json"], "default file name carries the group"


def test_two_groups_give_two_stacks_with_their_own_instances() -> None:
    result = ulogd_config(
        config(packet_stacks=[{"group": 1, "file": "a.json"}, {"group": 2, "file": "/srv/log/b.json"}]),
        "router",
    )
    lines = [s["line"] for s in result["stacks"]]
    assert lines[0].startswith("nflog1:NFLOG,base1:BASE")
    assert lines[1].startswith("nflog2:NFLOG,base2:BASE") and lines[1].endswith("json2:JSON")
    assert result["files"] == ["/var/log/ulog/a.json", "/srv/log/b.json"]
    ids = [s["id"] for s in result["sections"]]
    assert len(ids) == len(set(ids))


def test_plugin_options_are_rendered_by_type() -> None:
    result = ulogd_config(
        config(
            packet_stacks=[
                {
                    "group": 3,
                    "nflog": {"netlink_qthreshold": 1, "netlink_socket_buffer_size": "1048576"},
                    "json": {"device": "gw-hq", "sync": 0, "eventv1": 1},
                }
            ]
        ),
        "router",
    )
    assert section(result, "nflog3") == {
        "group": "3",
        "netlink_qthreshold": "1",
        "netlink_socket_buffer_size": "1048576",
    }
    assert section(result, "json3") == {
        "file": '"/var/log/ulog/packets-3.json"',
        "device": '"gw-hq"',
        "eventv1": "1",
        "sync": "0",
    }


def test_flow_stack_writes_finished_flows() -> None:
    result = ulogd_config(
        config(flow_stack={"enabled": True, "nfct": {"accept_proto_filter": "tcp,udp"}}), "r"
    )
    assert result["stacks"][-1]["line"] == "nfct:NFCT,ip2strflow:IP2STR,jsonflow:JSON"
    assert section(result, "nfct") == {"accept_proto_filter": '"tcp,udp"'}
    assert result["flow"] == {"enabled": True, "file": "/var/log/ulog/flows.json", "pgsql": False}
    assert "/var/log/ulog/flows.json" in result["files"]


def test_flow_stack_alone_is_a_configuration() -> None:
    result = ulogd_config(config(packet_stacks=[], flow_stack={"enabled": True}), "router")
    assert [s["line"] for s in result["stacks"]] == ["nfct:NFCT,ip2strflow:IP2STR,jsonflow:JSON"]
    assert result["packet_groups"] == []


# -------------------------------------------------------------------------------------------- pgsql


def test_pgsql_adds_a_stack_per_json_stack_sharing_the_nflog_instance() -> None:
    result = ulogd_config(config(**PGSQL, flow_stack={"enabled": True}), "router")
    lines = [s["line"] for s in result["stacks"]]
    assert lines == [
        "nflog1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,hwhdr1:HWHDR,json1:JSON",
        "nflog1:NFLOG,base1p:BASE,ifi1p:IFINDEX,ip2str1p:IP2STR,hwhdr1p:HWHDR,pgsql1:PGSQL",
        "nfct:NFCT,ip2strflow:IP2STR,jsonflow:JSON",
        "nfct:NFCT,ip2strflowp:IP2STR,pgsqlflow:PGSQL",
    ]
    packets = section(result, "pgsql1")
    assert packets["table"] == '"ulog"' and packets["procedure"] == '"INSERT_PACKET_FULL"'
    flows = section(result, "pgsqlflow")
    assert flows["table"] == '"ulog2_ct"' and flows["procedure"] == '"INSERT_CT"'
    assert packets["db"] == '"ulogd"' and packets["user"] == '"ulogd"', "ulogd requires both"
    assert packets["connstring"] == (
        '"host=203.0.113.10 port=5432 dbname=ulogd user=ulogd sslmode=prefer connect_timeout=10"'
    )
    assert packets["backlog_memcap"] == str(16 * 1024 * 1024)
    assert packets["backlog_oneshot_requests"] == "10"
    assert "ring_buffer_size" not in packets
    assert result["pgsql"] == {
        "enabled": True,
        "host": "203.0.113.10",
        "port": 5432,
        "db": "ulogd",
        "user": "ulogd",
        "mode": "backlog",
    }


def test_the_password_never_reaches_the_configuration() -> None:
    result = ulogd_config(config(PGSQL, pgsql_password="s3cret-password-x"), "router")  # noqa: S106
    assert "s3cret" not in repr(result)
    assert all("pass" not in dict(s["options"]) for s in result["sections"])


def test_stack_can_stay_out_of_postgresql() -> None:
    result = ulogd_config(
        config(**PGSQL, packet_stacks=[{"group": 1, "pgsql": False}, {"group": 2}]),
        "router",
    )
    assert [p["pgsql"] for p in result["packets"]] == [False, True]
    assert not any(s["line"].startswith("nflog1:NFLOG,base1p") for s in result["stacks"])


def test_ring_buffer_replaces_the_default_backlog() -> None:
    result = ulogd_config(config(**PGSQL, pgsql_ring_buffer_size=1000), "router")
    options = section(result, "pgsql1")
    assert options["ring_buffer_size"] == "1000"
    assert "backlog_memcap" not in options and "backlog_oneshot_requests" not in options
    assert result["pgsql"]["mode"] == "ring"


def test_backlog_memcap_zero_without_ring_writes_without_buffer() -> None:
    result = ulogd_config(config(**PGSQL, pgsql_backlog_memcap=0), "router")
    options = section(result, "pgsql1")
    assert not {"ring_buffer_size", "backlog_memcap"} & set(options)
    assert result["pgsql"]["mode"] == "none"


def test_tls_and_extra_libpq_keywords_build_the_connection_string() -> None:
    result = ulogd_config(
        config(
            **PGSQL,
            pgsql_sslmode="verify-full",
            pgsql_sslrootcert="/etc/ssl/certs/collector-ca.pem",
            pgsql_conninfo={"tcp_user_timeout": 10000, "application_name": "ulogd on gw"},
        ),
        "router",
    )
    assert section(result, "pgsql1")["connstring"] == (
        '"host=203.0.113.10 port=5432 dbname=ulogd user=ulogd sslmode=verify-full '
        "sslrootcert=/etc/ssl/certs/collector-ca.pem connect_timeout=10 application_name='ulogd on gw' "
        'tcp_user_timeout=10000"'
    )


def test_libpq_values_are_quoted_and_escaped() -> None:
    assert ulogd._conninfo_value("plain-1.2") == "plain-1.2"
    assert ulogd._conninfo_value("it's a \\ test") == "'it\\'s a \\\\ test'"
    assert ulogd._conninfo_value("") == "''"


# ------------------------------------------------------------------------------------------- errors


def test_unknown_plugin_option_names_the_entry_and_the_known_ones() -> None:
    lines = errors_of(config(packet_stacks=[{"group": 1, "nflog": {"netlink_qthreshhold": 1}}]))
    assert_error(lines, "ulogd_packet_stacks", "0.nflog.netlink_qthreshhold", "unknown NFLOG plugin option")
    assert_error(lines, "ulogd_packet_stacks", "0.nflog.netlink_qthreshhold", "netlink_qthreshold")


@pytest.mark.parametrize(
    ("cfg", "variable", "entry", "fragment"),
    [
        (
            {"flow_stack": {"enabled": True, "nfct": {"pollintervall": 5}}},
            "ulogd_flow_stack",
            "nfct.pollintervall",
            "NFCT",
        ),
        (
            {"flow_stack": {"enabled": True, "json": {"timestmp": 0}}},
            "ulogd_flow_stack",
            "json.timestmp",
            "JSON",
        ),
        ({**PGSQL, "pgsql_options": {"reconect": 5}}, "ulogd_pgsql_options", "value.reconect", "PGSQL"),
        (
            {**PGSQL, "pgsql_conninfo": {"sslmod": "require"}},
            "ulogd_pgsql_conninfo",
            "sslmod",
            "libpq keyword",
        ),
    ],
)
def test_unknown_option_of_each_plugin_is_an_error(
    cfg: dict, variable: str, entry: str, fragment: str
) -> None:
    assert_error(errors_of(config(**cfg)), variable, entry, fragment)


@pytest.mark.parametrize(
    ("cfg", "variable", "entry", "fragment"),
    [
        (stack(nflog={"group": 2}), PS, "0.nflog.group", "entry's group"),
        (stack(json={"file": "/tmp/x"}), PS, "0.json.file", "entry's file"),
        (stack(json={"mode": "udp"}), PS, "0.json.mode", "files"),
        ({**PGSQL, "pgsql_options": {"ring_buffer_size": 5}}, PO, "value.ring_buffer_size", "ring_buffer"),
        ({**PGSQL, "pgsql_options": {"pass": "x"}}, PO, "value.pass", "ulogd_pgsql_password"),
        ({**PGSQL, "pgsql_options": {"connect_timeout": 5}}, PO, "value.connect_timeout", "ignores"),
        ({**PGSQL, "pgsql_conninfo": {"password": "x"}}, PC, "password", "ulogd_pgsql_password"),
        ({**PGSQL, "pgsql_conninfo": {"sslmode": "disable"}}, PC, "sslmode", "ulogd_pgsql_sslmode"),
    ],
)  # fmt: skip
def test_options_the_role_sets_itself_are_refused(
    cfg: dict, variable: str, entry: str, fragment: str
) -> None:
    assert_error(errors_of(config(**cfg)), variable, entry, "set by the role", fragment)


def test_group_used_twice_is_an_error() -> None:
    lines = errors_of(
        config(packet_stacks=[{"group": 1}, {"group": 2}, {"group": "1", "file": "other.json"}])
    )
    assert_error(lines, "ulogd_packet_stacks", "2.group", "NFLOG group 1 is already read by entry 0")
    assert len(lines) == 1


def test_backlog_and_ring_buffer_together_are_an_error() -> None:
    lines = errors_of(config(**PGSQL, pgsql_backlog_memcap=1000000, pgsql_ring_buffer_size=500))
    assert_error(
        lines, "ulogd_pgsql_ring_buffer_size", "value", "exclude each other", "backlog_memcap: 1000000"
    )


def test_backlog_that_could_never_drain_is_an_error() -> None:
    lines = errors_of(config(**PGSQL, pgsql_backlog_oneshot_requests=2))
    assert_error(lines, "ulogd_pgsql_backlog_oneshot_requests", "value", "at least 3")


@pytest.mark.parametrize(
    ("cfg", "variable", "entry", "fragment"),
    [
        ({"packet_stacks": [{"group": 70000}]}, PS, "0.group", "0..65535"),
        ({"packet_stacks": [{"group": True}]}, PS, "0.group", "0..65535"),
        ({"packet_stacks": [{}]}, PS, "0.group", "0..65535"),
        (stack(prefix="x"), PS, 0, "unknown keys ['prefix']"),
        (stack(file="../etc/passwd"), PS, "0.file", "file name"),
        (stack(file="/var/log/../x"), PS, "0.file", "normalised"),
        (stack(pgsql="yes"), PS, "0.pgsql", "true or false"),
        (stack(nflog={"bufsize": -1}), PS, "0.nflog.bufsize", "integer"),
        (stack(nflog={"bufsize": True}), PS, "0.nflog.bufsize", "integer"),
        (stack(json={"device": 'a"b'}), PS, "0.json.device", "double quotes"),
        (stack(nflog=["bind"]), PS, "0.nflog", "mapping"),
        ({"packet_stacks": "1"}, PS, "value", "list"),
        ({"packet_stacks": [1]}, PS, 0, "mapping"),
        ({"packet_stacks": []}, PS, "value", "no stack at all"),
        ({"flow_stack": {"enabled": "true"}}, FS, "enabled", "true or false"),
        ({"flow_stack": {"enabled": True, "rate": 1}}, FS, "value", "unknown keys ['rate']"),
        ({"flow_stack": {"enabled": True, "file": "packets.json"}}, FS, "file", "already written"),
        ({"flow_stack": []}, FS, "value", "mapping"),
        ({"json_device": "x" * 300}, "ulogd_json_device", "value", "at most 224"),
        ({"log_dir": "var/log"}, "ulogd_log_dir", "value", "absolute path"),
        ({"plugin_dir": ""}, "ulogd_plugin_dir", "value", "absolute path"),
        ({"loglevel": 9}, "ulogd_loglevel", "value", "1..8"),
    ],
)
def test_each_bad_value_is_named(cfg: dict, variable: str, entry: object, fragment: str) -> None:
    assert_error(errors_of(config(**cfg)), variable, entry, fragment)


@pytest.mark.parametrize(
    ("cfg", "variable", "fragment"),
    [
        ({"pgsql_host": ""}, "ulogd_pgsql_host", "name the collector"),
        ({"pgsql_host": "bad host!"}, "ulogd_pgsql_host", "host name or an IP address"),
        ({"pgsql_port": 0}, "ulogd_pgsql_port", "1..65535"),
        ({"pgsql_db": "Logs"}, "ulogd_pgsql_db", "lower-case SQL name"),
        ({"pgsql_user": "ulogd;drop"}, "ulogd_pgsql_user", "lower-case SQL name"),
        ({"pgsql_sslmode": "on"}, "ulogd_pgsql_sslmode", "verify-full"),
        ({"pgsql_sslmode": "verify-ca"}, "ulogd_pgsql_sslrootcert", "CA file"),
        ({"pgsql_sslrootcert": "ca.pem"}, "ulogd_pgsql_sslrootcert", "absolute path"),
        ({"pgsql_password_set": False}, "ulogd_pgsql_password", "vault"),
        ({"pgsql_connect_timeout": 0}, "ulogd_pgsql_connect_timeout", "1..3600"),
        ({"pgsql_conninfo": {"options": "-c x=" + "y" * 200}}, "ulogd_pgsql_conninfo", "at most 224"),
        ({"pgsql_conninfo": {"keepalives": True}}, "ulogd_pgsql_conninfo", "string or an integer"),
        ({"pgsql_backlog_memcap": -1}, "ulogd_pgsql_backlog_memcap", "integer"),
        ({"pgsql_enabled": "yes"}, "ulogd_pgsql_enabled", "true or false"),
    ],
)
def test_each_bad_pgsql_value_is_named(cfg: dict, variable: str, fragment: str) -> None:
    lines = errors_of(config(PGSQL, cfg))
    matching = [line for line in lines if f"variable {variable}, " in line and fragment in line]
    assert matching, "\n".join(lines)


def test_password_is_never_shown_in_an_error() -> None:
    lines = errors_of(config(PGSQL, pgsql_password_set=False))
    assert_error(lines, "ulogd_pgsql_password", "value", "(hidden)")


def test_client_certificate_replaces_the_password() -> None:
    result = ulogd_config(
        config(
            PGSQL,
            pgsql_password_set=False,
            pgsql_sslmode="verify-full",
            pgsql_sslrootcert="/etc/ssl/ca.pem",
            pgsql_sslcert="/etc/ulogd/client.crt",
            pgsql_sslkey="/etc/ulogd/client.key",
        ),
        "router",
    )
    assert (
        "sslcert=/etc/ulogd/client.crt sslkey=/etc/ulogd/client.key"
        in section(result, "pgsql1")["connstring"]
    )


def test_log_prefix_longer_than_the_schema_column_is_an_error_with_postgresql_only() -> None:
    prefixes = {"nat_router_log_prefix_forward": "x" * 33, "nat_router_log_prefix_input": "y" * 32}
    lines = errors_of(config(**PGSQL, log_prefixes=prefixes))
    assert_error(lines, "nat_router_log_prefix_forward", "value", "varchar(32)")
    assert not any("nat_router_log_prefix_input" in line for line in lines)
    ulogd_config(config(log_prefixes=prefixes), "router")  # JSON only: any prefix fits


def test_every_problem_is_reported_at_once() -> None:
    lines = errors_of(
        config(
            **PGSQL,
            packet_stacks=[{"group": 1, "nflog": {"x": 1}}, {"group": 1}],
            pgsql_ring_buffer_size=10,
            pgsql_backlog_memcap=10,
            pgsql_sslmode="bogus",
        )
    )
    assert len(lines) == 4, lines
    assert all(line.startswith("ulogd: host router: variable ulogd_") for line in lines)


def test_configuration_that_is_not_a_mapping_is_an_error() -> None:
    assert_error(errors_of(["not", "a", "mapping"]), "ulogd_*", "value", "mapping")  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(groups=st.lists(st.integers(min_value=0, max_value=65535), min_size=1, max_size=6))
def test_any_list_of_groups_is_accepted_once_each_and_refused_when_repeated(groups: list[int]) -> None:
    cfg = config(packet_stacks=[{"group": g, "file": f"g{i}.json"} for i, g in enumerate(groups)])
    if len(set(groups)) == len(groups):
        result = ulogd_config(cfg, "router")
        assert result["packet_groups"] == groups
        ids = [s["id"] for s in result["sections"]]
        assert len(ids) == len(set(ids)), "every section, hence every plugin instance, has its own name"
        assert all(len(i) < 31 for i in ids), "ulogd's instance names are at most 31 characters"
    else:
        lines = errors_of(cfg)
        assert len(lines) == len(groups) - len(set(groups))
        assert all("is already read by entry" in line for line in lines)


# ---------------------------------------------------------------------------------- log_collector


def test_collector_settings_normalise_addresses_and_networks() -> None:
    result = log_collector_settings({**COLLECTOR, "clients": ["203.0.113.2", "198.51.100.0/24"]}, "server")
    assert result == {
        "clients": ["203.0.113.2/32", "198.51.100.0/24"],
        "listen_addresses": ["203.0.113.10"],
        "db": "ulogd",
        "user": "ulogd",
    }


@pytest.mark.parametrize(
    ("cfg", "variable", "entry", "fragment"),
    [
        ({"clients": []}, "log_collector_clients", "value", "non-empty list"),
        ({"clients": ["0.0.0.0/0"]}, "log_collector_clients", 0, "whole address space"),
        ({"clients": ["10.0.0.1/24"]}, "log_collector_clients", 0, "host bits"),
        ({"clients": [5]}, "log_collector_clients", 0, "CIDR"),
        ({"listen_addresses": []}, "log_collector_listen_addresses", "value", "non-empty"),
        ({"listen_addresses": ["collector"]}, "log_collector_listen_addresses", 0, "IP address"),
        ({"db": "postgres"}, "log_collector_db", "value", "SQL name"),
        ({"user": "Ulogd"}, "log_collector_user", "value", "SQL name"),
        ({"password": ""}, "log_collector_password", "value", "vault"),
        ({"password": "short"}, "log_collector_password", "value", "12 characters"),
        ({"password": "pässwörd-with-umlauts"}, "log_collector_password", "value", "ASCII"),
    ],
)
def test_each_bad_collector_value_is_named(cfg: dict, variable: str, entry: object, fragment: str) -> None:
    with pytest.raises(AnsibleFilterError) as info:
        log_collector_settings({**COLLECTOR, **cfg}, "router")
    assert_error(str(info.value.message).splitlines(), variable, entry, fragment, role="log_collector")


def test_collector_error_never_shows_the_password() -> None:
    with pytest.raises(AnsibleFilterError) as info:
        log_collector_settings({**COLLECTOR, "password": "short-pw"}, "server")
    assert "short-pw" not in str(info.value.message)


# ------------------------------------------------------------------------------------------- SCRAM


def test_verifier_made_by_postgresql_matches_its_password_only() -> None:
    assert pgsql_scram_matches(PG_VERIFIER, "correct horse battery staple")
    assert not pgsql_scram_matches(PG_VERIFIER, "correct horse battery stapler")


def test_own_verifier_has_postgresql_format_and_a_fresh_salt() -> None:
    first = pgsql_scram_verifier("twelve-chars-at-least")
    second = pgsql_scram_verifier("twelve-chars-at-least")
    pattern = r"SCRAM-SHA-256\$4096:([A-Za-z0-9+/=]+)\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}"
    salts = [re.fullmatch(pattern, v).group(1) for v in (first, second)]  # type: ignore[union-attr]
    assert len(base64.b64decode(salts[0])) == 16
    assert salts[0] != salts[1]
    assert pgsql_scram_matches(first, "twelve-chars-at-least")
    assert pgsql_scram_matches(second, "twelve-chars-at-least")


@pytest.mark.parametrize(
    "stored",
    [
        "",
        None,
        "md5c4ca4238a0b923820dcc509a6f75849b",
        "SCRAM-SHA-256$4096:!!$x:y",
        PG_VERIFIER.replace("$4096:", "$4095:"),
    ],
)
def test_anything_else_does_not_match(stored: object) -> None:
    assert not pgsql_scram_matches(stored, "correct horse battery staple")


def test_verifier_refuses_a_weak_password() -> None:
    with pytest.raises(AnsibleFilterError, match="12 characters"):
        pgsql_scram_verifier("short")
