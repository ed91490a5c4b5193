"""ulogd and log_collector templates: what ulogd, systemd, logrotate and PostgreSQL will read.

ulogd2 is not installed on the controller, so its config parser's rules (Debian's 2.0.8, src/conffile.c)
are applied here: sections looked up by name, 254-character lines, no escapes in quoted strings, a key at
most once per section, mandatory keys present.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from pathlib import Path

import jinja2
import pytest
import yaml
from ansible.errors import AnsibleFilterError

from nattrail.intent import ulogd
from nattrail.intent.ulogd import ulogd_config

REPO = Path(__file__).resolve().parents[2]
ULOGD = REPO / "roles" / "ulogd"
COLLECTOR = REPO / "roles" / "log_collector"
SCHEMA = COLLECTOR / "files" / "pgsql-ulogd2.sql"
# sha256 of /usr/share/doc/ulogd2/pgsql-ulogd2.sql.gz, uncompressed, in Debian 12's ulogd2 2.0.8-1.
DEBIAN_SCHEMA_SHA256 = "aa97f04f6a6e09657259bccf2fa2bf631b32d2a087019d7ec5e97106ae266792"

PGSQL = {"pgsql_enabled": True, "pgsql_host": "203.0.113.10", "pgsql_password_set": True}
FULL = {
    "packet_stacks": [
        {"group": 1, "file": "packets.json", "nflog": {"netlink_socket_buffer_size": 1048576}},
        {"group": 5, "file": "/srv/ulog/probes.json", "pgsql": False, "json": {"eventv1": 1}},
    ],
    "flow_stack": {"enabled": True, "nfct": {"accept_proto_filter": "tcp,udp"}},
    "plugin_dir": "/usr/lib/x86_64-linux-gnu/ulogd",
    "json_device": "router",
    **PGSQL,
    "pgsql_ring_buffer_size": 2000,
    "pgsql_options": {"reconnect": 5},
}
# Every option each plugin's keyset holds (ulogd 2.0.8), managed or not, and the mandatory ones.
KEYSETS = {
    "NFLOG": set(ulogd.NFLOG.options) | {"group"},
    "NFCT": set(ulogd.NFCT.options),
    "JSON": set(ulogd.JSON.options) | {"file", "mode", "host", "port"},
    "PGSQL": set(ulogd.PGSQL.options) | set(ulogd.PGSQL.managed),
}
MANDATORY = {"PGSQL": {"db", "user", "table", "procedure"}}


def jinja_env() -> jinja2.Environment:
    """Like the template module: trim_blocks on, lstrip_blocks off, undefined is an error."""
    env = jinja2.Environment(
        trim_blocks=True,
        lstrip_blocks=False,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - configuration files, not HTML
    )
    env.filters["dirname"] = posixpath.dirname  # Ansible's filter of that name
    return env


def render(template: Path, **variables: object) -> str:
    return jinja_env().from_string(template.read_text()).render(**variables)


def render_ansible(template: Path, **variables: object) -> str:
    """Through ansible-core's Templar with the template action's overrides."""
    from ansible.parsing.dataloader import DataLoader  # noqa: PLC0415
    from ansible.template import Templar, trust_as_template  # noqa: PLC0415

    templar = Templar(loader=DataLoader(), variables=variables)
    return templar.template(
        trust_as_template(template.read_text()),
        escape_backslashes=False,
        overrides={"trim_blocks": True, "lstrip_blocks": False},
    )


def parse_ulogd_conf(text: str) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
    """[global] lines and the sections, read the way ulogd's conffile.c reads them."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    global_lines = []
    for number, line in enumerate(text.splitlines(), 1):
        assert len(line) + 1 <= 254, f"line {number} is longer than ulogd reads: {line!r}"
        if not line or line.startswith("#"):
            continue
        if match := re.fullmatch(r"\[([^\]\s]+)\]", line):
            current = match.group(1)
            assert current not in sections, f"section {current} twice"
            if current != "global":
                sections[current] = []
            continue
        key, _, value = line.partition("=")
        assert key and value and " " not in key, f"line {number} is not key=value: {line!r}"
        if value.startswith('"'):
            assert value.endswith('"') and '"' not in value[1:-1], f"bad quoting on line {number}: {line!r}"
            assert len(value) - 2 < 225, f"string value too long on line {number}"
        else:
            assert re.fullmatch(r"\d+", value) or key == "stack", f"unquoted non-number on line {number}"
        if current is None:
            pytest.fail(f"line {number} outside any section: {line!r}")
        elif current == "global":
            global_lines.append(line)
        else:
            sections[current].append((key, value))
    return global_lines, sections


