"""An in-process fake controller component that speaks the real RPC protocol.

It runs the project's own ``RpcServer`` (token, JSON lines, events), validates
``install_mirror`` with the components' own ``parse_mirror_params``, and keeps
mirrors in a dict instead of switch flow tables. It records every request in
order, so tests assert what the daemon *sent*, and it can be stopped and
restarted on the same port (controller down), made to fail installs, and made
to expire mirrors (``hard_timeout``) like a switch would.

Also: the seed fabric's switches and a matching engine port map, a scripted
sFlow-RT (``ScriptedEngine``, served through ``responses``), and ``Harness``:
the real ``Runtime`` on a thread between the two.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from demon.controller.spec import SpecError, cookie_for_tap, parse_mirror_params, parse_tap_id
from demon.rpc import protocol as p
from demon.rpc.client import RpcClient
from demon.rpc.protocol import RpcError
from demon.rpc.server import RpcServer
from demon.runtime import Runtime, RuntimeOptions, accelerated_clock
from demon.store import Store

AGENT = "127.0.0.1"
TOKEN = "fake-controller-token"


def seed_switches() -> list[dict[str, Any]]:
    """``list_switches`` of the seed fabric: s1, s2 filter (hosts 1-5, uplinks 6-10),
    s3 aggregation (uplinks 1-10, capture port 11)."""
    out = []
    for dpid in (1, 2):
        out.append({"dpid": dpid, "name": f"s{dpid}", "role": "filter", "connected_at": 0.0,
                    "ports": [{"port_no": n, "name": f"s{dpid}-eth{n}", "hw_addr": "",
                               "up": True} for n in range(1, 11)],
                    "host_ports": [1, 2, 3, 4, 5], "uplinks": [6, 7, 8, 9, 10],
                    "capture_port": None})
    out.append({"dpid": 3, "name": "s3", "role": "aggregation", "connected_at": 0.0,
                "ports": [{"port_no": n, "name": f"s3-eth{n}", "hw_addr": "", "up": True}
                          for n in range(1, 12)],
                "host_ports": [], "uplinks": list(range(1, 11)), "capture_port": 11})
    return out


def seed_port_map() -> list[dict[str, Any]]:
    """``/demon/portmap/json`` for the seed fabric with one agent: ifIndex = 100*dpid + port."""
    return [{"agent": AGENT, "ifIndex": 100 * dpid + port, "dpid": dpid, "ofPort": port,
             "name": f"s{dpid}-eth{port}"}
            for dpid, ports in ((1, 10), (2, 10), (3, 11)) for port in range(1, ports + 1)]


class FakeController:
    """Handler + server. ``calls`` lists every ``(method, params)`` received."""

    WRITES = ("install_mirror", "remove_mirror")

    def __init__(self, token: str = TOKEN, address: str = "tcp:127.0.0.1:0",
                 switches: list[dict[str, Any]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.token = token
        self.address = address
        self.switches = switches if switches is not None else seed_switches()
        self.clock = clock
        self.mirrors: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.removed: dict[str, dict[str, Any]] = {}  # removed mirrors, counters as at removal
        self.fail_installs = 0          # answer this many installs with -32004
        self.install_delay = 0.0        # seconds each install takes...
        self.slow_installs = -1         # ...for this many installs (-1: all)
        self.max_concurrent = 0         # most mirrors held at once
        # Traffic through every mirror, as a switch's counters would show it: each
        # installed mirror counts ``pps`` packets of ``packet_size`` bytes a second
        # (of ``clock``) from its install; ``counter_reads`` counts list_mirrors calls.
        self.pps = 0.0
        self.packet_size = 1500
        self.refresh = 0.0  # > 0: counters as of the last refresh, like OVS (every ~0.5 s)
        self.counter_reads = 0
        self.lock = threading.Lock()
        self.server: RpcServer | None = None

    # -- server life ----------------------------------------------------------------

    def start(self) -> "FakeController":
        self.server = RpcServer(self.address, self.token, self).start()
        self.address = self.server.address  # keep the real port for restarts
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> "FakeController":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests look at ----------------------------------------------------------

    def writes(self) -> list[tuple[str, str]]:
        """``(method, tap_id)`` of every install/remove received, in order."""
        with self.lock:
            return [(m, params.get("tap_id", "")) for m, params in self.calls
                    if m in self.WRITES]

    def expire(self, tap_id: str, reason: str = "hard_timeout") -> bool:
        """The switch drops the mirror: forget it and push ``mirror_removed``."""
        with self.lock:
            mirror = self.mirrors.pop(tap_id, None)
        if mirror is None:
            return False
        self._publish_removed(mirror, reason)
        return True

    def sweep(self) -> list[str]:
        """Expire every mirror whose ``hard_timeout`` has passed (what a switch does)."""
        now = self.clock()
        with self.lock:
            due = [tap_id for tap_id, m in self.mirrors.items()
                   if now >= m["installed_at"] + m["hard_timeout"]]
        return [tap_id for tap_id in due if self.expire(tap_id)]

    def _count(self, mirror: dict[str, Any], now: float) -> dict[str, Any]:
        """The mirror with its counters as of ``now`` (frozen once it is removed)."""
        if self.pps and "removed_at" not in mirror:
            elapsed = max(0.0, now - mirror["installed_at"])
            if self.refresh > 0:
                elapsed = self.refresh * int(elapsed / self.refresh)
            packets = int(elapsed * self.pps)
            mirror["packets"], mirror["bytes"] = packets, packets * self.packet_size
        return mirror

    def _publish_removed(self, mirror: dict[str, Any], reason: str) -> None:
        mirror = self._count(mirror, self.clock())
        mirror["removed_at"] = self.clock()
        if self.server is not None:
            self.server.publish("mirror_removed", {
                "tap_id": mirror["tap_id"], "dpid": mirror["dpid"], "reason": reason,
                "packets": mirror["packets"], "bytes": mirror["bytes"],
                "duration_s": self.clock() - mirror["installed_at"]})

    # -- Handler protocol ------------------------------------------------------------

    def methods(self) -> set[str]:
        return {"hello", "install_mirror", "remove_mirror", "list_mirrors", "list_switches"}

    def call(self, method: str, params: dict[str, Any]) -> Any:
        with self.lock:
            self.calls.append((method, dict(params)))
        try:
            return getattr(self, "_" + method)(params)
        except SpecError as exc:
            raise p.InvalidParams(exc.field, str(exc).split(": ", 1)[-1]) from None

    def _hello(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"protocol": p.PROTOCOL_VERSION, "component": "fake", "version": "0",
                "openflow": "1.3"}

    def _list_switches(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self.switches

    def _install_mirror(self, params: dict[str, Any]) -> dict[str, Any]:
        spec = parse_mirror_params(params)
        if spec.dpid not in {sw["dpid"] for sw in self.switches}:
            raise RpcError(p.UNKNOWN_SWITCH, f"switch {spec.dpid} is not connected")
        if self.install_delay and self.slow_installs != 0:
            self.slow_installs -= 1
            time.sleep(self.install_delay)
        with self.lock:
            if self.fail_installs > 0:
                self.fail_installs -= 1
                raise RpcError(p.SWITCH_REJECTED, "OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL")
            old = self.mirrors.get(spec.tap_id)
            record = {**spec.to_params(), "cookie": cookie_for_tap(spec.tap_id),
                      "installed_at": self.clock(), "packets": 0, "bytes": 0}
            if old is not None and {k: old[k] for k in spec.to_params()} == spec.to_params():
                record = old  # idempotent: same spec, same answer
            self.mirrors[spec.tap_id] = record
            self.max_concurrent = max(self.max_concurrent, len(self.mirrors))
        return {"tap_id": spec.tap_id, "dpid": spec.dpid, "cookie": record["cookie"],
                "entries": 2 if spec.bidirectional else 1, "replaced": old is not None,
                "installed_at": record["installed_at"]}

    def _remove_mirror(self, params: dict[str, Any]) -> dict[str, Any]:
        tap_id = parse_tap_id(params.get("tap_id"))
        with self.lock:
            mirror = self.mirrors.pop(tap_id, None)
            if mirror is not None:
                self.removed[tap_id] = self._count(mirror, self.clock())
        if mirror is None:
            return {"tap_id": tap_id, "removed": False, "packets": 0, "bytes": 0}
        self._publish_removed(mirror, "delete")
        return {"tap_id": tap_id, "removed": True, "packets": mirror["packets"],
                "bytes": mirror["bytes"]}

    def _list_mirrors(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        now = self.clock()
        with self.lock:
            self.counter_reads += 1
            return [{**self._count(m, now), "duration_s": now - m["installed_at"]}
                    for m in self.mirrors.values() if params.get("dpid") in (None, m["dpid"])]


class ScriptedEngine:
    """An sFlow-RT the test scripts, served through ``responses`` callbacks.

    Events the test ``fire``s are held like sFlow-RT holds them: ``/events/json``
    answers the ones after ``eventID`` (newest first, at most ``maxEvents``,
    the oldest of the newer ones first so none is skipped), holding the long
    poll briefly when there is nothing newer. ``/activeflows`` answers the
    flow's current table (``set_flows``). ``up = False`` makes every request
    fail with a connection error (engine unreachable); events fired meanwhile
    are kept, as the engine keeps them.
    """

    def __init__(self, base_url: str = "http://engine.test:8008",
                 port_map: list[dict[str, Any]] | None = None) -> None:
        self.base_url = base_url
        self.port_map = port_map if port_map is not None else seed_port_map()
        self.events: list[dict[str, Any]] = []
        self.flow_tables: dict[str, list[dict[str, Any]]] = {}
        self.flows: dict[str, dict[str, Any]] = {}
        self.thresholds: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.up = True
        #: Answer an empty port map until some event has been served (an agent whose
        #: port counters arrive after its first flow samples).
        self.hide_ports_until_events = False
        self.cond = threading.Condition()

    # -- scripting -------------------------------------------------------------------

    def fire(self, threshold: str, flow_key: str, value: float = 500_000.0,
             data_source: str = "101", agent: str = AGENT, age: float = 0.0) -> int:
        """Add an event (``age``: seconds before now in its timestamp); returns its id."""
        with self.cond:
            event_id = len(self.events) + 1
            self.events.append({"eventID": event_id,
                                "timestamp": int((time.time() - age) * 1000),
                                "thresholdID": threshold, "metric": threshold, "agent": agent,
                                "dataSource": data_source, "value": value,
                                "threshold": self.thresholds.get(threshold, {}).get("value", 0),
                                "flowKey": flow_key})
            self.cond.notify_all()
            return event_id

    def set_flows(self, flow: str, rows: list[tuple[str, float, str]]) -> None:
        """``rows``: (key, value, dataSource) of the flow's current top table."""
        with self.cond:
            self.flow_tables[flow] = [{"key": key, "value": value, "agent": AGENT,
                                       "dataSource": ds} for key, value, ds in rows]

    # -- responses plumbing ----------------------------------------------------------

    def register(self, mock: Any) -> "ScriptedEngine":
        import re

        base = re.escape(self.base_url)
        for method in ("GET", "PUT", "DELETE"):
            mock.add_callback(method, re.compile(base + r"/.*"), callback=self._answer)
        return self

    def _answer(self, request: Any) -> tuple[int, dict[str, str], str]:
        import json
        from urllib.parse import parse_qs, urlsplit

        import requests

        url = urlsplit(request.url)
        path = url.path
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self.cond:
            self.requests.append((request.method, path))
            up = self.up
        if not up:
            raise requests.ConnectionError(f"connection refused: {self.base_url}")
        parts = path.strip("/").split("/")

        def ok(body: Any) -> tuple[int, dict[str, str], str]:
            return 200, {"Content-Type": "application/json"}, json.dumps(body)

        if path == "/version":
            return 200, {"Content-Type": "text/plain"}, "3.0-scripted"
        if path == "/demon/portmap/json":
            return ok([] if self.hide_ports_until_events else self.port_map)
        if path == "/events/json":
            events = self._events(query)
            if not self.up:  # went away during the long poll: the answer is lost
                raise requests.ConnectionError(f"connection reset: {self.base_url}")
            if events:
                self.hide_ports_until_events = False
            return ok(events)
        if parts[0] in ("flow", "threshold") and len(parts) == 3:
            table = self.flows if parts[0] == "flow" else self.thresholds
            name = parts[1]
            with self.cond:
                if request.method == "PUT":
                    table[name] = json.loads(request.body)
                    return 204, {}, ""
                if request.method == "DELETE":
                    table.pop(name, None)
                    return 204, {}, ""
                if name not in table:
                    return 404, {}, ""
                return ok(table[name])
        if parts[0] == "activeflows" and len(parts) == 4:
            with self.cond:
                if parts[2] not in self.flows:
                    return 404, {}, ""
                rows = list(self.flow_tables.get(parts[2], []))
            minimum = float(query.get("minValue", 0))
            limit = int(query.get("maxFlows", 100))
            rows = sorted((r for r in rows if r["value"] >= minimum),
                          key=lambda r: -r["value"])[:limit]
            return ok(rows)
        return 404, {}, ""

    def _events(self, query: dict[str, str]) -> list[dict[str, Any]]:
        after = int(query.get("eventID", -1))
        limit = int(query.get("maxEvents", 100))
        wait = min(float(query.get("timeout", 0)), 0.2)
        with self.cond:
            if after < 0:
                newer = self.events[-limit:]
            else:
                if not any(e["eventID"] > after for e in self.events) and wait > 0:
                    self.cond.wait(wait)
                newer = [e for e in self.events if e["eventID"] > after][:limit]
        return list(reversed(newer))


