"""The prototype's static mode on the seed network with the os-ken component
(baseline B2–B6, B9): the flow tables hold the port pairs and port mirrors, and
what reaches h11 is exactly the mirrored pairs' traffic.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.capture_files import capture_files, read_capture
from demon.capture.packet import FlowKey, parse_frame
from demon.controller.fabric import STATIC_COOKIE
from demon.controller.ovsofctl import dump_flows
from topo.hostproc import traffic, traffic_result
from topo.session import LabSession, SessionOptions

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning:mininet.*")]

# baseline §1.4, with the prototype's mirror-destination mix-up corrected (s2 mirrors to 7)
EXPECTED = {
    "s1": {1: ("output:2", "output:6"), 2: ("output:1", "output:6"), 3: ("output:4",), 4: ("output:3",)},
    "s2": {1: ("output:2", "output:7"), 2: ("output:1", "output:7")},
    "s3": {p: ("output:11",) for p in range(1, 11)},
}


def static_table(switch: str) -> dict[int, tuple[str, ...]]:
    """in_port -> actions of the switch's static entries (the static cookie), as OVS holds them."""
    out: dict[int, tuple[str, ...]] = {}
    for e in dump_flows(switch):
        if e.cookie == STATIC_COOKIE:
            assert set(e.match) == {"in_port"} and e.match["in_port"] not in out, e
            assert (e.idle_timeout, e.hard_timeout) == (120, 120), e  # B5: the prototype's lifetime
            out[e.match["in_port"]] = e.actions
    return out


def test_static_mode_tables_and_what_reaches_the_capture_host(tmp_path: Path) -> None:
    with LabSession(SessionOptions(out=tmp_path, static=True, watch=False)) as s:
        assert {sw: static_table(sw) for sw in ("s1", "s2", "s3")} == EXPECTED
        h = s.lab.host
        sniffer = traffic(h("h11"), "sniff", "--interface", "h11-eth0", "--seconds", "8")  # B12
        time.sleep(0.5)
        assert traffic_result(h("h1"), "ping", "--dst", "10.0.0.2", "--count", "3")["replies"] == 3
        assert traffic_result(h("h3"), "ping", "--dst", "10.0.0.4", "--count", "3")["replies"] == 3
        assert traffic_result(h("h6"), "ping", "--dst", "10.0.0.7", "--count", "3")["replies"] == 3
        # no pair between h1 and h3: the prototype forwards only its fixed pairs
        assert traffic_result(h("h1"), "ping", "--dst", "10.0.0.3", "--count", "1",
                              "--timeout", "0.5")["replies"] == 0
        time.sleep(0.5)
        sniffed = {line["flow"] for line in (sniffer.proc.wait(15), sniffer.json_lines())[1]}
    assert {"1:10.0.0.1:None>10.0.0.2:None", "1:10.0.0.7:None>10.0.0.6:None"} <= sniffed
    assert not any("10.0.0.3" in flow for flow in sniffed)
    frames = [parse_frame(f) for p in capture_files(tmp_path / "captures" / "unmatched")
              for _t, f, _l in read_capture(p)]
    icmp = {(FlowKey.of(f).src, FlowKey.of(f).dst) for f in frames if f.get("ip_proto") == 1}
    assert icmp == {("10.0.0.1", "10.0.0.2"), ("10.0.0.2", "10.0.0.1"),
                    ("10.0.0.6", "10.0.0.7"), ("10.0.0.7", "10.0.0.6")}
    # each mirrored echo exchange arrives exactly once (one copy per direction per ping)
    assert sum(1 for f in frames if f.get("ip_proto") == 1) == 4 * 3
