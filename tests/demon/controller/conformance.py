"""The controller conformance suite: one set of tests, run against every component.

A test module subclasses :class:`ConformanceSuite` and sets ``KIND`` (``"os-ken"`` or
``"pox"``). The class builds the real seed topology (Open vSwitch userspace datapath +
Mininet) once, starts the component as a subprocess, and the tests observe the network:
packets captured on the capture host h11, bytes received by the hosts, and the switches'
own flow tables read with ``ovs-ofctl``.
"""

from __future__ import annotations

import json
import queue
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from demon.controller.fabric import copy_of_entry, intended_entries, load_fabric, parse_mirror_ports
from demon.controller.ovsofctl import dump_flows
from demon.controller.spec import BASELINE_COOKIE, STATIC_COOKIE, is_mirror_cookie
from tests.conftest import REPO
from tests.demon.controller.conftest import Component, seed_fabric_json, write_json

H = {n: f"10.0.0.{n}" for n in range(1, 12)}
S1, S2, S3 = 1, 2, 3
UPLINK = 6  # s1/s2 port 6 → s3 port 1/6 → capture port 11

RECEIVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); print("ready", flush=True)
s.settimeout(30); c, _ = s.accept(); c.settimeout(30); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    n += len(d)
print(n, flush=True)
"""
SENDER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2]))); s.settimeout(30)
s.connect((sys.argv[1], int(sys.argv[3]))); s.sendall(b"x" * int(sys.argv[4])); s.close()
"""
PY = "/usr/bin/python3"


