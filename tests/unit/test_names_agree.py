"""The names the layers share, agreed on in a real kernel: what the compiler declares, the template
prints and nft loads is what `nattrail accounting` and `nattrail drops` read back, under the table name
and family stated once in ``nattrail.names``."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import make_facts, render_jinja
from test_ruleset_commit import in_private_netns

from nattrail import accounting, drops, names
from nattrail.intent.nat_router import DROP_COUNTERS, nat_router_rules


def test_compiled_counters_are_the_ones_the_commands_read_back(tmp_path: Path) -> None:
    config = {"accounting_networks": [{"network": "10.77.0.0/25", "name": "inside"}, "10.88.0.0/16"]}
    rules = nat_router_rules(config, make_facts(), "router")
    assert (rules["family"], rules["table"]) == (names.FAMILY, names.TABLE)
    ruleset = tmp_path / "nftables.conf"
    ruleset.write_text(render_jinja(rules))

    def scenario() -> tuple[set[str], set[str]]:
        subprocess.run(["nft", "-f", str(ruleset)], check=True, capture_output=True)
        # Through each command's own reading: `nft -j list counters` parsed by parse_nft_json.
        accounted = accounting.read_counters(names.FAMILY, names.TABLE)
        dropped = accounting.read_counters(names.FAMILY, names.TABLE, names=drops.DROP_NAME)
        return set(accounted), set(dropped)

    accounted, dropped = in_private_netns(scenario)
    assert (
        accounted
        == {str(c["name"]) for c in rules["accounting"]["counters"]}
        == {
            "acct_inside_in",
            "acct_inside_out",
            "acct_1_in",
            "acct_1_out",
            "acct_other_in",
            "acct_other_out",
        }
    )
    assert dropped == {name for name, _ in DROP_COUNTERS}
