"""The seed network on real Open vSwitch: port map, sFlow export, capture agent.

No controller here: flows are added with ovs-ofctl, so these tests depend only
on the lab itself.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import time
from pathlib import Path

import pytest

from demon.capture.packet import parse_frame
from tests.capture_files import capture_files, read_capture
from demon.capture.taptable import write_tap_table
from topo.hostproc import start_capture_agent, traffic, traffic_result
from topo.seed import build_seed, seed_links
from topo.sflowcfg import SflowConfigError, SflowSettings, sflow_of

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning:mininet.*")]


def vsctl(*args: str) -> str:
    return subprocess.run(["ovs-vsctl", *args], capture_output=True, text=True, check=True).stdout.strip()


def ifindex(name: str) -> int:
    return int(Path(f"/sys/class/net/{name}/ifindex").read_text())


def iflink(name: str) -> int:
    return int(Path(f"/sys/class/net/{name}/iflink").read_text())


def expected_ports() -> dict[str, dict[int, str]]:
    """switch -> {ofport: the node at the far end}: the prototype's table (baseline §1.3)."""
    ports: dict[str, dict[int, str]] = {"s1": {}, "s2": {}, "s3": {}}
    for n in range(1, 6):
        ports["s1"][n] = f"h{n}"
        ports["s2"][n] = f"h{n + 5}"
        ports["s1"][n + 5] = f"s3:{n}"
        ports["s2"][n + 5] = f"s3:{n + 5}"
        ports["s3"][n] = f"s1:{n + 5}"
        ports["s3"][n + 5] = f"s2:{n + 5}"
    ports["s3"][11] = "h11"
    return ports


def test_port_map_dpids_and_modes_are_the_prototypes() -> None:
    assert len(seed_links()) == 21
    with build_seed(controller_port=None) as lab:
        for sw, ports in expected_ports().items():
            n = int(sw[1])
            assert vsctl("get", "Bridge", sw, "datapath_id") == f'"{n:016x}"'
            assert vsctl("get", "Bridge", sw, "fail_mode") == "secure"
            assert vsctl("get", "Bridge", sw, "datapath_type") == "netdev"
            assert sorted(vsctl("list-ports", sw).split()) == sorted(f"{sw}-eth{p}" for p in ports)
            for port, far in ports.items():
                intf = f"{sw}-eth{port}"
                assert vsctl("get", "Interface", intf, "ofport") == str(port), intf
                if far.startswith("s"):
                    peer_sw, peer_port = far.split(":")
                    # veth pair: each end's iflink is the other's ifindex
                    assert iflink(intf) == ifindex(f"{peer_sw}-eth{peer_port}"), intf
                else:
                    host = lab.host(far)
                    peer_index = int(host.cmd(f"cat /sys/class/net/{far}-eth0/iflink"))
                    assert peer_index == ifindex(intf), intf
        for n in range(1, 12):
            h = lab.host(f"h{n}")
            addr = h.cmd(f"ip -o -4 addr show dev h{n}-eth0").split()[3]
            assert addr == f"10.0.0.{n}/8"
            assert h.cmd(f"cat /sys/class/net/h{n}-eth0/address").strip() == "00:00:00:00:00:%02x" % n
            assert "tx-checksumming: off" in h.cmd(f"ethtool -k h{n}-eth0")
        # secure mode and no flows: nothing forwards, so the uplink loops cannot storm
        assert traffic_result(lab.host("h1"), "ping", "--dst", "10.0.0.2", "--count", "2",
                              "--timeout", "0.5")["replies"] == 0
    assert "s1" not in vsctl("list-br").split()


def test_sflow_needs_a_listening_collector_first() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # port now free: nobody listens
    with pytest.raises(SflowConfigError, match="collector: nothing listens"):
        build_seed(controller_port=None, sflow=SflowSettings(f"127.0.0.1:{port}"))
    assert "s1" not in vsctl("list-br").split()


