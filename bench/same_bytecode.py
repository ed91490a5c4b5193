#!/usr/bin/env python3
"""Check: a module split into several keeps the bytecode of every function, method and class body.

Moving code between modules can change what CPython compiles without changing a line of it: in 3.11 a
method call on a name the module binds by import (``from x import y``, then ``y.method()``) compiles
without ``LOAD_METHOD`` (a bound method made per call), where the same call on a name the module defines
itself did not; a global read through a module object (``x.y``) is one more lookup than ``y``. So the
sources are compiled (not imported: the bytecode is a function of the text alone) and every code object
is compared, by qualified name, on what the interpreter runs: ``co_code``, the names, constants (nested
code by name), variables, flags and exception table. Line numbers and file names are ignored.

  python3 bench/same_bytecode.py HEAD~1:src/nattrail/masqlog/__init__.py src/nattrail/masqlog/*.py

A ``REV:PATH`` argument is read with ``git show``; the first argument is the code before, the others
together the code after. Prints one line per qualified name that differs (with a ``dis`` diff), then a
count; exits 1 when anything differs or is missing, so that each difference is looked at and explained.
"""

from __future__ import annotations

import argparse
import difflib
import dis
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import CodeType

Fingerprint = tuple[object, ...]
FIELDS = ("code", "names", "consts", "varnames", "freevars", "cellvars", "flags", "argcount",
          "posonlyargcount", "kwonlyargcount", "exceptiontable")  # fmt: skip


def source(spec: str) -> tuple[str, str]:
    """The text of a file, or of ``REV:PATH`` as git has it."""
    if ":" in spec and not Path(spec).exists():
        text = subprocess.run(["git", "show", spec], capture_output=True, text=True, check=True).stdout
        return spec, text
    return spec, Path(spec).read_text(encoding="utf-8")


def code_objects(name: str, text: str) -> dict[str, list[CodeType]]:
    """Every code object below the module's, by qualified name (a name may have several: module-level
    comprehensions are all ``<dictcomp>`` and the like)."""
    found: dict[str, list[CodeType]] = defaultdict(list)
    pending = list(compile(text, name, "exec").co_consts)
    while pending:
        const = pending.pop(0)
        if isinstance(const, CodeType):
            found[const.co_qualname].append(const)
            pending.extend(const.co_consts)
    return found


def fingerprint(code: CodeType) -> Fingerprint:
    consts = tuple(f"<code {c.co_qualname}>" if isinstance(c, CodeType) else c for c in code.co_consts)
    return (
        code.co_code,
        code.co_names,
        consts,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_flags,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_exceptiontable,
    )


def listing(code: CodeType) -> list[str]:
    """``dis`` of one code object without offsets and line numbers, which a move alone changes."""
    lines = []
    for instruction in dis.get_instructions(code):
        argument = re.sub(r" at 0x[0-9a-f]+, file .*, line \d+", "", instruction.argrepr)
        lines.append(f"{instruction.opname} {argument}".rstrip())
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="the module before the split (a path, or REV:PATH)")
    parser.add_argument("after", nargs="+", help="the modules after it (paths, or REV:PATH)")
    args = parser.parse_args()
    old = code_objects(*source(args.before))
    new: dict[str, list[CodeType]] = defaultdict(list)
    for spec in args.after:
        for qualname, codes in code_objects(*source(spec)).items():
            new[qualname].extend(codes)
    differing = 0
    for qualname in sorted(old.keys() | new.keys()):
        before, after = old.get(qualname, []), new.get(qualname, [])
        if sorted(map(repr, map(fingerprint, before))) == sorted(map(repr, map(fingerprint, after))):
            continue
        differing += 1
        if not before or not after:
            print(f"{qualname}: only {'after' if after else 'before'} the split")
            continue
        for a, b in zip(before, after, strict=False):
            pairs = zip(FIELDS, fingerprint(a), fingerprint(b), strict=True)
            fields = [field for field, x, y in pairs if x != y]
            print(f"{qualname}: differs in {', '.join(fields) or 'how many there are'}")
            diff = difflib.unified_diff(listing(a), listing(b), "before", "after", lineterm="", n=2)
            print("\n".join(f"    {line}" for line in diff))
    total = len(old.keys() | new.keys())
    print(f"{total - differing} of {total} qualified names compile to the same bytecode; {differing} differ")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
