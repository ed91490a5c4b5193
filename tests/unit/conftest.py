"""Shared helpers for the nat_router filter and template tests."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2
import pytest

from nattrail.accounting import Counter, network_rows

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "roles" / "nat_router" / "templates" / "ruleset.nft.j2"


def make_facts(
    interfaces: dict[str, str | None] | None = None,
    default: str | None = "eth0",
    hostname: str = "router",
    secondaries: dict[str, list[str]] | None = None,
) -> dict[str, object]:
    """ansible_facts as the setup module reports them; interfaces maps a name to "address/prefix" or None."""
    if interfaces is None:
        interfaces = {"lo": "127.0.0.1/8", "eth0": "203.0.113.2/24", "eth1": "10.77.0.2/24"}
    facts: dict[str, object] = {"hostname": hostname, "interfaces": list(interfaces)}
    for name, address in interfaces.items():
        ifacts: dict[str, object] = {"device": name, "active": True}
        if address:
            ifacts["ipv4"] = _ipv4_record(address)
        if secondaries and name in secondaries:
            ifacts["ipv4_secondaries"] = [_ipv4_record(a) for a in secondaries[name]]
        # The setup module names per-interface facts with "-" turned into "_".
        facts[name.replace("-", "_")] = ifacts
    if default:
        address = interfaces.get(default)
        facts["default_ipv4"] = {
            "interface": default,
            "address": address.split("/")[0] if address else "",
            "gateway": "203.0.113.1",
        }
    else:
        facts["default_ipv4"] = {}
    return facts


def _ipv4_record(cidr: str) -> dict[str, str]:
    import netaddr  # noqa: PLC0415 - keeps the module import cheap for tests that never build facts

    net = netaddr.IPNetwork(cidr)
    return {
        "address": str(net.ip),
        "netmask": str(net.netmask),
        "network": str(net.network),
        "broadcast": str(net.broadcast or net.ip),
        "prefix": str(net.prefixlen),
    }


# The role's carry-over include; a glob that matches nothing is allowed by nft.
CARRY_INCLUDE = str(Path(tempfile.gettempdir()) / "nattrail-unit-no-carry" / "*.nft")
CARRY_SETS_INCLUDE = str(Path(tempfile.gettempdir()) / "nattrail-unit-no-carry-sets" / "*.nft")


def render_jinja(
    rules: dict[str, object], carry_include: str = CARRY_INCLUDE, carry_sets_include: str = CARRY_SETS_INCLUDE
) -> str:
    """Render like the template module does: trim_blocks on, lstrip_blocks off, undefined is an error.
    The carry includes default to globs that match nothing."""
    env = jinja2.Environment(
        trim_blocks=True,
        lstrip_blocks=False,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - the output is an nftables file, not HTML
    )
    return env.from_string(TEMPLATE.read_text()).render(
        nat_router_rules=rules,
        nat_router_carry_include=carry_include,
        nat_router_carry_sets_include=carry_sets_include,
    )


def render_ansible(rules: dict[str, object]) -> str:
    """Render through ansible-core's Templar with the template action's overrides."""
    from ansible.parsing.dataloader import DataLoader  # noqa: PLC0415
    from ansible.template import Templar, trust_as_template  # noqa: PLC0415

    templar = Templar(
        loader=DataLoader(),
        variables={
            "nat_router_rules": rules,
            "nat_router_carry_include": CARRY_INCLUDE,
            "nat_router_carry_sets_include": CARRY_SETS_INCLUDE,
        },
    )
    text = trust_as_template(TEMPLATE.read_text())
    return templar.template(
        text, escape_backslashes=False, overrides={"trim_blocks": True, "lstrip_blocks": False}
    )


@functools.cache
def _nft_problem() -> str | None:
    """Why `nft -c` cannot be used here, or None when it works."""
    if shutil.which("nft") is None:
        return "the nft binary is missing (apt-get install nftables)"
    probe = "table inet nattrail_probe {\n  chain c {\n    type filter hook input priority 0;\n  }\n}\n"
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as handle:
        handle.write(probe)
        handle.flush()
        result = subprocess.run(["nft", "-c", "-f", handle.name], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return f"nft -c cannot check rulesets here (needs root / CAP_NET_ADMIN): {result.stderr.strip()}"
    return None


def nft_check(text: str) -> subprocess.CompletedProcess[str]:
    """`nft -c -f` the text: checks everything, kernel included, and changes nothing."""
    problem = _nft_problem()
    if problem:
        pytest.skip(f"!!! RULESET NOT CHECKED BY NFT: {problem} !!!")
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as handle:
        handle.write(text)
        handle.flush()
        return subprocess.run(["nft", "-c", "-f", handle.name], capture_output=True, text=True, check=False)


@pytest.fixture
def facts() -> dict[str, object]:
    return make_facts()


def check_nft_ok(text: str) -> None:
    result = nft_check(text)
    numbered = "\n".join(f"{i:4} {line}" for i, line in enumerate(text.splitlines(), 1))
    assert result.returncode == 0, f"nft -c failed:\n{result.stderr}\n{numbered}"


@pytest.fixture
def assert_nft_ok() -> Callable[[str], None]:
    return check_nft_ok


def netns_unavailable(*tools: str) -> str | None:
    """Why a private network namespace with nft (and ``tools``) cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    for tool in ("unshare", "nft", *tools):
        if shutil.which(tool) is None:
            return f"{tool} not found on PATH"
    probe = subprocess.run(["unshare", "--net", "nft", "list", "ruleset"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"unshare --net nft failed: {probe.stderr.decode(errors='replace').strip()}"
    return None


def run_netns_driver(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a test file's own driver (``script args``) under ``unshare --net``, with this checkout's
    src/ importable and the parent's network namespace named for :func:`refuse_outside_private_netns`."""
    return subprocess.run(
        ["unshare", "--net", sys.executable, script, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "PARENT_NETNS": os.readlink("/proc/self/ns/net")},
    )


def netns_driver_report(script: str, *args: str, untested: str, timeout: float = 60) -> Any:
    """Run a test file's driver in a private network namespace (:func:`run_netns_driver`) and return
    the JSON report it printed; the driver must exit 0. Where no such namespace can be made, the
    test is skipped loudly, saying what is ``untested``."""
    reason = netns_unavailable("ip")
    if reason:
        pytest.skip(f"SKIPPED LOUDLY: untested here, {untested}: {reason}")
    result = run_netns_driver(script, *args, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refuse_outside_private_netns() -> None:
    """For drivers that load nft rules and set sysctls: never in the namespace that started them."""
    own = os.readlink("/proc/self/ns/net")
    if own == os.environ.get("PARENT_NETNS", own):
        raise SystemExit("refusing to load nft rules: not inside a private network namespace")


def load_filter_plugin(name: str = "nattrail") -> ModuleType:
    """``filter_plugins/<name>.py`` imported the way Ansible does: from its file, under a name of its own."""
    path = REPO / "filter_plugins" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"ansible_filter_plugin_{name}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cli_help(capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    """What ``nattrail ARGS --help`` prints (``cli_help()``: the list of subcommands); help exits 0."""
    from nattrail.cli import main  # noqa: PLC0415 - most tests here never load the command

    def show(*args: str) -> str:
        with pytest.raises(SystemExit) as exited:
            main([*args, "--help"])
        assert exited.value.code == 0
        return capsys.readouterr().out

    return show


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set the process's local time zone (TZ) for one test."""

    def set_zone(zone: str) -> None:
        monkeypatch.setenv("TZ", zone)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def networks_in_order(networks: str) -> str:
    """The order `nattrail accounting` shows the given networks (space-separated) in, one inbound
    counter each, as a space-separated string."""
    counters = [Counter(f"acct_n{index}_in", 0, 0, network) for index, network in enumerate(networks.split())]
    return " ".join(row.network for row in network_rows(counters))


# The element forms of the ruleset's four DNAT maps and sets (roles/nat_router/templates/ruleset.nft.j2):
# (fields before " : ", fields after) -> the table in nat_router_rules(...)["dnat"] and its row's keys.
_DNAT_ELEMENT_FORMS = {
    (3, 2): ("ports", ("source", "proto", "port", "target", "target_port")),
    (1, 1): ("all", ("source", "target")),
    (4, 0): ("ports_forward", ("target", "proto", "target_port", "source")),
    (2, 0): ("all_forward", ("target", "source")),
}


def dnat_tables(*elements: str) -> dict[str, list[dict[str, object]]]:
    """The compiled DNAT data, ``nat_router_rules(...)["dnat"]``, with each row written as the element the
    ruleset makes of it; its form says its table:

    - ``"source . proto . port : target . target_port"``: ``ports`` (map dnat_ports)
    - ``"source : target"``: ``all`` (map dnat_all)
    - ``"target . proto . target_port . source"``: ``ports_forward`` (set dnat_ports_forward)
    - ``"target . source"``: ``all_forward`` (set dnat_all_forward)

    Rows keep their order within their table; ports are numbers."""
    tables: dict[str, list[dict[str, object]]] = {table: [] for table, _ in _DNAT_ELEMENT_FORMS.values()}
    for element in elements:
        key, _, value = element.partition(" : ")
        before = key.split(" . ")
        after = value.split(" . ") if value else []
        table, names = _DNAT_ELEMENT_FORMS[len(before), len(after)]
        fields = zip(names, before + after, strict=True)
        tables[table].append({name: int(field) if name.endswith("port") else field for name, field in fields})
    return tables


def acct_map(*elements: str) -> list[dict[str, str]]:
    """The rows of an accounting map (``in_map``, ``out_map`` of ``nat_router_rules(...)["accounting"]``),
    each written as the element the ruleset makes of it, ``"key : counter"`` (the counter unquoted)."""
    rows = []
    for element in elements:
        key, counter = element.split(" : ")
        rows.append({"key": key, "counter": counter})
    return rows
