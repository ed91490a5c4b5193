"""The ulogd and log_collector compiler: inventory intent -> a validated ulogd2 configuration.

roles/ulogd/templates/ulogd.conf.j2 only prints what ``ulogd_config`` returns, so every decision (stack
layout, plugin instance names, option types, defaults) lives here, where it can be unit-tested on the
controller. ulogd itself silently ignores an option it does not know and, in its PostgreSQL output,
silently prefers the ring buffer when the backlog is set too; checking here turns both into an error that
names the host, the variable and the entry before anything on the router changes. docs/ulogd.md is the
reference.

The option tables below are those of Debian 12's ulogd2 2.0.8 (input/packet/ulogd_inppkt_NFLOG.c,
input/flow/ulogd_inpflow_NFCT.c, output/ulogd_output_JSON.c, output/pgsql/ulogd_output_PGSQL.c and
include/ulogd/db.h).

Ansible reaches this module through ``filter_plugins/nattrail.py`` (see docs/architecture.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from ansible.errors import AnsibleFilterError

from nattrail.intent.errors import Errors, is_list

PREFIX = "ulogd_"
INT = "int"
STR = "str"


class _Plugin(NamedTuple):
    """A ulogd plugin's options a user may set (with their type), and those the role sets itself."""

    name: str
    options: Mapping[str, str]
    managed: Mapping[str, str]


_TO_FILES = "nothing: the role writes JSON lines to files"
NFLOG = _Plugin(
    "NFLOG",
    {
        "bufsize": INT,
        "unbind": INT,
        "bind": INT,
        "seq_local": INT,
        "seq_global": INT,
        "numeric_label": INT,
        "netlink_socket_buffer_size": INT,
        "netlink_socket_buffer_maxsize": INT,
        "netlink_qthreshold": INT,
        "netlink_qtimeout": INT,
        "attach_conntrack": INT,
    },
    {"group": "the entry's group"},
)
NFCT = _Plugin(
    "NFCT",
    {
        "pollinterval": INT,
        "hash_enable": INT,
        "hash_buckets": INT,
        "hash_max_entries": INT,
        "event_mask": INT,
        "netlink_socket_buffer_size": INT,
        "netlink_socket_buffer_maxsize": INT,
        "netlink_resync_timeout": INT,
        "reliable": INT,
        "accept_src_filter": STR,
        "accept_dst_filter": STR,
        "accept_proto_filter": STR,
    },
    {},
)
JSON = _Plugin(
    "JSON",
    {"sync": INT, "timestamp": INT, "eventv1": INT, "device": STR, "boolean_label": INT},
    {"file": "the entry's file", "mode": _TO_FILES, "host": _TO_FILES, "port": _TO_FILES},
)
PGSQL = _Plugin(
    "PGSQL",
    {"reconnect": INT, "schema": STR},
    {
        "host": "ulogd_pgsql_host",
        "port": "ulogd_pgsql_port",
        "db": "ulogd_pgsql_db",
        "user": "ulogd_pgsql_user",
        "pass": "ulogd_pgsql_password (kept out of ulogd.conf, in a libpq password file)",
        "connstring": "ulogd_pgsql_host, _port, _db, _user, _sslmode and ulogd_pgsql_conninfo",
        "table": "nothing: the role pairs each stack with its table",
        "procedure": "nothing: the role pairs each stack with its procedure",
        "backlog_memcap": "ulogd_pgsql_backlog_memcap",
        "backlog_oneshot_requests": "ulogd_pgsql_backlog_oneshot_requests",
        "ring_buffer_size": "ulogd_pgsql_ring_buffer_size",
        "connect_timeout": "ulogd_pgsql_connect_timeout (the PGSQL plugin ignores its own connect_timeout)",
    },
)

