"""`nattrail ruleset` apply / confirm / rollback / carry, called in-process against a real nft.

Each nft-using step runs in a thread of this process that has a network namespace of its own
(unshare(CLONE_NEWNET) is per thread, and the nft processes it starts inherit it): real kernel
rulesets, never the host's. systemd is not cheap to have here, so ``systemctl`` and ``systemd-run``
are small stand-ins on PATH that record how they were called and answer as told.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import netns_unavailable

from nattrail import accounting, carrier, ruleset
from nattrail.cli import build_parser
from nattrail.cli import main as cli_main

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
HEADER = re.compile(r"^# Written by nattrail ruleset at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z: ")


@functools.cache
def _netns_problem() -> str | None:
    return netns_unavailable()


def in_private_netns(action: Callable[[], T]) -> T:
    """``action()`` in a thread with a new, empty network namespace: what its nft loads is gone with it."""
    reason = _netns_problem()
    if reason:
        pytest.skip(f"!!! RULESET COMMIT-CONFIRM NOT CHECKED AGAINST NFT: {reason} !!!")
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
            if os.readlink("/proc/thread-self/ns/net") == os.readlink("/proc/self/ns/net"):
                raise SystemExit("refusing to load nft rules: not inside a private network namespace")
            outcome["value"] = action()
        except BaseException as exc:  # handed to the test's own thread
            outcome["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def nft(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True, check=True)
    return result.stdout


STUB = """#!/bin/sh
here=$(dirname "$0")
{ printf '%s' "${0##*/}"; for arg in "$@"; do printf '\t%s' "$arg"; done; printf '\n'; } >>"$here/calls"
key=${0##*/}
[ "$key" = systemctl ] && key="$key-$1"
[ -f "$here/answer.$key" ] || exit 0
tail -n +2 "$here/answer.$key" >&2
exit "$(head -n 1 "$here/answer.$key")"
"""


class Systemd:
    """``systemctl`` and ``systemd-run`` on PATH: record each call, exit 0 unless told otherwise."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir()
        for name in ("systemctl", "systemd-run"):
            path = directory / name
            path.write_text(STUB)
            path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def answer(self, command: str, rc: int, stderr: str = "") -> None:
        """``command`` is ``systemd-run`` or ``systemctl-<verb>``."""
        (self.directory / f"answer.{command}").write_text(f"{rc}\n{stderr}")

    def calls(self) -> list[list[str]]:
        log = self.directory / "calls"
        return [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Systemd:
    stub = Systemd(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{stub.directory}{os.pathsep}{os.environ.get('PATH', '')}")
    return stub


def paths(tmp_path: Path, family: str = "inet") -> ruleset.Paths:
    return ruleset.Paths(
        tmp_path / "candidate.nft", tmp_path / "target.nft", tmp_path / "state", family, "nattrail"
    )


def ruleset_text(p: ruleset.Paths, body: str) -> str:
    """A ruleset shaped like the role's: carried counters before the table, carried elements after."""
    return (
        f"table inet nattrail {{}}\ndelete table inet nattrail\n"
        f'include "{p.state}/carry/*.nft"\n'
        f"table inet nattrail {{\n{body}}}\n"
        f'include "{p.state}/carry-sets/*.nft"\n'
    )


LIVE_BODY = (
    '  counter acct_0_in { packets 5 bytes 500 comment "10.77.0.0/24" }\n'
    "  counter acct_old_out { packets 7 bytes 700 }\n"
    "  counter drops_x { packets 3 bytes 300 }\n"
    "  set blocklist { type ipv4_addr; flags timeout; elements = { 203.0.113.7 timeout 1h } }\n"
    "  set echo_sources { type ipv4_addr; flags dynamic, timeout; timeout 1m; elements = { 10.77.0.9 } }\n"
    "  set retyped { type ipv4_addr; flags timeout; elements = { 198.51.100.1 timeout 1h } }\n"
)
CANDIDATE_BODY = (
    '  counter acct_0_in { comment "10.77.0.0/25" }\n'
    "  counter acct_1_in { }\n"
    "  counter drops_x { }\n"
    "  set blocklist { type ipv4_addr; flags timeout; }\n"
    "  set echo_sources { type ipv4_addr; flags dynamic, timeout; timeout 1m; }\n"
    "  set retyped { type ipv4_addr . inet_service; flags timeout; }\n"
)


def live_state(p: ruleset.Paths) -> dict[str, Any]:
    """The counters (packets, bytes, comment) and set elements of the live table."""
    counters = json.loads(nft("-j", "list", "counters", "table", "inet", "nattrail"))["nftables"]
    sets = json.loads(nft("-j", "list", "sets", "table", "inet", "nattrail"))["nftables"]
    elements: dict[str, list[Any]] = {}
    for item in sets:
        if "set" in item:
            elements[item["set"]["name"]] = [
                e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
                for e in item["set"].get("elem", [])
            ]
    return {
        "counters": {
            i["counter"]["name"]: (
                i["counter"]["packets"],
                i["counter"]["bytes"],
                i["counter"].get("comment"),
            )
            for i in counters
            if "counter" in i
        },
        "elements": elements,
    }


def prepare(tmp_path: Path) -> ruleset.Paths:
    """The live ruleset (also the confirmed one) has counted and blocked; the candidate is written."""
    p = paths(tmp_path)
    p.target.write_text(ruleset_text(p, LIVE_BODY))
    p.candidate.write_text(ruleset_text(p, CANDIDATE_BODY))
    return p


# --- apply ------------------------------------------------------------------------------------------------


def test_apply_without_a_timeout_carries_counters_and_elements_and_installs(tmp_path: Path) -> None:
    p = prepare(tmp_path)

    def scenario() -> tuple[dict[str, object], dict[str, Any]]:
        nft("-f", str(p.target))
        record = ruleset.apply(p, confirm_timeout=0)
        return record, live_state(p)

    record, live = in_private_netns(scenario)
    assert {k: v for k, v in record.items() if k != "at"} == {
        "event": "applied",
        "counters_carried": 2,
        "elements_carried": 1,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.*Z", str(record["at"]))
    # Live values, the new ruleset's comments; a new counter starts at zero, a dropped one is gone.
    assert live["counters"] == {
        "acct_0_in": (5, 500, "10.77.0.0/25"),
        "acct_1_in": (0, 0, None),
        "drops_x": (3, 300, None),
    }
    # The blocklist keeps its entry; the meter starts afresh; a set whose type changed starts empty.
    assert live["elements"] == {"blocklist": ["203.0.113.7"], "echo_sources": [], "retyped": []}
    # Installed as the ruleset loaded at boot, since nothing will roll it back.
    assert p.target.read_text() == p.candidate.read_text()
    assert not p.baseline.exists()


def test_carry_writes_the_files_the_ruleset_includes(tmp_path: Path) -> None:
    p = prepare(tmp_path)

    def scenario() -> dict[str, int]:
        nft("-f", str(p.target))
        return ruleset.carry(p, p.candidate)

    assert in_private_netns(scenario) == {"counters": 2, "elements": 1}
    counters = (p.state / "carry" / "accounting.nft").read_text().splitlines()
    assert HEADER.match(counters[0]) and counters[0].endswith(": counters carried over a reload.")
    assert counters[1:] == [
        "table inet nattrail {",
        '  counter acct_0_in { packets 5 bytes 500 comment "10.77.0.0/25" }',
        "  counter drops_x { packets 3 bytes 300 }",
        "}",
    ]
    elements = (p.state / "carry-sets" / "sets.nft").read_text().splitlines()
    assert HEADER.match(elements[0]) and elements[0].endswith(": set elements carried over a reload.")
    assert len(elements) == 2
    assert re.fullmatch(
        r"add element inet nattrail blocklist \{ 203\.0\.113\.7 timeout (\d+)s \}", elements[1]
    )
    left = int(re.findall(r"timeout (\d+)s", elements[1])[0])
    assert 3000 < left <= 3600
    # Every accounting counter counted so far is saved, the one the candidate drops included.
    saved_text = (p.state / "accounting.json").read_text()
    saved = json.loads(saved_text)
    # Laid out as `nattrail accounting save` writes the same file.
    assert saved_text == json.dumps(saved, indent=2) + "\n"
    assert saved["table"] == "inet nattrail"
    assert saved["counters"] == {
        "acct_0_in": {"packets": 5, "bytes": 500, "comment": "10.77.0.0/24"},
        "acct_old_out": {"packets": 7, "bytes": 700, "comment": None},
    }
    assert re.fullmatch(r"\d{4}-.*Z", saved["saved_at"])


def test_carry_with_no_live_table_carries_nothing(tmp_path: Path) -> None:
    p = prepare(tmp_path)
    assert in_private_netns(lambda: ruleset.carry(p, p.candidate)) == {"counters": 0, "elements": 0}
    assert not p.state.exists()


def test_carry_reports_an_nft_failure(tmp_path: Path) -> None:
    p = paths(tmp_path, family="bogus")
    with pytest.raises(ruleset.RulesetError, match=r"^nft list tables bogus failed: .+"):
        in_private_netns(lambda: ruleset.carry(p, p.candidate))


def test_apply_with_a_timeout_schedules_the_rollback_and_keeps_the_target(
    tmp_path: Path, systemd: Systemd
) -> None:
    p = prepare(tmp_path)
    target_before = p.target.read_text()

    def scenario() -> tuple[dict[str, object], dict[str, Any], dict[str, Any]]:
        nft("-f", str(p.target))
        record, live = ruleset.apply(p, confirm_timeout=45), live_state(p)
        # What the timer would run when it fires: it must put the confirmed ruleset back.
        command = systemd.calls()[-1][4:]
        env = {**os.environ, "PYTHONPATH": str(Path(ruleset.__file__).parents[1])}
        subprocess.run(command, check=True, capture_output=True, env=env)
        return record, live, live_state(p)

    record, live, rolled_back = in_private_netns(scenario)
    assert record["event"] == "applied" and record["rollback_in_s"] == 45
    assert (record["counters_carried"], record["elements_carried"]) == (2, 1)
    assert "acct_1_in" in live["counters"]  # loaded
    assert p.target.read_text() == target_before  # not installed until confirmed
    unit = ["nattrail-rollback.timer", "nattrail-rollback.service"]
    assert systemd.calls()[:2] == [["systemctl", "stop", *unit], ["systemctl", "reset-failed", *unit]]
    scheduled = systemd.calls()[2]
    assert scheduled[:4] == [
        "systemd-run",
        "--unit=nattrail-rollback",
        "--on-active=45s",
        "--timer-property=AccuracySec=1s",
    ]
    # Run, the scheduled command restored the confirmed ruleset: its counter set, with the live values.
    assert "acct_1_in" not in rolled_back["counters"]
    assert rolled_back["counters"]["acct_0_in"][:2] == live["counters"]["acct_0_in"][:2]
    baseline = json.loads((p.state / "confirm-baseline.json").read_text())
    assert baseline["applied"] == record["at"]
    assert isinstance(baseline["connections"], list)
    assert stat.S_IMODE((p.state / "confirm-baseline.json").stat().st_mode) == 0o600


def test_apply_refuses_a_timeout_with_nothing_to_roll_back_to(tmp_path: Path, systemd: Systemd) -> None:
    p = prepare(tmp_path)
    live_text = p.target.read_text()
    p.target.unlink()

    def scenario() -> dict[str, Any]:
        nft("-f", "-", stdin=live_text)
        with pytest.raises(ruleset.RulesetError) as caught:
            ruleset.apply(p, confirm_timeout=1)
        assert str(caught.value) == f"{p.target} does not exist: there would be nothing to roll back to"
        return live_state(p)

    live = in_private_netns(scenario)
    assert "acct_1_in" not in live["counters"]  # the candidate was not loaded
    assert systemd.calls() == []


def test_apply_without_a_timeout_needs_no_target(tmp_path: Path) -> None:
    p = prepare(tmp_path)
    p.target.unlink()
    record = in_private_netns(lambda: ruleset.apply(p, confirm_timeout=0))
    assert record["counters_carried"] == 0
    assert p.target.read_text() == p.candidate.read_text()


def test_a_candidate_nft_rejects_is_neither_carried_nor_loaded(tmp_path: Path) -> None:
    p = prepare(tmp_path)
    p.candidate.write_text("table inet nattrail {\n  chain c { bogus }\n}\n")

    def scenario() -> dict[str, Any]:
        nft("-f", str(p.target))
        with pytest.raises(ruleset.RulesetError) as caught:
            ruleset.apply(p, confirm_timeout=0)
        message = str(caught.value)
        assert message.startswith(f"nft -c -f {p.candidate} failed: ")
        assert "Error" in message and not message.endswith("\n")
        return live_state(p)

    live = in_private_netns(scenario)
    assert live["counters"]["acct_0_in"] == (5, 500, "10.77.0.0/24")
    # The carry files are what they were (none): the next boot loads the confirmed ruleset with them.
    assert not [f for f in (p.carry_file, p.carry_sets_file, p.counters_json) if f.exists()]


def test_a_candidate_nft_rejects_leaves_the_previous_carry_files_as_they_were(tmp_path: Path) -> None:
    p = prepare(tmp_path)

    def scenario() -> tuple[dict[Path, bytes], dict[Path, bytes]]:
        nft("-f", str(p.target))
        ruleset.carry(p, p.target)
        before = {f: f.read_bytes() for f in (p.carry_file, p.carry_sets_file, p.counters_json)}
        p.candidate.write_text("table inet nattrail {\n  chain c { bogus }\n}\n")
        with pytest.raises(ruleset.RulesetError):
            ruleset.apply(p, confirm_timeout=0)
        return before, {f: f.read_bytes() for f in before}

    before, after = in_private_netns(scenario)
    assert after == before


def test_apply_after_a_carry_checks_the_candidate_with_its_own_carry(tmp_path: Path) -> None:
    """The carry files of the loaded ruleset hold an element of \"retyped\" as ipv4_addr; the candidate
    retypes the set. Checked against those stale files, nft refused the candidate (mutation testing
    found it): the carry must be written for the candidate before the check."""
    p = prepare(tmp_path)

    def scenario() -> dict[str, object]:
        nft("-f", str(p.target))
        ruleset.carry(p, p.target)
        return ruleset.apply(p, confirm_timeout=0)

    record = in_private_netns(scenario)
    assert record["event"] == "applied"
    assert p.target.read_text() == p.candidate.read_text()


def test_nft_load_checks_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "r.nft"
    path.write_text("table inet probe {\n  counter c { }\n}\n")

    def scenario() -> tuple[str, str]:
        ruleset.nft_load(path, check_only=True)
        checked = nft("list", "tables")
        ruleset.nft_load(path)
        return checked, nft("list", "tables")

    assert in_private_netns(scenario) == ("", "table inet probe\n")


def test_nft_load_failure_names_the_command_and_nft_error(tmp_path: Path) -> None:
    path = tmp_path / "r.nft"
    path.write_text("table inet probe {\n  bogus\n}\n")
    with pytest.raises(
        ruleset.RulesetError, match=rf"^nft -f {re.escape(str(path))} failed: {re.escape(str(path))}:2"
    ):
        in_private_netns(lambda: ruleset.nft_load(path))


def test_a_tool_that_cannot_run_is_a_ruleset_error() -> None:
    with pytest.raises(ruleset.RulesetError) as caught:
        ruleset.run(["nattrail-no-such-tool", "--flag"])
    assert str(caught.value).startswith("cannot run nattrail-no-such-tool --flag: [Errno 2]")


def test_run_captures_output_as_text() -> None:
    result = ruleset.run(
        [sys.executable, "-c", "import sys; print('out'); sys.stderr.write('err'); sys.exit(3)"]
    )
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err")


def test_a_rollback_that_cannot_be_scheduled_is_an_error(tmp_path: Path, systemd: Systemd) -> None:
    systemd.answer("systemd-run", 1, "Failed to start transient timer unit: busy\n")
    with pytest.raises(ruleset.RulesetError) as caught:
        ruleset.schedule_rollback(paths(tmp_path), 10)
    assert str(caught.value) == "could not schedule the rollback: Failed to start transient timer unit: busy"


# --- rollback -----------------------------------------------------------------------------------------------


def test_rollback_reloads_the_confirmed_ruleset_keeping_counters(tmp_path: Path) -> None:
    p = prepare(tmp_path)

    def scenario() -> tuple[dict[str, object], dict[str, Any]]:
        nft("-f", str(p.candidate))
        nft("add", "element", "inet", "nattrail", "blocklist", "{ 198.51.100.1 timeout 1h }")
        return ruleset.rollback(p), live_state(p)

    record, live = in_private_netns(scenario)
    assert record["event"] == "rolled_back" and record["loaded"] == str(p.target)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.*Z", str(record["at"]))
    # The live counts (the candidate's, from zero) are kept over the confirmed ruleset's own values;
    # what only the confirmed ruleset declares comes back with its values.
    assert live["counters"]["acct_old_out"] == (7, 700, None)
    assert live["counters"]["acct_0_in"][:2] == (0, 0)
    assert "acct_1_in" not in live["counters"]
    assert "198.51.100.1" in live["elements"]["blocklist"]
    assert set(json.loads(p.counters_json.read_text())["counters"]) == {"acct_0_in", "acct_1_in"}


# --- confirm ------------------------------------------------------------------------------------------------


def test_confirm_with_nothing_pending_is_refused(tmp_path: Path, systemd: Systemd) -> None:
    systemd.answer("systemctl-is-active", 3)
    p = prepare(tmp_path)
    with pytest.raises(ruleset.RulesetError) as caught:
        ruleset.confirm(p, proof=False)
    assert str(caught.value) == "nothing to confirm: no rollback is pending (it may already have run)"
    assert systemd.calls() == [["systemctl", "is-active", "--quiet", "nattrail-rollback.timer"]]
    assert p.target.read_text() != p.candidate.read_text()


def test_rollback_pending_asks_whether_the_timer_is_active(tmp_path: Path, systemd: Systemd) -> None:
    assert ruleset.rollback_pending() is True
    systemd.answer("systemctl-is-active", 3)
    assert ruleset.rollback_pending() is False


def test_confirm_without_proof_cancels_the_rollback_and_installs(tmp_path: Path, systemd: Systemd) -> None:
    p = prepare(tmp_path)
    record = ruleset.confirm(p, proof=False)
    assert {k: v for k, v in record.items() if k != "at"} == {
        "event": "confirmed",
        "installed": str(p.target),
    }
    assert p.target.read_text() == p.candidate.read_text()
    assert systemd.calls() == [
        ["systemctl", "is-active", "--quiet", "nattrail-rollback.timer"],
        ["systemctl", "stop", "nattrail-rollback.timer"],
    ]


def test_a_rollback_that_cannot_be_cancelled_leaves_the_target(tmp_path: Path, systemd: Systemd) -> None:
    systemd.answer("systemctl-stop", 5, "Access denied\n")
    p = prepare(tmp_path)
    with pytest.raises(ruleset.RulesetError) as caught:
        ruleset.confirm(p, proof=False)
    assert str(caught.value) == "could not cancel the rollback: Access denied"
    assert p.target.read_text() != p.candidate.read_text()


@pytest.fixture
def tcp_connection() -> Iterator[set[str]]:
    """An established loopback connection held by this process, as an SSH session is held by sshd:
    the tuples its two ends are seen as."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            a, b = client.getsockname(), accepted.getsockname()
            c, d = client.getpeername(), accepted.getpeername()
            yield {f"{c[0]}:{c[1]} -> {a[0]}:{a[1]}", f"{d[0]}:{d[1]} -> {b[0]}:{b[1]}"}


def test_confirm_over_a_connection_opened_after_the_apply_installs(
    tmp_path: Path, systemd: Systemd, tcp_connection: set[str]
) -> None:
    p = prepare(tmp_path)
    p.state.mkdir()
    p.baseline.write_text(json.dumps({"applied": "t0", "connections": ["10.77.0.10:1 -> 10.77.0.2:22"]}))
    record = ruleset.confirm(p)
    assert record["over"] in tcp_connection
    assert p.target.read_text() == p.candidate.read_text()


def test_confirm_over_a_connection_open_at_the_apply_is_refused(
    tmp_path: Path, systemd: Systemd, tcp_connection: set[str]
) -> None:
    p = prepare(tmp_path)

    def scenario() -> dict[str, object]:
        nft("-f", str(p.target))
        return ruleset.apply(p, confirm_timeout=60)

    applied = in_private_netns(scenario)
    with pytest.raises(
        ruleset.RulesetError, match=f"already open when the ruleset was applied at {applied['at']}"
    ):
        ruleset.confirm(p)
    assert p.target.read_text() != p.candidate.read_text()
    assert ["systemctl", "stop", "nattrail-rollback.timer"] not in systemd.calls()


# --- the command line --------------------------------------------------------------------------------------


def test_cli_defaults_are_the_installed_paths() -> None:
    args = build_parser().parse_args(["ruleset", "apply"])
    assert (args.candidate, args.target, args.state_dir) == (
        Path("/etc/nftables.conf.candidate"),
        Path("/etc/nftables.conf"),
        Path("/var/lib/nattrail"),
    )
    assert (args.family, args.table, args.confirm_timeout, args.proof) == ("inet", "nattrail", 60, True)
    assert build_parser().parse_args(["ruleset", "confirm", "--no-proof"]).proof is False
    assert build_parser().parse_args(["ruleset", "apply", "--confirm-timeout", "0"]).confirm_timeout == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ruleset", "explode"])


def test_cli_help_says_what_each_option_does(cli_help: Callable[..., str]) -> None:
    assert re.search(r"^ +ruleset +apply, confirm or roll back the router's ruleset$", cli_help(), re.M)
    text = " ".join(cli_help("ruleset").split())
    assert "{apply,confirm,rollback,carry}" in text
    assert text.endswith(
        "--confirm-timeout CONFIRM_TIMEOUT seconds; 0 applies without rollback --no-proof confirm without "
        "proving that a new connection reached the router (by hand, at the console)"
    )


def cli(tmp_path: Path, action: str, *extra: str) -> list[str]:
    p = paths(tmp_path)
    return [
        "ruleset",
        action,
        "--candidate",
        str(p.candidate),
        "--target",
        str(p.target),
        "--state-dir",
        str(p.state),
        *extra,
    ]


def test_cli_apply_rollback_and_carry_print_one_json_record(
    tmp_path: Path, systemd: Systemd, capsys: pytest.CaptureFixture[str]
) -> None:
    p = prepare(tmp_path)

    def scenario() -> list[tuple[int, str, str]]:
        nft("-f", str(p.target))
        outputs = []
        for argv in (
            cli(tmp_path, "apply", "--confirm-timeout", "1"),
            cli(tmp_path, "carry"),
            cli(tmp_path, "rollback"),
        ):
            status = cli_main(argv)
            out, err = capsys.readouterr()
            outputs.append((status, out, err))
        return outputs

    (apply_rc, apply_out, _), (carry_rc, carry_out, _), (back_rc, back_out, _) = in_private_netns(scenario)
    carried = json.loads(carry_out)
    assert carry_rc == 0 and carried["event"] == "carried" and "at" in carried
    # What the target declares: its two counters the candidate kept, and the blocklist, whose type
    # is the same in both (the other set's is not).
    assert (carried["counters"], carried["elements"]) == (2, 1)
    applied = json.loads(apply_out)
    assert apply_rc == 0 and applied["event"] == "applied" and applied["rollback_in_s"] == 1
    assert back_rc == 0 and json.loads(back_out)["event"] == "rolled_back"
    assert systemd.calls()[2][:3] == ["systemd-run", "--unit=nattrail-rollback", "--on-active=1s"]


def test_cli_confirm_and_its_errors(
    tmp_path: Path, systemd: Systemd, capsys: pytest.CaptureFixture[str]
) -> None:
    p = prepare(tmp_path)
    assert cli_main(cli(tmp_path, "confirm", "--no-proof")) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["event"] == "confirmed" and err == ""
    systemd.answer("systemctl-is-active", 3)
    assert cli_main(cli(tmp_path, "confirm", "--no-proof")) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert json.loads(err) == {
        "event": "error",
        "action": "confirm",
        "error": "nothing to confirm: no rollback is pending (it may already have run)",
    }
    # A file that cannot be read is reported the same way, not as a traceback.
    systemd.answer("systemctl-is-active", 0)
    p.candidate.unlink()
    assert cli_main(cli(tmp_path, "confirm", "--no-proof")) == 1
    error = json.loads(capsys.readouterr().err)
    assert error["action"] == "confirm" and "No such file or directory" in error["error"]


def test_proof_is_asked_for_unless_waived(
    tmp_path: Path, systemd: Systemd, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare(tmp_path)
    # No baseline recorded: a confirmation that must prove itself cannot, one that need not can.
    assert cli_main(cli(tmp_path, "confirm")) == 1
    assert "confirm" in json.loads(capsys.readouterr().err)["action"]
    assert cli_main(cli(tmp_path, "confirm", "--no-proof")) == 0


def test_carry_text_lists_counters_in_name_order() -> None:
    counters = {
        n: accounting.Counter(n, i, i * 10) for i, n in enumerate(["acct_b_in", "acct_a_in", "acct_c_in"])
    }
    keep: dict[str, str | None] = {"acct_c_in": None, "acct_a_in": "x", "acct_b_in": None}
    lines = ruleset.carry_text(counters, "ip", "t", keep).splitlines()
    assert lines[1:] == [
        "table ip t {",
        '  counter acct_a_in { packets 1 bytes 10 comment "x" }',
        "  counter acct_b_in { packets 0 bytes 0 }",
        "  counter acct_c_in { packets 2 bytes 20 }",
        "}",
    ]


# --- what nft prints, read defensively ---------------------------------------------------------------------


def test_set_elements_text_skips_what_it_cannot_carry() -> None:
    live = {
        "nftables": [
            "not an object",
            {"set": "not an object"},
            {"table": {"name": "nattrail"}},
            {
                "set": {
                    "name": "blocklist",
                    "type": "ipv4_addr",
                    "elem": [
                        "198.51.100.9",  # no timeout: printed bare
                        {"elem": {"val": {"prefix": {"addr": "198.51.100.0", "len": 24}}, "expires": 5}},
                        {"elem": {"val": "198.51.100.10", "expires": "5"}},
                        {"elem": {"val": "198.51.100.11"}},
                        {"elem": "198.51.100.12"},
                        {"elem": {"val": "198.51.100.13", "expires": 1}},
                    ],
                }
            },
            {"set": {"name": "quiet", "type": "ipv4_addr"}},
            {
                "set": {
                    "name": "second",
                    "type": "ipv6_addr",
                    "elem": [{"elem": {"val": "2001:db8::1", "expires": 7}}],
                }
            },
        ]
    }
    keep = {"blocklist": "ipv4_addr", "quiet": "ipv4_addr", "second": "ipv6_addr"}
    text, count = ruleset.set_elements_text(json.dumps(live), "ip", "t", keep)
    lines = text.splitlines()
    assert HEADER.match(lines[0]) and lines[0].endswith(": set elements carried over a reload.")
    assert lines[1:] == [
        "add element ip t blocklist { 198.51.100.13 timeout 1s }",
        "add element ip t second { 2001:db8::1 timeout 7s }",
    ]
    assert count == 2 and text.endswith("}\n")


def test_set_elements_text_with_no_sets_is_only_the_header() -> None:
    text, count = ruleset.set_elements_text("{}", "inet", "nattrail", {"blocklist": "ipv4_addr"})
    assert count == 0 and text.count("\n") == 1 and HEADER.match(text)


def test_set_elements_text_refuses_what_is_not_nft_json() -> None:
    with pytest.raises(ruleset.RulesetError) as caught:
        ruleset.set_elements_text("nft: oops", "inet", "nattrail", {})
    assert (
        str(caught.value)
        == "nft printed invalid JSON for the sets: Expecting value: line 1 column 1 (char 0)"
    )
    with pytest.raises(ruleset.RulesetError) as caught:
        ruleset.set_elements_text("[]", "inet", "nattrail", {})
    assert str(caught.value) == "nft printed invalid JSON for the sets: 'list' object has no attribute 'get'"


def test_declared_timeout_sets_reads_flags_in_any_order(tmp_path: Path) -> None:
    path = tmp_path / "r.nft"
    path.write_text(
        "table inet t {\n"
        "  set a { type ipv4_addr ; flags interval, timeout ; }\n"
        "  set b {\n    type ipv6_addr\n    flags timeout,interval\n  }\n"
        "  set c { type ipv4_addr; flags timeout, dynamic; }\n"
        "  set d { flags timeout; }\n"
        "  set e { type ipv4_addr; }\n"
        "  set f { type ether_addr; flags timeout }\n"
        "}\n"
    )
    assert ruleset.declared_timeout_sets(path) == {"a": "ipv4_addr", "b": "ipv6_addr", "f": "ether_addr"}


def test_declared_counters_reads_each_declaration(tmp_path: Path) -> None:
    path = tmp_path / "r.nft"
    path.write_text(
        "table inet t {\n"
        '  counter a { comment "net a" }\n'
        "  counter b {\n    packets 1 bytes 2\n  }\n"
        '  chain c { counter name "a" }\n'
        "}\n"
    )
    assert ruleset.declared_counters(path) == {"a": "net a", "b": None}


def test_carry_text_for_no_counters_is_an_empty_table() -> None:
    text = ruleset.carry_text({}, "inet", "nattrail", {"acct_0_in": None})
    lines = text.splitlines()
    assert HEADER.match(lines[0]) and lines[0].endswith(": counters carried over a reload.")
    assert lines[1:] == ["table inet nattrail {", "}"] and text.endswith("}\n")


# --- the proof a confirmation needs ------------------------------------------------------------------


def connection(text: str) -> carrier.TcpSocket:
    remote, local = text.split(" -> ")
    return carrier.TcpSocket(7, local, remote, carrier.ESTABLISHED)


def test_a_confirmation_needs_a_connection_opened_after_the_apply(tmp_path: Path) -> None:
    p = paths(tmp_path)
    p.state.mkdir()
    old, new = "10.77.0.10:40000 -> 10.77.0.2:22", "10.77.0.10:40001 -> 10.77.0.2:22"
    with pytest.raises(ruleset.RulesetError) as caught:
        ruleset.new_connection(p, None)
    assert str(caught.value) == (
        "this confirmation did not arrive over a network connection to the router (a console, docker exec "
        "or Ansible's local connection), so it proves nothing about the administrator's path; confirm "
        "from a host that logs in over SSH (nat_router_confirm_from), or pass --no-proof to confirm by "
        "hand at the console"
    )
    with pytest.raises(ruleset.RulesetError) as caught:
        ruleset.new_connection(p, connection(new))
    assert str(caught.value) == (
        "cannot read the connections recorded at the apply "
        f"([Errno 2] No such file or directory: '{p.baseline}')"
    )
    p.baseline.write_text("{")
    with pytest.raises(ruleset.RulesetError) as caught:
        ruleset.new_connection(p, connection(new))
    assert str(caught.value) == (
        "cannot read the connections recorded at the apply "
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    )
    p.baseline.write_text(json.dumps({"applied": "2026-12-01T10:00:00Z", "connections": [old]}))
    assert ruleset.new_connection(p, connection(new)) == new
    with pytest.raises(ruleset.RulesetError) as caught:
        ruleset.new_connection(p, connection(old))
    assert str(caught.value) == (
        f"this confirmation came over {old}, a connection that was already open when the ruleset was "
        "applied at 2026-12-01T10:00:00Z (a multiplexed SSH connection, such as a ControlMaster): it "
        "proves nothing about new connections. Close it, or turn SSH multiplexing off for the router, "
        "and confirm over a new connection"
    )
    # An apply record without connections (none were open): any connection is new.
    p.baseline.write_text(json.dumps({"applied": "2026-12-01T10:00:00Z"}))
    assert ruleset.new_connection(p, connection(old)) == old
