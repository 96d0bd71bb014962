"""The capture agent without a network: frames built with dpkt, a fake clock."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import dpkt
import pytest

from demon.capture.agent import main as capture_main
from demon.capture.files import RotatingFile
from demon.capture.filer import CaptureAgent
from demon.capture.packet import parse_frame
from demon.capture.taptable import TapTable, TapTableError, parse_taps, write_tap_table
from sflow.pcap import PcapWriter
from tests.capture_files import capture_files, read_capture

ELEPHANT = {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "tcp_src": 51792, "tcp_dst": 5201}


def mac(n: int) -> bytes:
    return bytes([0, 0, 0, 0, 0, n])


def tcp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes = b"x" * 100,
              vlan: int | None = None) -> bytes:
    ip = dpkt.ip.IP(src=bytes(map(int, src.split("."))), dst=bytes(map(int, dst.split("."))),
                    p=dpkt.ip.IP_PROTO_TCP, data=dpkt.tcp.TCP(sport=sport, dport=dport, data=payload))
    ip.len = len(bytes(ip))
    eth = dpkt.ethernet.Ethernet(src=mac(1), dst=mac(2), type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
    raw = bytes(eth)
    if vlan is not None:
        raw = raw[:12] + b"\x81\x00" + vlan.to_bytes(2, "big") + raw[12:]
    return raw


def udp6_frame(src: str, dst: str, sport: int, dport: int) -> bytes:
    import ipaddress
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=b"y" * 40)
    udp.ulen = len(bytes(udp))
    ip6 = dpkt.ip6.IP6(src=ipaddress.IPv6Address(src).packed, dst=ipaddress.IPv6Address(dst).packed,
                       nxt=17, hlim=64, data=udp)
    ip6.plen = len(bytes(udp))
    return bytes(dpkt.ethernet.Ethernet(src=mac(1), dst=mac(2), type=dpkt.ethernet.ETH_TYPE_IP6, data=ip6))


def router_solicitation() -> bytes:
    import ipaddress
    icmp = dpkt.icmp6.ICMP6(type=133, code=0, data=b"\x00" * 4)
    ip6 = dpkt.ip6.IP6(src=ipaddress.IPv6Address("fe80::1").packed,
                       dst=ipaddress.IPv6Address("ff02::2").packed, nxt=58, hlim=255, data=icmp)
    ip6.plen = len(bytes(icmp))
    return bytes(dpkt.ethernet.Ethernet(src=mac(9), dst=b"\x33\x33\x00\x00\x00\x02",
                                        type=dpkt.ethernet.ETH_TYPE_IP6, data=ip6))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tap(tap_id: str, match: dict | None = None, **extra: object) -> dict:
    entry = {"tap_id": tap_id, "match": match, "policy": "elephant", "dpid": 1, "in_port": 1,
             "copy_port": 6, "flow_key": "10.0.0.1,10.0.0.2,6,51792,5201", "start": 999.0, "stop": None}
    entry.update(extra)
    return entry


def manifests(directory: Path) -> list[dict]:
    """The per-file manifests (not the tap's summary)."""
    return [json.loads(p.read_text()) for p in sorted(directory.glob(f"{directory.name}-*.json"))]


def pcap_frames(directory: Path) -> list[bytes]:
    return [frame for p in capture_files(directory) for _ts, frame, _len in read_capture(p)]


def write_pcap(path: Path, frames: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as fh:
        w = PcapWriter(fh, nanoseconds=True)
        for ts_ns, frame in frames:
            w.write_ns(ts_ns, frame)


def test_parse_frame_reads_vlan_ipv4_tcp_and_ipv6_udp() -> None:
    f = parse_frame(tcp_frame("10.0.0.1", "10.0.0.2", 1, 2, vlan=42))
    assert (f["vlan_vid"], str(f["ipv4_src"]), f["tcp_src"], f["tcp_dst"]) == (42, "10.0.0.1", 1, 2)
    g = parse_frame(udp6_frame("fc00::1", "fc00::2", 7, 8))
    assert (str(g["ipv6_dst"]), g["ip_proto"], g["udp_src"], g["udp_dst"]) == ("fc00::2", 17, 7, 8)


def test_each_tap_gets_its_own_pcap_and_others_go_to_unmatched(tmp_path: Path) -> None:
    table = tmp_path / "taps.json"
    write_tap_table(table, [tap("t1", ELEPHANT), tap("t2", {"ipv4_src": "10.0.0.6", "udp_dst": 5202})])
    clock = FakeClock()
    agent = CaptureAgent(tmp_path / "out", TapTable(table), grace=1.0, clock=clock)
    elephant = [tcp_frame("10.0.0.1", "10.0.0.2", 51792, 5201, bytes([i]) * 200) for i in range(5)]
    ack = tcp_frame("10.0.0.2", "10.0.0.1", 5201, 51792)
    for i, frame in enumerate(elephant):
        agent.handle(frame, 10**9 * (1000 + i))
    agent.handle(ack, 10**9 * 1006)
    agent.handle(router_solicitation(), 10**9 * 1007)
    agent.close()

    out = tmp_path / "out"
    assert pcap_frames(out / "t1") == elephant
    assert pcap_frames(out / "unmatched") == [ack]  # not bidirectional: the ACK is not t1's
    assert not (out / "t2").exists()
    assert agent.counters["ipv6_noise"] == 1
    (m,) = manifests(out / "t1")
    assert (m["tap_id"], m["policy"], m["switch"], m["port"], m["copy_port"]) == ("t1", "elephant", 1, 1, 6)
    assert m["packets"] == 5 and m["bytes"] == sum(map(len, elephant))
    assert m["complete"] and m["first_packet_at"] == 1000.0 and m["last_packet_at"] == 1004.0
    (u,) = manifests(out / "unmatched")
    assert u["flows"] == {"6:10.0.0.2:5201>10.0.0.1:51792": 1}


def test_bidirectional_and_vlan_tagged_taps(tmp_path: Path) -> None:
    table = tmp_path / "taps.json"
    write_tap_table(table, [tap("bi", ELEPHANT, bidirectional=True), tap("tagged", None, vlan_tag=42)])
    agent = CaptureAgent(tmp_path / "out", TapTable(table), grace=0)
    fwd = tcp_frame("10.0.0.1", "10.0.0.2", 51792, 5201)
    rev = tcp_frame("10.0.0.2", "10.0.0.1", 5201, 51792)
    tagged = tcp_frame("10.0.0.3", "10.0.0.4", 1, 2, vlan=42)
    other_tag = tcp_frame("10.0.0.3", "10.0.0.4", 1, 2, vlan=43)
    for frame in (fwd, rev, tagged, other_tag):
        agent.handle(frame, 1)
    agent.close()
    assert pcap_frames(tmp_path / "out" / "bi") == [fwd, rev]
    assert pcap_frames(tmp_path / "out" / "tagged") == [tagged]
    assert pcap_frames(tmp_path / "out" / "unmatched") == [other_tag]


def test_frames_that_arrive_before_their_tap_is_known_wait_for_it(tmp_path: Path) -> None:
    table = tmp_path / "taps.json"
    write_tap_table(table, [])
    clock = FakeClock()
    agent = CaptureAgent(tmp_path / "out", TapTable(table), grace=2.0, clock=clock)
    early = tcp_frame("10.0.0.1", "10.0.0.2", 51792, 5201, b"early")
    agent.handle(early, 1)
    clock.now += 0.5
    agent.tick()
    assert agent.pending  # still within the grace period
    write_tap_table(table, [tap("late", ELEPHANT)])
    clock.now += 0.5
    later = tcp_frame("10.0.0.1", "10.0.0.2", 51792, 5201, b"later")
    agent.handle(later, 2)
    stray = tcp_frame("10.0.0.9", "10.0.0.8", 1, 2)
    agent.handle(stray, 3)
    clock.now += 2.5
    agent.tick()
    agent.close()
    assert pcap_frames(tmp_path / "out" / "late") == [early, later]  # order kept
    assert pcap_frames(tmp_path / "out" / "unmatched") == [stray]


def test_a_bad_tap_table_is_reported_and_the_old_one_kept(tmp_path: Path) -> None:
    table = tmp_path / "taps.json"
    write_tap_table(table, [tap("good", ELEPHANT)])
    tt = TapTable(table)
    assert tt.reload_if_changed()
    table.write_text("{not json")
    assert not tt.reload_if_changed()
    assert list(tt.by_id) == ["good"] and tt.last_error
    # one bad entry (a tap that was never placed has no match) must not hide the others
    table.write_text(json.dumps({"taps": [tap("bad", {"tcp_dst": "http"}), tap("never", {}), tap("ok", ELEPHANT)]}))
    assert tt.reload_if_changed()
    assert list(tt.by_id) == ["ok"]
    assert "taps[0].match.tcp_dst" in (tt.last_error or "") and "taps[1].match" in (tt.last_error or "")
    with pytest.raises(TapTableError, match=r"taps\[1\].tap_id: duplicate"):
        parse_taps([tap("a", ELEPHANT), tap("a", ELEPHANT)])
    with pytest.raises(TapTableError, match=r"taps\[0\].match: an object is required"):
        parse_taps([{"tap_id": "x"}])


def test_rotation_by_size_and_by_age_writes_a_manifest_per_file(tmp_path: Path) -> None:
    clock = FakeClock()
    table = tmp_path / "taps.json"
    write_tap_table(table, [tap("t1", ELEPHANT)])
    frame = tcp_frame("10.0.0.1", "10.0.0.2", 51792, 5201, b"z" * 900)
    agent = CaptureAgent(tmp_path / "out", TapTable(table), rotate_bytes=3000, clock=clock, fmt="pcap")
    for i in range(7):
        agent.handle(frame, i)
    agent.close()
    files = capture_files(tmp_path / "out" / "t1")
    assert [p.name for p in files] == ["t1-0001.pcap", "t1-0002.pcap", "t1-0003.pcap"]
    assert [m["packets"] for m in manifests(tmp_path / "out" / "t1")] == [3, 3, 1]
    assert all(p.stat().st_size <= 3000 for p in files)

    seen: list[int] = []
    rp = RotatingFile(tmp_path / "age", "a", max_seconds=10, clock=clock, on_segment=lambda seg: seen.append(seg.packets))

    def write(ts: int) -> None:
        f = rp.ensure_open(100)
        f.write([frame], len(frame), 1, len(frame), ts, ts)

    write(1)
    clock.now += 11
    rp.tick()  # idle but old: closed without waiting for the next frame
    write(2)
    write(3)
    rp.close()
    assert seen == [1, 2]


def test_pcapng_files_read_back_exactly_with_dpkt_and_carry_the_tap_in_their_header(tmp_path: Path) -> None:
    from sflow.pcap import pcapng_options

    table = tmp_path / "taps.json"
    write_tap_table(table, [tap("t1", ELEPHANT, trigger="elephant_tcp event 7")])
    agent = CaptureAgent(tmp_path / "out", TapTable(table))
    frames = [tcp_frame("10.0.0.1", "10.0.0.2", 51792, 5201, bytes([i]) * (i + 1)) for i in range(4)]
    for i, f in enumerate(frames):
        agent.handle(f, 1_700_000_000_123_456_789 + i)
    agent.close()
    (path,) = capture_files(tmp_path / "out" / "t1")
    assert path.name == "t1-0001.pcapng"
    with open(path, "rb") as fh:
        got = [(ts, bytes(buf)) for ts, buf in dpkt.pcapng.Reader(fh)]
    assert [buf for _ts, buf in got] == frames
    assert abs(float(got[0][0]) - 1_700_000_000.123456789) < 1e-6
    assert read_capture(path)[1][0] == 1_700_000_000.12345679
    (section,) = pcapng_options(path)
    meta = json.loads(section["comment"].split(" ", 2)[2])
    assert (meta["tap_id"], meta["policy"], meta["trigger"], meta["switch"]) == ("t1", "elephant", "elephant_tcp event 7", 1)
    assert section["userappl"] == "demon-capture"


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_offline_cli_output_opens_in_tshark(tmp_path: Path) -> None:
    src = tmp_path / "in.pcap"
    write_pcap(src, [(i * 1000, tcp_frame("10.0.0.1", "10.0.0.2", 51792, 5201)) for i in range(4)]
               + [(5000, tcp_frame("10.0.0.3", "10.0.0.4", 1, 2))])
    table = tmp_path / "taps.json"
    write_tap_table(table, [tap("t1", ELEPHANT)])
    assert capture_main(["--read", str(src), "--out", str(tmp_path / "out"), "--taps", str(table),
                         "--metrics-listen", ""]) == 0
    out = subprocess.run(["tshark", "-r", str(tmp_path / "out" / "t1" / "t1-0001.pcapng"),
                          "-T", "fields", "-e", "ip.src", "-e", "tcp.dstport"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split("\n")[:4] == ["10.0.0.1\t5201"] * 4
    status = json.loads((tmp_path / "out" / "agent.json").read_text())
    assert status["taps"]["t1"]["packets"] == 4 and status["taps"]["unmatched"]["packets"] == 1


def test_the_agent_reads_taps_straight_from_the_daemons_state_file(tmp_path: Path) -> None:
    from demon.model import State, Tap
    from demon.store import Store
    from demon.capture.taptable import StoreTapTable

    def model_tap(tap_id: str, match: dict, state: str = "active") -> Tap:
        return Tap(tap_id=tap_id, policy="elephant_tcp", flow_key="k", match=match, dpid=1, in_port=1,
                   copy_port=6, vlan_tag=None, bidirectional=False, state=state, rate_bps=1e8, priority=200,
                   created_at=1.0, updated_at=1.0, expires_at=9.0, last_trigger_at=1.0)

    path = tmp_path / "state.sqlite"
    writer = Store(path)
    table = StoreTapTable(path)
    assert table.reload_if_changed() and table.taps == []
    writer.save(State(taps={"elephant_tcp.1": model_tap("elephant_tcp.1", {"in_port": 1, **ELEPHANT}),
                            "elephant_tcp.2": model_tap("elephant_tcp.2", {}, state="failed")}))
    assert table.reload_if_changed()
    assert list(table.by_id) == ["elephant_tcp.1"]  # the never-placed one has nothing to match
    assert table.lookup(parse_frame(tcp_frame("10.0.0.1", "10.0.0.2", 51792, 5201))).info["policy"] == "elephant_tcp"
    assert not table.reload_if_changed()  # nothing written since
    writer.close()