# libpq connection keywords (PostgreSQL 15) a site may add; those the role builds itself are refused.
CONNINFO_KEYWORDS = frozenset((
    "application_name", "channel_binding", "client_encoding", "gssencmode", "gsslib", "keepalives",
    "keepalives_count", "keepalives_idle", "keepalives_interval", "krbsrvname", "options", "passfile",
    "requirepeer", "sslcompression", "sslcrl", "sslcrldir", "sslsni", "ssl_max_protocol_version",
    "ssl_min_protocol_version", "target_session_attrs", "tcp_user_timeout",
))  # fmt: skip
CONNINFO_MANAGED = {
    "host": "ulogd_pgsql_host",
    "hostaddr": "ulogd_pgsql_host",
    "port": "ulogd_pgsql_port",
    "dbname": "ulogd_pgsql_db",
    "user": "ulogd_pgsql_user",
    "password": "ulogd_pgsql_password",
    "sslmode": "ulogd_pgsql_sslmode",
    "sslrootcert": "ulogd_pgsql_sslrootcert",
    "sslcert": "ulogd_pgsql_sslcert",
    "sslkey": "ulogd_pgsql_sslkey",
    "connect_timeout": "ulogd_pgsql_connect_timeout",
}
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

# ulogd's config parser: lines of at most 254 characters, string values under 225, no escapes in quotes.
MAX_LINE = 254
MAX_STRING = 224
MAX_INT = 2**31 - 1
# Debian's schema stores the log prefix as varchar(32): a longer one makes every INSERT fail, and in
# backlog mode ulogd would retry that statement forever.
PGSQL_MAX_PREFIX = 32
DEFAULT_BACKLOG_MEMCAP = 16 * 1024 * 1024
# Instance names are ulogd config sections; ULOGD_MAX_KEYLEN is 31 and "global" is taken.
PACKET_FILTERS = (("base", "BASE"), ("ifi", "IFINDEX"), ("ip2str", "IP2STR"), ("hwhdr", "HWHDR"))
PLUGIN_FILES = {
    "NFLOG": "ulogd_inppkt_NFLOG.so",
    "NFCT": "ulogd_inpflow_NFCT.so",
    "BASE": "ulogd_raw2packet_BASE.so",
    "IFINDEX": "ulogd_filter_IFINDEX.so",
    "IP2STR": "ulogd_filter_IP2STR.so",
    "HWHDR": "ulogd_filter_HWHDR.so",
    "JSON": "ulogd_output_JSON.so",
    "PGSQL": "ulogd_output_PGSQL.so",
}
# Debian's pgsql-ulogd2.sql: the view whose columns name the packet procedure's arguments, and the
# flow table whose columns name INSERT_CT's.
PGSQL_PACKET_TABLE = "ulog"
PGSQL_PACKET_PROCEDURE = "INSERT_PACKET_FULL"
PGSQL_FLOW_TABLE = "ulog2_ct"
PGSQL_FLOW_PROCEDURE = "INSERT_CT"

PACKET_STACK_KEYS = ("group", "file", "pgsql", "nflog", "json")
FLOW_STACK_KEYS = ("enabled", "file", "pgsql", "nfct", "json")
_FILE_RE = re.compile(r"[A-Za-z0-9_.+-]+")
_PATH_RE = re.compile(r"/[A-Za-z0-9_./+-]+")
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int(value: object) -> int | None:
    """An integer, also from the digit strings that templated inventory values can become."""
    if isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
        return int(value.strip())
    return value if _is_int(value) else None


def _quoted(value: str) -> str:
    return f'"{value}"'


def _check_string(value: str, limit: int = MAX_STRING) -> str | None:
    """Why ulogd's parser could not read this quoted value, or None."""
    if '"' in value or "\n" in value or "\r" in value:
        return "must not contain double quotes or line breaks (ulogd's config has no escapes)"
    if len(value) > limit:
        return f"is {len(value)} characters long; ulogd reads at most {limit}"
    return None


