"""POX message building and reading (no switch needed; needs the POX checkout)."""

from __future__ import annotations

from typing import Any

import pytest

from demon.controller.fabric import Entry

pytestmark = pytest.mark.pox


@pytest.fixture(scope="module")
def pox(pox_tap: Any) -> Any:
    return pox_tap


@pytest.mark.parametrize("match", [
    {"in_port": 3},
    {"eth_type": 0x0800, "ip_proto": 6, "ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.0/24", "tcp_src": 1234,
     "tcp_dst": 80},
    {"eth_type": 0x0800, "ip_proto": 17, "udp_dst": 53},
    {"vlan_vid": 10, "eth_type": 0x0800, "ip_proto": 47},
])
def test_match_survives_the_wire(pox: Any, match: dict) -> None:
    import pox.openflow.libopenflow_01 as of

    wire = pox.ofp_match(match)
    parsed = of.ofp_match()
    parsed.unpack(wire.pack(flow_mod=True))
    assert pox.neutral_match(parsed) == match


def test_irrelevant_fields_stay_wildcarded_on_the_wire(pox: Any) -> None:
    """Otherwise OVS stores exact zero-matches and ovs-ofctl --strict cannot find the entry."""
    import pox.openflow.libopenflow_01 as of

    packed = pox.ofp_match({"in_port": 3}).pack(flow_mod=True)
    wildcards = int.from_bytes(packed[:4], "big")
    flags = of.OFPFW_DL_TYPE | of.OFPFW_NW_PROTO | of.OFPFW_NW_TOS | of.OFPFW_TP_SRC | of.OFPFW_TP_DST
    assert wildcards & flags == flags and not wildcards & of.OFPFW_IN_PORT
    assert (wildcards & of.OFPFW_NW_SRC_MASK) >> of.OFPFW_NW_SRC_SHIFT >= 32
    assert (wildcards & of.OFPFW_NW_DST_MASK) >> of.OFPFW_NW_DST_SHIFT >= 32


def test_flow_mods(pox: Any) -> None:
    import pox.openflow.libopenflow_01 as of

    entry = Entry(40001, {"eth_type": 0x0800, "ipv4_src": "10.0.0.1"},
                  ("NORMAL", "output:6", "push_vlan:0x8100", "set_field:vlan_vid=10", "output:7"),
                  0xDE30_8000_0001, 30, 300, True)
    add = pox.flow_mod(entry, of.OFPFC_ADD)
    assert (add.priority, add.cookie, add.idle_timeout, add.hard_timeout) == (40001, 0xDE30_8000_0001, 30, 300)
    assert add.flags == of.OFPFF_SEND_FLOW_REM
    assert pox.neutral_actions(add.actions) == entry.actions
    strict = pox.flow_mod(entry, of.OFPFC_DELETE_STRICT)
    assert strict.actions == [] and strict.priority == 40001 and strict.out_port == of.OFPP_NONE
    assert pox.neutral_match(strict.match) == dict(entry.match)
    drop = pox.flow_mod(Entry(100, {"in_port": 6}, (), 1), of.OFPFC_ADD)
    assert drop.actions == [] and drop.flags == 0


def test_ipv6_refused_before_any_message(pox: Any) -> None:
    from demon.controller.of10 import Of10Error

    with pytest.raises(Of10Error, match="ipv6_src"):
        pox.ofp_match({"ipv6_src": "fc00::1"})


def test_the_component_imports_with_the_standard_library_and_pox_only(pox_tap: Any) -> None:
    """POX loads the component in its own interpreter: nothing from site-packages may be needed
    (``-S``: no site directories; only the repository and the POX checkout on the path), and
    without ``prometheus_client`` it runs without metrics."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.demon.controller.conftest import POX_HOME, REPO

    code = ("import sys; import demon.controller.pox_tap as t; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('os_ken', 'prometheus_client', 'uvicorn', 'yaml', 'pydantic', 'requests')); print(bad); "
            "import logging; logging.basicConfig(level=logging.INFO); print(t._serve_metrics(None, None, '127.0.0.1:0'))")
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": f"{REPO}:{Path(str(POX_HOME))}", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["[]", "None"]  # metrics off without prometheus_client, said in one line
    assert [line for line in proc.stderr.splitlines() if "metrics" in line] == [
        "INFO:demon.controller.pox:metrics off: prometheus_client does not import in POX's interpreter"]
