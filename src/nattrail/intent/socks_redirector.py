"""The socks_redirector compiler: inventory -> the redirector's settings, checked by the daemon's own parser.

The redirector reads a JSON file (docs/redirect.md). Its values are checked here on the controller with
the very functions `nattrail redirect` parses them with (``nattrail.redirect``), so the inventory is
refused before anything on the router changes, with the same rules the daemon would apply, and the role
then writes the file through `nattrail redirect --check` as a second line of defence.

Whether the redirect is on and the port it listens on are the nat_router role's (the firewall rule that
sends connections there): this module takes them from ``nat_router_rules.socks_redirect``.
"""

from __future__ import annotations

from collections.abc import Mapping

from nattrail import socks5
from nattrail.intent.errors import Errors
from nattrail.redirect import ConfigError, parse_hostport, parse_number

PREFIX = "socks_redirector_"


def socks_redirector_settings(
    config: object, redirect: object, password_file: str, hostname: object = None
) -> dict[str, object]:
    """``{"enabled": bool, "settings": {...}}``: the redirector's JSON settings, or enabled false."""
    errors = Errors("socks_redirector", str(hostname or "?"), PREFIX)
    if not isinstance(config, Mapping):
        errors.add("*", "value", config, "the filter expects a mapping of the role's variables")
        errors.raise_if_any()
    if not isinstance(redirect, Mapping) or not isinstance(redirect.get("enabled"), bool):
        errors.add(
            "*",
            "nat_router_rules",
            redirect,
            "needs nat_router_rules.socks_redirect: run nat_router's check first",
        )
        errors.raise_if_any()
    if not redirect["enabled"]:
        return {"enabled": False, "settings": {}}

    upstream = config.get("upstream")
    settings: dict[str, object] = {"listen": f"0.0.0.0:{redirect.get('listen_port')}"}
    if not upstream:
        errors.add(
            "upstream",
            "value",
            upstream,
            'the SOCKS redirect is enabled, so an upstream proxy "host:port" is required',
        )
    else:
        try:
            parse_hostport("upstream", upstream, numeric_host=False, allow_port_zero=False)
            settings["socks"] = upstream
        except ConfigError as exc:
            errors.add("upstream", "value", upstream, str(exc).removeprefix("upstream: "))
    try:
        settings["max_connections"] = parse_number(
            "max_connections", config.get("max_connections"), int, 1, strict=False
        )
    except ConfigError as exc:
        errors.add(
            "max_connections",
            "value",
            config.get("max_connections"),
            str(exc).removeprefix("max_connections: "),
        )
    username, password = config.get("username") or "", config.get("password") or ""
    if bool(username) != bool(password):
        errors.add("username", "value", username, "a username and a password go together (RFC 1929)")
    elif username:
        try:
            socks5.Credentials(str(username), str(password))
            settings["socks_user"] = username
            settings["socks_password_file"] = password_file
        except ValueError as exc:
            # Never show the password itself.
            errors.add("username", "value", username, str(exc))
    errors.raise_if_any()
    return {"enabled": True, "settings": settings}