# -- a runtime harness: the real Runtime on a thread, scripted engine, fake controller --

SPEED = 10.0
FLOW_A = "10.0.0.1,10.0.0.2,6,5001,80"
FLOW_B = "10.0.0.3,10.0.0.4,6,5002,80"
FLOW_C = "10.0.0.5,10.0.0.1,6,5003,443"
ELEPHANT = """\
name: elephant
kind: elephant
keys: ipsource,ipdestination,ipprotocol,tcpsourceport,tcpdestinationport
threshold: 1Mbps
interval: 1s
duration: 5s
max_duration: 20s
holddown: 3s
max_taps: {max_taps}
idle_timeout: 10s
"""
TOP = """\
name: top
kind: top_talkers
keys: ipsource,ipdestination,ipprotocol,tcpsourceport,tcpdestinationport
top: 2
min_rate: 100kbps
interval: 1s
duration: 5s
max_duration: 20s
"""


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


class Harness:
    """A runtime on its own thread, with its engine, controller and store."""

    def __init__(self, tmp: Path, mock: Any, policies: dict[str, str],
                 controller: FakeController | None = None,
                 engine: ScriptedEngine | None = None,
                 clock: Callable[[], float] | None = None, rpc_timeout: float = 2.0,
                 notify: list[Any] | None = None, state_path: Path | None = None,
                 **options: Any) -> None:
        self.policies_dir = tmp / "policies"
        self.policies_dir.mkdir(exist_ok=True)
        for old in self.policies_dir.glob("*.yaml"):
            old.unlink()
        for name, text in policies.items():
            (self.policies_dir / f"{name}.yaml").write_text(text)
        self.state_path = state_path or tmp / "state.sqlite"
        self.engine = engine or ScriptedEngine().register(mock)
        self.controller = controller or FakeController().start()
        self.store = Store(self.state_path)
        self.options = RuntimeOptions(speed=SPEED, event_poll_timeout=1, **options)
        self.runtime = Runtime(self.policies_dir, self.engine.base_url,
                               RpcClient(self.controller.address, token=TOKEN,
                                         timeout=rpc_timeout),
                               self.store, self.options,
                               clock=clock or accelerated_clock(SPEED), notify=notify or ())
        self.thread = threading.Thread(target=self.runtime.run, daemon=True)

    def start(self) -> "Harness":
        self.runtime.start()
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.runtime.request_stop("test over")
            self.thread.join(timeout=15)
        self.store.close()

    def crash(self) -> None:
        """Stop the threads as a SIGKILL would: no removal, no undefinitions, no
        final save; then close the state file."""
        rt = self.runtime
        rt.shutdown = lambda: rt._halt.set()  # type: ignore[method-assign]
        rt.engine.stop()
        if rt._scheduler is not None:
            rt._scheduler.shutdown(wait=False)
        rt.controller_side.stop()
        rt.request_stop("simulated crash")
        self.thread.join(timeout=5)
        self.store.close()

    def live(self) -> list[str]:
        return sorted(t.tap_id for t in self.runtime.state.live_taps())