class _Context:
    def __init__(self, config: object, errors: Errors, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        if not isinstance(config, Mapping):
            errors.add(prefix + "*", "value", config, "the filter expects a mapping of the role's variables")
            config = {}
        self.config = config
        self.errors = errors

    def get(self, key: str, default: object = None) -> object:
        value = self.config.get(key)
        return default if value is None else value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            self.errors.add(self.prefix + key, "value", value, "expected true or false")
            return default
        return value

    def integer(self, key: str, default: int, low: int = 0, high: int = MAX_INT) -> int:
        raw = self.get(key, default)
        value = _as_int(raw)
        if value is None or not low <= value <= high:
            self.errors.add(self.prefix + key, "value", raw, f"expected an integer in {low}..{high}")
            return default
        return value

    def text(self, key: str, default: str = "") -> str:
        value = self.get(key, default)
        if not isinstance(value, str):
            self.errors.add(self.prefix + key, "value", value, "expected a string")
            return default
        return value


# ------------------------------------------------------------------------------------ plugin options


def _plugin_options(
    errors: Errors, var: str, entry: str, raw: object, plugin: _Plugin
) -> list[tuple[str, str]]:
    """Validate free-form plugin options; return them as (key, config text) pairs in a stable order."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        errors.add(var, entry, raw, f"expected a mapping of {plugin.name} plugin options")
        return []
    rendered = []
    for key in sorted(raw, key=str):
        value = raw[key]
        where = f"{entry}.{key}"
        name = plugin.name
        if key in plugin.managed:
            errors.add(
                var, where, value, f"{name} option {key} is set by the role from {plugin.managed[key]}"
            )
            continue
        kind = plugin.options.get(str(key))
        if kind is None:
            known = sorted(plugin.options)
            errors.add(var, where, value, f"unknown {name} plugin option {key!r}; ulogd 2.0.8 knows {known}")
            continue
        if kind == INT:
            number = _as_int(value)
            if number is None or not 0 <= number <= MAX_INT:
                errors.add(var, where, value, f"{name} option {key} takes an integer in 0..{MAX_INT}")
                continue
            rendered.append((str(key), str(number)))
        else:
            problem = "must be a string" if not isinstance(value, str) else _check_string(value)
            if problem:
                errors.add(var, where, value, f"{name} option {key} {problem}")
                continue
            rendered.append((str(key), _quoted(value)))
    return rendered


def _log_file(errors: Errors, var: str, entry: str, raw: object, log_dir: str) -> str | None:
    if not isinstance(raw, str) or not (_FILE_RE.fullmatch(raw) or _PATH_RE.fullmatch(raw)):
        errors.add(var, entry, raw, "expected a file name such as packets.json, or an absolute path")
        return None
    if raw.startswith("/"):
        if "/../" in raw + "/" or "/./" in raw + "/" or raw.endswith("/"):
            errors.add(var, entry, raw, "expected a normalised absolute path to a file")
            return None
        path = raw
    else:
        if raw in (".", ".."):
            errors.add(var, entry, raw, "expected a file name")
            return None
        path = f"{log_dir.rstrip('/')}/{raw}"
    problem = _check_string(path)
    if problem:
        errors.add(var, entry, raw, f"the path {problem}")
        return None
    return path


# ------------------------------------------------------------------------------------------- stacks


@dataclass
class _Build:
    """What the stacks share while the configuration is assembled, and what they produce."""

    ctx: _Context
    log_dir: str
    device: str
    pgsql: dict[str, object] | None
    plugins: list[str] = field(default_factory=list)
    stacks: list[dict[str, object]] = field(default_factory=list)
    sections: list[dict[str, object]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def add(self, name: str, elements: list[tuple[str, str]], sections: dict[str, list]) -> None:
        for _, plugin in elements:
            if plugin not in self.plugins:
                self.plugins.append(plugin)
        line = ",".join(f"{ident}:{plugin}" for ident, plugin in elements)
        self.stacks.append({"name": name, "line": line})
        known = {s["id"] for s in self.sections}
        self.sections.extend({"id": i, "options": o} for i, o in sections.items() if i not in known)

    def json_section(self, path: str, options: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """sync=1 so a line is on disk as soon as the packet is logged; the device names the router."""
        keys = {k for k, _ in options}
        extra = [("file", _quoted(path))]
        if "sync" not in keys:
            extra.append(("sync", "1"))
        if "device" not in keys and self.device:
            extra.append(("device", _quoted(self.device)))
        return [*extra, *options]


def _stack_flag(errors: Errors, var: str, entry: str, value: object) -> bool:
    if not isinstance(value, bool):
        errors.add(var, entry, value, "expected true or false")
        return False
    return value


def _packet_stacks(build: _Build) -> list[dict[str, object]]:
    errors, var = build.ctx.errors, PREFIX + "packet_stacks"
    raw = build.ctx.get("packet_stacks", [])
    if not is_list(raw):
        errors.add(var, "value", raw, "expected a list of {group, file, pgsql, nflog, json}")
        return []
    groups: dict[int, int] = {}
    summary = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            errors.add(var, index, entry, "expected a mapping {group, file, pgsql, nflog, json}")
            continue
        unknown = sorted(str(k) for k in entry if k not in PACKET_STACK_KEYS)
        if unknown:
            errors.add(var, index, entry, f"unknown keys {unknown}; allowed are {list(PACKET_STACK_KEYS)}")
        group = _as_int(entry.get("group"))
        if group is None or not 0 <= group <= 65535:
            errors.add(var, f"{index}.group", entry.get("group"), "expected an NFLOG group number 0..65535")
            continue
        if group in groups:
            errors.add(
                var,
                f"{index}.group",
                group,
                f"NFLOG group {group} is already read by entry {groups[group]}; the kernel lets one "
                "process bind a group, so each group may appear once",
            )
            continue
        groups[group] = index
        path = _log_file(
            errors, var, f"{index}.file", entry.get("file", f"packets-{group}.json"), build.log_dir
        )
        to_pgsql = _stack_flag(errors, var, f"{index}.pgsql", entry.get("pgsql", True))
        nflog = _plugin_options(errors, var, f"{index}.nflog", entry.get("nflog"), NFLOG)
        json = _plugin_options(errors, var, f"{index}.json", entry.get("json"), JSON)
        if path is None:
            continue
        build.files.append(path)
        source = (f"nflog{group}", "NFLOG")
        build.add(
            f"packets of NFLOG group {group} to {path}",
            [source, *((f"{name}{group}", p) for name, p in PACKET_FILTERS), (f"json{group}", "JSON")],
            {source[0]: [("group", str(group)), *nflog], f"json{group}": build.json_section(path, json)},
        )
        # The NFLOG instance is shared: ulogd starts a source once and feeds every stack that names it.
        to_pgsql = bool(build.pgsql) and to_pgsql
        if to_pgsql:
            build.add(
                f"packets of NFLOG group {group} to PostgreSQL",
                [source, *((f"{name}{group}p", p) for name, p in PACKET_FILTERS), (f"pgsql{group}", "PGSQL")],
                {f"pgsql{group}": _pgsql_section(build.pgsql, PGSQL_PACKET_TABLE, PGSQL_PACKET_PROCEDURE)},
            )
        summary.append({"group": group, "file": path, "pgsql": to_pgsql})
    return summary


def _flow_stack(build: _Build) -> dict[str, object]:
    errors, var = build.ctx.errors, PREFIX + "flow_stack"
    raw = build.ctx.get("flow_stack", {})
    if not isinstance(raw, Mapping):
        errors.add(var, "value", raw, "expected a mapping {enabled, file, pgsql, nfct, json}")
        return {"enabled": False}
    unknown = sorted(str(k) for k in raw if k not in FLOW_STACK_KEYS)
    if unknown:
        errors.add(var, "value", raw, f"unknown keys {unknown}; allowed are {list(FLOW_STACK_KEYS)}")
    enabled = _stack_flag(errors, var, "enabled", raw.get("enabled", False))
    to_pgsql = _stack_flag(errors, var, "pgsql", raw.get("pgsql", True)) and bool(build.pgsql)
    path = _log_file(errors, var, "file", raw.get("file", "flows.json"), build.log_dir)
    nfct = _plugin_options(errors, var, "nfct", raw.get("nfct"), NFCT)
    json = _plugin_options(errors, var, "json", raw.get("json"), JSON)
    if not enabled or path is None:
        return {"enabled": False}
    if path in build.files:
        errors.add(var, "file", raw.get("file"), f"{path} is already written by a packet stack")
        return {"enabled": False}
    build.files.append(path)
    build.add(
        f"finished flows to {path}",
        [("nfct", "NFCT"), ("ip2strflow", "IP2STR"), ("jsonflow", "JSON")],
        {"nfct": nfct, "jsonflow": build.json_section(path, json)},
    )
    if to_pgsql:
        build.add(
            "finished flows to PostgreSQL",
            [("nfct", "NFCT"), ("ip2strflowp", "IP2STR"), ("pgsqlflow", "PGSQL")],
            {"pgsqlflow": _pgsql_section(build.pgsql, PGSQL_FLOW_TABLE, PGSQL_FLOW_PROCEDURE)},
        )
    return {"enabled": True, "file": path, "pgsql": to_pgsql}


# ------------------------------------------------------------------------------------------- pgsql


def _conninfo_value(value: str) -> str:
    """A libpq connection-string value: quoted when needed, with \\ and ' escaped."""
    if value and re.fullmatch(r"[A-Za-z0-9_./:+@-]+", value):
        return value
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _pgsql(ctx: _Context) -> dict[str, object] | None:
    """The PGSQL plugin settings shared by every stack that writes to PostgreSQL, or None when off."""
    if not ctx.flag("pgsql_enabled"):
        return None
    errors = ctx.errors
    host = ctx.text("pgsql_host")
    if not host:
        errors.add(PREFIX + "pgsql_host", "value", host, "PostgreSQL output is enabled: name the collector")
    elif not _is_host(host):
        errors.add(PREFIX + "pgsql_host", "value", host, "expected a host name or an IP address")
    port = ctx.integer("pgsql_port", 5432, 1, 65535)
    names = {}
    for key in ("pgsql_db", "pgsql_user"):
        value = ctx.text(key, "ulogd")
        if not _NAME_RE.fullmatch(value):
            errors.add(PREFIX + key, "value", value, "expected a lower-case SQL name (letters, digits, _)")
        names[key] = value
    params: list[tuple[str, str]] = [
        ("host", host),
        ("port", str(port)),
        ("dbname", names["pgsql_db"]),
        ("user", names["pgsql_user"]),
        *_tls_params(ctx),
        ("connect_timeout", str(ctx.integer("pgsql_connect_timeout", 10, 1, 3600))),
        *_conninfo_extra(ctx),
    ]
    connstring = " ".join(f"{k}={_conninfo_value(v)}" for k, v in params)
    problem = _check_string(connstring)
    if problem:
        errors.add(
            PREFIX + "pgsql_conninfo",
            "connstring",
            connstring,
            f"the connection string built from the ulogd_pgsql_* variables {problem}",
        )
    if not ctx.flag("pgsql_password_set") and not ctx.text("pgsql_sslcert"):
        errors.add(
            PREFIX + "pgsql_password",
            "value",
            "(hidden)",
            "PostgreSQL output is enabled: set the password (from a vault on real sites) or a client "
            "certificate (ulogd_pgsql_sslcert)",
        )
    options = _plugin_options(errors, PREFIX + "pgsql_options", "value", ctx.get("pgsql_options", {}), PGSQL)
    return {
        "connstring": connstring,
        "host": host,
        "port": port,
        "db": names["pgsql_db"],
        "user": names["pgsql_user"],
        **_pgsql_buffer(ctx),
        "options": options,
    }


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOST_RE.fullmatch(host))
    return True