def _read_line(stream: Any, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise TimeoutError("no output in time")
    return stream.readline().decode(errors="replace").strip()


def tcp_transfer(lab: Any, flows: list[tuple[str, str, int, int, int]]) -> list[int]:
    """Run TCP flows ``(src host, dst host, src port, dst port, bytes)`` at once;
    returns the bytes each receiver got."""
    receivers = []
    for _src, dst, _sport, dport, _n in flows:
        proc = lab.host(dst).popen([PY, "-c", RECEIVER, str(dport)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        assert _read_line(proc.stdout, 10) == "ready"
        receivers.append(proc)
    senders = [lab.host(src).popen([PY, "-c", SENDER, H[int(dst[1:])], str(sport), str(dport), str(n)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for src, dst, sport, dport, n in flows]
    for proc in senders:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out.decode(errors="replace")
    got = []
    for proc in receivers:
        out, _ = proc.communicate(timeout=60)
        got.append(int(out.decode().split()[-1]))
    return got


class Capture:
    """tcpdump on h11 (inbound only), read back with dpkt."""

    def __init__(self, lab: Any, path: Path, bpf: str = "") -> None:
        self.lab, self.path, self.bpf = lab, path, bpf
        self.proc: Any = None

    def __enter__(self) -> "Capture":
        cmd = ["tcpdump", "-i", "h11-eth0", "-Q", "in", "-nn", "-U", "--immediate-mode", "-B", "32768", "-s", "200", "-w", str(self.path)]
        cmd += self.bpf.split() if self.bpf else []
        self.proc = self.lab.host("h11").popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        line = _read_line(self.proc.stderr, 10)
        assert "listening on" in line, line
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            time.sleep(0.3)  # let the last copies arrive
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=10)

    def packets(self) -> list[dict[str, Any]]:
        import dpkt

        out = []
        with open(self.path, "rb") as handle:
            for _ts, buf in dpkt.pcap.Reader(handle):
                eth = dpkt.ethernet.Ethernet(buf)
                tags = [t.id for t in getattr(eth, "vlan_tags", None) or []]
                rec: dict[str, Any] = {"vlan": tags[0] if tags else None, "type": eth.type}
                ip = eth.data
                if isinstance(ip, dpkt.ip.IP):
                    rec.update(src=socket.inet_ntoa(ip.src), dst=socket.inet_ntoa(ip.dst), proto=ip.p, ipid=ip.id)
                    if isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                        rec.update(sport=ip.data.sport, dport=ip.data.dport)
                    if isinstance(ip.data, dpkt.tcp.TCP):
                        rec.update(seq=ip.data.seq)
                out.append(rec)
        return out



def reconnect(component: Component, switch: str) -> None:
    """Make ``switch`` drop its controller connection and connect again."""
    subprocess.run(["ovs-vsctl", "del-controller", switch], check=True)
    subprocess.run(["ovs-vsctl", "set-controller", switch, f"tcp:127.0.0.1:{component.of_port}"], check=True)


def forwards_as_before(entry: Any) -> bool:
    """A mirror entry keeps the flow's forwarding: ``NORMAL``, or the learned L2 table
    (OpenFlow 1.3 filter switches, ``docs/fabric.md``)."""
    return "NORMAL" in entry.actions or entry.actions[-1].startswith("goto_table:")


def five_tuple(src: int, dst: int, sport: int, dport: int) -> dict[str, Any]:
    return {"ipv4_src": H[src], "ipv4_dst": H[dst], "tcp_src": sport, "tcp_dst": dport}


def is_flow(pkt: dict[str, Any], src: int, dst: int, sport: int | None = None, dport: int | None = None) -> bool:
    return (pkt.get("src") == H[src] and pkt.get("dst") == H[dst]
            and (sport is None or pkt.get("sport") == sport) and (dport is None or pkt.get("dport") == dport))


class ConformanceSuite:
    KIND = "os-ken"

    # ------------------------------------------------------------ fixtures
    @pytest.fixture(scope="class")
    @classmethod
    def workdir(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp(f"conformance-{cls.KIND}")

    @pytest.fixture(scope="class")
    @classmethod
    def component(cls, module_lab_lock: None, workdir: Path) -> Iterator[Component]:
        if cls.KIND == "pox":
            from tests.demon.controller.conftest import NO_POX, POX_HOME

            if not POX_HOME:
                pytest.skip(NO_POX)
        fabric = write_json(workdir / "fabric.json", seed_fabric_json())
        comp = Component(cls.KIND, workdir, fabric).start()
        yield comp
        comp.stop()

    @pytest.fixture(scope="class")
    @classmethod
    def lab(cls, component: Component) -> Iterator[Any]:
        from topo.seed import build_seed

        lab = build_seed(component.of_port, of_version=component.of_version)
        try:
            client = component.client()
            deadline = time.monotonic() + 30
            while len(client.list_switches()) < 3:
                assert time.monotonic() < deadline, f"switches did not connect:\n{component.log_tail()}"
                time.sleep(0.1)
            yield lab
        finally:
            lab.stop()

    @pytest.fixture(scope="class")
    @classmethod
    def rpc(cls, lab: Any, component: Component) -> Any:
        return component.client()

    @pytest.fixture(scope="class")
    @classmethod
    def events(cls, lab: Any, component: Component) -> Iterator[Any]:
        sub = component.client().subscribe()
        assert sub.wait_connected(10)
        yield sub
        sub.close()

    # ------------------------------------------------------------- helpers
    @staticmethod
    def wait_event(events: Any, pred: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("expected event did not arrive")
            try:
                event = events.get(timeout=left)
            except queue.Empty:
                continue
            if pred(event):
                return event

    @staticmethod
    def drain(events: Any) -> None:
        while True:
            try:
                events.get(timeout=0.05)
            except queue.Empty:
                return

    @staticmethod
    def settle(rpc: Any, cookie: int, timeout: float = 5.0) -> int:
        """Wait until the switch's counters for ``cookie`` stop moving (OVS's userspace
        datapath pushes megaflow statistics to the OpenFlow table about twice a second)."""
        last, deadline = -1, time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = sum(m["packets"] for m in rpc.list_mirrors() if m["cookie"] == cookie)
            if now == last and now > 0:
                return now
            last = now
            time.sleep(0.6)
        raise AssertionError(f"counters of cookie {cookie:#x} did not settle")

    def table(self, component: Component, dpid: int) -> list[Any]:
        return dump_flows(f"s{dpid}", component.openflow)

    def project_entries(self, component: Component, dpid: int, cookie: int) -> list[Any]:
        return [e for e in self.table(component, dpid) if e.cookie == cookie]

    # --------------------------------------------------------------- tests
    def test_hello_and_switch_roles(self, rpc: Any, component: Component) -> None:
        hello = rpc.hello()
        assert hello["protocol"] == 1
        assert hello["openflow"] == component.openflow
        roles = {s["dpid"]: s for s in rpc.list_switches()}
        assert {d: s["role"] for d, s in roles.items()} == {1: "filter", 2: "filter", 3: "aggregation"}
        assert {p["port_no"] for p in roles[3]["ports"]} >= set(range(1, 12))
        assert roles[3]["capture_port"] == 11

    def test_production_traffic_stays_off_the_uplinks(self, lab: Any, workdir: Path) -> None:
        for host in ("h1", "h2", "h6", "h7"):
            lab.host(host).cmd("ip neigh flush all")  # ARP requests and replies happen under capture
        with Capture(lab, workdir / "baseline.pcap") as cap:  # everything, ARP included
            assert ", 0% packet loss" in lab.host("h1").cmd(f"ping -c3 -i0.2 -W1 {H[2]}")
            assert ", 0% packet loss" in lab.host("h6").cmd(f"ping -c3 -i0.2 -W1 {H[7]}")
        assert cap.packets() == []

    def test_mirror_one_flow_among_several(self, lab: Any, rpc: Any, events: Any, workdir: Path,
                                           component: Component) -> None:
        self.drain(events)
        result = rpc.install_mirror("conf-one", S1, five_tuple(1, 2, 41001, 5001), UPLINK,
                                    idle_timeout=0, hard_timeout=120)
        assert result["entries"] == 1 and result["replaced"] is False
        flows = [("h1", "h2", 41001, 5001, 3_000_000),   # tapped
                 ("h1", "h2", 41002, 5002, 1_000_000),   # same hosts, other ports
                 ("h3", "h4", 41003, 5003, 1_000_000)]   # other hosts
        with Capture(lab, workdir / "one.pcap", "tcp") as cap:
            got = tcp_transfer(lab, flows)
            self.settle(rpc, result["cookie"])
            removed = rpc.remove_mirror("conf-one")
        assert got == [n for *_, n in flows], "a receiver lost bytes"
        packets = cap.packets()
        assert packets, "nothing mirrored"
        assert all(is_flow(p, 1, 2, 41001, 5001) for p in packets), "another flow reached h11"
        assert removed["removed"] is True
        assert len(packets) == removed["packets"], (len(packets), removed)
        event = self.wait_event(events, lambda e: e.event == "mirror_removed"
                                and e.params.get("cookie", result["cookie"]) == result["cookie"])
        assert event.params["reason"] == "delete"
        assert event.params["packets"] == len(packets)
        assert self.project_entries(component, S1, result["cookie"]) == []

    def test_mirror_entry_is_removed_from_the_switch(self, rpc: Any, component: Component) -> None:
        result = rpc.install_mirror("conf-gone", S1, five_tuple(1, 2, 41101, 5101), UPLINK)
        entries = self.project_entries(component, S1, result["cookie"])
        assert len(entries) == 1
        entry = entries[0]
        assert entry.idle_timeout == 30 and entry.hard_timeout == 300
        if component.openflow == "1.3":  # OpenFlow 1.0 flow stats carry no flags to show it
            assert entry.send_flow_rem
        assert copy_of_entry(entry) == (UPLINK, None)
        assert forwards_as_before(entry)
        assert rpc.remove_mirror("conf-gone")["removed"] is True
        assert self.project_entries(component, S1, result["cookie"]) == []
        assert rpc.remove_mirror("conf-gone")["removed"] is False

    @pytest.mark.parametrize("kind", ["idle_timeout", "hard_timeout"])
    def test_timeouts_arrive_as_events(self, kind: str, lab: Any, rpc: Any, events: Any) -> None:
        self.drain(events)
        timeouts = {"idle_timeout": 1, "hard_timeout": 30} if kind == "idle_timeout" else \
            {"idle_timeout": 0, "hard_timeout": 1}
        tap = f"conf-{kind}"
        result = rpc.install_mirror(tap, S1, {"ipv4_src": H[1], "ipv4_dst": H[2], "ip_proto": 1}, UPLINK,
                                    **timeouts)
        assert ", 0% packet loss" in lab.host("h1").cmd(f"ping -c2 -i0.2 -W1 {H[2]}")
        event = self.wait_event(events, lambda e: e.event == "mirror_removed"
                                and e.params.get("tap_id") == tap, timeout=15)
        assert event.params["reason"] == kind
        assert event.params["packets"] == 2
        assert event.params["dpid"] == S1
        assert rpc.list_mirrors(S1) == [] or all(m["cookie"] != result["cookie"] for m in rpc.list_mirrors(S1))

    def test_install_twice_is_one_entry(self, rpc: Any, component: Component) -> None:
        match = five_tuple(1, 3, 41201, 5201)
        first = rpc.install_mirror("conf-twice", S1, match, UPLINK)
        second = rpc.install_mirror("conf-twice", S1, match, UPLINK)
        assert second == first
        assert len(self.project_entries(component, S1, first["cookie"])) == 1
        listed = [m for m in rpc.list_mirrors(S1) if m["cookie"] == first["cookie"]]
        assert len(listed) == 1 and listed[0]["match"]["tcp_dst"] == 5201
        changed = rpc.install_mirror("conf-twice", S1, match, UPLINK + 1)
        assert changed["replaced"] is True
        entries = self.project_entries(component, S1, changed["cookie"])
        assert len(entries) == 1 and copy_of_entry(entries[0]) == (UPLINK + 1, None)
        rpc.remove_mirror("conf-twice")

    def test_vlan_tagged_copy(self, lab: Any, rpc: Any, workdir: Path) -> None:
        rpc.install_mirror("conf-vlan", S1, {"ipv4_src": H[1], "ipv4_dst": H[4], "ip_proto": 1}, UPLINK,
                           vlan_tag=321)
        with Capture(lab, workdir / "vlan.pcap", "vlan or icmp") as cap:
            # replies prove the forwarded packets stayed untagged (h4 has no VLAN interface)
            assert ", 0% packet loss" in lab.host("h1").cmd(f"ping -c3 -i0.2 -W1 {H[4]}")
        rpc.remove_mirror("conf-vlan")
        packets = cap.packets()
        assert len(packets) == 3
        assert all(p["vlan"] == 321 and is_flow(p, 1, 4) for p in packets)

    def test_bidirectional(self, lab: Any, rpc: Any, events: Any, workdir: Path) -> None:
        self.drain(events)
        result = rpc.install_mirror("conf-bidi", S1, five_tuple(1, 5, 41301, 5301), UPLINK, bidirectional=True)
        assert result["entries"] == 2
        with Capture(lab, workdir / "bidi.pcap", "tcp") as cap:
            got = tcp_transfer(lab, [("h1", "h5", 41301, 5301, 500_000), ("h2", "h5", 41302, 5302, 200_000)])
            self.settle(rpc, result["cookie"])
            rpc.remove_mirror("conf-bidi")
        assert got == [500_000, 200_000]
        packets = cap.packets()
        forward = [p for p in packets if is_flow(p, 1, 5, 41301, 5301)]
        reverse = [p for p in packets if is_flow(p, 5, 1, 5301, 41301)]
        assert forward and reverse and len(forward) + len(reverse) == len(packets)
        seen = {}
        while len(seen) < 2:
            e = self.wait_event(events, lambda e: e.event == "mirror_removed"
                                and e.params.get("cookie", result["cookie"]) == result["cookie"])
            seen[e.params["direction"]] = e.params["packets"]
        assert seen == {"forward": len(forward), "reverse": len(reverse)}, (seen, len(forward), len(reverse))

    def test_overlapping_taps_both_get_their_copies(self, lab: Any, rpc: Any, workdir: Path,
                                                     component: Component) -> None:
        """A 5-tuple tap (tag 201) inside a source-host tap (tag 202) on one switch: the
        flow both cover is copied with each tag exactly once, the host's other flow with
        202 only; removing the 5-tuple tap leaves the host tap's copies flowing."""
        flow = rpc.install_mirror("conf-ovl-flow", S1, five_tuple(1, 5, 41401, 5401), UPLINK, vlan_tag=201)
        host = rpc.install_mirror("conf-ovl-host", S1, {"ipv4_src": H[1]}, UPLINK, vlan_tag=202)
        with Capture(lab, workdir / "overlap.pcap", "vlan") as cap:
            got = tcp_transfer(lab, [("h1", "h5", 41401, 5401, 400_000), ("h1", "h5", 41402, 5402, 200_000)])
            copied = self.settle(rpc, flow["cookie"])
        assert got == [400_000, 200_000], "a receiver lost bytes"
        packets = cap.packets()
        assert all(p.get("src") == H[1] for p in packets), "a packet no tap covers reached h11"

        def ids(tag: int, sport: int) -> list[tuple[int, int]]:
            return [(p["ipid"], p["seq"]) for p in packets if p["vlan"] == tag and is_flow(p, 1, 5, sport)]

        both_a, both_b = ids(201, 41401), ids(202, 41401)
        assert both_a and len(both_a) == len(set(both_a)), "5-tuple tap's copies missing or doubled"
        assert sorted(both_a) == sorted(both_b), "the flow both taps cover was not copied with both tags"
        assert len(both_a) == copied, (len(both_a), copied)
        host_only = ids(202, 41402)
        assert host_only and len(host_only) == len(set(host_only))
        assert ids(201, 41402) == [], "the 5-tuple tap copied a flow it does not cover"
        assert len(packets) == 2 * len(both_a) + len(host_only)
        check = subprocess.run([sys.executable, "-m", "demon.controller.netcheck", "--fabric",
                                str(component.fabric), "--rpc", component.rpc, "--token-file",
                                str(component.token_file), "--switch", str(S1)],
                               capture_output=True, text=True, timeout=60, cwd=REPO)
        assert check.returncode == 0, "netcheck disagrees with the merged entries:\n" + check.stdout + check.stderr

        assert rpc.remove_mirror("conf-ovl-flow")["removed"] is True
        with Capture(lab, workdir / "overlap-after.pcap", "vlan") as cap:
            assert tcp_transfer(lab, [("h1", "h5", 41403, 5403, 200_000)]) == [200_000]
            self.settle(rpc, host["cookie"])
        rpc.remove_mirror("conf-ovl-host")
        after = cap.packets()
        assert after and all(p["vlan"] == 202 and is_flow(p, 1, 5, 41403, 5403) for p in after)

    def test_static_mode_reproduces_the_prototype(self, lab: Any, rpc: Any, component: Component,
                                                  workdir: Path) -> None:
        static = parse_mirror_ports("s1MirrorSrc,1\ns1MirrorDst,6\ns2MirrorSrc,2\ns2MirrorDst,7\n")
        try:
            answer = rpc.set_static(static.to_json())
            assert answer == {"switches": 3, "entries": 4 + 2 + 10}
            # the prototype's intended table (baseline §1.4, without the s1/s2 destination mix-up)
            want = {S1: {1: ("output:2", "output:6"), 2: ("output:1", "output:6"), 3: ("output:4",),
                         4: ("output:3",)},
                    S2: {1: ("output:2", "output:7"), 2: ("output:1", "output:7")},
                    S3: {p: ("output:11",) for p in range(1, 11)}}
            for dpid, by_port in want.items():
                entries = self.project_entries(component, dpid, STATIC_COOKIE)
                assert {e.match["in_port"]: e.actions for e in entries} == by_port
                assert {(e.idle_timeout, e.hard_timeout) for e in entries} == {(120, 120)}
            with Capture(lab, workdir / "static.pcap", "icmp") as cap:
                assert ", 0% packet loss" in lab.host("h1").cmd(f"ping -c2 -i0.2 -W1 {H[2]}")
                assert ", 0% packet loss" in lab.host("h3").cmd(f"ping -c2 -i0.2 -W1 {H[4]}")
                assert ", 0% packet loss" in lab.host("h6").cmd(f"ping -c2 -i0.2 -W1 {H[7]}")
            packets = cap.packets()
            pairs = {(p["src"], p["dst"]) for p in packets}
            assert pairs == {(H[1], H[2]), (H[2], H[1]), (H[6], H[7]), (H[7], H[6])}  # h3↔h4 isolated
            assert len(packets) == 8
        finally:
            assert rpc.set_static(None) == {"switches": 0, "entries": 0}
        assert self.project_entries(component, S1, STATIC_COOKIE) == []

    def test_static_entries_with_a_timeout_come_back(self, lab: Any, rpc: Any, component: Component) -> None:
        config = {"timeout": 1, "switches": {"1": {"pairs": [[3, 4]]}}}
        try:
            assert rpc.set_static(config) == {"switches": 1, "entries": 2}
            first = {e.match["in_port"] for e in self.project_entries(component, S1, STATIC_COOKIE)}
            assert first == {3, 4}
            time.sleep(2.5)  # each entry expired at least twice (hard_timeout 1 s) and was re-added
            again = self.project_entries(component, S1, STATIC_COOKIE)
            assert {e.match["in_port"] for e in again} == {3, 4}
            assert all(e.hard_timeout == 1 for e in again)
        finally:
            rpc.set_static(None)
        assert self.project_entries(component, S1, STATIC_COOKIE) == []

    def test_netcheck_reports_a_deleted_entry(self, lab: Any, rpc: Any, component: Component) -> None:
        tap = rpc.install_mirror("conf-check", S2, five_tuple(6, 8, 41401, 5401), UPLINK, bidirectional=True)
        base = [sys.executable, "-m", "demon.controller.netcheck", "--fabric", str(component.fabric)]
        via_rpc = base + ["--rpc", component.rpc, "--token-file", str(component.token_file)]
        via_ofctl = base + ["--ovs-ofctl", "--openflow", component.openflow]
        run = lambda cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)  # noqa: E731
        for cmd in (via_rpc, via_ofctl):
            clean = run(cmd)
            assert clean.returncode == 0, clean.stdout + clean.stderr
        lab.ofctl("--strict", "del-flows", "s1", "priority=10,in_port=3")
        lab.ofctl("--strict", "del-flows", "s2", f"priority=40000,tcp,nw_src={H[8]},nw_dst={H[6]},"
                                                 "tp_src=5401,tp_dst=41401")
        try:
            for cmd in (via_rpc, via_ofctl):
                dirty = run(cmd)
                assert dirty.returncode == 1, dirty.stdout + dirty.stderr
                lines = [line for line in dirty.stdout.splitlines() if "missing:" in line]
                assert any("in_port=3" in line and "priority=10 " in line for line in lines), dirty.stdout
                if cmd is via_rpc:  # only the component knows the taps
                    assert any("tcp_src=5401" in line for line in lines), dirty.stdout
                assert "unexpected:" not in dirty.stdout
        finally:
            rpc.remove_mirror(tap["tap_id"])
            reconnect(component, "s1")  # the component re-asserts the baseline
        deadline = time.monotonic() + 20
        while run(via_ofctl).returncode != 0:
            assert time.monotonic() < deadline, "baseline not restored after reconnect"
            time.sleep(0.2)

    def test_bad_requests_get_errors_and_the_component_keeps_serving(self, rpc: Any, component: Component
                                                                   ) -> None:
        from demon.rpc.protocol import RpcError

        cases = [
            (dict(tap_id="bad", dpid=1, match={"tcp_dst": 70000}, copy_port=6), -32602, "match.tcp_dst"),
            (dict(tap_id="bad", dpid=1, match={"ipv4_src": "10.0.0.1", "eth_type": 0x86DD}, copy_port=6),
             -32602, "eth_type"),
            (dict(tap_id="bad id!", dpid=1, match={"ip_proto": 6}, copy_port=6), -32602, "tap_id"),
            (dict(tap_id="bad", dpid=1, match={"ip_proto": 6}, copy_port=6, hard_timeout=0), -32602,
             "hard_timeout"),
            (dict(tap_id="bad", dpid=99, match={"ip_proto": 6}, copy_port=6), -32002, "99"),
            (dict(tap_id="bad", dpid=1, match={"ip_proto": 6}, copy_port=0xFFFFFF00 - 1), -32004, ""),
        ]
        for params, code, text in cases:
            if code == -32004 and component.kind == "pox":
                continue  # OF1.0 ports are 16-bit: rejected as invalid params instead
            with pytest.raises(RpcError) as info:
                rpc.call("install_mirror", **params)
            assert info.value.code == code, (params, info.value)
            assert text in info.value.message
        with pytest.raises(RpcError) as info:
            rpc.call("no_such_method")
        assert info.value.code == -32601
        token = component.token_file.read_text().strip()
        with socket.create_connection(("127.0.0.1", component.rpc_port), timeout=5) as sock:
            reader = sock.makefile("rb")
            sock.sendall(b"{not json\n")
            assert json.loads(reader.readline())["error"]["code"] == -32700
            sock.sendall(json.dumps({"id": 1, "token": "wrong", "method": "hello", "params": {}}).encode() + b"\n")
            assert json.loads(reader.readline())["error"]["code"] == -32001
            sock.sendall(json.dumps({"id": 2, "token": token, "method": "hello", "params": {}}).encode() + b"\n")
            assert json.loads(reader.readline())["result"]["protocol"] == 1
        with socket.create_connection(("127.0.0.1", component.rpc_port), timeout=5) as sock:
            reader = sock.makefile("rb")
            try:
                sock.sendall(b'{"id": 3, "pad": "' + b"x" * (1 << 20) + b'"}\n')
            except OSError:
                pass  # the server may close before reading everything
            assert json.loads(reader.readline())["error"]["code"] == -32600
            assert reader.readline() == b""  # that connection is closed …
        assert rpc.hello()["protocol"] == 1  # … the component keeps serving the others
        assert [m for m in rpc.list_mirrors() if m.get("tap_id") == "bad"] == []

    def test_reconnect_reasserts_the_baseline(self, lab: Any, rpc: Any, component: Component) -> None:
        fabric = load_fabric(component.fabric)
        lab.ofctl("--strict", "del-flows", "s2", "priority=10,in_port=1")
        reconnect(component, "s2")
        deadline = time.monotonic() + 20

        want = sorted(e.key() for e in intended_entries(fabric, S2, component.openflow))
        while True:
            have = sorted(e.key() for e in self.project_entries(component, S2, BASELINE_COOKIE))
            if have == want:
                break
            assert time.monotonic() < deadline, "baseline not re-asserted after reconnect"
            time.sleep(0.2)
        assert ", 0% packet loss" in lab.host("h6").cmd(f"ping -c1 -W1 {H[7]}")

    def test_a_switch_that_lost_its_flows_gets_the_mirror_back(self, lab: Any, rpc: Any, events: Any,
                                                                component: Component, workdir: Path) -> None:
        """What a bridge restart does at the OpenFlow level: the switch leaves the controller
        and comes back with an empty table (no FlowRemoved: nobody was listening). The
        component installs the baseline and the active tap's mirror again, and h11 sees
        the tapped flow's copies again."""
        icmp = {"ipv4_src": H[1], "ipv4_dst": H[2], "ip_proto": 1}
        assert ", 0% packet loss" in lab.host("h1").cmd(f"ping -c1 -W1 {H[2]}")  # ARP settled
        tap = rpc.install_mirror("conf-lost", S1, icmp, UPLINK, idle_timeout=0, hard_timeout=120)
        with Capture(lab, workdir / "lost-before.pcap", "icmp") as cap:
            assert ", 0% packet loss" in lab.host("h1").cmd(f"ping -c2 -i0.2 -W1 {H[2]}")
        assert [is_flow(p, 1, 2) for p in cap.packets()] == [True, True]
        self.drain(events)
        subprocess.run(["ovs-vsctl", "del-controller", "s1"], check=True)
        lab.ofctl("del-flows", "s1")
        assert self.table(component, S1) == []
        subprocess.run(["ovs-vsctl", "set-controller", "s1", f"tcp:127.0.0.1:{component.of_port}"], check=True)
        deadline = time.monotonic() + 20
        while not self.project_entries(component, S1, tap["cookie"]):
            assert time.monotonic() < deadline, f"mirror not re-installed:\n{component.log_tail()}"
            time.sleep(0.2)
        fabric = load_fabric(component.fabric)
        want = sorted(e.key() for e in intended_entries(fabric, S1, component.openflow))
        assert sorted(e.key() for e in self.project_entries(component, S1, BASELINE_COOKIE)) == want
        with Capture(lab, workdir / "lost-after.pcap", "icmp") as cap:
            assert ", 0% packet loss" in lab.host("h1").cmd(f"ping -c3 -i0.2 -W1 {H[2]}")
        copies = [p for p in cap.packets() if is_flow(p, 1, 2)]
        assert len(copies) == 3 and len(cap.packets()) == 3, cap.packets()
        listed = [m for m in rpc.list_mirrors(S1) if m["cookie"] == tap["cookie"]]
        assert [m["tap_id"] for m in listed] == ["conf-lost"]
        assert [e for e in self._pending(events) if e.event == "mirror_removed"] == []  # the tap never ended
        assert rpc.remove_mirror("conf-lost")["removed"] is True
        assert self.project_entries(component, S1, tap["cookie"]) == []

    def test_counters_survive_reinstalls_and_a_component_restart(self, lab: Any, component: Component,
                                                                 workdir: Path) -> None:
        """A tap extended (installed again with a later hard timeout), then re-asserted by the
        daemon after a component restart, reports every packet its copies carried."""
        icmp = {"ipv4_src": H[1], "ipv4_dst": H[3], "ip_proto": 1}
        assert ", 0% packet loss" in lab.host("h1").cmd(f"ping -c1 -W1 {H[3]}")
        rpc = component.client()
        with Capture(lab, workdir / "counters.pcap", "icmp") as cap:
            rpc.install_mirror("conf-count", S1, icmp, UPLINK, idle_timeout=0, hard_timeout=120)
            assert ", 0% packet loss" in lab.host("h1").cmd(f"ping -c3 -i0.2 -W1 {H[3]}")
            rpc.install_mirror("conf-count", S1, icmp, UPLINK, idle_timeout=0, hard_timeout=240)  # extended
            assert ", 0% packet loss" in lab.host("h1").cmd(f"ping -c2 -i0.2 -W1 {H[3]}")
            component.stop()
            component.start()
            rpc = component.client()
            deadline = time.monotonic() + 30
            while len(rpc.list_switches()) < 3:
                assert time.monotonic() < deadline, component.log_tail()
                time.sleep(0.1)
            rpc.install_mirror("conf-count", S1, icmp, UPLINK, idle_timeout=0, hard_timeout=240)  # reconcile
            assert ", 0% packet loss" in lab.host("h1").cmd(f"ping -c4 -i0.2 -W1 {H[3]}")
            time.sleep(1.2)  # the userspace datapath hands counters to the table about twice a second
            listed = [m for m in rpc.list_mirrors(S1) if m["tap_id"] == "conf-count"]
            removed = rpc.remove_mirror("conf-count")
        captured = [p for p in cap.packets() if is_flow(p, 1, 3)]
        assert len(captured) == 9, (len(captured), listed, removed, component.log_tail())
        assert [m["packets"] for m in listed] == [9]
        assert removed["packets"] == 9, removed

    def test_metrics_agree_with_the_switches(self, lab: Any, rpc: Any, component: Component) -> None:
        """``GET /metrics``: switches and mirror entries as the switches hold them; flow-mods,
        flow-removed and RPC requests/errors move with what was done."""
        import urllib.error
        import urllib.request

        def value(metrics: dict, name: str, **labels: str) -> float:
            return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

        def entries_on_switches() -> int:
            return sum(1 for d in (S1, S2, S3) for e in self.table(component, d) if is_mirror_cookie(e.cookie))

        before = component.metrics()
        tap = rpc.install_mirror("conf-metrics", S1, five_tuple(1, 2, 41601, 5601), UPLINK, bidirectional=True)
        with pytest.raises(Exception):
            rpc.install_mirror("conf-metrics-bad", S1, {"tcp_dst": 70000}, UPLINK)
        during = component.metrics()
        assert value(during, "pytapdemon_controller_switches_connected") == len(rpc.list_switches()) == 3
        assert value(during, "pytapdemon_controller_mirror_entries") == entries_on_switches() >= tap["entries"]
        assert value(during, "pytapdemon_controller_mirrors_installed") >= 1
        added = value(during, "pytapdemon_controller_flow_mods_total", command="add") - \
            value(before, "pytapdemon_controller_flow_mods_total", command="add")
        assert added == 2  # one entry per direction
        assert value(during, "pytapdemon_controller_rpc_requests_total", method="install_mirror") - \
            value(before, "pytapdemon_controller_rpc_requests_total", method="install_mirror") == 2
        assert value(during, "pytapdemon_controller_rpc_errors_total", method="install_mirror", code="-32602") - \
            value(before, "pytapdemon_controller_rpc_errors_total", method="install_mirror", code="-32602") == 1
        rpc.remove_mirror("conf-metrics")
        after = component.metrics()
        assert value(after, "pytapdemon_controller_flow_removed_total", reason="delete") - \
            value(during, "pytapdemon_controller_flow_removed_total", reason="delete") == 2
        assert value(after, "pytapdemon_controller_mirror_entries") == entries_on_switches()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{component.metrics_port}/", timeout=5)
        assert info.value.code == 404

    @staticmethod
    def _pending(events: Any) -> list[Any]:
        out = []
        while True:
            try:
                out.append(events.get(timeout=0.05))
            except queue.Empty:
                return out

    def test_mirrors_survive_a_component_restart(self, lab: Any, component: Component) -> None:
        rpc = component.client()
        a = rpc.install_mirror("conf-restart-a", S1, five_tuple(2, 3, 41501, 5501), UPLINK,
                               idle_timeout=0, hard_timeout=120)
        b = rpc.install_mirror("conf-restart-b", S1, five_tuple(2, 4, 41502, 5502), UPLINK + 1,
                               idle_timeout=0, hard_timeout=120, bidirectional=True)
        component.stop()
        component.start()
        deadline = time.monotonic() + 30
        rpc = component.client()
        while len(rpc.list_switches()) < 3:
            assert time.monotonic() < deadline, component.log_tail()
            time.sleep(0.1)
        listed = {m["cookie"]: m for m in rpc.list_mirrors(S1)}
        assert set(listed) >= {a["cookie"], b["cookie"]}
        assert listed[a["cookie"]]["match"]["tcp_dst"] == 5501 and listed[a["cookie"]]["copy_port"] == UPLINK
        assert listed[b["cookie"]]["bidirectional"] is True and listed[b["cookie"]]["copy_port"] == UPLINK + 1
        assert {listed[a["cookie"]]["tap_id"], listed[b["cookie"]]["tap_id"]} == {"conf-restart-a",
                                                                                 "conf-restart-b"}
        # the daemon's reconciliation re-asserts a: same tap id, same spec → still one entry
        again = rpc.install_mirror("conf-restart-a", S1, five_tuple(2, 3, 41501, 5501), UPLINK,
                                   idle_timeout=0, hard_timeout=120)
        assert again["cookie"] == a["cookie"]
        assert len(self.project_entries(component, S1, a["cookie"])) == 1
        # … and removes b, which this process never installed
        assert rpc.remove_mirror("conf-restart-b")["removed"] is True
        assert self.project_entries(component, S1, b["cookie"]) == []
        assert rpc.remove_mirror("conf-restart-a")["removed"] is True
        assert self.project_entries(component, S1, a["cookie"]) == []
