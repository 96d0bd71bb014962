"""The B13 patch panel: two switches, N hosts each, N back-to-back links."""

from __future__ import annotations

import subprocess

import pytest

from topo.hostproc import traffic_result
from topo.patchpanel import build_patchpanel, patch, unpatch

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning:mininet.*")]


def ofport(intf: str) -> int:
    return int(subprocess.run(["ovs-vsctl", "get", "Interface", intf, "ofport"], capture_output=True,
                              text=True, check=True).stdout)


def test_patch_panel_ports_and_patching() -> None:
    size = 6
    with build_patchpanel(size=size) as lab:
        for k in range(1, 2 * size + 1):
            assert ofport(f"s1-eth{k}") == k and ofport(f"s2-eth{k}") == k
        for k in range(size + 1, 2 * size + 1):  # back-to-back: s1 port k is cabled to s2 port k
            peer = int(open(f"/sys/class/net/s1-eth{k}/iflink").read())
            assert peer == int(open(f"/sys/class/net/s2-eth{k}/ifindex").read())
        h1 = lab.host("h1")
        ping = ("ping", "--dst", f"10.0.0.{size + 3}", "--count", "2", "--timeout", "0.5")
        assert traffic_result(h1, *ping)["replies"] == 0  # nothing patched: nothing forwards
        patch(lab, 1, 3, link=5)
        traffic_result(h1, "ping", "--dst", f"10.0.0.{size + 3}", "--timeout", "2")  # ARP resolved
        assert traffic_result(h1, *ping)["replies"] == 2
        counted = lab.ofctl("dump-flows", "s1", f"in_port={size + 5}")
        assert "n_packets=0," not in counted  # the replies came back over link 5
        unpatch(lab)
        assert traffic_result(h1, *ping)["replies"] == 0
    with pytest.raises(ValueError, match="size: must be"):
        build_patchpanel(size=0)
