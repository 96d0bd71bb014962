"""The os-ken controller component (OpenFlow 1.3): fabric roles, static mode, mirrors over RPC.

Started by ``demon-controller`` (:mod:`demon.controller.launcher`), which calls
:func:`configure` before os-ken instantiates :class:`TapApp`. The RPC server (from
``demon.rpc``, started by the launcher before os-ken so a busy address fails fast)
runs its own threads and calls :meth:`TapService.call`; those calls
talk to the switch through :class:`SwitchLink`, which pairs requests with replies by
xid and waits on a plain ``threading.Event`` with its own timeout (os-ken's native hub).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

import demon
from demon.controller import of13
from demon.controller.fabric import (Entry, Fabric, FabricError, StaticConfig, intended_entries,
                                     mirror_entries, mirror_record, no_flood_ports, parse_set_static_params, static_entries, uses_l2_table)
from demon.controller.spec import (BASELINE_COOKIE, EXACT_MASK, MIRROR_BIT, PROJECT_MASK,
                                   STATIC_COOKIE, MirrorSpec, SpecError, allocate_cookie, cookie_for_tap,
                                   is_mirror_cookie, parse_dpid, parse_mirror_params, parse_remove_params,
                                   port_stats_json)
from demon.rpc.protocol import RpcError

LOG = logging.getLogger("demon.controller.osken")

E_INVALID = -32602
E_UNKNOWN_SWITCH = -32002
E_UNKNOWN_TAP = -32003
E_REJECTED = -32004
E_TIMEOUT = -32005
QUIET_WINDOW = 2.0
MIRROR_COOKIE = (BASELINE_COOKIE & PROJECT_MASK) | MIRROR_BIT
MIRROR_COOKIE_MASK = PROJECT_MASK | MIRROR_BIT


@dataclass
class Settings:
    """The component's configuration (built by the launcher)."""

    fabric: Fabric
    static: StaticConfig | None = None
    rpc_address: str = "tcp:127.0.0.1:7733"
    token: str = ""
    barrier_timeout: float = 5.0
    #: where tap ids are remembered by cookie, so a restarted component still names them
    state_file: Path | None = None


_SERVICE: "TapService | None" = None


def configure(service: "TapService") -> None:
    """Hand the app its service (os-ken instantiates apps without arguments)."""
    global _SERVICE
    _SERVICE = service


class SwitchTimeout(Exception):
    pass


@dataclass
class _Waiter:
    done: threading.Event = field(default_factory=threading.Event)
    replies: list[Any] = field(default_factory=list)


class SwitchLink:
    """Request/reply over one datapath, usable from any thread."""

    def __init__(self, datapath: Any, timeout: float) -> None:
        self.dp = datapath
        self.timeout = timeout
        self._lock = threading.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._errors: dict[int, Any] = {}

    @property
    def parser(self) -> Any:
        return self.dp.ofproto_parser

    def _send(self, msg: Any, waiter: _Waiter | None = None) -> int:
        with self._lock:  # os-ken's set_xid is not thread-safe
            xid = self.dp.set_xid(msg)
            if waiter is not None:
                self._waiters[xid] = waiter
        if not self.dp.send_msg(msg):
            raise SwitchTimeout("switch connection is closing")
        return xid

    def send_confirmed(self, msgs: list[Any]) -> None:
        """Send ``msgs`` then a barrier; raise RpcError on an OpenFlow error or timeout."""
        xids = [self._send(m) for m in msgs]
        waiter = _Waiter()
        bxid = self._send(self.parser.OFPBarrierRequest(self.dp), waiter)
        try:
            if not waiter.done.wait(self.timeout):
                raise RpcError(E_TIMEOUT, f"no barrier reply from dpid {self.dp.id} within {self.timeout} s")
        finally:
            self._waiters.pop(bxid, None)
        errors = [self._errors.pop(x) for x in xids if x in self._errors]
        if errors:
            err = errors[0]
            raise RpcError(E_REJECTED, f"switch {self.dp.id} rejected the flow: OpenFlow error "
                                       f"type={err.type} code={err.code}")

    def multipart(self, request: Any) -> list[Any]:
        waiter = _Waiter()
        xid = self._send(request, waiter)
        try:
            if not waiter.done.wait(self.timeout):
                raise RpcError(E_TIMEOUT, f"no stats reply from dpid {self.dp.id} within {self.timeout} s")
        finally:
            self._waiters.pop(xid, None)
        if xid in self._errors:
            err = self._errors.pop(xid)
            raise RpcError(E_REJECTED, f"switch {self.dp.id} refused the request: type={err.type} code={err.code}")
        return [item for reply in waiter.replies for item in reply.body]

    # called on os-ken's event thread
    def on_reply(self, msg: Any, last: bool = True) -> None:
        waiter = self._waiters.get(msg.xid)
        if waiter is None:
            return
        waiter.replies.append(msg)
        if last:
            waiter.done.set()

    def on_error(self, msg: Any) -> None:
        self._errors[msg.xid] = msg
        waiter = self._waiters.get(msg.xid)
        if waiter is not None:  # an error answers a stats request
            waiter.done.set()


