"""`nattrail accounting`: parsing nft's JSON (real output from a private network namespace), the table,
the JSON report, saving atomically, and the missing-table case."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import netns_unavailable, networks_in_order
from hypothesis import given
from hypothesis import strategies as st

from nattrail import accounting, cli
from nattrail.accounting import (
    AccountingError,
    Counter,
    TableMissing,
    human_bytes,
    network_rows,
    parse_nft_json,
    parse_saved,
    read_counters,
)

SRC = Path(accounting.__file__).resolve().parents[1]

# Recorded from nft 1.0.6 (Debian 12), `nft -j list counters table inet nattrail`.
NFT_SAMPLE = {
    "nftables": [
        {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
        {
            "counter": {
                "family": "inet",
                "name": "acct_other_in",
                "table": "nattrail",
                "handle": 5,
                "comment": "other",
                "packets": 1,
                "bytes": 60,
            }
        },
        {
            "counter": {
                "family": "inet",
                "name": "acct_1_in",
                "table": "nattrail",
                "handle": 4,
                "comment": "10.78.0.0/16",
                "packets": 9,
                "bytes": 1258291,
            }
        },
        {
            "counter": {
                "family": "inet",
                "name": "acct_0_in",
                "table": "nattrail",
                "handle": 3,
                "comment": "10.77.0.0/24",
                "packets": 12,
                "bytes": 3456,
            }
        },
        {
            "counter": {
                "family": "inet",
                "name": "acct_0_out",
                "table": "nattrail",
                "handle": 6,
                "comment": "10.77.0.0/24",
                "packets": 10,
                "bytes": 900,
            }
        },
        {
            "counter": {
                "family": "inet",
                "name": "acct_other_out",
                "table": "nattrail",
                "handle": 7,
                "comment": "other",
                "packets": 0,
                "bytes": 0,
            }
        },
        # Not ours: another table, and a counter that is not an accounting counter.
        {"counter": {"family": "ip", "name": "acct_9_in", "table": "nattrail", "packets": 1, "bytes": 1}},
        {"counter": {"family": "inet", "name": "drops", "table": "nattrail", "packets": 1, "bytes": 1}},
    ]
}

RULESET = """\
table inet nattrail {
\tcounter acct_0_in {
\t\tcomment "10.77.0.0/24"
\t\tpackets 5 bytes 300
\t}
\tcounter acct_0_out {
\t\tcomment "10.77.0.0/24"
\t\tpackets 7 bytes 1258291
\t}
\tcounter acct_other_in {
\t\tcomment "other"
\t}
\tcounter acct_other_out {
\t\tcomment "other"
\t\tpackets 1 bytes 40
\t}
}
"""


def in_netns(script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a fresh, throwaway network namespace (never the host's firewall)."""
    return subprocess.run(
        ["unshare", "--net", "sh", "-ec", script], capture_output=True, text=True, check=False, timeout=60
    )


@pytest.fixture(scope="module")
def netns() -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(f"SKIPPED LOUDLY: no network namespace with nft: {reason}")


def fake_runner(responses: dict[tuple[str, ...], tuple[int, str, str]]) -> accounting.Runner:
    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        code, out, err = responses[tuple(argv)]
        return subprocess.CompletedProcess(list(argv), code, out, err)

    return run


LIST = ("nft", "-j", "list", "counters", "table", "inet", "nattrail")
TABLES = ("nft", "-j", "list", "tables", "inet")
NO_TABLE = (1, "", "Error: No such file or directory\nlist counters table inet nattrail\n")


def parse_args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["accounting", *argv])


# --- real nft -----------------------------------------------------------------------------------------


