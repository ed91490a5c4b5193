"""filter_plugins/nattrail.py as Ansible loads it: every compiler's filters, each with its ansible-doc."""

from __future__ import annotations

import yaml
from conftest import REPO, load_filter_plugin

from nattrail.intent import masq_logger, nat_router, socks_redirector, ulogd


def test_the_door_names_each_compiler_function_after_itself() -> None:
    """Each filter is the function of that name in a compiler module, and every role compiler is there."""
    filters = load_filter_plugin().FilterModule().filters()
    assert all(
        f.__name__ == name and f.__module__.startswith("nattrail.intent.") for name, f in filters.items()
    )
    compilers = {masq_logger, nat_router, socks_redirector, ulogd}
    assert {f.__module__ for f in filters.values()} == {m.__name__ for m in compilers}
    assert {"nat_router_rules", "ulogd_config", "masq_logger_settings", "socks_redirector_settings"} <= set(
        filters
    )


def test_every_filter_has_its_ansible_doc_page_and_no_page_is_left_over() -> None:
    pages = {
        p.stem: yaml.safe_load(p.read_text())["DOCUMENTATION"]["name"]
        for p in (REPO / "filter_plugins").glob("*.yml")
    }
    assert all(stem == name for stem, name in pages.items()), pages
    assert set(pages) == set(load_filter_plugin().FilterModule().filters())