@dataclass
class SwitchState:
    link: SwitchLink
    name: str
    role: str | None
    connected_at: float
    ports: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Tap:
    spec: MirrorSpec
    cookie: int
    result: dict[str, Any]
    matches: dict[str, dict[str, Any]]  # direction -> neutral match
    live: set[str] = field(default_factory=set)  # directions still on the switch


def _to_parser_flowmod(dp: Any, mod: dict[str, Any]) -> Any:
    ofp, parser = dp.ofproto, dp.ofproto_parser
    actions = []
    for action in mod["actions"]:
        if action[0] == "output":
            actions.append(parser.OFPActionOutput(action[1], ofp.OFPCML_NO_BUFFER))
        elif action[0] == "push_vlan":
            actions.append(parser.OFPActionPushVlan(action[1]))
        elif action[0] == "pop_vlan":
            actions.append(parser.OFPActionPopVlan())
        elif action[0] == "set_field":
            actions.append(parser.OFPActionSetField(**{action[1]: action[2]}))
        elif action[0] == "learn":
            _, table, idle, priority, cookie = action
            actions.append(parser.NXActionLearn(
                table_id=table, idle_timeout=idle, priority=priority, cookie=cookie,
                specs=[parser.NXFlowSpecMatch(src=("eth_src_nxm", 0), dst=("eth_dst_nxm", 0), n_bits=48),
                       parser.NXFlowSpecOutput(src=("in_port", 0), dst="", n_bits=32)]))
        else:
            raise ValueError(f"unsupported action {action!r}")
    instructions = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)] if actions else []
    if mod.get("goto_table") is not None:
        instructions.append(parser.OFPInstructionGotoTable(mod["goto_table"]))
    command = {"add": ofp.OFPFC_ADD, "delete": ofp.OFPFC_DELETE,
               "delete_strict": ofp.OFPFC_DELETE_STRICT}[mod["command"]]
    return parser.OFPFlowMod(
        dp, cookie=mod["cookie"], cookie_mask=mod["cookie_mask"], table_id=mod["table_id"],
        command=command, idle_timeout=mod["idle_timeout"], hard_timeout=mod["hard_timeout"],
        priority=mod["priority"], out_port=mod["out_port"], out_group=mod["out_group"],
        flags=mod["flags"], match=parser.OFPMatch(**mod["match"]), instructions=instructions)


