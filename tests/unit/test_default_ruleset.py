"""The role's defaults (no site variables at all), through the filter and the template, loaded into a
real kernel: the ruleset a fresh router gets. In a private network namespace, with an outside peer
in a second one across a veth pair, it must count each drop by its reason, hold a ping flood from
one source to the per-source rate, and keep the drop counters and the blocklist across a reload of
the kind nftables.service makes (`nattrail ruleset carry`, then `nft -f` of the saved ruleset)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from conftest import REPO, make_facts, netns_driver_report, refuse_outside_private_netns, render_jinja

from nattrail.intent.nat_router import nat_router_rules

ROLE = REPO / "roles" / "nat_router"

# Echo requests from one socket, so one ICMP id for all: what `ping -f` sends. Prints the replies.
FLOOD = """
import socket, struct, sys, time
target, count = sys.argv[1], int(sys.argv[2])
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setblocking(False)
replies, start = 0, time.monotonic()
for seq in range(count):
    header = struct.pack("!BBHHH", 8, 0, 0, 0x4E54, seq)
    echo = struct.pack("!BBHHH", 8, 0, checksum(header + b"nattrail"), 0x4E54, seq) + b"nattrail"
    s.sendto(echo, (target, 0))
    time.sleep(0.002)
sent_for = time.monotonic() - start
deadline = time.monotonic() + 1.0
while time.monotonic() < deadline:
    try:
        packet = s.recv(2048)
    except BlockingIOError:
        time.sleep(0.01)
        continue
    if packet[20] == 0 and packet[12:16] == socket.inet_aton(target):
        replies += 1
print(replies, sent_for)
"""


def default_config() -> dict[str, object]:
    """nat_router_config from vars/main.yml, templated with nothing but the role's defaults."""
    from ansible.parsing.dataloader import DataLoader  # noqa: PLC0415
    from ansible.template import Templar, trust_as_template  # noqa: PLC0415

    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    mapping = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["nat_router_config"]
    templar = Templar(loader=DataLoader(), variables=defaults)
    return {key: templar.template(trust_as_template(value)) for key, value in mapping.items()}


def render(state: Path) -> str:
    """The default ruleset, its carry includes in ``state`` as `nattrail ruleset` writes them there."""
    # eth0 outside (203.0.113.2/24, the default route), eth1 inside (10.77.0.2/24), as the driver builds.
    rules = nat_router_rules(default_config(), make_facts(), "router")
    return render_jinja(rules, f"{state}/carry/*.nft", f"{state}/carry-sets/*.nft")


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def drops() -> dict[str, int]:
    from nattrail import accounting, drops  # noqa: PLC0415

    found = accounting.read_counters("inet", "nattrail", names=drops.DROP_NAME)
    return {name: c.packets for name, c in found.items()}


def netns_driver() -> None:
    from nattrail import ruleset  # noqa: PLC0415

    refuse_outside_private_netns()
    tmp = Path(tempfile.mkdtemp())
    sh("ip", "link", "set", "lo", "up")
    peer = subprocess.Popen(["unshare", "--net", "sleep", "120"])
    own = Path("/proc/self/ns/net").readlink()
    while Path(f"/proc/{peer.pid}/ns/net").readlink() == own:
        time.sleep(0.01)
    outside = ["nsenter", f"--net=/proc/{peer.pid}/ns/net"]
    try:
        sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "outside0")
        sh("ip", "link", "set", "outside0", "netns", str(peer.pid))
        sh("ip", "addr", "add", "203.0.113.2/24", "dev", "eth0")
        sh("ip", "link", "set", "eth0", "up")
        # The inside: a veth whose other end stays here, unused (no dummy module on every kernel).
        sh("ip", "link", "add", "eth1", "type", "veth", "peer", "name", "inside0")
        sh("ip", "addr", "add", "10.77.0.2/24", "dev", "eth1")
        sh("ip", "link", "set", "eth1", "up")
        sh(*outside, "ip", "addr", "add", "203.0.113.20/24", "dev", "outside0")
        sh(*outside, "ip", "link", "set", "outside0", "up")
        sh(*outside, "ip", "link", "set", "lo", "up")

        target = tmp / "nftables.conf"
        target.write_text(render(tmp))
        paths = ruleset.Paths(target, target, tmp, "inet", "nattrail")
        ruleset.apply(paths, confirm_timeout=0)
        loaded = drops()

        replies, flood_s = sh(*outside, sys.executable, "-c", FLOOD, "203.0.113.2", "300").split()
        probe = subprocess.run(
            [
                *outside,
                sys.executable,
                "-c",
                "import socket; socket.create_connection(('203.0.113.2', 8080), 1)",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        sh("nft", "add", "element", "inet", "nattrail", "blocklist", "{ 203.0.113.66 timeout 10m }")
        before = drops()
        # What nftables.service's reload runs with the role's drop-in.
        carried = ruleset.carry(paths, target)
        sh("nft", "-f", str(target))
        after = drops()
        blocklist = json.loads(sh("nft", "-j", "list", "set", "inet", "nattrail", "blocklist"))
    finally:
        peer.kill()
    elements = next(i["set"].get("elem", []) for i in blocklist["nftables"] if "set" in i)
    print(
        json.dumps(
            {
                "loaded": loaded,
                "replies": int(replies),
                "flood_s": float(flood_s),
                "probe_rc": probe.returncode,
                "before": before,
                "after": after,
                "carried": carried,
                "blocklist": elements,
            }
        )
    )


def test_the_default_ruleset_loads_counts_drops_limits_a_flood_and_keeps_its_state_over_a_reload() -> None:
    report = netns_driver_report(
        __file__, "--netns-driver", untested="the default ruleset in a real kernel", timeout=90
    )
    reasons = {
        "drop_spoof",
        "drop_blocklist",
        "drop_icmp_limit",
        "drop_in_invalid",
        "drop_ident_reset",
        "drop_broadcast",
        "drop_noisy_udp",
        "drop_in",
        "drop_fwd_invalid",
        "drop_fwd",
    }
    assert report["loaded"] == dict.fromkeys(reasons, 0)
    # 300 echo requests with one ICMP id: the first is NEW, the rest "established" to conntrack.
    # Per source 5/second with a burst of 5: at most 5 x duration + 5 answered (+1 for a tick).
    assert 1 <= report["replies"] <= 5 * report["flood_s"] + 6, report
    before = report["before"]
    assert before["drop_icmp_limit"] == 300 - report["replies"]
    assert report["probe_rc"] != 0 and before["drop_in"] >= 1, "the probe of port 8080 was not dropped"
    # The reload kept every count, and the blocklist entry with the time it had left.
    assert report["after"] == before
    assert report["carried"]["elements"] == 1
    [element] = report["blocklist"]
    assert element["elem"]["val"] == "203.0.113.66"
    assert 590 <= element["elem"]["timeout"] <= 600


if __name__ == "__main__":
    if sys.argv[1:] != ["--netns-driver"]:
        raise SystemExit("usage: test_default_ruleset.py --netns-driver (inside unshare --net)")
    netns_driver()
