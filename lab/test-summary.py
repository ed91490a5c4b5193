#!/usr/bin/env python3
"""Print one closing line over the JUnit reports of every pytest run that `make test` made.

`make test` runs pytest twice (unit tests, then Molecule's testinfra verify); this adds their
counts so the last line of the run tells the whole story.
"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(paths: list[str]) -> int:
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for path in paths:
        root = ET.parse(Path(path)).getroot()  # noqa: S314 - our own pytest's report
        for suite in root.iter("testsuite"):
            for key in totals:
                totals[key] += int(suite.get(key, 0))
    failed = totals["failures"] + totals["errors"]
    passed = totals["tests"] - failed - totals["skipped"]
    print(f"make test: {passed} passed, {failed} failed, {totals['skipped']} skipped")
    return 1 if failed or not totals["tests"] else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