def _actions_of(instructions: list[Any]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    goto: list[tuple[Any, ...]] = []
    for inst in instructions:
        if type(inst).__name__ == "OFPInstructionGotoTable":
            goto.append(("goto_table", inst.table_id))
        for action in getattr(inst, "actions", []) or []:
            name = type(action).__name__
            if name == "OFPActionOutput":
                out.append(("output", action.port))
            elif name == "OFPActionPushVlan":
                out.append(("push_vlan", action.ethertype))
            elif name == "OFPActionPopVlan":
                out.append(("pop_vlan",))
            elif name == "OFPActionSetField":
                out.append(("set_field", action.key, action.value))
            elif name == "NXActionLearn":
                out.append(("learn", action.table_id, action.idle_timeout, action.priority, action.cookie))
            else:
                out.append((name,))
    return out + goto


def _stat_to_entry(stat: Any) -> tuple[Entry, int, int, float]:
    entry = of13.stats_to_entry({
        "table_id": stat.table_id, "priority": stat.priority, "cookie": stat.cookie,
        "match": list(stat.match.items()), "actions": _actions_of(stat.instructions),
        "idle_timeout": stat.idle_timeout, "hard_timeout": stat.hard_timeout, "flags": stat.flags})
    duration = stat.duration_sec + stat.duration_nsec / 1e9
    return entry, stat.packet_count, stat.byte_count, round(duration, 3)


class TapService:
    """The RPC handler: every method of docs/rpc-protocol.md, against connected switches."""

    METHODS = {"hello", "install_mirror", "remove_mirror", "list_mirrors", "list_switches",
               "flow_stats", "port_stats", "set_static"}

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fabric = settings.fabric
        self.static = settings.static if settings.static is not None else settings.fabric.static
        self.switches: dict[int, SwitchState] = {}
        self.taps: dict[str, Tap] = {}
        self.lock = threading.RLock()
        self.publish: Callable[[str, dict[str, Any]], None] = lambda event, params: None
        # (dpid, cookie) whose FlowRemoved we caused ourselves while replacing entries
        # (dpid, cookie) → until when a FlowRemoved(delete) is our own replacement's doing;
        # OVS may send FlowRemoved after the barrier reply, so a window, not a flag.
        self._quiet: dict[tuple[int, int], float] = {}
        self._collect: dict[tuple[int, int], list[Any]] = {}
        self.remembered: dict[int, str] = self._load_remembered()

    # ------------------------------------------------------ remembered tap ids
    def _load_remembered(self) -> dict[int, str]:
        path = self.settings.state_file
        if path is None or not path.exists():
            return {}
        try:
            raw = json.loads(path.read_text())
            return {int(cookie, 16): str(tap_id) for cookie, tap_id in raw.get("taps", {}).items()}
        except (OSError, ValueError, AttributeError) as exc:
            LOG.warning("state file %s unreadable (%s): tap ids of earlier mirrors unknown", path, exc)
            return {}

    def _remember(self, cookie: int, tap_id: str | None) -> None:
        if tap_id is None:
            self.remembered.pop(cookie, None)
        else:
            self.remembered[cookie] = tap_id
        path = self.settings.state_file
        if path is None:
            return
        try:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({"taps": {f"{c:#x}": t for c, t in sorted(self.remembered.items())}}))
            os.replace(tmp, path)
        except OSError as exc:
            LOG.warning("cannot write state file %s: %s", path, exc)

    def methods(self) -> set[str]:
        return set(self.METHODS)

    def call(self, method: str, params: dict[str, Any]) -> Any:
        if method not in self.METHODS:
            raise RpcError(-32601, f"unknown method {method!r}")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RpcError(E_INVALID, "params: must be an object")
        try:
            return getattr(self, f"rpc_{method}")(params)
        except SpecError as exc:
            raise RpcError(E_INVALID, str(exc)) from None
        except FabricError as exc:
            raise RpcError(E_INVALID, str(exc)) from None
        except SwitchTimeout as exc:
            raise RpcError(E_TIMEOUT, str(exc)) from None

    # ------------------------------------------------------------- helpers
    def _switch(self, dpid: int) -> SwitchState:
        sw = self.switches.get(dpid)
        if sw is None:
            raise RpcError(E_UNKNOWN_SWITCH, f"params.dpid: switch {dpid} is not connected")
        return sw

    def _dpid_param(self, params: dict[str, Any], required: bool = True) -> int | None:
        if "dpid" not in params or params["dpid"] is None:
            if required:
                raise SpecError("params.dpid", "is required")
            return None
        return parse_dpid(params["dpid"])

    def _delete(self, sw: SwitchState, cookie: int, mask: int = EXACT_MASK) -> None:
        sw.link.send_confirmed([_to_parser_flowmod(sw.link.dp, of13.delete_by_cookie(cookie, mask))])

    def _delete_quietly(self, sw: SwitchState, cookie: int) -> None:
        """Delete entries being replaced: their FlowRemoved is not a ``mirror_removed``."""
        self._quiet[(sw.link.dp.id, cookie)] = time.monotonic() + QUIET_WINDOW
        self._delete(sw, cookie)

    def _add(self, sw: SwitchState, entries: list[Entry]) -> None:
        if entries:
            sw.link.send_confirmed([_to_parser_flowmod(sw.link.dp, of13.flow_mod(e)) for e in entries])

    def _flow_table(self, sw: SwitchState, cookie: int = 0, mask: int = 0) -> list[tuple[Entry, int, int, float]]:
        dp = sw.link.dp
        req = dp.ofproto_parser.OFPFlowStatsRequest(dp, 0, dp.ofproto.OFPTT_ALL, dp.ofproto.OFPP_ANY,
                                                    dp.ofproto.OFPG_ANY, cookie, mask)
        return [_stat_to_entry(stat) for stat in sw.link.multipart(req)]

    # ------------------------------------------------------------ switches
    def switch_up(self, dp: Any, link: SwitchLink) -> None:
        """Install the role's baseline and the static entries (delete-then-add: a reconnect
        re-asserts them), then announce the switch."""
        role = self.fabric.role(dp.id)
        sw = SwitchState(link,
                         role.name if role else f"dpid{dp.id}", role.role if role else None, time.time())
        try:
            ports = sw.link.multipart(dp.ofproto_parser.OFPPortDescStatsRequest(dp, 0))
            sw.ports = {p.port_no: self._port_json(p) for p in ports if p.port_no < of13.OFPP_IN_PORT}
            with self.lock:
                self._delete_quietly(sw, BASELINE_COOKIE)
                self._delete_quietly(sw, STATIC_COOKIE)
                self._add(sw, intended_entries(self.fabric, dp.id, "1.3", self.static or StaticConfig()))
                self.switches[dp.id] = sw
        except (RpcError, SwitchTimeout) as exc:
            LOG.error("switch %s: could not install its baseline: %s", dp.id, exc)
            return
        if role is not None and no_flood_ports(role):
            # OpenFlow 1.3 has no OFPPC_NO_FLOOD; the baseline floods explicitly instead.
            LOG.debug("switch %s: no-flood ports %s kept out of flooding by entries", dp.id, no_flood_ports(role))
        LOG.info("switch %s (%s) up, role %s", dp.id, sw.name, sw.role)
        self.publish("switch_up", {"dpid": dp.id, "name": sw.name, "role": sw.role})

    def switch_down(self, dp: Any) -> None:
        with self.lock:
            sw = self.switches.get(dp.id)
            if sw is None or sw.link.dp is not dp:
                return
            del self.switches[dp.id]
        LOG.info("switch %s down", dp.id)
        self.publish("switch_down", {"dpid": dp.id})

    @staticmethod
    def _port_json(port: Any) -> dict[str, Any]:
        name = port.name.decode(errors="replace") if isinstance(port.name, bytes) else str(port.name)
        down = bool(port.config & 1) or bool(port.state & 1)  # OFPPC_PORT_DOWN / OFPPS_LINK_DOWN
        return {"port_no": port.port_no, "name": name, "hw_addr": port.hw_addr, "up": not down}

    def port_status(self, dp: Any, reason: int, port: Any) -> None:
        sw = self.switches.get(dp.id)
        if sw is None or port.port_no >= of13.OFPP_IN_PORT:
            return
        if reason == dp.ofproto.OFPPR_DELETE:
            sw.ports.pop(port.port_no, None)
        else:
            sw.ports[port.port_no] = self._port_json(port)

    def flow_removed(self, dp: Any, msg: Any) -> None:
        """FlowRemoved: mirror_removed events; static entries with a timeout are re-added."""
        key = (dp.id, msg.cookie)
        LOG.debug("switch %s: flow removed cookie=%#x reason=%s packets=%s", dp.id, msg.cookie, msg.reason,
                  msg.packet_count)
        # Look the tap up before handing the message to a waiting remove_mirror, which
        # forgets the tap as soon as it has its counters.
        tap = next((t for t in list(self.taps.values()) if t.cookie == msg.cookie and t.spec.dpid == dp.id), None)
        if key in self._collect:
            self._collect[key].append(msg)
        reason = of13.REMOVED_REASONS.get(msg.reason, "unknown")
        if reason == "delete" and self._quiet.get(key, 0.0) > time.monotonic():
            return
        if msg.cookie == STATIC_COOKIE and reason in ("idle_timeout", "hard_timeout"):
            hub.spawn(self._reassert_static, dp.id, msg.priority, of13.oxm_to_match(list(msg.match.items())))
            return
        if not is_mirror_cookie(msg.cookie):
            return
        match = of13.oxm_to_match(list(msg.match.items()))
        params: dict[str, Any] = {
            "tap_id": tap.spec.tap_id if tap else self.remembered.get(msg.cookie), "dpid": dp.id,
            "cookie": msg.cookie,
            "reason": reason, "packets": msg.packet_count, "bytes": msg.byte_count,
            "duration_s": round(msg.duration_sec + msg.duration_nsec / 1e9, 3)}
        if tap is not None:
            direction = next((d for d, m in tap.matches.items() if m == match), "forward")
            if tap.spec.bidirectional:
                params["direction"] = direction
            tap.live.discard(direction)
            if not tap.live and self.taps.get(tap.spec.tap_id) is tap:
                del self.taps[tap.spec.tap_id]
                self._remember(tap.cookie, None)
        self.publish("mirror_removed", params)

    def _reassert_static(self, dpid: int, priority: int, match: dict[str, Any]) -> None:
        sw = self.switches.get(dpid)
        if sw is None:
            return
        wanted = [e for e in static_entries(self.static, dpid) if e.priority == priority and dict(e.match) == match]
        try:
            self._add(sw, wanted)
        except (RpcError, SwitchTimeout) as exc:
            LOG.warning("switch %s: could not re-add a static entry: %s", dpid, exc)

    # ------------------------------------------------------------- methods
    def rpc_hello(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"protocol": 1, "component": "os-ken", "version": demon.__version__, "openflow": "1.3"}

    def rpc_install_mirror(self, params: dict[str, Any]) -> dict[str, Any]:
        spec = parse_mirror_params(params, "1.3")
        with self.lock:
            old = self.taps.get(spec.tap_id)
            if old is not None and old.spec == spec and old.live:
                return dict(old.result)
            sw = self._switch(spec.dpid)
            cookie = allocate_cookie(spec.tap_id, {t.cookie: t.spec.tap_id for t in self.taps.values()})
            if old is not None and (old.spec.dpid, old.cookie) != (spec.dpid, cookie):
                moved_from = self.switches.get(old.spec.dpid)
                if moved_from is not None:
                    self._delete_quietly(moved_from, old.cookie)
            self.taps.pop(spec.tap_id, None)
            entries = mirror_entries(spec, cookie, self.static, uses_l2_table(self.fabric, spec.dpid, "1.3"))
            # One batch, one barrier: clear the tap's previous entries (also stale ones left
            # from before a restart), then add; the switch applies them in order.
            self._quiet[(spec.dpid, cookie)] = time.monotonic() + QUIET_WINDOW
            dp = sw.link.dp
            sw.link.send_confirmed([_to_parser_flowmod(dp, of13.delete_by_cookie(cookie))]
                                   + [_to_parser_flowmod(dp, of13.flow_mod(e)) for _, e in entries])
            result = {"tap_id": spec.tap_id, "dpid": spec.dpid, "cookie": cookie, "entries": len(entries),
                      "replaced": old is not None, "installed_at": round(time.time(), 3)}
            self.taps[spec.tap_id] = Tap(spec, cookie, result, {d: dict(e.match) for d, e in entries},
                                         {d for d, _ in entries})
            self._remember(cookie, spec.tap_id)
            return dict(result)

    def rpc_remove_mirror(self, params: dict[str, Any]) -> dict[str, Any]:
        tap_id = parse_remove_params(params)
        with self.lock:
            tap = self.taps.get(tap_id)
            if tap is None:
                return self._remove_orphan(tap_id)
            sw = self.switches.get(tap.spec.dpid)
            removed = self._delete_collecting(sw, tap.cookie, len(tap.live)) if sw is not None else []
            self.taps.pop(tap_id, None)
            self._remember(tap.cookie, None)
            return {"tap_id": tap_id, "removed": bool(removed) or sw is None,
                    "packets": sum(m.packet_count for m in removed),
                    "bytes": sum(m.byte_count for m in removed)}

    def _delete_collecting(self, sw: SwitchState, cookie: int, expected: int) -> list[Any]:
        """Delete a cookie's entries and return their FlowRemoved messages (final counters)."""
        key = (sw.link.dp.id, cookie)
        removed: list[Any] = []
        self._quiet.pop(key, None)
        self._collect[key] = removed
        try:
            self._delete(sw, cookie)
            # OVS may send the FlowRemoved messages after the barrier reply.
            deadline = time.monotonic() + min(1.0, self.settings.barrier_timeout)
            while len(removed) < expected and time.monotonic() < deadline:
                time.sleep(0.002)
        finally:
            self._collect.pop(key, None)
        return removed

    def _remove_orphan(self, tap_id: str) -> dict[str, Any]:
        """A tap this process did not install (it ran before a restart): its entries are
        found by the cookie derived from its id."""
        cookies = {cookie_for_tap(tap_id)} | {c for c, t in self.remembered.items() if t == tap_id}
        removed: list[Any] = []
        for sw in list(self.switches.values()):
            for cookie in cookies:
                rows = self._flow_table(sw, cookie, EXACT_MASK)
                if rows:
                    self.remembered.setdefault(cookie, tap_id)  # names the mirror_removed events
                    removed += self._delete_collecting(sw, cookie, len(rows)) or [None]
        for cookie in cookies:
            self._remember(cookie, None)
        got = [m for m in removed if m is not None]
        return {"tap_id": tap_id, "removed": bool(removed), "packets": sum(m.packet_count for m in got),
                "bytes": sum(m.byte_count for m in got)}

    def rpc_list_mirrors(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        dpid = self._dpid_param(params, required=False)
        targets = [self._switch(dpid)] if dpid is not None else list(self.switches.values())
        known = {(t.spec.dpid, t.cookie): t for t in list(self.taps.values())}
        out: list[dict[str, Any]] = []
        for sw in targets:
            by_cookie: dict[int, list[tuple[Entry, int, int, float]]] = {}
            for row in self._flow_table(sw, MIRROR_COOKIE, MIRROR_COOKIE_MASK):
                by_cookie.setdefault(row[0].cookie, []).append(row)
            for cookie, rows in sorted(by_cookie.items()):
                tap = known.get((sw.link.dp.id, cookie))
                record = mirror_record(sw.link.dp.id, cookie, rows, tap.spec if tap else None,
                                       tap.result["installed_at"] if tap else None)
                if record["tap_id"] is None:
                    record["tap_id"] = self.remembered.get(cookie)
                out.append(record)
        return out

    def rpc_list_switches(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for dpid, sw in sorted(self.switches.items()):
            role = self.fabric.role(dpid)
            out.append({"dpid": dpid, "name": sw.name, "role": sw.role,
                        "connected_at": round(sw.connected_at, 3),
                        "ports": [sw.ports[p] for p in sorted(sw.ports)],
                        "host_ports": list(role.host_ports) if role else [],
                        "uplinks": list(role.uplinks) if role else [],
                        "capture_port": role.capture_port if role else None})
        return out

    def rpc_flow_stats(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        sw = self._switch(self._dpid_param(params))  # type: ignore[arg-type]
        return [of13.entry_to_json(e, p, b, d) for e, p, b, d in self._flow_table(sw)]

    def rpc_port_stats(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        sw = self._switch(self._dpid_param(params))  # type: ignore[arg-type]
        dp = sw.link.dp
        stats = sw.link.multipart(dp.ofproto_parser.OFPPortStatsRequest(dp, 0, dp.ofproto.OFPP_ANY))
        return port_stats_json(stats, below=of13.OFPP_IN_PORT)

    def rpc_set_static(self, params: dict[str, Any]) -> dict[str, Any]:
        static = parse_set_static_params(params)
        with self.lock:
            self.static = static
            switches = entries = 0
            for dpid, sw in sorted(self.switches.items()):
                self._delete_quietly(sw, STATIC_COOKIE)
                wanted = static_entries(static, dpid)
                self._add(sw, wanted)
                if wanted:
                    switches += 1
                    entries += len(wanted)
            return {"switches": switches, "entries": entries}


class TapApp(app_manager.OSKenApp):
    """os-ken glue: OpenFlow events in, :class:`TapService` does the work."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if _SERVICE is None:
            raise RuntimeError("demon.controller.osken_app.configure() was not called (use demon-controller)")
        self.service = _SERVICE
        self._pending: dict[int, SwitchLink] = {}

    def _link(self, dp: Any) -> SwitchLink | None:
        link = self._pending.get(id(dp))
        if link is not None:
            return link
        sw = self.service.switches.get(dp.id)
        return sw.link if sw is not None and sw.link.dp is dp else None

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev: Any) -> None:
        dp = ev.datapath
        if ev.state == MAIN_DISPATCHER and dp.id is not None:
            # Setup waits for replies, which arrive on this very thread: run it elsewhere.
            link = SwitchLink(dp, self.service.settings.barrier_timeout)
            self._pending[id(dp)] = link
            hub.spawn(self._setup, dp, link)
        elif ev.state == DEAD_DISPATCHER and dp.id is not None:
            self._pending.pop(id(dp), None)
            self.service.switch_down(dp)

    def _setup(self, dp: Any, link: SwitchLink) -> None:
        try:
            self.service.switch_up(dp, link)
        finally:
            self._pending.pop(id(dp), None)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev: Any) -> None:
        link = self._link(ev.msg.datapath)
        if link:
            link.on_reply(ev.msg)

    @set_ev_cls([ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPPortStatsReply,
                 ofp_event.EventOFPPortDescStatsReply], MAIN_DISPATCHER)
    def _multipart(self, ev: Any) -> None:
        link = self._link(ev.msg.datapath)
        if link:
            link.on_reply(ev.msg, last=not ev.msg.flags & ev.msg.datapath.ofproto.OFPMPF_REPLY_MORE)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev: Any) -> None:
        LOG.warning("switch %s: OpenFlow error type=%s code=%s", ev.msg.datapath.id, ev.msg.type, ev.msg.code)
        link = self._link(ev.msg.datapath)
        if link:
            link.on_error(ev.msg)

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def _flow_removed(self, ev: Any) -> None:
        self.service.flow_removed(ev.msg.datapath, ev.msg)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev: Any) -> None:
        self.service.port_status(ev.msg.datapath, ev.msg.reason, ev.msg.desc)
