"""`lab/test-summary.py`: the closing line of `make test`, and skips that fail it unless allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "lab" / "test-summary.py"
REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="0" skipped="1" tests="3">
<testcase classname="tests.unit.test_a" name="test_one"/>
<testcase classname="tests.unit.test_a" name="test_two"/>
<testcase classname="tests.unit.test_b" name="test_kernel">
<skipped message="!!! NOT CHECKED: no nft !!!"/></testcase>
</testsuite></testsuites>
"""


def summary(tmp_path: Path, allowed: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "junit.xml").write_text(REPORT)
    (tmp_path / "allowed.txt").write_text(allowed)
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "allowed.txt"), str(tmp_path / "junit.xml")],
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_skip_nobody_allowed_fails_the_run_and_names_the_test(tmp_path: Path) -> None:
    result = summary(tmp_path, "# nothing allowed\n")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "make test: skipped, and not allowed in "
        f"{tmp_path / 'allowed.txt'}: tests.unit.test_b::test_kernel: !!! NOT CHECKED: no nft !!!"
    )
    assert lines[-1] == "make test: 2 passed, 1 failed, 0 skipped"


def test_an_allowed_skip_is_counted_as_a_skip(tmp_path: Path) -> None:
    result = summary(tmp_path, "tests.unit.test_b::test_k* -- the kernel has no nftables here\n")
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[-1] == "make test: 2 passed, 0 failed, 1 skipped"


def test_an_allowance_without_a_reason_is_an_error(tmp_path: Path) -> None:
    result = summary(tmp_path, "tests.unit.test_b::test_kernel\n")
    assert result.returncode != 0
    assert "no reason after ' -- '" in result.stderr