def check_ulogd_conf(text: str) -> dict[str, list[tuple[str, str]]]:
    """Every stack's instances have their section with known, single, mandatory keys; plugins are loaded."""
    global_lines, sections = parse_ulogd_conf(text)
    plugins = {line.split("=", 1)[1].strip('"').rsplit("_", 1)[1].removesuffix(".so")
               for line in global_lines if line.startswith("plugin=")}  # fmt: skip
    stacks = [line.split("=", 1)[1] for line in global_lines if line.startswith("stack=")]
    assert stacks, "no stack"
    kinds: dict[str, str] = {}
    for stack in stacks:
        for element in stack.split(","):
            ident, plugin = element.split(":")
            assert len(ident) < 31, f"instance name {ident} too long"
            assert kinds.setdefault(ident, plugin) == plugin, f"{ident} names two plugins"
            assert plugin in plugins, f"{plugin} is used but not loaded"
            if plugin in KEYSETS:
                assert ident in sections, f"ulogd would not start: no section [{ident}] for {plugin}"
    for ident, options in sections.items():
        keys = [k for k, _ in options]
        assert len(keys) == len(set(keys)), f"[{ident}] repeats a key: {keys}"
        plugin = kinds[ident]
        unknown = set(keys) - KEYSETS[plugin]
        assert not unknown, f"[{ident}] ({plugin}) has keys ulogd ignores: {unknown}"
        missing = MANDATORY.get(plugin, set()) - set(keys)
        assert not missing, f"[{ident}] ({plugin}) lacks mandatory {missing}"
    return sections


# --------------------------------------------------------------------------------------- ulogd.conf


@pytest.mark.parametrize(
    "cfg",
    [
        {"packet_stacks": [{"group": 1}], "plugin_dir": "/usr/lib/x86_64-linux-gnu/ulogd"},
        {**FULL},
        {**FULL, "pgsql_ring_buffer_size": 0, "pgsql_backlog_memcap": 1 << 20},
        {**FULL, "pgsql_enabled": False},
    ],
    ids=["default", "ring", "backlog", "json-only"],
)
def test_rendered_configuration_is_one_ulogd_reads(cfg: dict) -> None:
    conf = ulogd_config(cfg, "router")
    text = render(ULOGD / "templates" / "ulogd.conf.j2", ulogd_conf=conf)
    assert text == render_ansible(ULOGD / "templates" / "ulogd.conf.j2", ulogd_conf=conf)
    assert text.startswith("# Managed by Ansible (nattrail ulogd)")
    global_lines, _ = parse_ulogd_conf(text)
    assert global_lines[:2] == ['logfile="stdout"', "loglevel=5"]
    check_ulogd_conf(text)


def test_full_configuration_renders_each_stack() -> None:
    text = render(ULOGD / "templates" / "ulogd.conf.j2", ulogd_conf=ulogd_config(FULL, "router"))
    sections = check_ulogd_conf(text)
    assert "stack=nflog5:NFLOG,base5:BASE,ifi5:IFINDEX,ip2str5:IP2STR,hwhdr5:HWHDR,json5:JSON" in text
    assert "pgsql5" not in sections, "the second group stays out of PostgreSQL"
    assert dict(sections["nflog1"]) == {"group": "1", "netlink_socket_buffer_size": "1048576"}
    assert dict(sections["json5"])["file"] == '"/srv/ulog/probes.json"'
    assert dict(sections["json5"])["eventv1"] == "1"
    pgsql = dict(sections["pgsql1"])
    assert pgsql["ring_buffer_size"] == "2000" and pgsql["reconnect"] == "5"
    assert "backlog_memcap" not in pgsql
    assert dict(sections["pgsqlflow"])["procedure"] == '"INSERT_CT"'
    assert dict(sections["nfct"]) == {"accept_proto_filter": '"tcp,udp"'}