def _tls_params(ctx: _Context) -> list[tuple[str, str]]:
    sslmode = ctx.text("pgsql_sslmode", "prefer")
    if sslmode not in SSLMODES:
        ctx.errors.add(PREFIX + "pgsql_sslmode", "value", sslmode, f"expected one of {list(SSLMODES)}")
    params = [("sslmode", sslmode)]
    for key in ("sslrootcert", "sslcert", "sslkey"):
        path = ctx.text(f"pgsql_{key}")
        if path and not _PATH_RE.fullmatch(path):
            ctx.errors.add(PREFIX + f"pgsql_{key}", "value", path, "expected an absolute path on the router")
        elif path:
            params.append((key, path))
    if sslmode in ("verify-ca", "verify-full") and not ctx.text("pgsql_sslrootcert"):
        ctx.errors.add(
            PREFIX + "pgsql_sslrootcert",
            "value",
            "",
            f"sslmode {sslmode} checks the server's certificate: name the CA file it is checked against",
        )
    return params


def _conninfo_extra(ctx: _Context) -> list[tuple[str, str]]:
    var = PREFIX + "pgsql_conninfo"
    extra = ctx.get("pgsql_conninfo", {})
    if not isinstance(extra, Mapping):
        ctx.errors.add(var, "value", extra, "expected a mapping of libpq keywords")
        return []
    params = []
    for key in sorted(extra, key=str):
        value = extra[key]
        if key in CONNINFO_MANAGED:
            ctx.errors.add(var, key, value, f"{key} is set by the role from {CONNINFO_MANAGED[key]}")
        elif key not in CONNINFO_KEYWORDS:
            known = sorted(CONNINFO_KEYWORDS)
            ctx.errors.add(var, key, value, f"unknown libpq keyword {key!r}; allowed are {known}")
        elif isinstance(value, bool) or not isinstance(value, str | int):
            ctx.errors.add(var, key, value, "expected a string or an integer")
        else:
            params.append((str(key), str(value)))
    return params


