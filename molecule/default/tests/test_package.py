"""The nattrail package on the router: one unit that dpkg owns, built from this checkout, upgraded cleanly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import PROJECT, converge

BUILDER = PROJECT / "packaging" / "build_deb.py"
STALE = "/usr/lib/python3/dist-packages/nattrail/stale_probe.py"


def build(src: Path, out: Path) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, str(BUILDER), "--src", str(src), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def test_the_router_runs_the_package_built_from_this_checkout_and_dpkg_owns_every_file(lab):
    router = lab["router"]
    with tempfile.TemporaryDirectory() as out:
        want = build(PROJECT / "src" / "nattrail", Path(out))["version"]
    assert router.check("dpkg-query -W -f '${Status} ${Version}' nattrail") == f"install ok installed {want}"
    assert router.check("dpkg -S /usr/bin/nattrail").strip() == "nattrail: /usr/bin/nattrail"
    verify = router.run("dpkg --verify nattrail")
    assert verify.rc == 0 and verify.stdout == "", f"files differ from the package: {verify.stdout}"
    loaded = router.check("python3 -c 'import nattrail.cli; print(nattrail.cli.__file__)'").strip()
    assert loaded == "/usr/lib/python3/dist-packages/nattrail/cli.py"
    assert router.run("test -e /usr/local/bin/nattrail").rc == 1, "the old file-by-file copy is still there"


def test_a_converge_replaces_a_package_with_an_extra_module_and_leaves_no_stale_file(lab):
    """A module deleted from src/ must disappear from the router: install a build with one module more,
    converge the router, and the module is gone while the package is back at this checkout's version."""
    router = lab["router"]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "nattrail"
        shutil.copytree(PROJECT / "src" / "nattrail", src, ignore=shutil.ignore_patterns("__pycache__"))
        (src / "stale_probe.py").write_text('"""A module that the next build no longer has."""\n')
        extra = build(src, Path(tmp) / "out")
        subprocess.run(["docker", "cp", extra["path"], "nattrail-router:/var/tmp/extra.deb"], check=True)
    # And the file-by-file copy that earlier versions of the role left under /usr/local, which the
    # converge that installs the package removes.
    version = router.check("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'").strip()
    old_copy = (f"/usr/local/lib/python{version}/dist-packages/nattrail", "/usr/local/bin/nattrail")
    try:
        router.check("dpkg -i /var/tmp/extra.deb")
        assert router.run(f"test -f {STALE}").rc == 0
        router.check(f"mkdir -p {old_copy[0]} && touch {old_copy[0]}/cli.py && touch {old_copy[1]}")
        result = converge("--limit", "router")
        assert result.returncode == 0, result.stdout[-3000:]
        assert "Install the nattrail package" in result.stdout
        assert router.run(f"test -e {STALE}").rc == 1, "a module removed from the sources stayed behind"
        assert router.run("dpkg --verify nattrail").stdout == ""
        for path in old_copy:
            assert router.run(f"test -e {path}").rc == 1, f"the old file-by-file copy {path} stayed behind"
    finally:
        router.run(f"rm -f /var/tmp/extra.deb {old_copy[1]}; rm -rf {old_copy[0]}")