def test_the_check_itself_catches_what_ulogd_would_reject() -> None:
    good = render(ULOGD / "templates" / "ulogd.conf.j2", ulogd_conf=ulogd_config(FULL, "router"))
    for broken, why in [
        (good.replace("[nflog1]", "[nflog9]"), "no section"),
        (good.replace("group=1\n", "group=1\ngroup=2\n"), "repeats"),
        (good.replace("group=1\n", "grup=1\n"), "ignores"),
        (good.replace('table="ulog"\n', ""), "mandatory"),
    ]:
        with pytest.raises(AssertionError, match=why):
            check_ulogd_conf(broken)


# ------------------------------------------------------------------------- defaults, zero configuration


def role_input(**inventory: object) -> dict:
    """The role's ulogd_config_input as Ansible resolves it from defaults, vars and the inventory."""
    from ansible.parsing.dataloader import DataLoader  # noqa: PLC0415
    from ansible.template import Templar, trust_as_template  # noqa: PLC0415

    loader = DataLoader()
    variables: dict[str, object] = {}
    for path in (ULOGD / "defaults" / "main.yml", ULOGD / "vars" / "main.yml"):
        variables.update(loader.load_from_file(str(path), trusted_as_template=True))
    variables.update(inventory)
    variables.update({"inventory_hostname": "gw", "ansible_facts": {"architecture": "x86_64"}})
    templar = Templar(loader=loader, variables=variables)
    return templar.template(trust_as_template("{{ ulogd_config_input }}"))


def test_zero_configuration_reads_nat_router_default_group() -> None:
    conf = ulogd_config(role_input(), "gw")
    assert conf["packet_groups"] == [1]
    assert conf["files"] == ["/var/log/ulog/packets.json"]
    assert conf["plugins"][0] == "/usr/lib/x86_64-linux-gnu/ulogd/ulogd_inppkt_NFLOG.so"
    assert conf["pgsql"] == {"enabled": False}
    assert conf["flow"] == {"enabled": False}
    json1 = dict(next(s for s in conf["sections"] if s["id"] == "json1")["options"])
    assert json1["device"] == '"gw"'


def test_packet_stack_follows_nat_router_log_group() -> None:
    conf = ulogd_config(role_input(nat_router_log_group=6), "gw")
    assert conf["packet_groups"] == [6]


def test_role_defaults_feed_the_prefix_check_from_nat_router() -> None:
    cfg = role_input(
        nat_router_log_prefix_input="a-prefix-well-over-thirty-two-characters: ",
        ulogd_pgsql_enabled=True,
        ulogd_pgsql_host="203.0.113.10",
        ulogd_pgsql_password="lab-password-1",  # noqa: S106 - test data
    )
    with pytest.raises(AnsibleFilterError, match="nat_router_log_prefix_input"):
        ulogd_config(cfg, "gw")