def _pgsql_buffer(ctx: _Context) -> dict[str, object]:
    """Backlog (memcap + oneshot) or ring buffer: exclusive, whatever ulogd would silently do."""
    errors = ctx.errors
    ring = ctx.integer("pgsql_ring_buffer_size", 0)
    raw_memcap = ctx.config.get("pgsql_backlog_memcap")
    if raw_memcap is None or raw_memcap == "":
        memcap = 0 if ring else DEFAULT_BACKLOG_MEMCAP
    else:
        memcap = ctx.integer("pgsql_backlog_memcap", DEFAULT_BACKLOG_MEMCAP)
    oneshot = ctx.integer("pgsql_backlog_oneshot_requests", 10, 0)
    if ring and memcap:
        errors.add(
            PREFIX + "pgsql_ring_buffer_size",
            "value",
            ring,
            f"the ring buffer and the backlog (ulogd_pgsql_backlog_memcap: {memcap}) exclude each other "
            "(ulogd would silently drop the backlog); set ulogd_pgsql_backlog_memcap to 0 or null for the "
            "ring buffer, or ulogd_pgsql_ring_buffer_size to 0 for the backlog",
        )
    if memcap and oneshot <= 2:
        errors.add(
            PREFIX + "pgsql_backlog_oneshot_requests",
            "value",
            oneshot,
            "must be at least 3 (ulogd needs more than 2 requests per event to ever empty its backlog)",
        )
    mode = "ring" if ring else "backlog" if memcap else "none"
    return {
        "mode": mode,
        "backlog_memcap": memcap,
        "backlog_oneshot_requests": oneshot,
        "ring_buffer_size": ring,
    }


