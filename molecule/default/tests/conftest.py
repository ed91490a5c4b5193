"""Fixtures for the whole-appliance scenario: the four lab hosts and small traffic helpers.

Tests reach hosts through the Docker engine (testinfra's docker backend), never over the lab
networks, and every connection they make runs between lab hosts.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra
import yaml

# NATTRAIL_LAB_TOPOLOGY points the checks at another copy of the lab (other names and subnets),
# so a second lab can be tested while the default one is busy.
PROJECT = Path(__file__).resolve().parents[3]
TOPOLOGY = Path(os.environ.get("NATTRAIL_LAB_TOPOLOGY") or PROJECT / "lab" / "topology.yml")
# NATTRAIL_LAB_INVENTORY and NATTRAIL_LAB_PLAYBOOK name what the checks that converge run.
INVENTORY = os.environ.get("NATTRAIL_LAB_INVENTORY") or str(PROJECT / "inventory" / "lab")
PLAYBOOK = os.environ.get("NATTRAIL_LAB_PLAYBOOK") or str(PROJECT / "site.yml")


def _playbook(*extra: str) -> tuple[list[str], dict[str, str]]:
    """The command that runs the playbook against the lab as an administrator would, with plain-text
    output: Molecule turns colour on for everything it starts (ANSIBLE_FORCE_COLOR), and the checks
    read this text."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0"}
    env["ANSIBLE_NOCOLOR"] = "1"
    return ["ansible-playbook", "-i", INVENTORY, PLAYBOOK, *extra], env


def converge(*extra: str) -> subprocess.CompletedProcess[str]:
    argv, env = _playbook(*extra)
    return subprocess.run(argv, cwd=PROJECT, env=env, capture_output=True, text=True, check=False)


def start_converge(*extra: str) -> subprocess.Popen[str]:
    """A converge running in the background, its output (stderr too) read line by line from stdout."""
    argv, env = _playbook(*extra)
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        argv, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


# A one-shot TCP listener: records the peer of the first connection, then drains it.
LISTENER = """
import socket, sys
port, out = int(sys.argv[1]), sys.argv[2]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(8)
s.settimeout(60)
c, peer = s.accept()
with open(out, "w") as f:
    f.write("%s:%d\\n" % peer)
c.settimeout(60)
while c.recv(4096):
    pass
"""

# A TCP client that connects, says hello, holds the connection open, then closes it.
CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"hello from the inside\\n")
time.sleep(float(sys.argv[3]))
s.close()
"""


@dataclass
class LabHost:
    name: str
    address: str
    host: testinfra.host.Host

    def run(self, command: str) -> testinfra.backend.base.CommandResult:
        return self.host.run(command)

    def check(self, command: str) -> str:
        result = self.host.run(command)
        assert result.rc == 0, f"{self.name}: {command!r} failed ({result.rc}): {result.stderr}"
        return result.stdout

    def wait_output(self, command: str, timeout: float = 15.0) -> str:
        """Run a command until it prints something; return what it printed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.host.run(command).stdout.strip()
            if out:
                return out
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: {command!r} printed nothing for {timeout:.0f} s")

    def background(self, script: str, *args: str) -> str:
        """Run a Python snippet as a transient systemd unit, so it outlives this call."""
        unit = f"nt-test-{uuid.uuid4().hex[:8]}"
        argv = " ".join(shlex.quote(a) for a in args)
        self.check(f"systemd-run --quiet --collect --unit={unit} python3 -c {shlex.quote(script)} {argv}")
        return unit


@pytest.fixture(scope="session")
def lab() -> dict[str, LabHost]:
    topology = yaml.safe_load(TOPOLOGY.read_text())
    prefix = topology["lab_container_prefix"]
    hosts = {}
    for spec in topology["lab_hosts"]:
        host = testinfra.get_host(f"docker://{prefix}{spec['name']}")
        hosts[spec["name"]] = LabHost(spec["name"], spec["networks"][0]["ipv4_address"], host)
    return hosts