def test_argument_specs_name_every_default() -> None:
    defaults = yaml.safe_load((ULOGD / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ULOGD / "meta" / "argument_specs.yml").read_text())
    assert set(specs["argument_specs"]["main"]["options"]) == set(defaults)
    defaults = yaml.safe_load((COLLECTOR / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((COLLECTOR / "meta" / "argument_specs.yml").read_text())
    assert set(specs["argument_specs"]["main"]["options"]) == set(defaults)


# ---------------------------------------------------------------------------- systemd and logrotate


def unit_vars(cfg: dict) -> dict[str, object]:
    return {
        "ulogd_conf": ulogd_config(cfg, "router"),
        "ulogd_config_path": "/etc/ulogd.conf",
        "ulogd_pgpass_path": "/etc/ulogd.pgpass",
        "ulogd_user": "ulog",
        "ulogd_restart_sec": 5,
        "ulogd_service": "ulogd2",
    }


def unit_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_drop_in_runs_ulogd_unprivileged_with_one_capability() -> None:
    text = render(ULOGD / "templates" / "ulogd-nattrail.conf.j2", **unit_vars(FULL))
    lines = unit_lines(text)
    for expected in [
        "Type=simple",
        "PIDFile=",
        "ExecStart=",
        "ExecStart=/usr/sbin/ulogd --configfile /etc/ulogd.conf",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "StartLimitIntervalSec=0",
        "User=ulog",
        "Environment=TZ=UTC",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/log/ulog /srv/ulog",
        "Environment=PGPASSFILE=/etc/ulogd.pgpass",
        "After=network-online.target",
    ]:
        assert expected in lines, f"{expected!r} missing from the drop-in"
    # ExecStart= must reset Debian's forking command line before the new one.
    assert lines.index("ExecStart=") + 1 == lines.index(
        "ExecStart=/usr/sbin/ulogd --configfile /etc/ulogd.conf"
    )
    assert not any("--uid" in line or "--daemon" in line for line in lines)


def test_drop_in_without_postgresql_has_no_password_file() -> None:
    lines = unit_lines(
        render(
            ULOGD / "templates" / "ulogd-nattrail.conf.j2", **unit_vars({**FULL, **{"pgsql_enabled": False}})
        )
    )
    assert not any("PGPASSFILE" in line or "network-online" in line for line in lines)


def test_logrotate_renames_and_signals_never_truncates() -> None:
    variables = {
        **unit_vars(FULL),
        "ulogd_logrotate_frequency": "daily",
        "ulogd_logrotate_maxsize": "100M",
        "ulogd_logrotate_rotate": 14,
    }
    text = render(ULOGD / "templates" / "logrotate.j2", **variables)
    assert text == render_ansible(ULOGD / "templates" / "logrotate.j2", **variables)
    body = unit_lines(text)
    assert body[:3] == ["/var/log/ulog/packets.json", "/srv/ulog/probes.json", "/var/log/ulog/flows.json"]
    assert "copytruncate" not in text, "truncating would lose the lines written meanwhile"
    for expected in ["create 0640 ulog adm", "delaycompress", "sharedscripts", "maxsize 100M", "rotate 14"]:
        assert f"    {expected}" in body
    assert "            systemctl reload ulogd2.service" in body


# ------------------------------------------------------------------------------------ log_collector


def collector_vars(**extra: object) -> dict[str, object]:
    return {
        "log_collector_conf": {
            "clients": ["203.0.113.2/32", "198.51.100.0/24"],
            "listen_addresses": ["203.0.113.10"],
            "db": "ulogd",
            "user": "ulogd",
        },
        "log_collector_require_tls": False,
        "log_collector_port": 5432,
        "log_collector_ssl_cert_file": "/etc/ssl/certs/ssl-cert-snakeoil.pem",
        "log_collector_ssl_key_file": "/etc/ssl/private/ssl-cert-snakeoil.key",
        "log_collector_db": "ulogd",
        "log_collector_user": "ulogd",
        **extra,
    }


def test_pg_hba_lets_only_the_routers_in_as_ulogd() -> None:
    text = render(COLLECTOR / "templates" / "pg_hba.conf.j2", **collector_vars())
    rules = [line.split() for line in unit_lines(text)]
    assert rules == [
        ["local", "all", "postgres", "peer"],
        ["host", "ulogd", "ulogd", "203.0.113.2/32", "scram-sha-256"],
        ["host", "ulogd", "ulogd", "198.51.100.0/24", "scram-sha-256"],
    ]
    tls = render(COLLECTOR / "templates" / "pg_hba.conf.j2", **collector_vars(log_collector_require_tls=True))
    assert [line.split()[0] for line in unit_lines(tls)] == ["local", "hostssl", "hostssl"]


def test_server_listens_on_localhost_and_the_collector_address() -> None:
    text = render(COLLECTOR / "templates" / "nattrail.conf.j2", **collector_vars())
    assert "listen_addresses = 'localhost,203.0.113.10'" in text
    assert "password_encryption = 'scram-sha-256'" in text


def schema_objects() -> dict[str, set[str]]:
    sql = SCHEMA.read_text().lower()
    return {
        "table": set(re.findall(r"create table (\w+)", sql)),
        "sequence": set(re.findall(r"create sequence (\w+)", sql)),
        "function": set(re.findall(r"create or replace function (\w+)", sql)),
    }


def grants(sql: str) -> dict[str, set[str]]:
    """Objects each kind of GRANT ... TO names, from the rendered grants script."""
    found: dict[str, set[str]] = {"table": set(), "sequence": set(), "function": set(), "other": set()}
    body = " ".join(line for line in sql.lower().splitlines() if not line.startswith("--"))
    for statement in (s.strip() for s in body.split(";")):
        match = re.fullmatch(
            r"grant (.+?) on (database |schema |sequence |function )?(.+?) to ulogd", statement
        )
        if not match:
            continue
        kind = (match.group(2) or "table ").strip()
        kind = kind if kind in found else "other"
        found[kind] |= {name.strip() for name in match.group(3).split(",")}
    return found


def test_grants_name_only_what_the_schema_creates_and_nothing_destructive() -> None:
    sql = render(COLLECTOR / "templates" / "grants.sql.j2", **collector_vars())
    objects, granted = schema_objects(), grants(sql)
    assert granted["table"] and granted["table"] <= objects["table"]
    assert granted["sequence"] and granted["sequence"] <= objects["sequence"]
    assert granted["function"] <= objects["function"]
    assert {"insert_packet_full", "insert_ct"} <= granted["function"]
    assert not granted["function"] & {
        "delete_packet",
        "delete_ct_flow",
        "compress_tables",
        "ulog2_drop_foreign_keys",
    }
    assert granted["other"] == {"ulogd", "public"}, "CONNECT on the database, USAGE on the schema"
    lowered = sql.lower()
    assert not re.search(r"grant [^;]*\b(delete|truncate|create|references|trigger|all)\b", lowered)
    assert "grant select (_id), update (mac_id) on ulog2 to ulogd" in lowered


def test_shipped_schema_is_debians_unchanged() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == DEBIAN_SCHEMA_SHA256


def test_packet_procedure_takes_one_argument_per_column_of_the_view_ulogd_reads() -> None:
    """ulogd's PGSQL output reads the columns of table "ulog" (a view) and passes one value per column,
    _id excepted, to INSERT_PACKET_FULL in that order."""
    sql = SCHEMA.read_text()
    view = re.search(r"CREATE OR REPLACE VIEW ulog AS\s+SELECT (.*?)\s+FROM ulog2 LEFT JOIN", sql, re.S)
    columns = [c.strip() for c in view.group(1).split(",")]  # type: ignore[union-attr]
    procedure = re.search(r"FUNCTION INSERT_PACKET_FULL\((.*?)\)\s*RETURNS", sql, re.S)
    arguments = re.findall(r"IN (\w+)", procedure.group(1))  # type: ignore[union-attr]
    assert columns[0] == "_id"
    assert len(columns) - 1 == len(arguments) == 59
    flow_columns = re.search(r"CREATE TABLE ulog2_ct \((.*?)\) WITH", sql, re.S)
    names = [line.split()[0] for line in flow_columns.group(1).strip().splitlines()]  # type: ignore[union-attr]
    flow_procedure = re.search(r"FUNCTION INSERT_CT\((.*?)\)\s*RETURNS", sql, re.S)
    assert names[0] == "_ct_id"
    assert len(names) - 1 == len(re.findall(r"IN (\w+)", flow_procedure.group(1))) == 23  # type: ignore[union-attr]
