#!/usr/bin/env python3
"""Build the nattrail Debian package from src/nattrail, reproducibly, with nothing but Python's stdlib.

The nattrail role runs this on the controller and installs the result with apt, so a router gets the
package as one unit: dpkg owns every file (`dpkg -S`, `dpkg --verify`), an upgrade removes modules that
no longer exist, and `apt remove nattrail` takes it all away. The same sources always give the same bytes
(fixed times and owners, sorted entries, a version from the content), so a second converge copies nothing.
It needs no dpkg-deb: the controller may be any machine that runs Ansible. docs/nattrail.md explains.

Prints one JSON object: {"path", "file", "version", "sha256"}.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import tomllib
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "nattrail"
# Controller-side code (the rules compilers, which need Ansible and netaddr) never runs on a router.
CONTROLLER_ONLY = ("intent",)
PYTHON_DIR = "usr/lib/python3/dist-packages"
# Every member's time: a constant, so that the same sources give the same package (2026-01-01T00:00:00Z).
MTIME = 1767225600

COMMAND = f"""#!/usr/bin/python3
from {PACKAGE}.cli import main

raise SystemExit(main())
"""
# Debian's Python packages compile on install and clean on removal, so no stray __pycache__ is left.
POSTINST = f"""#!/bin/sh
set -e
if [ "$1" = configure ] && command -v py3compile >/dev/null 2>&1; then
    py3compile -p {PACKAGE}
fi
"""
PRERM = f"""#!/bin/sh
set -e
if command -v py3clean >/dev/null 2>&1; then
    py3clean -p {PACKAGE}
fi
"""
COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: nattrail

Files: *
Copyright: nattrail maintainers
License: MIT
"""


def payload(src: Path) -> dict[str, tuple[bytes, int]]:
    """Installed path (relative to /) -> (content, mode) of every file the package holds."""
    files: dict[str, tuple[bytes, int]] = {}
    for path in sorted(src.rglob("*.py")):
        relative = path.relative_to(src)
        if relative.parts[0] in CONTROLLER_ONLY or "__pycache__" in relative.parts:
            continue
        files[f"{PYTHON_DIR}/{PACKAGE}/{relative.as_posix()}"] = (path.read_bytes(), 0o644)
    files["usr/bin/nattrail"] = (COMMAND.encode(), 0o755)
    files[f"usr/share/doc/{PACKAGE}/copyright"] = (COPYRIGHT.encode(), 0o644)
    return files


def version(base: str, files: dict[str, tuple[bytes, int]]) -> str:
    """``base+h<hash>``: the hash of the payload, so that a change of any file is a new version."""
    digest = hashlib.sha256()
    for name, (content, mode) in sorted(files.items()):
        digest.update(f"{name}\0{mode:o}\0{len(content)}\0".encode())
        digest.update(content)
    return f"{base}+h{digest.hexdigest()[:12]}"


def _directories(names: Iterable[str]) -> list[str]:
    dirs = set()
    for name in names:
        parts = name.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return sorted(dirs)


def _tar_gz(entries: dict[str, tuple[bytes, int]], dirs: Iterable[str] = ()) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        members = [(d, None, 0o755) for d in dirs] + [(n, c, m) for n, (c, m) in entries.items()]
        for name, content, mode in sorted(members, key=lambda m: m[0]):
            info = tarfile.TarInfo(f"./{name}")
            info.mtime, info.mode, info.uid, info.gid = MTIME, mode, 0, 0
            info.uname = info.gname = "root"
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=packed, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n"
        out.extend([header.encode("ascii"), data, b"\n" if len(data) % 2 else b""])
    return b"".join(out)


def build(src: Path, out: Path, base: str) -> dict[str, str]:
    files = payload(src)
    ver = version(base, files)
    size_kib = (sum(len(content) for content, _ in files.values()) + 1023) // 1024
    control = (
        f"Package: {PACKAGE}\n"
        f"Version: {ver}\n"
        "Architecture: all\n"
        "Maintainer: nattrail maintainers <root@localhost>\n"
        f"Installed-Size: {size_kib}\n"
        "Depends: python3 (>= 3.11)\n"
        "Section: net\n"
        "Priority: optional\n"
        "Description: nattrail daemons and command for a NAT router appliance\n"
        " The masquerade logger, `nattrail who`, accounting, commit-confirm of the\n"
        " nftables ruleset and the SOCKS redirector. Built by the nattrail Ansible role.\n"
    )
    md5sums = "".join(f"{hashlib.md5(c).hexdigest()}  {n}\n" for n, (c, _) in sorted(files.items()))  # noqa: S324 - dpkg's format
    control_tar = _tar_gz(
        {
            "control": (control.encode(), 0o644),
            "md5sums": (md5sums.encode(), 0o644),
            "postinst": (POSTINST.encode(), 0o755),
            "prerm": (PRERM.encode(), 0o755),
        }
    )
    data_tar = _tar_gz(files, _directories(files))
    deb = _ar([("debian-binary", b"2.0\n"), ("control.tar.gz", control_tar), ("data.tar.gz", data_tar)])
    out.mkdir(parents=True, exist_ok=True)
    name = f"{PACKAGE}_{ver}_all.deb"
    target = out / name
    if not target.exists() or target.read_bytes() != deb:
        # A name of its own per build: site.yml configures routers at their own pace, so two routers'
        # builds of the same sources can run at once; each renames a whole file over the target.
        partial = out / f".{name}.{os.getpid()}.partial"
        partial.write_bytes(deb)
        partial.replace(target)
    return {"path": str(target), "file": name, "version": ver, "sha256": hashlib.sha256(deb).hexdigest()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=REPO / "src" / PACKAGE, help="the package's sources")
    parser.add_argument("--out", type=Path, default=REPO / ".build" / "deb", help="where the .deb goes")
    parser.add_argument("--base-version", help="default: [project] version of pyproject.toml")
    args = parser.parse_args(argv)
    base = args.base_version or tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    if not (args.src / "__init__.py").is_file():
        parser.error(f"{args.src} is not a Python package (no __init__.py)")
    print(json.dumps(build(args.src, args.out, base)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
