"""No silent settings: every role variable an inventory sets is one a role defines, every variable a role
defines is read by the role, and a role's defaults, argument specs, compiler defaults and docs table agree.

A role's settings are defined once, in its ``meta/argument_specs.yml`` (the ``main`` entry point); its
``defaults/main.yml`` gives their values and its docs page (``DOCS`` below) a table row per setting.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from nattrail.intent import nat_router

ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "meta" / "argument_specs.yml").exists())
# The page holding each role's "Variables" table.
DOCS = {
    "identd": "identd.md",
    "log_collector": "ulogd.md",
    "masq_logger": "masq_logger.md",
    "nat_router": "nat_router.md",
    "nattrail": "nattrail.md",
    "socks_redirector": "redirect.md",
    "ulogd": "ulogd.md",
}
# Where variables are set: inventories, site.yml's vars, Molecule's files.
SETTING_FILES = sorted(
    [
        *REPO.glob("inventory/**/*.yml"),
        REPO / "site.yml",
        *REPO.glob("molecule/*/*.yml"),
    ]
)
# Where a role reads its variables.
READERS = ("tasks", "templates", "vars", "handlers", "files")
_ROW = re.compile(r"^\| `(?P<name>[a-z][a-z0-9_]*)` \| (?P<default>[^|]*(?:\\\|[^|]*)*) \|", re.MULTILINE)
_EMPTY = (None, "", [], {})


def templated(value: object) -> bool:
    """A default computed from other variables at run time (a Jinja expression somewhere inside)."""
    return "{{" in yaml.safe_dump(value)


def spec_options(role: str) -> dict[str, dict]:
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return specs["argument_specs"]["main"].get("options", {})


def role_defaults(role: str) -> dict[str, object]:
    return yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text()) or {}


def role_of(variable: str) -> str | None:
    """The role whose prefix ``variable`` carries (the longest matching role name), or None."""
    owners = [role for role in ROLES if variable.startswith(f"{role}_")]
    return max(owners, key=len) if owners else None


def variables_set(node: object) -> Iterator[str]:
    """Every mapping key anywhere in a YAML document: inventories nest variables under hosts, groups
    and ``vars``, playbooks under plays and tasks."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str):
                yield key
            yield from variables_set(value)
    elif isinstance(node, list):
        for item in node:
            yield from variables_set(item)


def docs_rows(role: str) -> dict[str, str]:
    """The role's rows of its docs page's variables tables: name -> default cell."""
    text = (REPO / "docs" / DOCS[role]).read_text()
    return {m["name"]: m["default"].strip() for m in _ROW.finditer(text) if m["name"].startswith(f"{role}_")}


@pytest.mark.parametrize("path", SETTING_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_role_variable_set_anywhere_is_defined_by_that_role(path: Path) -> None:
    defined = {role: set(spec_options(role)) for role in ROLES}
    unknown = set()
    for document in yaml.safe_load_all(path.read_text()):
        for name in variables_set(document):
            role = role_of(name)
            if role and name not in defined[role] and not name.startswith(f"{role}_internal_"):
                unknown.add(name)
    # A role's own vars/main.yml may name internal variables; setting one from an inventory is an error too.
    assert not unknown, f"{path.relative_to(REPO)} sets variables no role defines: {sorted(unknown)}"


@pytest.mark.parametrize("role", ROLES)
def test_defaults_and_argument_specs_name_the_same_settings_with_the_same_values(role: str) -> None:
    options, defaults = spec_options(role), role_defaults(role)
    assert set(defaults) == set(options), (
        f"roles/{role}: only in defaults/main.yml: {sorted(set(defaults) - set(options))}; "
        f"only in meta/argument_specs.yml: {sorted(set(options) - set(defaults))}"
    )
    differ = {
        name: (spec.get("default"), defaults[name])
        for name, spec in options.items()
        if "default" in spec and spec["default"] != defaults[name] and not templated(defaults[name])
    }
    assert not differ, f"roles/{role}: argument spec default vs defaults/main.yml: {differ}"


@pytest.mark.parametrize("role", ROLES)
def test_every_setting_is_read_by_the_role_or_a_playbook(role: str) -> None:
    texts = [
        p.read_text(errors="replace")
        for where in READERS
        for p in (REPO / "roles").glob(f"*/{where}/**/*")
        if p.is_file()
    ]
    texts.append((REPO / "site.yml").read_text())
    unread = [
        name for name in spec_options(role) if not any(re.search(rf"\b{name}\b", text) for text in texts)
    ]
    assert not unread, f"roles/{role} defines settings nothing reads: {unread}"


@pytest.mark.parametrize("role", ROLES)
def test_the_docs_table_lists_exactly_the_settings_with_their_defaults(role: str) -> None:
    rows, defaults = docs_rows(role), role_defaults(role)
    page = f"docs/{DOCS[role]}"
    assert set(rows) == set(defaults), (
        f"{page}: rows for settings the role does not define: {sorted(set(rows) - set(defaults))}; "
        f"settings without a row: {sorted(set(defaults) - set(rows))}"
    )
    wrong = {}
    for name, cell in rows.items():
        literal = re.fullmatch(r"`([^`]*)`", cell)
        if templated(defaults[name]):
            continue  # the page says in words what it is computed from
        if literal:
            shown = yaml.safe_load(literal[1].replace("\\|", "|"))
            if shown != defaults[name] and not (shown in _EMPTY and defaults[name] in _EMPTY):
                wrong[name] = (cell, defaults[name])
        elif defaults[name] not in _EMPTY:
            # Prose ("the interface of the default route") only where the role leaves it empty to detect.
            wrong[name] = (cell, defaults[name])
    assert not wrong, f"{page}: default cells that disagree with defaults/main.yml (cell, default): {wrong}"


def test_the_nat_router_compiler_defaults_are_the_role_defaults() -> None:
    """The compiler fills in a missing key with its own default; it must be the role's."""
    defaults = role_defaults("nat_router")
    differ = {}
    for key, default in nat_router.DEFAULTS.items():
        role_value = defaults[f"nat_router_{key}"]
        value = {**nat_router.SOCKS_DEFAULTS, **default} if key == "socks_redirect" else default
        if value != role_value and not (value in _EMPTY and role_value in _EMPTY):
            differ[key] = (value, role_value)
    assert not differ, f"nat_router compiler default vs roles/nat_router/defaults (compiler, role): {differ}"