def _pgsql_section(pgsql: dict, table: str, procedure: str) -> list[tuple[str, str]]:
    options = [
        # ulogd requires db and user even though the connection string, which wins, repeats them.
        ("db", _quoted(str(pgsql["db"]))),
        ("user", _quoted(str(pgsql["user"]))),
        ("connstring", _quoted(str(pgsql["connstring"]))),
        ("table", _quoted(table)),
        ("procedure", _quoted(procedure)),
    ]
    if pgsql["mode"] == "ring":
        options.append(("ring_buffer_size", str(pgsql["ring_buffer_size"])))
    elif pgsql["mode"] == "backlog":
        options.append(("backlog_memcap", str(pgsql["backlog_memcap"])))
        options.append(("backlog_oneshot_requests", str(pgsql["backlog_oneshot_requests"])))
    return options + list(pgsql["options"])


def _prefix_lengths(ctx: _Context, pgsql: dict | None) -> None:
    """Log prefixes that Debian's schema could not store would block the PostgreSQL output for good."""
    prefixes = ctx.get("log_prefixes", {})
    if not pgsql or not isinstance(prefixes, Mapping):
        return
    for var in sorted(prefixes, key=str):
        value = prefixes[var]
        if isinstance(value, str) and len(value) > PGSQL_MAX_PREFIX:
            ctx.errors.add(
                str(var),
                "value",
                value,
                f"is {len(value)} characters; with PostgreSQL output on, log prefixes must fit Debian's "
                f"schema (oob_prefix varchar({PGSQL_MAX_PREFIX})), or every insert fails",
            )