# -- sFlow v5 datagrams, for driving a live engine --------------------------------------


def _xdr_string(text: str) -> bytes:
    import struct

    raw = text.encode()
    return struct.pack(">I", len(raw)) + raw + b"\0" * (-len(raw) % 4)


def _record(fmt: int, payload: bytes) -> bytes:
    import struct

    return struct.pack(">II", fmt, len(payload)) + payload


def tcp_frame(src: str, dst: str, sport: int, dport: int, size: int = 1500) -> bytes:
    """The first 54 bytes of an Ethernet/IPv4/TCP frame of ``size`` bytes."""
    import socket
    import struct

    eth = b"\x00\x00\x00\x00\x00\x02" + b"\x00\x00\x00\x00\x00\x01" + struct.pack(">H", 0x0800)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, size - 14, 1, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    tcp = struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x10, 65535, 0, 0)
    return eth + ip + tcp


def sflow_datagram(seq: int, *, flows: list[tuple[int, bytes]] = (),  # type: ignore[assignment]
                   ports: list[tuple[int, int, int, str]] = (),  # type: ignore[assignment]
                   agent: str = AGENT, sampling_rate: int = 1000, frame_size: int = 1500) -> bytes:
    """One sFlow v5 datagram from ``agent``.

    ``flows``: (input ifIndex, sampled header) flow samples; ``ports``: (ifIndex,
    dpid, OpenFlow port, name) counter samples carrying 0:1004 and 0:1005, which
    is what the engine's port map is built from.
    """
    import socket
    import struct

    samples = []
    for n, (if_index, header) in enumerate(flows):
        raw = struct.pack(">IIII", 1, frame_size, 4, len(header)) + header \
            + b"\0" * (-len(header) % 4)
        body = struct.pack(">IIIIIIII", seq * 100 + n, if_index, sampling_rate,
                           sampling_rate * (seq + 1), 0, if_index, 0, 1) + _record(1, raw)
        samples.append(_record(1, body))
    for n, (if_index, dpid, of_port, name) in enumerate(ports):
        recs = _record(1004, struct.pack(">QI", dpid, of_port)) + \
            _record(1005, _xdr_string(name))
        body = struct.pack(">III", seq * 100 + n, if_index, 2) + recs
        samples.append(_record(2, body))
    head = struct.pack(">II", 5, 1) + socket.inet_aton(agent) + \
        struct.pack(">IIII", 0, seq, seq * 100, len(samples))
    return head + b"".join(samples)
