#!/usr/bin/env python3
"""Print one closing line over the JUnit reports of every pytest run that `make test` made.

`make test` runs pytest twice (unit tests, then Molecule's testinfra verify); this adds their
counts so the last line of the run tells the whole story. A skipped test fails the run unless
tests/allowed-skips.txt allows it, with a reason: CI cannot be green by skipping.

usage: test-summary.py ALLOWED_SKIPS REPORT.xml...
"""

import fnmatch
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def allowed_skips(path: Path) -> list[tuple[str, str]]:
    """(pattern, reason) per line; a line without a reason is an error, not a silent allowance."""
    allowed = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pattern, _, reason = line.partition(" -- ")
        if not reason.strip():
            raise SystemExit(f"{path}:{number}: no reason after ' -- ': {line!r}")
        allowed.append((pattern.strip(), reason.strip()))
    return allowed


def main(argv: list[str]) -> int:
    allowed = allowed_skips(Path(argv[0]))
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    unexplained = []
    for path in argv[1:]:
        root = ET.parse(Path(path)).getroot()  # noqa: S314 - our own pytest's report
        for suite in root.iter("testsuite"):
            for key in totals:
                totals[key] += int(suite.get(key, 0))
        for case in root.iter("testcase"):
            skipped = case.find("skipped")
            if skipped is None:
                continue
            test = f"{case.get('classname')}::{case.get('name')}"
            if not any(fnmatch.fnmatchcase(test, pattern) for pattern, _ in allowed):
                unexplained.append(f"{test}: {skipped.get('message', '')}")
    failed = totals["failures"] + totals["errors"]
    passed = totals["tests"] - failed - totals["skipped"]
    for line in unexplained:
        print(f"make test: skipped, and not allowed in {argv[0]}: {line}")
    # An unexplained skip counts as a failure, not as a skip.
    skipped = totals["skipped"] - len(unexplained)
    print(f"make test: {passed} passed, {failed + len(unexplained)} failed, {skipped} skipped")
    return 1 if failed or unexplained or not totals["tests"] else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