@pytest.fixture
def listen(lab: dict[str, LabHost]) -> Iterator[Callable[[str, int], Callable[[], str]]]:
    """Start a one-shot listener on a lab host; returns a function that reads the peer it saw."""
    units: list[tuple[LabHost, str]] = []

    def start(host_name: str, port: int) -> Callable[[], str]:
        host = lab[host_name]
        out = f"/run/nt-test-peer-{port}-{uuid.uuid4().hex[:6]}"
        units.append((host, host.background(LISTENER, str(port), out)))
        host.wait_output(f"ss -Hltn 'sport = :{port}'")

        def peer() -> str:
            return host.wait_output(f"cat {out}")

        return peer

    yield start
    for host, unit in units:
        host.run(f"systemctl stop {unit}")


@pytest.fixture
def connect(lab: dict[str, LabHost]) -> Iterator[Callable[[str, str, int, float], str]]:
    """Open a TCP connection from a lab host in the background and hold it open."""
    units: list[tuple[LabHost, str]] = []

    def start(host_name: str, address: str, port: int, hold: float = 0.0) -> str:
        host = lab[host_name]
        unit = host.background(CLIENT, address, str(port), str(hold))
        units.append((host, unit))
        return unit

    yield start
    for host, unit in units:
        host.run(f"systemctl stop {unit}")


ROUTER_OUT = "203.0.113.2"


def try_connect(lab: dict[str, LabHost], source: str, address: str, port: int, timeout: float = 3.0):
    """A TCP connection from a lab host; the result's rc and stderr say how it failed."""
    code = f"import socket; socket.create_connection(({address!r}, {port}), timeout={timeout}).close()"
    return lab[source].run(f'python3 -c "{code}"')


def drops(lab: dict[str, LabHost]) -> dict[str, int]:
    """The router's drop counters (`nattrail drops`), packets per counter name."""
    report = json.loads(lab["router"].check("nattrail drops --json"))
    return {row["name"]: row["packets"] for row in report["drops"]}


def spoofed_syn(lab: dict[str, LabHost], source: str, sport: int) -> tuple[list[dict], int]:
    """A SYN to the router's ssh port from the scanner with a forged ``source`` address: the router's
    log records of it, and how much its drop_spoof counter grew."""
    before = drops(lab)["drop_spoof"]
    forge = (
        "from scapy.all import IP, TCP, send; "
        f"send(IP(src='{source}', dst='{ROUTER_OUT}')/TCP(sport={sport}, dport=22, flags='S'), verbose=0)"
    )
    lab["scanner"].check(f'python3 -c "{forge}"')
    logged = logged_packets(lab["router"], lambda r: r.get("src_ip") == source and r.get("src_port") == sport)
    return logged, drops(lab)["drop_spoof"] - before


# ulogd owns the NFLOG group of nat_router's log rules (a group has one listener), so checks of
# what those rules log read ulogd's packet JSON on the router.
ULOG_PACKETS = "/var/log/ulog/packets.json"


def logged_packets(router: LabHost, match: Callable[[dict], bool], timeout: float = 15.0) -> list[dict]:
    """The router's logged packets (ulogd JSON, rotated copy included) that ``match``, waiting for
    the first one; the kernel batches NFLOG for up to a second."""
    deadline = time.monotonic() + timeout
    while True:
        out = router.run(f"cat {ULOG_PACKETS}.1 {ULOG_PACKETS} 2>/dev/null").stdout
        found = [r for r in (json.loads(line) for line in out.splitlines()) if match(r)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """NATTRAIL_VERIFY_ORDER=reverse runs the checks last to first: each check must put back what it
    changes, so the verify step passes in either order (docs/testing.md)."""
    order = os.environ.get("NATTRAIL_VERIFY_ORDER", "")
    if order == "reverse":
        items.reverse()
    elif order:
        raise pytest.UsageError(f"NATTRAIL_VERIFY_ORDER={order!r}: expected 'reverse' or nothing")
