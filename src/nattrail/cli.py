"""The `nattrail` command: one entry point, one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (a callable taking the parsed namespace and returning the exit status).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nattrail import __version__

# Subcommand modules, imported lazily so that one broken optional piece never takes the CLI down.
SUBCOMMANDS: tuple[str, ...] = ("redirect", "accounting", "drops", "ruleset", "masqlog", "who")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nattrail", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"nattrail {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = __import__(f"nattrail.{name}", fromlist=["register"])
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
