"""The shape every role and play shares, so that a new role adds its checks in one obvious place:
``tasks/check.yml`` (the role's whole input checked, nothing changed), a ``check`` entry point in its
argument specs identical to ``main``, ``main.yml`` starting with the check, and every play checking all
its roles before the first of them changes a host."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").exists())
PLAYBOOKS = sorted((REPO / "playbooks").glob("*.yml"))
CHANGING = (
    "ansible.builtin.copy",
    "ansible.builtin.template",
    "ansible.builtin.apt",
    "ansible.builtin.file",
    "ansible.builtin.command",
    "ansible.builtin.shell",
    "ansible.builtin.systemd_service",
    "ansible.builtin.user",
    "ansible.posix.sysctl",
)


def load(path: Path) -> object:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("role", ROLES)
def test_the_role_has_a_check_entry_point_like_main(role: str) -> None:
    specs = load(REPO / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]
    assert specs.get("check") == specs["main"], (
        f"roles/{role}: argument_specs check must be main's (an alias)"
    )


@pytest.mark.parametrize("role", ROLES)
def test_the_check_changes_nothing_and_main_starts_with_it(role: str) -> None:
    check = load(REPO / "roles" / role / "tasks" / "check.yml")
    modules = {key for task in check for key in task if "." in key}
    assert not modules & set(CHANGING), (
        f"roles/{role}/tasks/check.yml changes the host: {modules & set(CHANGING)}"
    )
    first = load(REPO / "roles" / role / "tasks" / "main.yml")[0]
    assert first.get("ansible.builtin.import_tasks") == "check.yml", (
        f"roles/{role}: main.yml must start with the check"
    )


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=lambda p: p.name)
def test_every_play_checks_all_its_roles_first_in_order(playbook: Path) -> None:
    for play in load(playbook):
        roles = [entry["role"] if isinstance(entry, dict) else entry for entry in play.get("roles", [])]
        if not roles:
            continue
        first = (play.get("pre_tasks") or [{}])[0]
        include = first.get("ansible.builtin.include_role", {})
        assert include.get("tasks_from") == "check" and first.get("loop") == roles, (
            f"{playbook.name}, play {play['name']!r}: the first pre-task must include_role tasks_from: check "
            f"with loop: {roles}"
        )