# ------------------------------------------------------------------------------------------ filters


def ulogd_config(config: object, hostname: object = None) -> dict[str, object]:
    """Validated data for ulogd.conf.j2 from the ulogd_ variables (prefix stripped)."""
    errors = Errors("ulogd", str(hostname) if hostname else "?")
    ctx = _Context(config, errors)
    log_dir = ctx.text("log_dir", "/var/log/ulog")
    if not _PATH_RE.fullmatch(log_dir):
        errors.add(PREFIX + "log_dir", "value", log_dir, "expected an absolute path")
        log_dir = "/var/log/ulog"
    plugin_dir = ctx.text("plugin_dir")
    if not _PATH_RE.fullmatch(plugin_dir):
        errors.add(PREFIX + "plugin_dir", "value", plugin_dir, "expected an absolute path")
    device = ctx.text("json_device")
    problem = _check_string(device)
    if problem:
        errors.add(PREFIX + "json_device", "value", device, problem)
        device = ""
    loglevel = ctx.integer("loglevel", 5, 1, 8)
    build = _Build(ctx, log_dir, device, _pgsql(ctx))
    packets = _packet_stacks(build)
    flow = _flow_stack(build)
    if not build.stacks:
        errors.add(
            PREFIX + "packet_stacks",
            "value",
            ctx.get("packet_stacks"),
            "no stack at all: list at least one NFLOG group or enable ulogd_flow_stack",
        )
    _prefix_lengths(ctx, build.pgsql)
    for section in build.sections:
        for key, value in section["options"]:
            if len(key) + 1 + len(value) > MAX_LINE:
                errors.add(PREFIX + "*", section["id"], key, f"the line is longer than ulogd's {MAX_LINE}")
    errors.raise_if_any()
    writes_pgsql = any(p["pgsql"] for p in packets) or bool(flow.get("pgsql"))
    pgsql = build.pgsql or {}
    return {
        "hostname": errors.hostname,
        "loglevel": loglevel,
        "plugins": [f"{plugin_dir.rstrip('/')}/{PLUGIN_FILES[p]}" for p in build.plugins],
        "stacks": build.stacks,
        "sections": build.sections,
        "packet_groups": [p["group"] for p in packets],
        "packets": packets,
        "flow": flow,
        "files": build.files,
        "log_dir": log_dir,
        "pgsql": {k: pgsql[k] for k in ("host", "port", "db", "user", "mode") if k in pgsql}
        | {"enabled": writes_pgsql},
    }