def test_sflow_reaches_a_listener_with_port_records_matching_the_topology() -> None:
    from sflow.decode import decode_datagram

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = SflowSettings(f"127.0.0.1:{port}", sampling=1, polling=1)
    with build_seed(controller_port=None, sflow=settings) as lab:
        assert sflow_of("s2")["sampling"] == "1"
        lab.ofctl("add-flow", "s1", "priority=10,in_port=1,actions=output:2")
        lab.ofctl("add-flow", "s1", "priority=10,in_port=2,actions=output:1")
        port_names: dict[tuple[int, int], str] = {}
        sampled: list[tuple[int, str, str]] = []  # (input ifIndex, src, dst)
        by_ifindex: dict[int, tuple[int, int]] = {}  # counter samples map ifIndex -> (dpid, port)
        seqs: dict[tuple[str, int], list[int]] = {}
        pinger = traffic(lab.host("h1"), "ping", "--dst", "10.0.0.2", "--count", "20")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(port_names) < 34 or len(sampled) < 10):
            ready, _, _ = select.select([sock], [], [], 0.5)
            if not ready:
                continue
            dg = decode_datagram(sock.recv(65535))
            seqs.setdefault((dg.agent, dg.sub_agent_id), []).append(dg.sequence)
            for cs in dg.counter_samples:
                of = cs.record(0, 1004)
                name = cs.record(0, 1005)
                if of and name:
                    dpid_port = (of.fields["openflow_datapath_id"], of.fields["openflow_port"])
                    port_names[dpid_port] = name.fields["ifName"]
                    by_ifindex[cs.source_index] = dpid_port
            for fs in dg.flow_samples:
                hdr = fs.record(0, 1)
                if hdr:
                    f = parse_frame(hdr.fields["header"])
                    sampled.append((fs.input.value, str(f.get("ipv4_src")), str(f.get("ipv4_dst"))))
        assert pinger.proc.wait(10) == 0
    sock.close()
    want = {(int(sw[1]), p): f"{sw}-eth{p}" for sw, ports in expected_ports().items() for p in ports}
    want.update({(n, 0xFFFE): f"s{n}" for n in (1, 2, 3)})  # each bridge's LOCAL port
    assert port_names == want
    ingress = {(by_ifindex.get(ifx), src, dst) for ifx, src, dst in sampled}
    assert ((1, 1), "10.0.0.1", "10.0.0.2") in ingress and ((1, 2), "10.0.0.2", "10.0.0.1") in ingress
    for key, numbers in seqs.items():  # the collector listened first: no datagram lost
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), key


