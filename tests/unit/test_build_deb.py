"""packaging/build_deb.py: the .deb dpkg reads, reproducible, holding the router's code and only that."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

SRC = REPO / "src" / "nattrail"
_spec = importlib.util.spec_from_file_location("build_deb", REPO / "packaging" / "build_deb.py")
assert _spec is not None and _spec.loader is not None
build_deb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_deb)

needs_dpkg = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None,
    reason="SKIPPED LOUDLY: dpkg-deb not found, the package is not read back",
)


def build(src: Path, out: Path) -> dict[str, str]:
    return build_deb.build(src, out, "0.1.0")


def test_the_same_sources_give_the_same_bytes_a_day_later_from_a_fresh_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "nattrail"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    first = build(copy, tmp_path / "a")
    # A fresh clone has other file times, and the clock has moved on: neither may reach the bytes.
    later = time.time() + 86400
    for path in copy.rglob("*"):
        os.utime(path, (later, later))
    monkeypatch.setattr(time, "time", lambda: later)
    second = build(copy, tmp_path / "b")
    assert first["version"] == second["version"]
    assert first["sha256"] == second["sha256"]
    assert Path(first["path"]).read_bytes() == Path(second["path"]).read_bytes()


def test_any_change_to_a_module_is_a_new_version(tmp_path: Path) -> None:
    copy = tmp_path / "nattrail"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = build(copy, tmp_path / "before")["version"]
    (copy / "who" / "query.py").write_text((copy / "who" / "query.py").read_text() + "\n")
    after = build(copy, tmp_path / "after")["version"]
    assert before != after
    assert before.startswith("0.1.0+h") and after.startswith("0.1.0+h")


@needs_dpkg
def test_dpkg_reads_the_control_fields(tmp_path: Path) -> None:
    built = build(SRC, tmp_path)
    fields = subprocess.run(
        ["dpkg-deb", "-f", built["path"], "Package", "Version", "Architecture", "Depends"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert fields.splitlines() == [
        "Package: nattrail",
        f"Version: {built['version']}",
        "Architecture: all",
        "Depends: python3 (>= 3.11)",
    ]


@needs_dpkg
def test_the_package_holds_every_router_module_the_command_and_no_controller_code(tmp_path: Path) -> None:
    built = build(SRC, tmp_path)
    listing = subprocess.run(["dpkg-deb", "-c", built["path"]], capture_output=True, text=True, check=True)
    files = {line.split()[-1].removeprefix(".") for line in listing.stdout.splitlines() if line[0] == "-"}
    modules = {
        f"/usr/lib/python3/dist-packages/nattrail/{p.relative_to(SRC).as_posix()}"
        for p in SRC.rglob("*.py")
        if "intent" not in p.relative_to(SRC).parts and "__pycache__" not in p.parts
    }
    assert files == modules | {"/usr/bin/nattrail", "/usr/share/doc/nattrail/copyright"}
    owners = {line.split()[1] for line in listing.stdout.splitlines()}
    assert owners == {"root/root"}


@needs_dpkg
def test_the_unpacked_package_runs_its_command_without_this_checkout(tmp_path: Path) -> None:
    built = build(SRC, tmp_path / "out")
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", built["path"], str(root)], check=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(root / "usr/lib/python3/dist-packages"),
    }
    # -S: not even the site-packages of the interpreter running the tests (they hold this checkout).
    result = subprocess.run(
        [sys.executable, "-S", str(root / "usr/bin/nattrail"), "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for command in ("masqlog", "who", "accounting", "ruleset", "drops", "redirect"):
        assert command in result.stdout
    # A subcommand whose module (or a module of its package) is missing is listed too, as unavailable.
    # Under mutmut the package is built from mutated modules, which import mutmut: that absence only.
    reasons = re.findall(r"unavailable \((.*?)\)", " ".join(result.stdout.split()))
    assert set(reasons) <= {"ModuleNotFoundError: No module named 'mutmut'"}, reasons
