"""`nattrail accounting`: the details a user or the role sees — exact messages, odd nft output, sort
order, unit boundaries, file modes, the help text — beyond the main paths in test_accounting.py."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import networks_in_order

from nattrail import accounting, cli
from nattrail.accounting import (
    AccountingError,
    Counter,
    TableMissing,
    Traffic,
    human_bytes,
    network_rows,
    parse_nft_json,
    parse_saved,
    read_counters,
    table_exists,
)

LIST = ("nft", "-j", "list", "counters", "table", "inet", "nattrail")
TABLES = ("nft", "-j", "list", "tables", "inet")
NO_TABLE = (1, "", "Error: No such file or directory\n")


def fake_runner(responses: dict[tuple[str, ...], tuple[int, str, str]]) -> accounting.Runner:
    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        code, out, err = responses[tuple(argv)]
        return subprocess.CompletedProcess(list(argv), code, out, err)

    return run


def raising(exc: BaseException) -> accounting.Runner:
    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        raise exc

    return run


def nft_doc(*counters: dict[str, object]) -> str:
    return json.dumps({"nftables": [{"counter": c} for c in counters]})


def counter(name: str, packets: object = 1, nbytes: object = 2, **extra: object) -> dict[str, object]:
    return {"family": "inet", "table": "nattrail", "name": name, "packets": packets, "bytes": nbytes, **extra}


def run_cli(
    capsys: pytest.CaptureFixture[str], *argv: str, runner: accounting.Runner
) -> tuple[int, str, str]:
    args = cli.build_parser().parse_args(["accounting", *argv])
    code = args.func(args, runner)
    out, err = capsys.readouterr()
    return code, out, err


# --- parsing nft's JSON -----------------------------------------------------------------------------------


def test_parse_accepts_a_parsed_mapping_as_well_as_text() -> None:
    doc = nft_doc(counter("acct_0_in", 3, 4, comment="10.0.0.0/8"))
    expected = {"acct_0_in": Counter("acct_0_in", 3, 4, "10.0.0.0/8")}
    assert parse_nft_json(doc, "inet", "nattrail") == expected
    assert parse_nft_json(json.loads(doc), "inet", "nattrail") == expected


def test_parse_skips_what_is_not_one_of_our_counters() -> None:
    doc = {
        "nftables": [
            "a string, not an object",
            {"metainfo": {"version": "1.0.6"}},
            {"counter": "not an object"},
            {"counter": counter("acct_0_in") | {"family": "ip"}},
            {"counter": counter("acct_1_in") | {"table": "filter"}},
            {"counter": counter("acct_2_in") | {"name": 7}},
            {"counter": counter("acct_3_in") | {"name": None}},
            {"counter": counter("drops")},
            {"counter": counter("xacct_4_in")},
            {"counter": counter("acct_5_in", comment=17)},
            {"counter": counter("acct_6_out", 0, 0, comment="10.6.0.0/16")},
        ]
    }
    assert parse_nft_json(doc, "inet", "nattrail") == {
        "acct_5_in": Counter("acct_5_in", 1, 2, None),
        "acct_6_out": Counter("acct_6_out", 0, 0, "10.6.0.0/16"),
    }


def test_parse_with_names_none_takes_every_counter_of_the_table() -> None:
    doc = nft_doc(counter("drops", 5, 6), counter("acct_0_in"), counter("other") | {"table": "filter"})
    assert parse_nft_json(doc, "inet", "nattrail", None) == {
        "drops": Counter("drops", 5, 6),
        "acct_0_in": Counter("acct_0_in", 1, 2),
    }


def test_parse_with_a_custom_name_pattern() -> None:
    doc = nft_doc(counter("drops", 5, 6), counter("acct_0_in"))
    assert list(parse_nft_json(doc, "inet", "nattrail", re.compile("^dr"))) == ["drops"]


@pytest.mark.parametrize(
    ("packets", "nbytes", "message"),
    [
        (-1, 0, "counter acct_0_in packets: expected a non-negative integer, got -1"),
        (True, 0, "counter acct_0_in packets: expected a non-negative integer, got True"),
        ("5", 0, "counter acct_0_in packets: expected a non-negative integer, got '5'"),
        (1.0, 0, "counter acct_0_in packets: expected a non-negative integer, got 1.0"),
        (0, None, "counter acct_0_in bytes: expected a non-negative integer, got None"),
        (0, False, "counter acct_0_in bytes: expected a non-negative integer, got False"),
        (0, -5, "counter acct_0_in bytes: expected a non-negative integer, got -5"),
    ],
)
def test_parse_rejects_bad_counts_naming_the_counter(packets: object, nbytes: object, message: str) -> None:
    with pytest.raises(AccountingError) as info:
        parse_nft_json(nft_doc(counter("acct_0_in", packets, nbytes)), "inet", "nattrail")
    assert str(info.value) == message


def test_parse_accepts_zero_and_huge_counts() -> None:
    doc = nft_doc(counter("acct_0_in", 0, 2**64))
    assert parse_nft_json(doc, "inet", "nattrail") == {"acct_0_in": Counter("acct_0_in", 0, 2**64)}


def test_parse_error_messages() -> None:
    with pytest.raises(AccountingError) as info:
        parse_nft_json("{", "inet", "nattrail")
    assert str(info.value).startswith("nft printed invalid JSON: Expecting property name")
    for document in ("[]", '{"nftables": {}}', "{}", {"nftables": None}):
        with pytest.raises(AccountingError) as info:
            parse_nft_json(document, "inet", "nattrail")
        assert str(info.value) == 'nft JSON lacks the top-level "nftables" list'


# --- saved files ------------------------------------------------------------------------------------------


def test_parse_saved_reads_table_time_and_counters() -> None:
    document = {
        "saved_at": "2026-01-02T03:04:05.000006Z",
        "table": "inet nattrail",
        "counters": {
            "acct_0_in": {"packets": 1, "bytes": 2, "comment": "10.0.0.0/8"},
            "acct_0_out": {"packets": 3, "bytes": 4, "comment": 5},
        },
    }
    expected = (
        "inet nattrail",
        "2026-01-02T03:04:05.000006Z",
        {"acct_0_in": Counter("acct_0_in", 1, 2, "10.0.0.0/8"), "acct_0_out": Counter("acct_0_out", 3, 4)},
    )
    assert parse_saved(document) == expected
    assert parse_saved(json.dumps(document)) == expected


def test_parse_saved_tolerates_a_missing_or_odd_table_and_time() -> None:
    assert parse_saved('{"counters": {}}') == ("", None, {})
    assert parse_saved('{"counters": {}, "table": 5, "saved_at": 6}') == ("", None, {})


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("[", "saved counters are not valid JSON: Expecting value: line 1 column 2 (char 1)"),
        ("[]", 'saved counters lack the "counters" object'),
        ("{}", 'saved counters lack the "counters" object'),
        ('{"counters": []}', 'saved counters lack the "counters" object'),
        ('{"counters": {"drops": {"packets": 1, "bytes": 1}}}', "saved counter 'drops' is not an accounting"),
        ('{"counters": {"acct_0_in": 5}}', "saved counter 'acct_0_in' is not an accounting counter entry"),
        (
            '{"counters": {"acct_0_in": {"packets": -1, "bytes": 1}}}',
            "saved counter acct_0_in packets: expected a non-negative integer, got -1",
        ),
        (
            '{"counters": {"acct_0_in": {"packets": 1}}}',
            "saved counter acct_0_in bytes: expected a non-negative integer, got None",
        ),
    ],
)
def test_parse_saved_rejects_bad_files(document: str, message: str) -> None:
    with pytest.raises(AccountingError) as info:
        parse_saved(document)
    assert str(info.value).startswith(message)


# --- rows and their order ---------------------------------------------------------------------------------


def test_row_network_comes_from_either_direction_or_the_key() -> None:
    rows = network_rows(
        [
            Counter("acct_a_in", 1, 2, None),
            Counter("acct_a_out", 3, 4, "10.1.0.0/16"),
            Counter("acct_b_in", 5, 6, ""),
            Counter("acct_b_out", 7, 8, None),
            Counter("acct_c_in", 0, 0, "10.2.0.0/16"),
            Counter("acct_c_out", 0, 0, "10.3.0.0/16"),
            Counter("drops", 9, 9, "10.0.0.0/16"),
            Counter("acct_d_out", 10, 11, "10.4.0.0/16"),
        ]
    )
    assert [(r.key, r.network, r.inbound, r.outbound) for r in rows] == [
        ("a", "10.1.0.0/16", Traffic(1, 2), Traffic(3, 4)),
        ("c", "10.2.0.0/16", Traffic(0, 0), Traffic(0, 0)),
        ("d", "10.4.0.0/16", None, Traffic(10, 11)),
        ("b", "b", Traffic(5, 6), Traffic(7, 8)),
    ]


def test_other_goes_last_by_key_or_by_comment() -> None:
    rows = network_rows(
        [
            Counter("acct_other_in", 0, 0, "0.0.0.0/0"),
            Counter("acct_z_in", 0, 0, "other"),
            Counter("acct_y_in", 0, 0, "zzz"),
            Counter("acct_x_in", 0, 0, "::/0"),
            Counter("acct_w_in", 0, 0, "255.255.255.255/32"),
        ]
    )
    assert [r.key for r in rows] == ["w", "x", "y", "other", "z"]


def test_sort_by_address_then_prefix_then_text() -> None:
    # 10.0.0.1/8 is not strict: the same network as 10.0.0.0/8, after it.
    given = "10.0.0.1/8 10.0.0.0/8 9.255.255.0/24 10.0.0.0/7 b-net a-net ::1/128 ::/128"
    assert networks_in_order(given) == (
        "9.255.255.0/24 10.0.0.0/7 10.0.0.0/8 10.0.0.1/8 ::/128 ::1/128 a-net b-net"
    )


# --- presentation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (1, "1 B"),
        (1025, "1.0 KiB"),
        (1024 * 1024 - 52, "1023.9 KiB"),
        (1024 * 1024 - 51, "1.0 MiB"),
        (1024**4 - 1, "1.0 TiB"),
        (1024**5, "1.0 PiB"),
        (1024**5 * 1023, "1023.0 PiB"),
        (1024**6 - 1, "1.0 EiB"),
        (1024**6, "1.0 EiB"),
        (1024**6 * 3000, "3000.0 EiB"),
    ],
)
def test_human_bytes_boundaries(count: int, text: str) -> None:
    assert human_bytes(count) == text


def test_bytes_cell_adds_the_human_size_from_one_kib() -> None:
    rows = [
        accounting.NetworkRow("0", "n0", Traffic(1, 1023), Traffic(2, 1024)),
        accounting.NetworkRow("1", "n1", None, Traffic(0, 0)),
    ]
    assert accounting.format_table(rows) == (
        "network | in packets | in bytes | out packets |      out bytes\n"
        "--------+------------+----------+-------------+---------------\n"
        "n0      |          1 |     1023 |           2 | 1024 (1.0 KiB)\n"
        "n1      |          - |        - |           0 |              0\n"
    )


def test_text_table_alignment() -> None:
    header = ("name", "kind", "n")
    body = [("a", "x", "10"), ("bbbbbb", "yyyyy", "2")]
    assert accounting.text_table(header, body) == (
        "name   |  kind |  n\n-------+-------+---\na      |     x | 10\nbbbbbb | yyyyy |  2\n"
    )
    assert accounting.text_table(header, body, left=2) == (
        "name   | kind  |  n\n-------+-------+---\na      | x     | 10\nbbbbbb | yyyyy |  2\n"
    )
    assert accounting.text_table(header, body, left=0) == (
        "  name |  kind |  n\n-------+-------+---\n     a |     x | 10\nbbbbbb | yyyyy |  2\n"
    )


def test_table_of_no_counters_is_just_the_header() -> None:
    assert accounting.format_table([]) == (
        "network | in packets | in bytes | out packets | out bytes\n"
        "--------+------------+----------+-------------+----------\n"
    )


def test_saved_json_is_sorted_and_keeps_comments() -> None:
    counters = {
        "acct_1_in": Counter("acct_1_in", 1, 2, None),
        "acct_0_in": Counter("acct_0_in", 3, 4, "10.0.0.0/8"),
    }
    document = accounting.saved_json(counters, "inet t", "2026-01-01T00:00:00.000000Z")
    assert json.dumps(document) == (
        '{"saved_at": "2026-01-01T00:00:00.000000Z", "table": "inet t", "counters": {'
        '"acct_0_in": {"packets": 3, "bytes": 4, "comment": "10.0.0.0/8"}, '
        '"acct_1_in": {"packets": 1, "bytes": 2, "comment": null}}}'
    )


def test_report_json_shape() -> None:
    rows = [accounting.NetworkRow("0", "10.0.0.0/8", None, Traffic(1, 2))]
    assert accounting.report_json(rows, "inet t", "now") == {
        "table": "inet t",
        "read_at": "now",
        "networks": [{"network": "10.0.0.0/8", "key": "0", "in": None, "out": {"packets": 1, "bytes": 2}}],
    }


# --- running nft ------------------------------------------------------------------------------------------


def test_run_command_captures_text_and_does_not_raise_on_failure() -> None:
    result = accounting.run_command(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.args == ["sh", "-c", "echo out; echo err >&2; exit 3"]


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (FileNotFoundError(2, "No such file"), "nft not found; is nftables installed?"),
        (
            subprocess.TimeoutExpired(list(LIST), 30),
            "nft -j list counters table inet nattrail timed out",
        ),
        (PermissionError(13, "Permission denied"), "cannot run nft: [Errno 13] Permission denied"),
    ],
)
def test_nft_failures_to_run_are_accounting_errors(exc: BaseException, message: str) -> None:
    with pytest.raises(AccountingError) as info:
        read_counters("inet", "nattrail", raising(exc))
    assert str(info.value) == message
    assert not isinstance(info.value, TableMissing)


def test_real_missing_nft_binary_is_reported() -> None:
    with pytest.raises(AccountingError) as info:
        read_counters("inet", "nattrail", nft="/nonexistent/nft")
    assert str(info.value) == "/nonexistent/nft not found; is nftables installed?"


def test_another_nft_binary_is_used_for_both_calls() -> None:
    nft = "/usr/local/sbin/nft"
    tables = '{"nftables": [{"table": {"family": "inet", "name": "nattrail"}}]}'
    runner = fake_runner(
        {(nft, *LIST[1:]): (1, "", ""), (nft, *TABLES[1:]): (0, tables, "")},
    )
    with pytest.raises(AccountingError) as info:
        read_counters("inet", "nattrail", runner, nft)
    # nft said nothing: the exit status is all there is to show.
    assert str(info.value) == "nft list counters failed: 1"
    doc = nft_doc(counter("acct_0_in"))
    runner = fake_runner({(nft, *LIST[1:]): (0, doc, "")})
    assert read_counters("inet", "nattrail", runner, nft) == {"acct_0_in": Counter("acct_0_in", 1, 2)}


def test_read_counters_names_pattern_reaches_the_parser() -> None:
    doc = nft_doc(counter("drops", 5, 6), counter("acct_0_in"))
    runner = fake_runner({LIST: (0, doc, "")})
    assert sorted(read_counters("inet", "nattrail", runner, names=None)) == ["acct_0_in", "drops"]
    assert sorted(read_counters("inet", "nattrail", runner)) == ["acct_0_in"]


def test_read_counters_messages() -> None:
    runner = fake_runner({LIST: NO_TABLE, TABLES: (0, '{"nftables": []}', "")})
    with pytest.raises(TableMissing) as missing:
        read_counters("inet", "nattrail", runner)
    assert str(missing.value) == "table inet nattrail does not exist"
    tables = '{"nftables": [{"table": {"family": "inet", "name": "nattrail"}}]}'
    runner = fake_runner({LIST: (1, "", "  Error: Operation not permitted\n"), TABLES: (0, tables, "")})
    with pytest.raises(AccountingError) as failed:
        read_counters("inet", "nattrail", runner)
    assert str(failed.value) == "nft list counters failed: Error: Operation not permitted"


@pytest.mark.parametrize(
    ("listing", "exists"),
    [
        ('{"nftables": [{"table": {"family": "inet", "name": "nattrail"}}]}', True),
        ('{"nftables": [{"metainfo": {}}, "x", {"table": {"family": "inet", "name": "nattrail"}}]}', True),
        ('{"nftables": [{"table": {"family": "ip", "name": "nattrail"}}]}', False),
        ('{"nftables": [{"table": {"family": "inet", "name": "filter"}}]}', False),
        ('{"nftables": [{"table": "nattrail"}, "inet nattrail"]}', False),
        ('{"nftables": []}', False),
        ("{}", False),
    ],
)
def test_table_exists(listing: str, exists: bool) -> None:
    assert table_exists("inet", "nattrail", fake_runner({TABLES: (0, listing, "")})) is exists


def test_table_exists_uses_the_given_nft_and_family() -> None:
    listing = '{"nftables": [{"table": {"family": "ip6", "name": "t"}}]}'
    runner = fake_runner({("/sbin/nft", "-j", "list", "tables", "ip6"): (0, listing, "")})
    assert table_exists("ip6", "t", runner, "/sbin/nft") is True


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ((1, "", "  denied \n"), "nft list tables inet failed: denied"),
        ((0, "{", ""), "nft printed invalid JSON: Expecting property name enclosed in double quotes"),
        ((0, "[]", ""), "nft printed invalid JSON: 'list' object has no attribute 'get'"),
    ],
)
def test_table_exists_errors(result: tuple[int, str, str], message: str) -> None:
    with pytest.raises(AccountingError) as info:
        table_exists("inet", "nattrail", fake_runner({TABLES: result}))
    assert str(info.value).startswith(message)
    assert not isinstance(info.value, TableMissing)


# --- writing files ----------------------------------------------------------------------------------------


def test_write_atomic_modes_and_content(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    accounting.write_atomic(out, "héllo\n")
    assert out.read_bytes() == "héllo\n".encode()
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    private = tmp_path / "b.json"
    accounting.write_atomic(private, "x", mode=0o600)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_write_atomic_into_a_missing_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        accounting.write_atomic(tmp_path / "nope" / "a.json", "x")


def test_write_atomic_replaces_a_file_readers_hold_open(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    out.write_text("old")
    with out.open() as reader:
        accounting.write_atomic(out, "new")
        assert reader.read() == "old"  # a reader of the old file still sees all of it
    assert out.read_text() == "new"


# --- command line -----------------------------------------------------------------------------------------


def test_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["accounting", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith(
        "usage: nattrail accounting [-h] [--json] [--from FILE] [--family F] [--table T] [save --output FILE]"
    )
    for text in (
        "[save --output FILE] Show or save the per-network traffic counters of the router's nftables"
        " ruleset. positional arguments:",
        "positional arguments: ACTION save save the counters atomically to a JSON file",
        "--json print JSON instead of a table",
        "--from FILE read a saved file instead of nft",
        "--family {ip,ip6,inet,arp,bridge,netdev} table family (inet)",
        "--table TABLE table name (nattrail)",
    ):
        assert text in out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "accounting per-network traffic counters" in " ".join(capsys.readouterr().out.split())


def test_save_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["accounting", "save", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--output FILE file to (over)write" in out
    assert "table family (inet)" in out
    assert "table name (nattrail)" in out


def test_save_requires_output(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["accounting", "save"])
    assert info.value.code == 2
    assert "the following arguments are required: --output" in capsys.readouterr().err


def test_defaults_and_choices() -> None:
    args = cli.build_parser().parse_args(["accounting"])
    assert (args.family, args.table, args.json, args.from_file, args.nft) == (
        "inet",
        "nattrail",
        False,
        None,
        "nft",
    )
    assert args.func is accounting.show
    args = cli.build_parser().parse_args(["accounting", "--family", "ip6", "save", "--output", "o"])
    assert (args.family, args.table, args.output, args.func, args.action) == (
        "ip6",
        "nattrail",
        "o",
        accounting.save,
        "save",
    )
    args = cli.build_parser().parse_args(["accounting", "save", "--family", "bridge", "--output", "o"])
    assert args.family == "bridge"


@pytest.mark.parametrize("table", ["nat.trail-2_x", "T"])
def test_table_names_accepted(table: str) -> None:
    assert cli.build_parser().parse_args(["accounting", "--table", table]).table == table


@pytest.mark.parametrize("table", ["", "2abc", "_x", "a b", "a;b", "a\nb", "nattrail\n"])
def test_table_names_rejected(table: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["accounting", "--table", table])
    assert info.value.code == 2
    assert f"argument --table: not an nftables identifier: {table!r}" in capsys.readouterr().err


def test_bad_family_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["accounting", "--family", "inet6"])
    assert "argument --family: invalid choice: 'inet6'" in capsys.readouterr().err


def test_show_messages(capsys: pytest.CaptureFixture[str]) -> None:
    runner = fake_runner({LIST: NO_TABLE, TABLES: (0, '{"nftables": []}', "")})
    assert run_cli(capsys, runner=runner) == (
        1,
        "",
        "nattrail accounting: table inet nattrail does not exist; is the nat_router ruleset loaded?\n",
    )
    runner = fake_runner({LIST: (0, "oops", "")})
    code, out, err = run_cli(capsys, runner=runner)
    assert (code, out) == (1, "")
    assert err.startswith("nattrail accounting: error: nft printed invalid JSON: ")


def test_show_from_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.json"
    assert run_cli(capsys, "--from", str(missing), runner=raising(AssertionError("no nft"))) == (
        1,
        "",
        f"nattrail accounting: error: cannot read {missing}: No such file or directory\n",
    )


def test_show_from_file_without_table_or_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "saved.json"
    saved.write_text('{"counters": {"acct_0_in": {"packets": 1, "bytes": 2048, "comment": "10.0.0.0/8"}}}')
    code, out, err = run_cli(
        capsys,
        "--from",
        str(saved),
        "--family",
        "ip",
        "--table",
        "t",
        "--json",
        runner=raising(AssertionError()),
    )
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["table"] == "ip t"
    assert report["read_at"].endswith("Z") and len(report["read_at"]) == len("2026-01-01T00:00:00.000000Z")
    assert report["networks"] == [
        {"network": "10.0.0.0/8", "key": "0", "in": {"packets": 1, "bytes": 2048}, "out": None}
    ]
    code, out, err = run_cli(capsys, "--from", str(saved), runner=raising(AssertionError()))
    assert (code, err) == (0, "")
    assert out.splitlines()[2] == "10.0.0.0/8 |          1 | 2048 (2.0 KiB) |           - |         -"


def test_show_from_file_keeps_its_table_and_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "saved.json"
    saved.write_text('{"table": "inet x", "saved_at": "then", "counters": {}}')
    code, out, _ = run_cli(capsys, "--from", str(saved), "--json", runner=raising(AssertionError()))
    assert code == 0
    assert json.loads(out) == {"table": "inet x", "read_at": "then", "networks": []}


def test_show_json_is_indented(capsys: pytest.CaptureFixture[str]) -> None:
    runner = fake_runner({LIST: (0, nft_doc(), "")})
    code, out, _ = run_cli(capsys, "--json", runner=runner)
    assert code == 0
    assert out.startswith('{\n  "table": "inet nattrail",\n  "read_at": "')
    assert out.endswith('",\n  "networks": []\n}\n')


def test_save_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "saved.json"
    runner = fake_runner({LIST: NO_TABLE, TABLES: (0, '{"nftables": []}', "")})
    assert run_cli(capsys, "save", "--output", str(out), runner=runner) == (
        0,
        "",
        f"nattrail accounting: table inet nattrail does not exist; nothing to save, {out} left as it was\n",
    )
    assert run_cli(capsys, "save", "--output", str(out), runner=raising(FileNotFoundError())) == (
        1,
        "",
        "nattrail accounting: error: nft not found; is nftables installed?\n",
    )
    assert not out.exists()


def test_save_into_a_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nope" / "saved.json"
    runner = fake_runner({LIST: (0, nft_doc(counter("acct_0_in")), "")})
    code, stdout, err = run_cli(capsys, "save", "--output", str(out), runner=runner)
    assert (code, stdout) == (1, "")
    assert err.startswith(
        f"nattrail accounting: error: cannot write {out}: [Errno 2] No such file or directory"
    )


def test_save_file_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "saved.json"
    argv = ("nft", "-j", "list", "counters", "table", "ip", "t")
    runner = fake_runner({argv: (0, nft_doc(counter("acct_0_in") | {"family": "ip", "table": "t"}), "")})
    assert run_cli(capsys, "--family", "ip", "save", "--table", "t", "--output", str(out), runner=runner) == (
        0,
        "",
        "",
    )
    text = out.read_text()
    saved = json.loads(text)
    assert text == (
        "{\n"
        f'  "saved_at": "{saved["saved_at"]}",\n'
        '  "table": "ip t",\n'
        '  "counters": {\n'
        '    "acct_0_in": {\n'
        '      "packets": 1,\n'
        '      "bytes": 2,\n'
        '      "comment": null\n'
        "    }\n"
        "  }\n"
        "}\n"
    )
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644


def test_write_atomic_temp_file_is_hidden_next_to_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While the new content is written, the directory holds a dot-file ending in .tmp next to the
    # target: no glob like "*.json" or "*.nft" (the role's carry-over include) ever picks up a half file.
    out = tmp_path / "counters.json"
    seen: list[list[str]] = []
    real_fsync = os.fsync

    def watching_fsync(fd: int) -> None:
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        real_fsync(fd)

    monkeypatch.setattr(accounting.os, "fsync", watching_fsync)
    accounting.write_atomic(out, "x")
    temp_names = [name for listing in seen for name in listing if name != "counters.json"]
    assert temp_names, seen
    assert all(re.fullmatch(r"\.counters\.json\.[^/]+\.tmp", name) for name in temp_names), temp_names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counters.json"]


def test_text_table_rejects_a_row_longer_than_the_header() -> None:
    with pytest.raises(ValueError, match="zip"):
        accounting.text_table(("a",), [("x", "extra")])


def test_hung_nft_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nft = tmp_path / "nft"
    nft.write_text("#!/bin/sh\nexec sleep 60\n")
    nft.chmod(0o755)
    monkeypatch.setattr(accounting, "NFT_TIMEOUT", 0.2)
    with pytest.raises(AccountingError) as info:
        read_counters("inet", "nattrail", nft=str(nft))
    assert str(info.value) == f"{nft} -j list counters table inet nattrail timed out"


def test_a_real_fake_nft_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The default runner against an executable that answers like nft: show and save in-process.
    doc = nft_doc(counter("acct_0_in", 7, 2048, comment="10.0.0.0/8"))
    nft = tmp_path / "nft"
    nft.write_text(f"#!/bin/sh\ncat <<'EOF'\n{doc}\nEOF\n")
    nft.chmod(0o755)
    args = cli.build_parser().parse_args(["accounting", "--json"])
    args.nft = str(nft)
    assert accounting.show(args) == 0
    assert json.loads(capsys.readouterr().out)["networks"][0]["in"] == {"packets": 7, "bytes": 2048}
    out = tmp_path / "saved.json"
    args = cli.build_parser().parse_args(["accounting", "save", "--output", str(out)])
    args.nft = str(nft)
    assert accounting.save(args) == 0
    assert json.loads(out.read_text())["counters"]["acct_0_in"]["bytes"] == 2048


def test_missing_table_asked_with_the_same_nft(tmp_path: Path) -> None:
    nft = tmp_path / "nft"
    nft.write_text(
        '#!/bin/sh\nif [ "$3" = tables ]; then echo \'{"nftables": []}\'; exit 0; fi\n'
        "echo 'Error: No such file or directory' >&2\nexit 1\n"
    )
    nft.chmod(0o755)
    with pytest.raises(TableMissing):
        read_counters("inet", "nattrail", nft=str(nft))
    assert table_exists("inet", "nattrail", nft=str(nft)) is False
