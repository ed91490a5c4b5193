"""The `nattrail` command: every subcommand is there, and one that cannot be imported takes none of the
others down (a rollback must work even if the logger's module is broken)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nattrail import cli


def test_every_subcommand_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in cli.SUBCOMMANDS:
        assert f"    {name}" in out, out


def test_a_broken_module_is_reported_and_the_others_still_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A real module that fails at import, placed where `import nattrail.broken` finds it.
    package = tmp_path / "nattrail"
    package.mkdir()
    (package / "broken.py").write_text("raise ImportError('no module named netlinkz')\n")
    import nattrail  # noqa: PLC0415

    monkeypatch.setattr(nattrail, "__path__", [*nattrail.__path__, str(package)])
    monkeypatch.delitem(sys.modules, "nattrail.broken", raising=False)
    subcommands = (*cli.SUBCOMMANDS, "broken")

    assert cli.main(["broken", "--anything"], subcommands) == 1
    assert capsys.readouterr().err == (
        "nattrail broken: unavailable: the module failed to import: ImportError: no module named netlinkz\n"
    )
    with pytest.raises(SystemExit) as done:
        cli.main(["drops", "--help"], subcommands)
    assert done.value.code == 0
    assert "usage: nattrail drops" in capsys.readouterr().out
