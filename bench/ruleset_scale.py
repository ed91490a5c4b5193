#!/usr/bin/env python3
"""Benchmark: the rules compiler at 10,000 DNAT entries and 10,000 accounting networks.

Measures, on the lab (make lab-up; ansible-playbook site.yml):
  1. compute + render: the nat_router_rules filter and the ruleset template, on the controller;
  2. load: `nft -f` of that ruleset inside the lab router;
  3. forwarding throughput through the router (iperf3 client -> server, masqueraded, and
     scanner -> router DNAT port -> client), with three rulesets loaded in turn:
       empty  - the same ruleset with no DNAT entries (but the measured one) and no accounting,
       maps   - the 10,000 + 10,000 entries as the compiler writes them (interval maps),
       linear - the same entries as one rule each (the ipmasq way).
Rounds interleave the three rulesets so that drift on the machine hits all of them alike. The
router's confirmed ruleset is loaded again at the end.

Run: .venv/bin/python bench/ruleset_scale.py [--entries 10000] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jinja2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from nattrail.intent.nat_router import nat_router_rules  # noqa: E402 - found through the path set just above

TEMPLATE = ROOT / "roles/nat_router/templates/ruleset.nft.j2"
ROUTER, CLIENT, SERVER, SCANNER = (f"nattrail-{h}" for h in ("router", "client", "server", "scanner"))
DNAT_PORT, IPERF_PORT = 2323, 5201


def sh(container: str, command: str, check: bool = True) -> str:
    result = subprocess.run(
        ["docker", "exec", container, "sh", "-c", command], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise SystemExit(f"{container}: {command!r} failed: {result.stderr.strip()}")
    return result.stdout


def router_facts() -> dict:
    """The lab router's interfaces in the shape of Ansible facts."""
    addrs = json.loads(sh(ROUTER, "ip -j -4 addr show"))
    route = json.loads(sh(ROUTER, "ip -j -4 route show default"))
    facts: dict = {"interfaces": [a["ifname"] for a in addrs]}
    for a in addrs:
        info = a["addr_info"][0]
        net = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")
        facts[a["ifname"]] = {
            "ipv4": {
                "address": info["local"],
                "netmask": str(net.netmask),
                "network": str(net.network.network_address),
            }
        }
    facts["default_ipv4"] = {"interface": route[0]["dev"], "address": "203.0.113.2"}
    return facts


def config(entries: int, full: bool) -> dict:
    scanner_entry = {
        "source": "203.0.113.16/28",
        "port": DNAT_PORT,
        "target": "10.77.0.10",
        "target_port": IPERF_PORT,
    }
    if not full:
        return {"dnat": [scanner_entry]}
    # Sources from the benchmarking range, one /32 each; the measured entry comes last.
    base = int(ipaddress.ip_address("198.18.0.0"))
    dnat = [
        {
            "source": f"{ipaddress.ip_address(base + i)}/32",
            "port": 10000 + i % 50000,
            "target": "10.77.0.10",
            "target_port": 8000,
        }
        for i in range(entries - 1)
    ]
    acct_base = int(ipaddress.ip_address("172.16.0.0"))
    networks = [f"{ipaddress.ip_address(acct_base + 16 * i)}/28" for i in range(entries - 1)]
    return {"dnat": [*dnat, scanner_entry], "accounting_networks": [*networks, "10.77.0.0/24"]}


def render(cfg: dict, facts: dict, carry: str) -> tuple[str, float]:
    env = jinja2.Environment(
        trim_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - the output is an nftables file, not HTML
    )
    template = env.from_string(TEMPLATE.read_text())
    start = time.perf_counter()
    rules = nat_router_rules(cfg, facts, "router")
    text = template.render(
        nat_router_rules=rules, nat_router_carry_include=carry, nat_router_carry_sets_include=carry
    )
    return text, time.perf_counter() - start


