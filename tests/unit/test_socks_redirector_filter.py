"""socks_redirector_settings: the redirector's settings, refused by the daemon's own rules."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ansible.errors import AnsibleFilterError
from conftest import REPO

from nattrail.intent.socks_redirector import socks_redirector_settings

ON = {"enabled": True, "ports": ["80"], "exclude": [], "listen_port": 12345}
GOOD = {"upstream": "203.0.113.10:1080", "username": "", "password": "", "max_connections": 512}
PASSWORD_FILE = "/etc/nattrail/socks-password"  # noqa: S105 - a path


def settings(redirect: object = ON, **config: object) -> dict[str, object]:
    return socks_redirector_settings({**GOOD, **config}, redirect, PASSWORD_FILE, "gw1")


def errors_of(redirect: object = ON, **config: object) -> list[str]:
    with pytest.raises(AnsibleFilterError) as caught:
        settings(redirect, **config)
    return str(caught.value.message).splitlines()


def test_the_settings_are_what_the_daemon_reads() -> None:
    assert settings() == {
        "enabled": True,
        "settings": {"listen": "0.0.0.0:12345", "socks": "203.0.113.10:1080", "max_connections": 512},
    }
    with_user = settings(username="alice", password="pw")["settings"]  # noqa: S106 - test data
    assert with_user["socks_user"] == "alice"
    assert with_user["socks_password_file"] == PASSWORD_FILE
    assert "pw" not in json.dumps(with_user), "the password must never be in the settings"


def test_off_means_no_settings_and_no_upstream_needed() -> None:
    assert settings({**ON, "enabled": False}, upstream="") == {"enabled": False, "settings": {}}


@pytest.mark.parametrize(
    ("config", "variable", "message"),
    [
        ({"upstream": ""}, "upstream", 'an upstream proxy "host:port" is required'),
        ({"upstream": "proxy:99999"}, "upstream", "bad port '99999' in 'proxy:99999'"),
        ({"upstream": "proxy"}, "upstream", "expected HOST:PORT, got 'proxy'"),
        ({"upstream": ":1080"}, "upstream", "missing host in ':1080'"),
        ({"max_connections": 0}, "max_connections", "must be >= 1, got 0"),
        ({"username": "alice"}, "username", "a username and a password go together"),
        ({"username": "a" * 256, "password": "pw"}, "username", "1 to 255 bytes"),
    ],
)
def test_each_mistake_names_host_variable_and_entry(config: dict, variable: str, message: str) -> None:
    lines = errors_of(**config)
    head = f"socks_redirector: host gw1: variable socks_redirector_{variable}, entry value ("
    assert any(line.startswith(head) and message in line for line in lines), lines


def test_every_mistake_is_reported_at_once_and_the_password_never_shown() -> None:
    lines = errors_of(upstream="x", max_connections=-1, username="", password="hunter2")  # noqa: S106
    assert len(lines) == 3, lines
    assert not any("hunter2" in line for line in lines)


def test_without_the_nat_router_rules_it_says_what_to_run_first() -> None:
    lines = errors_of(None)
    assert lines == [
        "socks_redirector: host gw1: variable socks_redirector_*, entry nat_router_rules (None): "
        "needs nat_router_rules.socks_redirect: run nat_router's check first"
    ]


def test_what_it_accepts_the_daemon_accepts(tmp_path) -> None:
    """The file the role writes passes `nattrail redirect --check`, the role's validator on the router."""
    password = tmp_path / "socks-password"
    password.write_text("pw")
    conf = socks_redirector_settings(
        {**GOOD, "username": "alice", "password": "pw"}, ON, str(password), "gw1"
    )["settings"]
    path = tmp_path / "redirect.json"
    path.write_text(json.dumps(conf))
    result = subprocess.run(
        [sys.executable, "-m", "nattrail", "redirect", "--check", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(REPO / "src")},
    )
    assert result.returncode == 0, result.stderr