def test_ruleset_syntax_is_accepted_by_nft_check(tmp_path: Path) -> None:
    if shutil.which("nft") is None:
        pytest.skip("SKIPPED LOUDLY: nft not found on PATH")
    rules = tmp_path / "acct.nft"
    rules.write_text(RULESET)
    result = subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True, text=True, check=False)
    if result.returncode != 0 and "Operation not permitted" in result.stderr:
        pytest.skip(f"SKIPPED LOUDLY: nft -c needs privileges here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr


def test_parses_real_nft_output_from_a_namespace(netns: None, tmp_path: Path) -> None:
    rules = tmp_path / "acct.nft"
    rules.write_text(RULESET)
    result = in_netns(f"nft -f {rules}\nnft -j list counters table inet nattrail")
    assert result.returncode == 0, result.stderr
    counters = parse_nft_json(result.stdout, "inet", "nattrail")
    assert counters == {
        "acct_0_in": Counter("acct_0_in", 5, 300, "10.77.0.0/24"),
        "acct_0_out": Counter("acct_0_out", 7, 1258291, "10.77.0.0/24"),
        "acct_other_in": Counter("acct_other_in", 0, 0, "other"),
        "acct_other_out": Counter("acct_other_out", 1, 40, "other"),
    }
    rows = network_rows(counters.values())
    assert [row.network for row in rows] == ["10.77.0.0/24", "other"]


def test_missing_table_is_recognised_with_real_nft(netns: None, tmp_path: Path) -> None:
    # Running our own CLI inside the namespace checks the whole path: nft failure -> table lookup.
    out = tmp_path / "saved.json"
    result = in_netns(f"PYTHONPATH={SRC} {sys.executable} -m nattrail accounting save --output {out}")
    assert result.returncode == 0, result.stderr
    assert "does not exist" in result.stderr
    assert not out.exists()


def test_save_and_show_with_real_nft(netns: None, tmp_path: Path) -> None:
    rules = tmp_path / "acct.nft"
    rules.write_text(RULESET)
    out = tmp_path / "saved.json"
    result = in_netns(
        f"nft -f {rules}\n"
        f"export PYTHONPATH={SRC}\n"
        f"{sys.executable} -m nattrail accounting save --output {out}\n"
        f"{sys.executable} -m nattrail accounting --json"
    )
    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    assert saved["table"] == "inet nattrail"
    assert saved["counters"]["acct_0_out"] == {"packets": 7, "bytes": 1258291, "comment": "10.77.0.0/24"}
    report = json.loads(result.stdout)
    assert [n["network"] for n in report["networks"]] == ["10.77.0.0/24", "other"]


# --- parsing ------------------------------------------------------------------------------------------


def test_parse_keeps_only_accounting_counters_of_the_table() -> None:
    counters = parse_nft_json(json.dumps(NFT_SAMPLE), "inet", "nattrail")
    assert sorted(counters) == ["acct_0_in", "acct_0_out", "acct_1_in", "acct_other_in", "acct_other_out"]
    assert counters["acct_1_in"] == Counter("acct_1_in", 9, 1258291, "10.78.0.0/16")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("not json", "invalid JSON"),
        ("[]", "nftables"),
        (
            '{"nftables": [{"counter": {"family": "inet", "table": "nattrail", "name": "acct_0_in",'
            ' "packets": -1, "bytes": 0}}]}',
            "non-negative",
        ),
        (
            '{"nftables": [{"counter": {"family": "inet", "table": "nattrail", "name": "acct_0_in",'
            ' "packets": 1}}]}',
            "bytes",
        ),
    ],
)
def test_parse_rejects_malformed_documents(document: str, message: str) -> None:
    with pytest.raises(AccountingError, match=message):
        parse_nft_json(document, "inet", "nattrail")


def test_rows_pair_directions_and_sort_other_last() -> None:
    counters = parse_nft_json(NFT_SAMPLE, "inet", "nattrail")
    rows = network_rows(counters.values())
    assert [(r.key, r.network) for r in rows] == [
        ("0", "10.77.0.0/24"),
        ("1", "10.78.0.0/16"),
        ("other", "other"),
    ]
    assert rows[0].inbound is not None and rows[0].inbound.packets == 12
    assert rows[1].outbound is None  # acct_1_out missing: shown as "-", not as a made-up zero


def test_sorting_is_numeric_not_lexical() -> None:
    given = "other 10.100.0.0/16 fd00::/64 10.9.0.0/16 10.9.0.0/24 not-a-cidr"
    assert networks_in_order(given) == "10.9.0.0/16 10.9.0.0/24 10.100.0.0/16 fd00::/64 not-a-cidr other"


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1258291, "1.2 MiB"),
        (5 * 1024**4, "5.0 TiB"),
        (1_073_689_396, "1.0 GiB"),
        (1048575, "1.0 MiB"),
    ],
)
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


