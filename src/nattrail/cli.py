"""The `nattrail` command: one entry point, one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (a callable taking the parsed namespace and returning the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from nattrail import __version__

# Subcommand modules. One that fails to import is listed as unavailable, with the reason, and every
# other subcommand keeps working: `nattrail ruleset rollback` must not depend on the logger's module.
SUBCOMMANDS: tuple[str, ...] = ("redirect", "accounting", "drops", "ruleset", "masqlog", "who")


def _unavailable(subparsers: argparse._SubParsersAction, name: str, error: Exception) -> None:
    reason = f"{type(error).__name__}: {error}"
    # No option prefix: whatever follows the name is taken as it comes and reported, not parsed.
    parser = subparsers.add_parser(name, help=f"unavailable ({reason})", add_help=False, prefix_chars="\0")
    parser.add_argument("rest", nargs="*")

    def report(_args: argparse.Namespace) -> int:
        print(f"nattrail {name}: unavailable: the module failed to import: {reason}", file=sys.stderr)
        return 1

    parser.set_defaults(func=report)


def build_parser(subcommands: Sequence[str] = SUBCOMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nattrail", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nattrail {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in subcommands:
        try:
            module = importlib.import_module(f"nattrail.{name}")
        except Exception as exc:
            _unavailable(subparsers, name, exc)
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, subcommands: Sequence[str] = SUBCOMMANDS) -> int:
    parser = build_parser(subcommands)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
