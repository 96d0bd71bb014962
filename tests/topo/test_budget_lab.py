"""A packet budget in the lab: ``max_packets: 10000`` on a 100 Mbit/s elephant, and
h11 receives 10,000 copies of it (and less than 10 % more), counted by tcpdump on
h11 itself. Open vSwitch's mirror counters lag (refreshed about every 500 ms) and
credit a new entry with traffic from before it was live; the daemon's budget
accounting has to see through both (demon/budget.py).

Measured over 11 runs on this machine: 100 Mbit/s, +0.1 % .. +1.5 % (and one +9.9 %
before a refresh that shows too little was caught up from the one before); at
200 Mbit/s (a budget that lasts about one refresh) -0.3 % .. +10.3 %: that is why
this test sends 100 Mbit/s."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from sflow.pcap import iter_frames
from topo.hostproc import traffic
from topo.seed import host_ip
from topo.session import LabSession, SessionOptions

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:mininet.*")]

POLICY = """\
name: first_packets
kind: elephant
description: the first 10,000 packets of each elephant
keys: ipsource,ipdestination,tcpsourceport,tcpdestinationport
threshold: 50Mbps
interval: 1s
duration: 30s
max_duration: 2m
holddown: 5m
idle_timeout: 30
max_packets: 10000
"""
BUDGET = 10_000


@pytest.fixture
def session(lab_lock: None, tmp_path: Path) -> Iterator[LabSession]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "first-packets.yaml").write_text(POLICY)
    (policies / "_global.yaml").write_text("max_taps: 4\n")
    s = LabSession(SessionOptions(out=tmp_path / "lab", policies=policies))
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_a_packet_budget_captures_its_count_on_h11(session: LabSession, tmp_path: Path) -> None:
    sport, dport = 41201, 5321
    h11 = session.lab.host("h11")
    pcap = tmp_path / "h11.pcap"
    dump = h11.popen(["tcpdump", "-i", "h11-eth0", "-Q", "in", "-B", "65536", "-s", "96", "-U",
                      "-w", str(pcap), f"tcp and src host {host_ip(1)} and src port {sport}"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attached before the traffic starts
    sink = traffic(session.lab.host("h2"), "tcpsink", "--port", str(dport), "--max-time", "60")
    time.sleep(0.3)
    sender = traffic(session.lab.host("h1"), "tcp", "--dst", host_ip(2), "--dport", str(dport),
                     "--sport", str(sport), "--bytes", str(60_000_000), "--rate", "100M")
    key = f"{host_ip(1)},{host_ip(2)},{sport},{dport}"

    def ended(s: LabSession) -> bool:
        taps = [t for t in s.taps.values() if t["flow_key"] == key]
        return bool(taps) and taps[0]["state"] in ("removed", "failed")

    try:
        assert session.wait(ended, 40), session.taps
        assert sender.proc.wait(60) == 0 and sink.proc.wait(60) == 0  # forwarding went on
        time.sleep(1.0)  # the last copies in flight
    finally:
        dump.terminate()
        err = dump.communicate(timeout=20)[1].decode()
    assert re.search(r"^0 packets dropped by kernel", err, re.M), err
    (tap,) = [t for t in session.taps.values() if t["flow_key"] == key]
    copies = sum(1 for _ in iter_frames(pcap))
    assert tap["limit"] == "max_packets", tap
    assert BUDGET <= copies < BUDGET * 1.10, (copies, tap["reason"], tap["packets"])