@given(st.integers(min_value=0, max_value=2**64))
def test_human_bytes_is_always_short(count: int) -> None:
    number, unit = human_bytes(count).split(" ")
    assert unit in {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
    assert float(number) < 1024 or unit == "EiB"


def test_table_format() -> None:
    rows = network_rows(parse_nft_json(NFT_SAMPLE, "inet", "nattrail").values())
    assert accounting.format_table(rows).splitlines() == [
        "network      | in packets |          in bytes | out packets | out bytes",
        "-------------+------------+-------------------+-------------+----------",
        "10.77.0.0/24 |         12 |    3456 (3.4 KiB) |          10 |       900",
        "10.78.0.0/16 |          9 | 1258291 (1.2 MiB) |           - |         -",
        "other        |          1 |                60 |           0 |         0",
    ]


# --- command line -------------------------------------------------------------------------------------


def test_show_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    runner = fake_runner({LIST: (0, json.dumps(NFT_SAMPLE), "")})
    assert accounting.show(parse_args(), runner) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("network")
    assert out.splitlines()[-1].startswith("other")


def test_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    runner = fake_runner({LIST: (0, json.dumps(NFT_SAMPLE), "")})
    assert accounting.show(parse_args("--json"), runner) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["table"] == "inet nattrail"
    assert report["read_at"].endswith("Z")
    assert report["networks"][0] == {
        "network": "10.77.0.0/24",
        "key": "0",
        "in": {"packets": 12, "bytes": 3456},
        "out": {"packets": 10, "bytes": 900},
    }
    assert report["networks"][1]["out"] is None
    assert report["networks"][-1]["network"] == "other"


def test_family_and_table_options_reach_nft(capsys: pytest.CaptureFixture[str]) -> None:
    sample = {
        "nftables": [
            {"counter": {"family": "ip", "name": "acct_x_in", "table": "t", "packets": 1, "bytes": 2}}
        ]
    }
    argv = ("nft", "-j", "list", "counters", "table", "ip", "t")
    runner = fake_runner({argv: (0, json.dumps(sample), "")})
    assert accounting.show(parse_args("--family", "ip", "--table", "t", "--json"), runner) == 0
    assert json.loads(capsys.readouterr().out)["table"] == "ip t"
    with pytest.raises(SystemExit):
        parse_args("--table", "bad name; flush ruleset")


def test_show_missing_table_fails(capsys: pytest.CaptureFixture[str]) -> None:
    runner = fake_runner({LIST: NO_TABLE, TABLES: (0, '{"nftables": [{"metainfo": {}}]}', "")})
    assert accounting.show(parse_args(), runner) == 1
    assert "does not exist" in capsys.readouterr().err


def test_read_counters_distinguishes_missing_table_from_other_failures() -> None:
    tables = '{"nftables": [{"table": {"family": "inet", "name": "nattrail", "handle": 1}}]}'
    with pytest.raises(TableMissing):
        read_counters("inet", "nattrail", fake_runner({LIST: NO_TABLE, TABLES: (0, "{}", "")}))
    with pytest.raises(AccountingError, match="Operation not permitted") as info:
        read_counters(
            "inet",
            "nattrail",
            fake_runner({LIST: (1, "", "Error: Operation not permitted"), TABLES: (0, tables, "")}),
        )
    assert not isinstance(info.value, TableMissing)
    with pytest.raises(AccountingError, match="list tables"):
        read_counters("inet", "nattrail", fake_runner({LIST: NO_TABLE, TABLES: (1, "", "denied")}))


def test_nft_not_installed() -> None:
    def missing(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(argv[0])

    with pytest.raises(AccountingError, match="not found"):
        read_counters("inet", "nattrail", missing)


def test_save_writes_atomically_and_reads_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "counters.json"
    out.write_text("old")
    runner = fake_runner({LIST: (0, json.dumps(NFT_SAMPLE), "")})
    assert accounting.save(parse_args("save", "--output", str(out)), runner) == 0
    saved = json.loads(out.read_text())
    assert saved["table"] == "inet nattrail"
    assert saved["saved_at"].endswith("Z")
    assert saved["counters"]["acct_0_in"] == {"packets": 12, "bytes": 3456, "comment": "10.77.0.0/24"}
    assert "drops" not in saved["counters"]
    assert [p.name for p in tmp_path.iterdir()] == ["counters.json"]  # no temp file left behind

    table, saved_at, counters = parse_saved(out.read_text())
    assert (table, saved_at) == ("inet nattrail", saved["saved_at"])
    assert counters == parse_nft_json(NFT_SAMPLE, "inet", "nattrail")

    assert accounting.show(parse_args("--from", str(out), "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["read_at"] == saved["saved_at"]
    assert [n["network"] for n in report["networks"]] == ["10.77.0.0/24", "10.78.0.0/16", "other"]


def test_save_options_after_subcommand(tmp_path: Path) -> None:
    args = parse_args("--family", "ip", "save", "--output", "x")
    assert (args.family, args.table, args.output) == ("ip", "nattrail", "x")
    args = parse_args("save", "--table", "t", "--output", "x")
    assert (args.family, args.table) == ("inet", "t")


def test_save_on_first_install_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "counters.json"
    runner = fake_runner({LIST: NO_TABLE, TABLES: (0, '{"nftables": []}', "")})
    assert accounting.save(parse_args("save", "--output", str(out)), runner) == 0
    assert not out.exists()
    assert "nothing to save" in capsys.readouterr().err


def test_save_reports_nft_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "counters.json"
    out.write_text("previous")
    runner = fake_runner({LIST: (1, "", "Error: Operation not permitted"), TABLES: (1, "", "denied")})
    assert accounting.save(parse_args("save", "--output", str(out)), runner) == 1
    assert "error" in capsys.readouterr().err
    assert out.read_text() == "previous"


def test_failed_write_keeps_old_file_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "counters.json"
    out.write_text("previous")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(accounting.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        accounting.write_atomic(out, "new")
    assert out.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["counters.json"]


def test_from_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert accounting.show(parse_args("--from", str(tmp_path / "missing.json"))) == 1
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"counters": {"acct_0_in": {"packets": "many", "bytes": 1}}}')
    assert accounting.show(parse_args("--from", str(bad))) == 1
    assert "non-negative integer" in capsys.readouterr().err