# ------------------------------------------------------------------------------- log_collector


def log_collector_settings(config: object, hostname: object = None) -> dict[str, object]:
    """Validated settings of the log_collector role (prefix stripped): clients, listen, names."""
    prefix = "log_collector_"
    errors = Errors("log_collector", str(hostname) if hostname else "?")
    ctx = _Context(config, errors, prefix)
    clients = ctx.get("clients", [])
    networks: list[str] = []
    if not is_list(clients) or not clients:
        errors.add(
            prefix + "clients",
            "value",
            clients,
            "expected a non-empty list of the routers' addresses or networks (CIDR) that may connect",
        )
        clients = []
    for index, item in enumerate(clients):
        try:
            net = ipaddress.ip_network(str(item).strip(), strict=True) if isinstance(item, str) else None
        except ValueError as exc:
            errors.add(prefix + "clients", index, item, f"{exc}")
            continue
        if net is None:
            errors.add(prefix + "clients", index, item, "expected an address or a network in CIDR notation")
            continue
        if net.prefixlen == 0:
            errors.add(prefix + "clients", index, item, "the whole address space is not a list of routers")
            continue
        networks.append(str(net))
    listen = ctx.get("listen_addresses", [])
    addresses: list[str] = []
    if not is_list(listen) or not listen:
        errors.add(prefix + "listen_addresses", "value", listen, "expected a non-empty list of addresses")
        listen = []
    for index, item in enumerate(listen):
        try:
            addresses.append(str(ipaddress.ip_address(str(item).strip())))
        except ValueError:
            errors.add(prefix + "listen_addresses", index, item, "expected an IP address of this host")
    names = {}
    for key in ("db", "user"):
        value = ctx.get(key, "ulogd")
        if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or value in ("postgres", "public"):
            errors.add(prefix + key, "value", value, "expected a lower-case SQL name (letters, digits, _)")
        names[key] = value
    password = ctx.get("password", "")
    problem = _password_problem(password)
    if problem:
        errors.add(prefix + "password", "value", "(hidden)", problem)
    errors.raise_if_any()
    return {"clients": networks, "listen_addresses": addresses, "db": names["db"], "user": names["user"]}


def _password_problem(password: object) -> str | None:
    if not isinstance(password, str) or not password:
        return "set the database password (from a vault on real sites, see docs/ulogd.md)"
    # Printable ASCII only: PostgreSQL normalises other passwords (SASLprep) before hashing them, and a
    # verifier computed here from an unnormalised one would never let ulogd log in.
    if not re.fullmatch(r"[\x20-\x7e]+", password):
        return "use printable ASCII characters only"
    if len(password) < 12:
        return "use at least 12 characters"
    return None


def _scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return hashlib.sha256(client_key).digest(), server_key


def pgsql_scram_verifier(password: object, iterations: int = 4096) -> str:
    """A PostgreSQL SCRAM-SHA-256 verifier (what pg_authid stores) with a fresh random salt.

    The role sends the verifier, never the password, so neither the server's logs nor its process list
    can show the password."""
    problem = _password_problem(password)
    if problem or not isinstance(password, str):
        raise AnsibleFilterError(f"pgsql_scram_verifier: {problem}")
    salt = os.urandom(16)
    stored, server = _scram_keys(password, salt, iterations)
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored).decode()}:{b64(server).decode()}"


def pgsql_scram_matches(verifier: object, password: object) -> bool:
    """Whether a stored SCRAM-SHA-256 verifier was made from this password (False for anything else)."""
    match = re.fullmatch(
        r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)", str(verifier or "")
    )
    if not match or not isinstance(password, str):
        return False
    iterations, salt, stored, server = match.groups()
    try:
        want = (base64.b64decode(stored, validate=True), base64.b64decode(server, validate=True))
        keys = _scram_keys(password, base64.b64decode(salt, validate=True), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(keys[0], want[0]) and hmac.compare_digest(keys[1], want[1])
