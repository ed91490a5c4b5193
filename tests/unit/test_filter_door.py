"""filter_plugins/nattrail.py as Ansible loads it: every compiler's filters, each with its ansible-doc."""

from __future__ import annotations

import yaml
from conftest import REPO, load_filter_plugin

from nattrail.intent import masq_logger, nat_router, socks_redirector, ulogd


def test_the_door_names_each_compiler_function() -> None:
    assert load_filter_plugin().FilterModule().filters() == {
        "nat_router_rules": nat_router.nat_router_rules,
        "nat_router_interfaces": nat_router.nat_router_interfaces,
        "ulogd_config": ulogd.ulogd_config,
        "log_collector_settings": ulogd.log_collector_settings,
        "pgsql_scram_verifier": ulogd.pgsql_scram_verifier,
        "pgsql_scram_matches": ulogd.pgsql_scram_matches,
        "masq_logger_settings": masq_logger.masq_logger_settings,
        "socks_redirector_settings": socks_redirector.socks_redirector_settings,
    }


def test_every_filter_has_its_ansible_doc_page_and_no_page_is_left_over() -> None:
    pages = {
        p.stem: yaml.safe_load(p.read_text())["DOCUMENTATION"]["name"]
        for p in (REPO / "filter_plugins").glob("*.yml")
    }
    assert all(stem == name for stem, name in pages.items()), pages
    assert set(pages) == set(load_filter_plugin().FilterModule().filters())
