"""masq_logger_settings: the logger's settings from inventory, refused by the daemon's own parser."""

from __future__ import annotations

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from conftest import REPO

from nattrail.intent.masq_logger import masq_logger_settings
from nattrail.masqlog.config import build_config

GOOD = {"log": "/var/log/nattrail/masq.log", "protocols": ["tcp", "udp"], "ident": True, "ident_timeout": 5.0}


def errors_of(**settings: object) -> list[str]:
    with pytest.raises(AnsibleFilterError) as caught:
        masq_logger_settings({**GOOD, **settings}, "gw1")
    return str(caught.value.message).splitlines()


def test_good_settings_come_back_as_given_and_the_daemon_reads_them() -> None:
    assert masq_logger_settings(GOOD, "gw1") == GOOD
    assert build_config(GOOD).protocols == ("tcp", "udp")


def test_the_role_input_names_only_settings_the_daemon_knows() -> None:
    """vars/main.yml maps role variables to daemon keys: a key the daemon does not know is an error."""
    mapping = yaml.safe_load((REPO / "roles" / "masq_logger" / "vars" / "main.yml").read_text())
    keys = set(mapping["masq_logger_input"])
    build_config(dict.fromkeys(keys - {"log", "protocols", "ident", "syslog"}, 1))  # numbers: all accepted
    assert {"log", "protocols", "ident", "syslog"} <= keys


def test_every_mistake_names_host_and_variable_at_once() -> None:
    lines = errors_of(protocols=["tcp", "sctp"], ident_timeout=0, log="", bogus=1)
    assert sorted(lines) == sorted(
        [
            "masq_logger: host gw1: variable masq_logger_protocols, entry value (['tcp', 'sctp']): "
            "unknown ['sctp']; choose from tcp, udp, icmp",
            "masq_logger: host gw1: variable masq_logger_ident_timeout, entry value (0): "
            "must be a number above 0, got 0",
            "masq_logger: host gw1: variable masq_logger_log_path, entry value (''): "
            "expected a non-empty string, got ''",
            "masq_logger: host gw1: variable masq_logger_bogus, entry value (1): "
            "unknown settings: bogus; known: " + ", ".join(sorted(build_config({}).__dataclass_fields__)),
        ]
    )