def linear(cfg: dict, facts: dict, carry: str) -> str:
    """The same entries written as one rule each, in the chains the compiler would use."""
    text, _ = render({"dnat": cfg["dnat"][-1:]}, facts, carry)
    ext = facts["default_ipv4"]["interface"]
    dnat_rules = [
        f'    iifname "{ext}" ip saddr {d["source"]} tcp dport {d["port"]} '
        f"dnat ip to {d['target']}:{d['target_port']}"
        for d in cfg["dnat"]
    ]
    acct_rules = []
    for n in cfg["accounting_networks"]:
        acct_rules.append(f'    iifname "{ext}" ip daddr {n} counter')
        acct_rules.append(f'    oifname "{ext}" ip saddr {n} counter')
    accounting_chain = (
        "  chain accounting_linear {\n    type filter hook forward priority filter + 10; "
        "policy accept;\n" + "\n".join(acct_rules) + "\n  }\n"
    )
    dstnat = "  chain dstnat_linear {\n    type nat hook prerouting priority dstnat - 1; policy accept;\n"
    dstnat += "\n".join(dnat_rules) + "\n  }\n"
    head, _, tail = text.rpartition("}")
    return head + accounting_chain + dstnat + "}" + tail


def load(text: str) -> float:
    """Time `nft -f` inside the router (the file goes in over stdin: /run there is a tmpfs)."""
    subprocess.run(
        ["docker", "exec", "-i", ROUTER, "sh", "-c", "cat > /run/bench.nft"],
        input=text,
        text=True,
        check=True,
    )
    out = sh(
        ROUTER,
        "python3 -c 'import subprocess,time; t=time.perf_counter(); "
        'subprocess.run(["nft","-f","/run/bench.nft"],check=True); print(time.perf_counter()-t)\'',
    )
    return float(out)


def iperf(container: str, address: str, port: int, seconds: int) -> float:
    out = sh(container, f"iperf3 -c {address} -p {port} -t {seconds} -J")
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if sh(ROUTER, "nft list table inet nattrail >/dev/null && echo ok", check=False).strip() != "ok":
        raise SystemExit("the lab router has no nattrail ruleset: run make demo first")

    facts = router_facts()
    carry = "/var/lib/nattrail/carry/*.nft"
    full_cfg = config(args.entries, full=True)
    maps_text, compute_s = render(full_cfg, facts, carry)
    empty_text, _ = render(config(args.entries, full=False), facts, carry)
    linear_text = linear(full_cfg, facts, carry)
    results: dict = {
        "entries": args.entries,
        "compute_render_s": round(compute_s, 3),
        "ruleset_bytes": len(maps_text),
    }
    loads = {
        name: load(text)
        for name, text in (("maps", maps_text), ("linear", linear_text), ("empty", empty_text))
    }
    results["load_s"] = {k: round(v, 3) for k, v in loads.items()}
    results["compute_render_load_s"] = round(compute_s + loads["maps"], 3)

    if not args.skip_throughput:
        for host in (SERVER, CLIENT):
            sh(
                host,
                f"systemctl stop bench-iperf 2>/dev/null; systemd-run --quiet --collect --unit=bench-iperf "
                f"iperf3 -s -p {IPERF_PORT}",
            )
        time.sleep(1)
        runs: dict = {name: {"masq": [], "dnat": []} for name in ("empty", "maps", "linear")}
        texts = {"empty": empty_text, "maps": maps_text, "linear": linear_text}
        for _ in range(args.rounds):
            for name, text in texts.items():
                load(text)
                runs[name]["masq"].append(iperf(CLIENT, "203.0.113.10", IPERF_PORT, args.seconds))
                runs[name]["dnat"].append(iperf(SCANNER, "203.0.113.2", DNAT_PORT, args.seconds))
        for host in (SERVER, CLIENT):
            sh(host, "systemctl stop bench-iperf", check=False)
        results["throughput_gbps_median"] = {
            name: {k: round(statistics.median(v), 2) for k, v in r.items()} for name, r in runs.items()
        }
        results["throughput_gbps_runs"] = {
            name: {k: [round(x, 2) for x in v] for k, v in r.items()} for name, r in runs.items()
        }
        empty = results["throughput_gbps_median"]["empty"]
        results["vs_empty_percent"] = {
            name: {k: round(100 * (v / empty[k] - 1), 1) for k, v in m.items()}
            for name, m in results["throughput_gbps_median"].items()
        }

    sh(ROUTER, "nft -f /etc/nftables.conf")
    results["machine"] = f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores"
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
