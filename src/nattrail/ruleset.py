"""`nattrail ruleset`: apply a candidate ruleset safely, confirm it, or roll it back.

apply    checks the candidate (nft -c), carries the accounting counters over, loads it in one
         transaction and, unless the timeout is 0, schedules a rollback to the confirmed ruleset;
confirm  proves that it arrived over a TCP connection opened after the apply (a new SSH login, not
         one multiplexed over a connection the old ruleset let in), then cancels the pending
         rollback and installs the candidate as the ruleset loaded at boot;
rollback reloads the confirmed ruleset (what the scheduled timer runs);
carry    writes the counters that the next load must start from (nftables.service runs it before
         it flushes the ruleset at shutdown, so a reboot keeps the counts too).

Counters survive a reload because the ruleset includes ``<state>/carry/*.nft`` between deleting
and re-creating the table: the counter objects declared there, with their current values, are
created first, and the ruleset's own declarations of the same counters then change nothing.
Elements added at run time to a timeout set (the blocklist) survive the same way: the ruleset
includes ``<state>/carry-sets/*.nft`` after the table, which adds them back with the time they had
left. Only sets the new ruleset declares with ``flags timeout`` and the same type are carried;
``dynamic`` sets are the kernel's own rate meters and start afresh.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from nattrail import accounting, carrier, names
from nattrail.jsonlog import utc_timestamp

ROLLBACK_UNIT = "nattrail-rollback"
COUNTER_DECLARATION = re.compile(r"^\s*counter\s+([A-Za-z_][A-Za-z0-9_]*)\s*\{([^}]*)\}", re.MULTILINE)
COMMENT = re.compile(r'comment\s+"([^"]*)"')
SET_DECLARATION = re.compile(r"^\s*set\s+([A-Za-z_][A-Za-z0-9_]*)\s*\{([^}]*)\}", re.MULTILINE)
SET_TYPE = re.compile(r"\btype\s+([A-Za-z0-9_ .]+?)\s*(?:;|$)", re.MULTILINE)
SET_FLAGS = re.compile(r"\bflags\s+([a-z, ]+?)\s*(?:;|$)", re.MULTILINE)
NFT_TIMEOUT = 60


class RulesetError(Exception):
    pass


@dataclass(frozen=True)
class Paths:
    candidate: Path
    target: Path
    state: Path
    family: str
    table: str

    @property
    def carry_file(self) -> Path:
        return self.state / "carry" / "accounting.nft"

    @property
    def carry_sets_file(self) -> Path:
        return self.state / "carry-sets" / "sets.nft"

    @property
    def counters_json(self) -> Path:
        return self.state / "accounting.json"

    @property
    def baseline(self) -> Path:
        """The connections that existed right after the apply: a confirmation over one proves nothing."""
        return self.state / "confirm-baseline.json"


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=NFT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RulesetError(f"cannot run {' '.join(argv)}: {exc}") from None


def nft_load(path: Path, check_only: bool = False) -> None:
    argv = ["nft", "-c", "-f", str(path)] if check_only else ["nft", "-f", str(path)]
    result = run(argv)
    if result.returncode != 0:
        raise RulesetError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def declared_counters(ruleset: Path) -> dict[str, str | None]:
    """The counter objects a ruleset declares, with their comments."""
    found: dict[str, str | None] = {}
    for name, body in COUNTER_DECLARATION.findall(ruleset.read_text(encoding="utf-8")):
        comment = COMMENT.search(body)
        found[name] = comment.group(1) if comment else None
    return found


def carry_text(
    counters: dict[str, accounting.Counter], family: str, table: str, keep: dict[str, str | None]
) -> str:
    """nft statements that create the kept counters with their current values.

    The comment comes from the new ruleset: the carried declaration is the one that counts, so it
    must say what the new ruleset says.
    """
    lines = [
        f"# Written by nattrail ruleset at {utc_timestamp()}: counters carried over a reload.",
        f"table {family} {table} {{",
    ]
    for name in sorted(set(counters) & set(keep)):
        c = counters[name]
        comment = f' comment "{keep[name]}"' if keep[name] is not None else ""
        lines.append(f"  counter {name} {{ packets {c.packets} bytes {c.bytes}{comment} }}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def declared_timeout_sets(ruleset: Path) -> dict[str, str]:
    """The sets a ruleset declares with ``flags timeout`` (not ``dynamic``), with their types."""
    found: dict[str, str] = {}
    for name, body in SET_DECLARATION.findall(ruleset.read_text(encoding="utf-8")):
        kind, flags = SET_TYPE.search(body), SET_FLAGS.search(body)
        flag_set = {f.strip() for f in flags.group(1).split(",")} if flags else set()
        if kind and "timeout" in flag_set and "dynamic" not in flag_set:
            found[name] = kind.group(1)
    return found


def set_elements_text(document: str, family: str, table: str, keep: dict[str, str]) -> tuple[str, int]:
    """nft statements that add back the live elements of the kept sets, each with the time it had left."""
    try:
        items = json.loads(document).get("nftables", [])
    except (ValueError, AttributeError) as exc:
        raise RulesetError(f"nft printed invalid JSON for the sets: {exc}") from None
    lines = [f"# Written by nattrail ruleset at {utc_timestamp()}: set elements carried over a reload."]
    count = 0
    for item in items:
        live = item.get("set") if isinstance(item, dict) else None
        if not isinstance(live, dict) or keep.get(live.get("name")) != live.get("type"):
            continue
        elements = []
        for element in live.get("elem", []):
            # Only plain values with a time left: an element whose set has no timeout cannot be here.
            entry = element.get("elem") if isinstance(element, dict) else None
            if isinstance(entry, dict) and isinstance(entry.get("val"), str):
                left = entry.get("expires")
                if isinstance(left, int) and left > 0:
                    elements.append(f"{entry['val']} timeout {left}s")
        if elements:
            lines.append(f"add element {family} {table} {live['name']} {{ {', '.join(elements)} }}")
            count += len(elements)
    return "\n".join(lines) + "\n", count


def carry(paths: Paths, keep_from: Path) -> dict[str, int]:
    """Save the live counters and timeout-set elements that ``keep_from`` declares; say how many."""
    try:
        counters = accounting.read_counters(paths.family, paths.table, names=None)
    except accounting.TableMissing:
        return {"counters": 0, "elements": 0}
    except accounting.AccountingError as exc:
        raise RulesetError(str(exc)) from None
    keep = declared_counters(keep_from)
    sets = run(["nft", "-j", "list", "sets", "table", paths.family, paths.table])
    if sets.returncode != 0:
        raise RulesetError(f"nft list sets failed: {sets.stderr.strip()}")
    elements, element_count = set_elements_text(
        sets.stdout, paths.family, paths.table, declared_timeout_sets(keep_from)
    )
    for path in (paths.carry_file, paths.carry_sets_file):
        path.parent.mkdir(parents=True, exist_ok=True)
    accounting.write_atomic(paths.carry_file, carry_text(counters, paths.family, paths.table, keep))
    accounting.write_atomic(paths.carry_sets_file, elements)
    accounted = {n: c for n, c in counters.items() if accounting.COUNTER_NAME.match(n)}
    document = accounting.saved_json(accounted, f"{paths.family} {paths.table}", utc_timestamp())
    accounting.write_atomic(paths.counters_json, json.dumps(document, indent=2) + "\n")
    return {"counters": len(set(counters) & set(keep)), "elements": element_count}


def schedule_rollback(paths: Paths, seconds: int) -> None:
    run(["systemctl", "stop", f"{ROLLBACK_UNIT}.timer", f"{ROLLBACK_UNIT}.service"])
    run(["systemctl", "reset-failed", f"{ROLLBACK_UNIT}.timer", f"{ROLLBACK_UNIT}.service"])
    argv = [
        "systemd-run",
        f"--unit={ROLLBACK_UNIT}",
        f"--on-active={seconds}s",
        "--timer-property=AccuracySec=1s",
        sys.executable,
        "-m",
        "nattrail",
        "ruleset",
        "rollback",
        "--target",
        str(paths.target),
        "--state-dir",
        str(paths.state),
        "--family",
        paths.family,
        "--table",
        paths.table,
    ]
    result = run(argv)
    if result.returncode != 0:
        raise RulesetError(f"could not schedule the rollback: {result.stderr.strip()}")


def rollback_pending() -> bool:
    return run(["systemctl", "is-active", "--quiet", f"{ROLLBACK_UNIT}.timer"]).returncode == 0


def _carry_files(paths: Paths) -> dict[Path, bytes | None]:
    return {
        p: p.read_bytes() if p.exists() else None
        for p in (paths.carry_file, paths.carry_sets_file, paths.counters_json)
    }


def _put_back(saved: dict[Path, bytes | None]) -> None:
    for path, content in saved.items():
        if content is None:
            path.unlink(missing_ok=True)
        else:
            accounting.write_atomic(path, content.decode("utf-8"))


def apply(paths: Paths, confirm_timeout: int) -> dict[str, object]:
    # The candidate includes the carry files, so it is checked with the carry it will be loaded with:
    # the files the loaded ruleset left may name sets the candidate no longer has, or with another type.
    before = _carry_files(paths)
    carried = carry(paths, paths.candidate)
    try:
        nft_load(paths.candidate, check_only=True)
    except RulesetError:
        # A refused candidate leaves the carry of the ruleset still loaded, which the next boot needs.
        _put_back(before)
        raise
    if confirm_timeout > 0 and not paths.target.exists():
        raise RulesetError(f"{paths.target} does not exist: there would be nothing to roll back to")
    nft_load(paths.candidate)
    record: dict[str, object] = {
        "event": "applied",
        "at": utc_timestamp(),
        "counters_carried": carried["counters"],
        "elements_carried": carried["elements"],
    }
    if confirm_timeout > 0:
        # Taken after the load: a connection opened since then passed the new ruleset's checks.
        baseline = {"applied": record["at"], "connections": carrier.open_connections()}
        accounting.write_atomic(paths.baseline, json.dumps(baseline, indent=2) + "\n", mode=0o600)
        schedule_rollback(paths, confirm_timeout)
        record["rollback_in_s"] = confirm_timeout
    else:
        install(paths)
    return record


def install(paths: Paths) -> None:
    accounting.write_atomic(paths.target, paths.candidate.read_text(encoding="utf-8"))


def new_connection(paths: Paths, carrying: carrier.TcpSocket | None) -> str:
    """The tuple of ``carrying`` if it proves that new connections reach the router; else RulesetError."""
    if carrying is None:
        raise RulesetError(
            "this confirmation did not arrive over a network connection to the router (a console, "
            "docker exec or Ansible's local connection), so it proves nothing about the administrator's "
            "path; confirm from a host that logs in over SSH (nat_router_confirm_from), or pass "
            "--no-proof to confirm by hand at the console"
        )
    try:
        baseline = json.loads(paths.baseline.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RulesetError(f"cannot read the connections recorded at the apply ({exc})") from None
    if carrying.tuple in baseline.get("connections", []):
        raise RulesetError(
            f"this confirmation came over {carrying.tuple}, a connection that was already open when "
            f"the ruleset was applied at {baseline.get('applied')} (a multiplexed SSH connection, such "
            "as a ControlMaster): it proves nothing about new connections. Close it, or turn SSH "
            "multiplexing off for the router, and confirm over a new connection"
        )
    return carrying.tuple


def confirm(paths: Paths, proof: bool = True) -> dict[str, object]:
    if not rollback_pending():
        raise RulesetError("nothing to confirm: no rollback is pending (it may already have run)")
    record: dict[str, object] = {"event": "confirmed", "at": utc_timestamp(), "installed": str(paths.target)}
    if proof:
        record["over"] = new_connection(paths, carrier.carrying_connection())
    result = run(["systemctl", "stop", f"{ROLLBACK_UNIT}.timer"])
    if result.returncode != 0:
        raise RulesetError(f"could not cancel the rollback: {result.stderr.strip()}")
    install(paths)
    return record


def rollback(paths: Paths) -> dict[str, object]:
    carry(paths, paths.target)
    nft_load(paths.target)
    return {"event": "rolled_back", "at": utc_timestamp(), "loaded": str(paths.target)}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("ruleset", help="apply, confirm or roll back the router's ruleset")
    parser.add_argument("action", choices=["apply", "confirm", "rollback", "carry"])
    parser.add_argument("--candidate", type=Path, default=Path("/etc/nftables.conf.candidate"))
    parser.add_argument("--target", type=Path, default=Path("/etc/nftables.conf"))
    parser.add_argument("--state-dir", type=Path, default=Path("/var/lib/nattrail"))
    parser.add_argument("--family", default=names.FAMILY)
    parser.add_argument("--table", default=names.TABLE)
    parser.add_argument("--confirm-timeout", type=int, default=60, help="seconds; 0 applies without rollback")
    parser.add_argument(
        "--no-proof",
        dest="proof",
        action="store_false",
        help="confirm without proving that a new connection reached the router (by hand, at the console)",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    paths = Paths(args.candidate, args.target, args.state_dir, args.family, args.table)
    try:
        if args.action == "apply":
            record = apply(paths, args.confirm_timeout)
        elif args.action == "confirm":
            record = confirm(paths, proof=args.proof)
        elif args.action == "rollback":
            record = rollback(paths)
        else:
            record = {"event": "carried", "at": utc_timestamp(), **carry(paths, paths.target)}
    except (RulesetError, OSError) as exc:
        print(json.dumps({"event": "error", "action": args.action, "error": str(exc)}), file=sys.stderr)
        return 1
    print(json.dumps(record))
    return 0
