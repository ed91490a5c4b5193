#!/usr/bin/env python3
"""Benchmark: wall time of `ansible-playbook site.yml` against the lab, idempotent and fresh.

Issue 13's targets: an idempotent converge of the whole lab (after `make demo`) in 30 s or less with
`changed=0` on every host, and a full converge of a fresh lab in 60 s or less. Each run's wall time is
measured around the whole `ansible-playbook` process, as an administrator waits for it, with the load
average before the run (other work on a 2-core machine shows there, not in the number).

Run from the repository root with the virtualenv active:

  bench/converge.py --runs 3            # the lab up and converged: idempotent runs only
  bench/converge.py --fresh --runs 3    # first `make lab-down lab-up`, one fresh converge, then 3 more

Prints one line per run and, with --json FILE, writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECAP = re.compile(
    r"^(?P<host>\S+)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unr>\d+)\s+"
    r"failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def converge(playbook: str, inventory: str) -> dict[str, object]:
    load = os.getloadavg()[0]
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    started = time.monotonic()
    done = subprocess.run(
        ["ansible-playbook", "-i", inventory, playbook],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    hosts = {
        m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unr", "failed")}
        for m in RECAP.finditer(done.stdout)
    }
    if done.returncode != 0 or not hosts:
        sys.stdout.write(done.stdout[-4000:] + done.stderr[-2000:])
        raise SystemExit(f"ansible-playbook failed (exit {done.returncode})")
    return {"seconds": round(seconds, 1), "load_before": round(load, 2), "hosts": hosts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="idempotent runs (default 3)")
    parser.add_argument(
        "--fresh", action="store_true", help="rebuild the lab and time a fresh converge first"
    )
    parser.add_argument("--playbook", default="site.yml")
    parser.add_argument("--inventory", default="inventory/lab")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    results: list[dict[str, object]] = []
    if args.fresh:
        subprocess.run(["make", "lab-down", "lab-up"], cwd=REPO, check=True, capture_output=True)
        results.append({"kind": "fresh", **converge(args.playbook, args.inventory)})
    for _ in range(args.runs):
        results.append({"kind": "idempotent", **converge(args.playbook, args.inventory)})
    for result in results:
        hosts: dict[str, dict[str, int]] = result["hosts"]  # type: ignore[assignment]
        changed = " ".join(f"{host}:{counts['changed']}" for host, counts in hosts.items())
        kind, seconds, load = result["kind"], result["seconds"], result["load_before"]
        print(f"{kind:10} {seconds:6.1f} s  load {load:4.2f}  changed {changed}")
    if args.json:
        machine = {"cpus": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release()}
        args.json.write_text(json.dumps({"machine": machine, "runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
