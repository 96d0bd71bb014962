"""The whole loop on the seed network: OVS sFlow -> embedded engine ->
demon-watch -> os-ken component -> mirror -> capture agent on h11.

One lab for the module (start-up costs ~12 s: the daemon must learn the port
map first); each test uses its own flows (own ports), so taps and hold-downs of
one test never meet another's. Observations come from the network: the pcaps
on h11, the switches' flow tables and the mirror counters the switch reports.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from demon.capture.packet import FlowKey, parse_frame
from tests.capture_files import capture_files, read_capture
from topo.hostproc import HostProc, traffic
from topo.seed import host_ip
from topo.session import LabSession, SessionOptions

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:mininet.*")]

POLICY_CAP = 2  # policies/lab/elephant-tcp.yaml max_taps
UPLINKS = set(range(6, 11))



@pytest.fixture(scope="module")
def session(module_lab_lock: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSession]:
    s = LabSession(SessionOptions(out=tmp_path_factory.mktemp("loop")))
    s.start()
    try:
        yield s
    finally:
        s.stop()


class TcpFlow:
    """One exact-size TCP transfer src -> dst with known ports."""

    def __init__(self, session: LabSession, src: int, dst: int, sport: int, dport: int,
                 nbytes: int, rate: str = "200M") -> None:
        self.session, self.src, self.dst, self.sport, self.dport = session, src, dst, sport, dport
        self.nbytes = nbytes
        self.key = f"{host_ip(src)},{host_ip(dst)},{sport},{dport}"
        lab = session.lab
        self.sink: HostProc = traffic(lab.host(f"h{dst}"), "tcpsink", "--port", str(dport), "--max-time", "60")
        time.sleep(0.3)
        self.sender: HostProc = traffic(lab.host(f"h{src}"), "tcp", "--dst", host_ip(dst), "--dport", str(dport),
                                        "--sport", str(sport), "--bytes", str(nbytes), "--rate", rate)
        self.started_at = time.time()
        self.ended_at: float | None = None

    def done(self) -> bool:
        if self.ended_at is None and self.sender.proc.poll() is not None:
            self.ended_at = time.time()
        return self.ended_at is not None

    def results(self) -> tuple[dict[str, Any], dict[str, Any]]:
        assert self.sender.proc.wait(30) == 0
        assert self.sink.proc.wait(30) == 0
        return self.sender.json_lines()[-1], self.sink.json_lines()[-1]

    def matches(self, fields: dict[str, Any]) -> bool:
        return (str(fields.get("ipv4_src")), str(fields.get("ipv4_dst")), fields.get("tcp_src"),
                fields.get("tcp_dst")) == (host_ip(self.src), host_ip(self.dst), self.sport, self.dport)


def frame_id(frame: bytes, length: int) -> tuple[int, int, int]:
    """(IP id, TCP seq, frame length): tells a frame apart from every other of its connection."""
    ihl = (frame[14] & 0x0F) * 4
    tcp = 14 + ihl
    return (int.from_bytes(frame[18:20], "big"), int.from_bytes(frame[tcp + 4: tcp + 8], "big"), length)


class ReceiverCapture:
    """tcpdump on the receiving host: what the network delivered to it, in order."""

    def __init__(self, session: LabSession, host: int, flow_filter: str, path: Path) -> None:
        self.path = path
        self.proc = session.lab.host(f"h{host}").popen(
            ["tcpdump", "-i", f"h{host}-eth0", "-Q", "in", "-B", "32768", "-s", "128", "-U", "-w", str(path),
             flow_filter], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # tcpdump attached before the traffic starts

    def frame_ids(self) -> list[tuple[int, int, int]]:
        self.proc.terminate()
        err = self.proc.communicate(timeout=20)[1].decode()
        assert re.search(r"^0 packets dropped by kernel", err, re.M), err  # otherwise this reference is incomplete
        return [frame_id(f, n) for _t, f, n in read_capture(self.path)]


def run_flows(session: LabSession, flows: list[TcpFlow], timeout: float = 60) -> None:
    assert session.wait(lambda s: all(f.done() for f in flows), timeout), "traffic did not end"


def taps_of(session: LabSession, key: str) -> list[dict[str, Any]]:
    return [t for t in session.taps.values() if t["flow_key"] == key]


def wait_released(session: LabSession, keys: list[str], timeout: float = 30) -> None:
    def released(s: LabSession) -> bool:
        taps = [t for k in keys for t in taps_of(s, k)]
        return bool(taps) and all(t["state"] in ("removed", "failed") for t in taps)
    assert session.wait(released, timeout), {k: taps_of(session, k) for k in keys}


def agent_counters(session: LabSession) -> str:
    """Where copies could have been lost, for the failure message."""
    st = session.agent_status()
    stats = {}
    for intf in ("s1-eth6", "s1-eth7", "s3-eth1", "s3-eth2", "s3-eth11"):
        raw = subprocess.run(["ovs-vsctl", "get", "interface", intf, "statistics"], capture_output=True,
                             text=True).stdout
        stats[intf] = {k: v for k, v in (kv.split("=") for kv in raw.strip("{}\n").split(", "))
                       if k in ("tx_packets", "tx_dropped", "rx_packets", "rx_dropped")}
    h11 = session.lab.host("h11").cmd("ip -s link show h11-eth0").split()
    return json.dumps({"events": session.mirror_events, "kernel_drops": st.get("kernel_drops"), **st.get("counters", {}), **stats,
                       "h11": " ".join(h11[-24:])})


def switch_packets(session: LabSession, tap_id: str) -> int:
    """What the switch says it mirrored: the counters of the FlowRemoved events."""
    return sum(e.get("packets", 0) for e in session.mirror_events if e["tap_id"] == tap_id)


def pcap_fields(session: LabSession, tap_id: str) -> list[dict[str, Any]]:
    return [parse_frame(f) for p in session.capture_files(tap_id) for _t, f, _l in read_capture(p)]


def unmatched_ip_flows(session: LabSession) -> set[str]:
    d = session.paths["captures"] / "unmatched"
    return {str(FlowKey.of(f)) for p in capture_files(d) for _t, fr, _l in read_capture(p)
            if "ip_proto" in (f := parse_frame(fr))}


def test_an_elephant_is_tapped_once_captured_whole_and_released(session: LabSession) -> None:
    mice = [traffic(session.lab.host("h3"), "mice", "--dst", host_ip(4), "--flows", "20", "--packets", "20",
                    "--pps", "100", "--first-sport", "42000"),
            traffic(session.lab.host("h8"), "mice", "--dst", host_ip(9), "--flows", "20", "--packets", "20",
                    "--pps", "100", "--first-sport", "42000")]
    receiver = ReceiverCapture(session, 2, "tcp and src host 10.0.0.1 and src port 41001",
                               session.out / "receiver.pcap")
    flow = TcpFlow(session, 1, 2, 41001, 5301, nbytes=150_000_000)
    run_flows(session, [flow])
    for m in mice:
        assert m.proc.wait(30) == 0
    sent, got = flow.results()
    assert sent["bytes_sent"] == got["bytes_received"] == flow.nbytes  # forwarding never stopped
    wait_released(session, [flow.key])

    (tap,) = taps_of(session, flow.key)
    assert [t["flow_key"] for t in session.taps.values()] == [flow.key]  # the mice were never tapped
    assert (tap["dpid"], tap["in_port"]) == (1, 1) and tap["copy_port"] in UPLINKS
    assert tap["state"] == "removed" and tap["ended_at"] > flow.ended_at  # released after the flow stopped
    frames = pcap_fields(session, tap["tap_id"])
    assert frames and all(flow.matches(f) for f in frames)  # the elephant's packets, no other flow's
    # Every packet the receiver got once the mirror was live has its copy at h11, none twice.
    copies = [frame_id(f, n) for p in session.capture_files(tap["tap_id"]) for _t, f, n in read_capture(p)]
    delivered = receiver.frame_ids()
    assert len(set(copies)) == len(copies)
    position = {fid: i for i, fid in enumerate(delivered)}
    first = min(position[c] for c in copies[:50] if c in position)  # where the mirror went live
    missing = set(delivered[first:]) - set(copies)
    assert not missing, (len(missing), agent_counters(session))
    # The switch counts what its entry matched. OVS also credits the entry with the packets
    # its datapath forwarded in the few ms before it revalidated onto the new mirror; those
    # reached the receiver before the first copy, so they bound the difference exactly.
    counted = switch_packets(session, tap["tap_id"])
    assert len(copies) <= counted <= len(copies) + first, (len(copies), counted, first)
    assert len(copies) > flow.nbytes // 1500 // 2
    assert unmatched_ip_flows(session) == set()  # no mouse copy reached the capture host
    manifest = session.manifests(tap["tap_id"])[-1]
    assert (manifest["policy"], manifest["flow_key"], manifest["switch"], manifest["port"]) == \
        ("elephant_tcp", flow.key, 1, 1)
    tshark = subprocess.run(["tshark", "-r", str(session.capture_files(tap["tap_id"])[0]), "-c", "5",
                             "-T", "fields", "-e", "tcp.srcport"], capture_output=True, text=True, timeout=60)
    assert tshark.returncode == 0 and set(tshark.stdout.split()) == {"41001"}


def test_two_concurrent_elephants_are_each_tapped_once_at_their_ingress_switch(session: LabSession) -> None:
    flows = [TcpFlow(session, 1, 2, 41002, 5302, nbytes=100_000_000, rate="150M"),
             TcpFlow(session, 6, 7, 41003, 5303, nbytes=100_000_000, rate="150M")]
    run_flows(session, flows)
    for f in flows:
        f.results()
    wait_released(session, [f.key for f in flows])
    for f, dpid in zip(flows, (1, 2)):
        (tap,) = taps_of(session, f.key)
        assert (tap["dpid"], tap["in_port"]) == (dpid, 1) and tap["copy_port"] in UPLINKS
        frames = pcap_fields(session, tap["tap_id"])
        assert frames and all(f.matches(x) for x in frames)
        assert 0.5 * f.nbytes / 1500 < len(frames) <= switch_packets(session, tap["tap_id"])


def test_more_elephants_than_the_cap_never_get_more_taps_than_the_cap(session: LabSession) -> None:
    live_mirrors: list[int] = []

    def sample(s: LabSession) -> None:
        live_mirrors.append(len([m for m in s.rpc.list_mirrors() if m["tap_id"].startswith("elephant_tcp")]))

    flows = [TcpFlow(session, 1, 2, 41004, 5304, nbytes=75_000_000, rate="100M"),
             TcpFlow(session, 3, 4, 41005, 5305, nbytes=75_000_000, rate="100M"),
             TcpFlow(session, 5, 2, 41006, 5306, nbytes=75_000_000, rate="100M")]
    assert session.wait(lambda s: (sample(s), all(f.done() for f in flows))[1], 60)
    keys = [f.key for f in flows]
    assert session.wait(lambda s: (sample(s), not s.live_taps())[1], 30)
    taps = [t for k in keys for t in taps_of(session, k)]
    live, peak = 0, 0
    for e in session.timeline_dicts():  # the daemon's own record, in order
        if e["tap_id"] in {t["tap_id"] for t in taps}:
            if e["what"] == "tap created":
                live += 1
            elif e["what"] in ("tap removed", "tap failed"):
                live -= 1
            peak = max(peak, live)
    assert peak == POLICY_CAP  # the cap was reached...
    assert max(live_mirrors) <= POLICY_CAP  # ...and the switches never held more mirrors than it


def test_a_daemon_killed_with_a_tap_active_restarts_without_a_duplicate_and_the_tap_ends(
        session: LabSession) -> None:
    flow = TcpFlow(session, 1, 2, 41007, 5307, nbytes=300_000_000, rate="200M")  # ~12 s
    assert session.wait(lambda s: any(t["state"] == "active" for t in taps_of(s, flow.key)), 15)
    (tap,) = taps_of(session, flow.key)
    session.watch.kill()  # SIGKILL: no clean-up of any kind
    session.start_watch()  # same state file, same controller
    time.sleep(3)  # the restarted daemon reconciles with the controller
    mirrors = [m for m in session.rpc.list_mirrors() if m["tap_id"] == tap["tap_id"]]
    assert len(mirrors) == 1
    s1_entries = [line for line in session.lab.ofctl("dump-flows", "s1").splitlines()
                  if "tp_src=41007" in line or "tcp_src=41007" in line]
    assert len(s1_entries) == 1, s1_entries  # one mirror entry on the switch, not two
    run_flows(session, [flow])
    sent, got = flow.results()
    assert sent["bytes_sent"] == got["bytes_received"] == flow.nbytes
    wait_released(session, [flow.key], timeout=40)
    (after,) = taps_of(session, flow.key)  # still one tap for the flow
    assert after["tap_id"] == tap["tap_id"] and after["state"] == "removed"
    frames = pcap_fields(session, tap["tap_id"])
    assert frames and all(flow.matches(f) for f in frames)
    assert 0.5 * flow.nbytes / 1500 < len(frames) <= switch_packets(session, tap["tap_id"])


def test_an_operator_taps_a_mouse_by_hand_and_h11_gets_exactly_that_flow(session: LabSession) -> None:
    """``demon-tap tap``: a flow no policy would tap (5 Mbit/s, threshold 50) is mirrored
    on the operator's word, at the port the engine saw it enter, and only it."""
    flow = TcpFlow(session, 3, 4, 41008, 5308, nbytes=7_500_000, rate="5M")  # ~12 s
    outcome = ""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the engine has sampled the flow
        proc = subprocess.run([sys.executable, "-m", "demon.tapctl", "--state", str(session.paths["state"]),
                               "tap", "elephant_tcp", flow.key, "--for", "60s", "--wait", "10"],
                              capture_output=True, text=True, timeout=30)
        outcome = proc.stdout + proc.stderr
        if proc.returncode == 0 or "not among the active flows" not in outcome:
            break
        time.sleep(0.5)
    assert proc.returncode == 0 and "tapped elephant_tcp." in outcome, outcome
    run_flows(session, [flow])
    sent, got = flow.results()
    assert sent["bytes_sent"] == got["bytes_received"] == flow.nbytes
    wait_released(session, [flow.key])  # the switch's idle timeout ends it once the flow stops
    (tap,) = taps_of(session, flow.key)
    assert (tap["dpid"], tap["in_port"]) == (1, 3) and tap["copy_port"] in UPLINKS
    assert "operator" in tap["trigger"]
    frames = pcap_fields(session, tap["tap_id"])
    assert frames and all(flow.matches(f) for f in frames)
    assert 0.3 * flow.nbytes / 1500 < len(frames) <= switch_packets(session, tap["tap_id"])
