#!/usr/bin/env python3
"""Mutation scores of `make mutants`, per module and per goal, from the results mutmut left in mutants/.

A mutant counts as killed when a test failed or timed out on it; one that no test reaches counts as a
survivor (an untested line is exactly what the score is meant to show). Exits 1 when a group misses its
goal (docs/testing.md states the goals), 2 when there are no results to read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

# Goals of issue 18: the rules compiler at 95 %, the daemons' decision code at 90 %.
GROUPS: dict[str, tuple[float, tuple[str, ...]]] = {
    "rules compiler": (95.0, ("intent/nat_router.py", "intent/ulogd.py")),
    "daemons": (
        90.0,
        (
            "who/times.py",
            "who/query.py",
            "who/logs.py",
            "who/join.py",
            "who/answer.py",
            "who/report.py",
            "who/command.py",
            "accounting.py",
            "ruleset.py",
            "masqlog/config.py",
            "masqlog/records.py",
            "masqlog/tracker.py",
            "masqlog/daemon.py",
            "masqlog/kernel.py",
            "masqlog/service.py",
            "masqlog/command.py",
            "startup.py",
            "jsonlog.py",
            "ident.py",
        ),
    ),
}
KILLED = {1, 3, 24, -24, 36, 152, 255}
SURVIVED = {0, 5, 33}  # survived, or no test reaches it
# Anything else that ran (e.g. -15: the test run was ended by SIGTERM, mutmut's "suspicious") counts as a
# survivor too: the score never gives credit for an outcome it cannot name.


def module_counts(meta: Path) -> tuple[Counter[str], list[str]]:
    """Killed / survived / unchecked counts of one module, and the survivors' names."""
    data = json.loads(meta.read_text())
    counts: Counter[str] = Counter()
    survivors = []
    for name, code in data["exit_code_by_key"].items():
        if code in KILLED:
            counts["killed"] += 1
        elif code is None:
            counts["unchecked"] += 1
        else:
            counts["survived"] += 1
            survivors.append(name)
    return counts, survivors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants/src/nattrail"))
    parser.add_argument("--survivors", action="store_true", help="list every surviving mutant's name")
    args = parser.parse_args()
    failed = False
    for group, (goal, modules) in GROUPS.items():
        total: Counter[str] = Counter()
        for module in modules:
            meta = args.mutants / f"{module}.meta"
            if not meta.exists():
                print(f"no mutmut results for {module} ({meta}): run `make mutants` first", file=sys.stderr)
                return 2
            counts, survivors = module_counts(meta)
            total.update(counts)
            checked = counts["killed"] + counts["survived"]
            score = 100.0 * counts["killed"] / checked if checked else 0.0
            line = f"  {module:24} {counts['killed']:5} killed {counts['survived']:4} survived {score:6.1f} %"
            if counts["unchecked"]:
                line += f"  ({counts['unchecked']} not checked: rerun)"
            print(line)
            if args.survivors:
                for name in survivors:
                    print(f"      {name}")
        checked = total["killed"] + total["survived"]
        score = 100.0 * total["killed"] / checked if checked else 0.0
        verdict = "meets" if score >= goal and not total["unchecked"] else "MISSES"
        failed |= verdict == "MISSES"
        print(
            f"{group}: {total['killed']}/{checked} killed, {score:.1f} % ({verdict} the goal of {goal:.0f} %)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
