"""The fabric description (``docs/fabric.md``) and the flow tables it implies.

Pure and standard-library only (the POX component imports it). Entries are
controller-neutral :class:`Entry` values: OXM-style match names and action strings
(``NORMAL``, ``output:6``, ``push_vlan:0x8100``, ``set_field:vlan_vid=10``), the
same form ``flow_stats`` answers in, so the network-state check can compare them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from demon.controller.spec import BASELINE_COOKIE, STATIC_COOKIE, MirrorSpec, require_exactly

ROLES = ("filter", "aggregation")
PRIORITY_MISS = 0
PRIORITY_FORWARD = 10
PRIORITY_FLOOD = 20
PRIORITY_UPLINK = 100
PRIORITY_STATIC = 20000
#: OpenFlow 1.3 filter switches: table 1 holds the L2 entries the switch learns itself.
L2_TABLE = 1
LEARN_PRIORITY = 10
LEARN_IDLE = 300
#: Multicast/broadcast bit of the destination MAC.
MULTICAST_MAC = "01:00:00:00:00:00/01:00:00:00:00:00"
#: The prototype's fixed port pairs and aggregation ports (baseline §1.4).
PROTOTYPE_PAIRS = {1: [(1, 2), (3, 4)], 2: [(1, 2)]}
PROTOTYPE_AGGREGATION = (3, list(range(1, 11)), 11)
PROTOTYPE_TIMEOUT = 120


class FabricError(ValueError):
    """Bad fabric description or static config; the message names the file and field."""


@dataclass(frozen=True)
class SwitchRole:
    dpid: int
    name: str
    role: str
    host_ports: tuple[int, ...] = ()
    uplinks: tuple[int, ...] = ()
    capture_port: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"dpid": self.dpid, "name": self.name, "role": self.role,
                "host_ports": list(self.host_ports), "uplinks": list(self.uplinks),
                "capture_port": self.capture_port}


@dataclass(frozen=True)
class StaticSwitch:
    pairs: tuple[tuple[int, int], ...] = ()
    mirror_sources: tuple[int, ...] = ()
    mirror_destinations: tuple[int, ...] = ()
    to_capture: tuple[int, ...] = ()
    capture_port: int | None = None

    def pair_output(self, in_port: int) -> int | None:
        for a, b in self.pairs:
            if in_port == a:
                return b
            if in_port == b:
                return a
        return None


@dataclass(frozen=True)
class StaticConfig:
    timeout: int = 0
    switches: Mapping[int, StaticSwitch] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        sw: dict[str, Any] = {}
        for dpid, s in sorted(self.switches.items()):
            item: dict[str, Any] = {}
            if s.pairs:
                item["pairs"] = [list(p) for p in s.pairs]
            if s.mirror_sources:
                item["mirror_sources"] = list(s.mirror_sources)
            if s.mirror_destinations:
                item["mirror_destinations"] = list(s.mirror_destinations)
            if s.to_capture:
                item["to_capture"] = list(s.to_capture)
                item["capture_port"] = s.capture_port
            sw[str(dpid)] = item
        return {"timeout": self.timeout, "switches": sw}


@dataclass(frozen=True)
class Fabric:
    switches: Mapping[int, SwitchRole]
    static: StaticConfig | None = None

    def role(self, dpid: int) -> SwitchRole | None:
        return self.switches.get(dpid)


@dataclass(frozen=True)
class Entry:
    """One flow entry in neutral form. ``actions == ()`` means drop."""

    priority: int
    match: Mapping[str, Any]
    actions: tuple[str, ...]
    cookie: int
    idle_timeout: int = 0
    hard_timeout: int = 0
    send_flow_rem: bool = False
    table_id: int = 0

    def key(self) -> tuple[Any, ...]:
        """What makes two entries the same entry (counters and flags aside)."""
        return (self.table_id, self.priority, tuple(sorted(self.match.items())), self.actions,
                self.cookie, self.idle_timeout, self.hard_timeout)

    def describe(self) -> str:
        match = ",".join(f"{k}={v}" for k, v in sorted(self.match.items())) or "*"
        timeouts = ""
        if self.idle_timeout or self.hard_timeout:
            hard = "?" if self.hard_timeout < 0 else self.hard_timeout  # not compared (netcheck)
            timeouts = f" idle={self.idle_timeout} hard={hard}"
        return (f"cookie={self.cookie:#x} priority={self.priority} {match}{timeouts}"
                f" actions={','.join(self.actions) or 'drop'}")


# ----------------------------------------------------------------- parsing

def _ports(value: Any, path: str, required: bool = False) -> tuple[int, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list) or (required and not value):
        raise FabricError(f"{path}: must be a {'non-empty ' if required else ''}list of port numbers")
    for i, port in enumerate(value):
        _port(port, f"{path}[{i}]")
    if len(set(value)) != len(value):
        raise FabricError(f"{path}: repeats a port")
    return tuple(value)


def _port(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 0xFFFFFF00:
        raise FabricError(f"{path}: must be a port number 1..4294967040")
    return value


def _check_keys(obj: Mapping[str, Any], allowed: Iterable[str], path: str) -> None:
    allowed = set(allowed)
    for key in obj:
        if key not in allowed:
            raise FabricError(f"{path}.{key}: unknown key (known: {', '.join(sorted(allowed))})")


def parse_switch(obj: Any, path: str) -> SwitchRole:
    if not isinstance(obj, Mapping):
        raise FabricError(f"{path}: must be an object")
    _check_keys(obj, ("dpid", "name", "role", "host_ports", "uplinks", "capture_port"), path)
    dpid = obj.get("dpid")
    if isinstance(dpid, bool) or not isinstance(dpid, int) or not 0 <= dpid < 2**64:
        raise FabricError(f"{path}.dpid: must be an integer datapath id")
    name = obj.get("name", f"dpid{dpid}")
    if not isinstance(name, str) or not name:
        raise FabricError(f"{path}.name: must be a non-empty string")
    role = obj.get("role")
    if role not in ROLES:
        raise FabricError(f"{path}.role: must be one of {', '.join(ROLES)}")
    uplinks = _ports(obj.get("uplinks"), f"{path}.uplinks", required=True)
    if role == "filter":
        hosts = _ports(obj.get("host_ports"), f"{path}.host_ports", required=True)
        if set(hosts) & set(uplinks):
            raise FabricError(f"{path}.host_ports: overlaps uplinks")
        if obj.get("capture_port") is not None:
            raise FabricError(f"{path}.capture_port: only an aggregation switch has one")
        return SwitchRole(dpid, name, role, hosts, uplinks)
    if obj.get("host_ports"):
        raise FabricError(f"{path}.host_ports: an aggregation switch has none")
    capture = _port(obj.get("capture_port"), f"{path}.capture_port")
    if capture in uplinks:
        raise FabricError(f"{path}.capture_port: is also an uplink")
    return SwitchRole(dpid, name, role, (), uplinks, capture)


def parse_static(obj: Any, path: str = "static") -> StaticConfig:
    """The ``static`` section (also the ``set_static`` RPC's ``config``)."""
    if not isinstance(obj, Mapping):
        raise FabricError(f"{path}: must be an object")
    _check_keys(obj, ("timeout", "switches"), path)
    timeout = obj.get("timeout", 0)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 <= timeout <= 65535:
        raise FabricError(f"{path}.timeout: must be 0..65535 seconds (0 = permanent)")
    switches = obj.get("switches", {})
    if not isinstance(switches, Mapping):
        raise FabricError(f"{path}.switches: must be an object keyed by dpid")
    out: dict[int, StaticSwitch] = {}
    for key, sw in switches.items():
        spath = f"{path}.switches.{key}"
        try:
            dpid = int(key)
        except (TypeError, ValueError):
            raise FabricError(f"{spath}: key must be a dpid (integer)") from None
        if not isinstance(sw, Mapping):
            raise FabricError(f"{spath}: must be an object")
        _check_keys(sw, ("pairs", "mirror_sources", "mirror_destinations", "to_capture",
                         "capture_port"), spath)
        pairs_raw = sw.get("pairs", [])
        if not isinstance(pairs_raw, list):
            raise FabricError(f"{spath}.pairs: must be a list of [a, b] port pairs")
        pairs: list[tuple[int, int]] = []
        seen: set[int] = set()
        for i, pair in enumerate(pairs_raw):
            if not isinstance(pair, list) or len(pair) != 2:
                raise FabricError(f"{spath}.pairs[{i}]: must be [a, b]")
            a, b = (_port(p, f"{spath}.pairs[{i}]") for p in pair)
            if a == b or a in seen or b in seen:
                raise FabricError(f"{spath}.pairs[{i}]: a port may appear in one pair only")
            seen.update((a, b))
            pairs.append((a, b))
        to_capture = _ports(sw.get("to_capture"), f"{spath}.to_capture")
        capture = sw.get("capture_port")
        if to_capture:
            capture = _port(capture, f"{spath}.capture_port")
        elif capture is not None:
            raise FabricError(f"{spath}.capture_port: needs to_capture")
        out[dpid] = StaticSwitch(tuple(pairs),
                                 _ports(sw.get("mirror_sources"), f"{spath}.mirror_sources"),
                                 _ports(sw.get("mirror_destinations"), f"{spath}.mirror_destinations"),
                                 to_capture, capture)
    return StaticConfig(timeout, out)


def parse_fabric(obj: Any, source: str = "fabric") -> Fabric:
    try:
        if not isinstance(obj, Mapping):
            raise FabricError("(top level): must be an object")
        _check_keys(obj, ("version", "switches", "static"), "(top level)")
        if obj.get("version", 1) != 1:
            raise FabricError("version: only version 1 is known")
        raw = obj.get("switches")
        if not isinstance(raw, list) or not raw:
            raise FabricError("switches: must be a non-empty list")
        switches: dict[int, SwitchRole] = {}
        for i, item in enumerate(raw):
            sw = parse_switch(item, f"switches[{i}]")
            if sw.dpid in switches:
                raise FabricError(f"switches[{i}].dpid: {sw.dpid} appears twice")
            switches[sw.dpid] = sw
        static = obj.get("static")
        return Fabric(switches, None if static is None else parse_static(static))
    except FabricError as exc:
        raise FabricError(f"{source}: {exc}") from None


def load_fabric(path: str | Path) -> Fabric:
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except OSError as exc:
        raise FabricError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise FabricError(f"{path}: not JSON: {exc}") from None
    return parse_fabric(obj, str(path))


def parse_mirror_ports(text: str, source: str = "mirrorPorts.txt") -> StaticConfig:
    """The prototype's ``mirrorPorts.txt`` (``s1MirrorSrc,1`` …), with its fixed port pairs.

    Unlike the prototype, each switch's mirror destinations apply to that switch only.
    """
    sources: dict[int, list[int]] = {}
    dests: dict[int, list[int]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(",")
        name = name.strip()
        kind = "MirrorSrc" if name.endswith("MirrorSrc") else "MirrorDst" if name.endswith("MirrorDst") else None
        switch = name[: -len("MirrorSrc")] if kind else ""
        if kind is None or not switch.startswith("s") or not switch[1:].isdigit():
            raise FabricError(f"{source}:{lineno}: expected sNMirrorSrc,PORT[,PORT…] or sNMirrorDst,…")
        dpid = int(switch[1:])
        try:
            ports = [int(p) for p in rest.split(",") if p.strip()]
        except ValueError:
            raise FabricError(f"{source}:{lineno}: ports must be integers") from None
        if not ports or any(p < 1 for p in ports):
            raise FabricError(f"{source}:{lineno}: needs at least one port number >= 1")
        (sources if kind == "MirrorSrc" else dests).setdefault(dpid, []).extend(ports)
    switches: dict[int, StaticSwitch] = {}
    for dpid in sorted(set(sources) | set(dests) | set(PROTOTYPE_PAIRS)):
        switches[dpid] = StaticSwitch(tuple(PROTOTYPE_PAIRS.get(dpid, ())),
                                      tuple(sources.get(dpid, ())), tuple(dests.get(dpid, ())))
    agg, to_capture, capture = PROTOTYPE_AGGREGATION
    switches[agg] = StaticSwitch(to_capture=tuple(to_capture), capture_port=capture)
    return StaticConfig(PROTOTYPE_TIMEOUT, switches)


def load_static(path: str | Path) -> StaticConfig:
    """A static config file: JSON (the ``static`` section's shape) or ``mirrorPorts.txt``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise FabricError(f"{path}: cannot read: {exc.strerror}") from None
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FabricError(f"{path}: not JSON: {exc}") from None
        try:
            return parse_static(obj.get("static", obj) if isinstance(obj, dict) else obj)
        except FabricError as exc:
            raise FabricError(f"{path}: {exc}") from None
    return parse_mirror_ports(text, str(path))


# ------------------------------------------------------------ intended state

def baseline_entries(sw: SwitchRole, openflow: str = "1.3") -> list[Entry]:
    """The role's pipeline.

    OpenFlow 1.0 filter switches forward with ``NORMAL`` and keep the uplinks out of
    its flooding with ``OFPPC_NO_FLOOD``. OpenFlow 1.3 has no such bit (Open vSwitch
    ignores it in a 1.3 port-mod), and ``NORMAL`` would flood unknown unicast up every
    uplink, so 1.3 filter switches learn instead: every frame from a host port teaches
    table 1 ``eth_dst=<its eth_src> → output:<its in_port>`` (OVS ``learn``), and what
    table 1 does not know is flooded to the other host ports only.
    """
    out: list[Entry] = []
    v13 = openflow != "1.0"
    if v13:
        out.append(Entry(PRIORITY_MISS, {}, (), BASELINE_COOKIE))
    if sw.role == "filter":
        learn = f"learn(table={L2_TABLE})"
        for port in sw.uplinks:
            out.append(Entry(PRIORITY_UPLINK, {"in_port": port}, (), BASELINE_COOKIE))
        for port in sw.host_ports:
            others = tuple(f"output:{p}" for p in sw.host_ports if p != port)
            if not v13:
                out.append(Entry(PRIORITY_FORWARD, {"in_port": port}, ("NORMAL",), BASELINE_COOKIE))
                continue
            out.append(Entry(PRIORITY_FORWARD, {"in_port": port}, (learn, f"goto_table:{L2_TABLE}"),
                             BASELINE_COOKIE))
            out.append(Entry(PRIORITY_FLOOD, {"in_port": port, "eth_dst": MULTICAST_MAC}, (learn,) + others,
                             BASELINE_COOKIE))
            out.append(Entry(PRIORITY_MISS + 1, {"in_port": port}, others, BASELINE_COOKIE, table_id=L2_TABLE))
        if v13:
            out.append(Entry(PRIORITY_MISS, {}, (), BASELINE_COOKIE, table_id=L2_TABLE))
    else:
        for port in sw.uplinks:
            out.append(Entry(PRIORITY_UPLINK, {"in_port": port}, (f"output:{sw.capture_port}",),
                             BASELINE_COOKIE))
    return out


def no_flood_ports(sw: SwitchRole) -> list[int]:
    """Ports to keep out of flooding (honoured only where the protocol can say so)."""
    return list(sw.uplinks) if sw.role == "filter" else [sw.capture_port] if sw.capture_port else []


def static_entries(static: StaticConfig | None, dpid: int) -> list[Entry]:
    """The prototype's port pairs, port mirrors and aggregation entries for one switch."""
    if static is None or dpid not in static.switches:
        return []
    sw = static.switches[dpid]
    t = static.timeout
    out: list[Entry] = []
    mirror_to = tuple(f"output:{p}" for p in sw.mirror_destinations)
    for a, b in sw.pairs:
        mirrored = a in sw.mirror_sources or b in sw.mirror_sources
        for src, dst in ((a, b), (b, a)):
            actions = (f"output:{dst}",) + (mirror_to if mirrored else ())
            out.append(Entry(PRIORITY_STATIC, {"in_port": src}, actions, STATIC_COOKIE, t, t, bool(t)))
    for port in sw.to_capture:
        out.append(Entry(PRIORITY_STATIC, {"in_port": port}, (f"output:{sw.capture_port}",),
                         STATIC_COOKIE, t, t, bool(t)))
    return out


def uses_l2_table(fabric: Fabric, dpid: int, openflow: str) -> bool:
    """Whether mirrors on this switch forward through the learned L2 table (1.3 filters)."""
    role = fabric.role(dpid)
    return openflow != "1.0" and role is not None and role.role == "filter"


def intended_entries(fabric: Fabric, dpid: int, openflow: str = "1.3",
                     static: StaticConfig | None = None) -> list[Entry]:
    """Baseline + static entries for a switch (``static`` defaults to the fabric's)."""
    sw = fabric.role(dpid)
    base = baseline_entries(sw, openflow) if sw else []
    return base + static_entries(static if static is not None else fabric.static, dpid)


def forward_actions(static: StaticConfig | None, dpid: int, match: Mapping[str, Any]) -> tuple[str, ...]:
    """How matching traffic was forwarded before the mirror: the static pair, else NORMAL."""
    if static is not None and dpid in static.switches and "in_port" in match:
        out = static.switches[dpid].pair_output(match["in_port"])
        if out is not None:
            return (f"output:{out}",)
    return ("NORMAL",)


def fabric_to_json(fabric: Fabric) -> dict[str, Any]:
    sws = []
    for sw in fabric.switches.values():
        item = {"dpid": sw.dpid, "name": sw.name, "role": sw.role, "uplinks": list(sw.uplinks)}
        if sw.role == "filter":
            item["host_ports"] = list(sw.host_ports)
        else:
            item["capture_port"] = sw.capture_port
        sws.append(item)
    return {"version": 1, "switches": sws,
            "static": fabric.static.to_json() if fabric.static else None}


def copy_of_entry(entry: Entry) -> tuple[int | None, int | None]:
    """``(copy_port, vlan_tag)`` of a mirror entry: the last output, the VLAN it pushes."""
    copy_port = vlan = None
    for action in entry.actions:
        if action.startswith("output:"):
            copy_port = int(action.split(":", 1)[1])
        elif action.startswith("set_field:vlan_vid="):
            vlan = int(action.split("=", 1)[1])
    return copy_port, vlan


def mirror_record(dpid: int, cookie: int, rows: list[tuple[Entry, int, int, float]],
                  spec: MirrorSpec | None, installed_at: float | None,
                  now: float | None = None) -> dict[str, Any]:
    """One ``list_mirrors`` record from the switch's entries of one cookie.

    ``spec`` (what the component installed, when it still remembers) names the tap and
    tells forward from reverse; without it (after a restart) the record is rebuilt from
    the entries alone and ``tap_id`` is null: the daemon maps it back through the cookie.
    """
    rows = sorted(rows, key=lambda r: -r[3])
    forward = rows[0][0]
    if spec is not None:
        forward = next((r[0] for r in rows if dict(r[0].match) == dict(spec.match)), forward)
    copy_port, vlan = copy_of_entry(forward)
    duration = max(r[3] for r in rows)
    now = time.time() if now is None else now
    return {
        "tap_id": spec.tap_id if spec else None,
        "dpid": dpid,
        "match": dict(forward.match),
        "copy_port": copy_port,
        "vlan_tag": vlan,
        "bidirectional": spec.bidirectional if spec else len(rows) > 1,
        "idle_timeout": forward.idle_timeout,
        "hard_timeout": forward.hard_timeout,
        "priority": forward.priority,
        "cookie": cookie,
        "installed_at": installed_at if installed_at is not None else round(now - duration, 3),
        "packets": sum(r[1] for r in rows),
        "bytes": sum(r[2] for r in rows),
        "duration_s": duration,
        "entries": len(rows),
    }


def parse_set_static_params(params: Mapping[str, Any]) -> StaticConfig:
    """The new static configuration of a ``set_static`` request (``config: null`` clears it)."""
    require_exactly(params, ("config",))
    config = params["config"]
    return StaticConfig() if config is None else parse_static(config, "params.config")
