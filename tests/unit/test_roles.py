"""The shape every role and play shares, so that a new role adds its checks in one obvious place:
``tasks/check.yml`` (the role's whole input checked, nothing changed), a ``check`` entry point in its
argument specs identical to ``main``, ``main.yml`` starting with the check, and site.yml checking every
role of every host before the first of them changes any host."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").exists())
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
    main = [
        task.get("ansible.builtin.import_tasks")
        for task in load(REPO / "roles" / role / "tasks" / "main.yml")
    ]
    assert main == ["check.yml", "configure.yml"], (
        f"roles/{role}: main.yml must be the check, then configure.yml (what site.yml runs apart)"
    )


def site_plays() -> list[dict]:
    return load(REPO / "site.yml")  # type: ignore[return-value]


def included_roles(task: dict) -> tuple[dict, str]:
    """The include_role of a site task and what it loops over; the loop variable is the role's name,
    and not `item`, which the roles' own loops use."""
    include = task.get("ansible.builtin.include_role", {})
    assert include.get("name") == ROLE and task.get("loop_control", {}).get("loop_var") == "site_role", task
    return include, task.get("loop", "")


# What both plays loop over: the roles of the host's groups, computed once in the shared vars.
ROLES_OF_HOST = "{{ site_roles_of_host }}"
ROLE = "{{ site_role }}"


def test_site_checks_every_host_before_any_host_changes() -> None:
    check, configure = site_plays()
    assert check["hosts"] == configure["hosts"], "both plays must cover the same hosts"
    assert check.get("strategy", "linear") in {"linear", "ansible.builtin.linear"}, (
        "the check play must finish on every host before the configure play starts"
    )
    first = check["tasks"][0]
    include, loop = included_roles(first)
    assert include.get("tasks_from") == "check" and include.get("public") is True, first
    assert loop == ROLES_OF_HOST, first
    assert all(
        task.get("ansible.builtin.include_role", {}).get("tasks_from") == "check" for task in check["tasks"]
    ), "the check play does nothing but the roles' checks"


def test_site_configures_each_host_with_its_groups_roles_in_order() -> None:
    check, configure = site_plays()
    assert check["vars"] is configure["vars"], "both plays must read one site_roles (a YAML anchor)"
    (task,) = configure["tasks"]
    include, loop = included_roles(task)
    assert include.get("tasks_from") == "configure" and include.get("public") is True, task
    assert loop == ROLES_OF_HOST, task
    listed = {role for roles in configure["vars"]["site_roles"].values() for role in roles}
    assert listed == set(ROLES), f"site_roles must give every role to a group: {set(ROLES) ^ listed}"