def test_capture_agent_files_mirrored_copies_per_tap(tmp_path: Path) -> None:
    """Mirrors by hand: one matched by 5-tuple, one VLAN-tagged; an unmirrored flow beside."""
    taps = tmp_path / "taps.json"
    write_tap_table(taps, [
        {"tap_id": "by-match", "match": {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "udp_dst": 5001},
         "dpid": 1, "in_port": 1, "copy_port": 6, "policy": "manual"},
        {"tap_id": "by-vlan", "vlan_tag": 42, "match": None, "dpid": 1, "in_port": 1, "copy_port": 7},
    ])
    out = tmp_path / "cap"
    with build_seed(controller_port=None) as lab:
        of = lab.ofctl
        of("add-flow", "s1", "priority=10,in_port=1,actions=output:2")
        of("add-flow", "s1", "priority=10,in_port=2,actions=output:1")
        of("add-flow", "s1", "cookie=0x1,priority=100,udp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_dst=5001,"
           "actions=output:2,output:6")
        of("add-flow", "s1", "cookie=0x2,priority=100,udp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_dst=5002,"
           "actions=output:2,push_vlan:0x8100,set_field:4138->vlan_vid,output:7")
        for p in range(1, 11):
            of("add-flow", "s3", f"priority=10,in_port={p},actions=output:11")
        agent = start_capture_agent(lab.host("h11"), out, taps, grace=1)
        sinks = [traffic(lab.host("h2"), "sink", "--port", str(p), "--idle", "1.5", "--max-time", "30")
                 for p in (5001, 5002, 5003)]
        time.sleep(0.3)
        h1 = lab.host("h1")
        for dport, count in ((5001, 300), (5002, 200), (5003, 150)):
            r = traffic_result(h1, "udp", "--dst", "10.0.0.2", "--dport", str(dport), "--count", str(count),
                               "--pps", "2000", "--size", "600")
            assert r["sent"] == count
        received = [s.proc.wait(30) == 0 and s.json_lines()[-1]["packets"] for s in sinks]
        counters = {}
        for line in of("dump-flows", "s1").splitlines():
            if "cookie=0x1," in line or "cookie=0x2," in line:
                cookie = line.split("cookie=")[1].split(",")[0]
                counters[cookie] = int(line.split("n_packets=")[1].split(",")[0])
        time.sleep(0.3)
        assert agent.stop() == 0
    assert received == [300, 200, 150]  # production traffic untouched
    by_match = [f for p in capture_files(out / "by-match") for f in read_capture(p)]
    by_vlan = [f for p in capture_files(out / "by-vlan") for f in read_capture(p)]
    assert len(by_match) == counters["0x1"] == 300
    assert len(by_vlan) == counters["0x2"] == 200
    assert {parse_frame(f)["udp_dst"] for _t, f, _l in by_match} == {5001}
    assert {(parse_frame(f)["vlan_vid"], parse_frame(f)["udp_dst"]) for _t, f, _l in by_vlan} == {(42, 5002)}
    unmatched = capture_files(out / "unmatched")
    assert not unmatched or not any(parse_frame(f).get("udp_dst") == 5003
                                    for p in unmatched for _t, f, _l in read_capture(p))
    manifest = json.loads((out / "by-match" / "by-match-0001.json").read_text())
    assert (manifest["packets"], manifest["switch"], manifest["copy_port"], manifest["complete"]) == (300, 1, 6, True)
    tshark = subprocess.run(["tshark", "-r", str(capture_files(out / "by-vlan")[0]), "-T", "fields",
                             "-e", "vlan.id", "-e", "udp.dstport"], capture_output=True, text=True, timeout=60)
    assert tshark.returncode == 0 and set(tshark.stdout.split("\n")[:-1]) == {"42\t5002"}


def test_ipv6_flows_are_mirrored_and_filed_by_their_tap(tmp_path: Path) -> None:
    taps = tmp_path / "taps.json"
    write_tap_table(taps, [{"tap_id": "v6", "match": {"ipv6_src": "fc00::1", "ipv6_dst": "fc00::2",
                                                      "udp_dst": 5001}, "dpid": 1, "in_port": 1, "copy_port": 6}])
    out = tmp_path / "cap"
    with build_seed(controller_port=None, ipv6=True) as lab:
        of = lab.ofctl
        of("add-flow", "s1", "priority=10,in_port=1,actions=output:2")
        of("add-flow", "s1", "priority=10,in_port=2,actions=output:1")
        of("add-flow", "s1", "cookie=0x6,priority=100,udp6,ipv6_src=fc00::1,ipv6_dst=fc00::2,tp_dst=5001,"
           "actions=output:2,output:6")
        of("add-flow", "s3", "priority=10,in_port=1,actions=output:11")
        agent = start_capture_agent(lab.host("h11"), out, taps, grace=1)
        sink = traffic(lab.host("h2"), "sink", "--bind", "::", "--port", "5001", "--idle", "1.5")
        time.sleep(0.3)
        r = traffic_result(lab.host("h1"), "udp", "--dst", "fc00::2", "--dport", "5001", "--count", "100",
                           "--pps", "500")
        assert r["sent"] == 100
        assert sink.proc.wait(30) == 0 and sink.json_lines()[-1]["packets"] == 100
        counted = int(of("dump-flows", "s1", "cookie=0x6/-1").split("n_packets=")[1].split(",")[0])
        time.sleep(0.3)
        assert agent.stop() == 0
    frames = [parse_frame(f) for p in capture_files(out / "v6") for _t, f, _l in read_capture(p)]
    assert len(frames) == counted == 100
    assert {(str(f["ipv6_src"]), f["udp_dst"]) for f in frames} == {("fc00::1", 5001)}
    status = json.loads((out / "agent.json").read_text())
    assert "unmatched" not in status["taps"]  # ND, MLD and router solicitations never filed
