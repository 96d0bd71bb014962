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
from demon.controller import merge, of13
from demon.controller.fabric import (Entry, Fabric, FabricError, StaticConfig, forward_actions, intended_entries,
                                     mirror_record, no_flood_ports, parse_set_static_params, static_entries,
                                     uses_l2_table)
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
        # Mirrors are compiled per switch with overlapping taps merged (demon.controller.merge):
        # the rules of each switch, and the table-0 entries compiled from them now on it.
        self.rules: dict[int, dict[merge.RuleKey, merge.MirrorRule]] = {}
        self.installed: dict[int, dict[merge.EntryKey, merge.CompiledEntry]] = {}
        self.lock = threading.RLock()
        self.publish: Callable[[str, dict[str, Any]], None] = lambda event, params: None
        # (dpid, cookie) → until when a FlowRemoved(delete) is our own replacement's doing;
        # OVS may send FlowRemoved after the barrier reply, so a window, not a flag.
        self._quiet: dict[tuple[int, int], float] = {}
        self._collect: dict[tuple[int, int], list[Any]] = {}
        # Mirror entries we deleted ourselves (DELETE_STRICT): their FlowRemoved is not news.
        self._own_deletes: set[tuple[int, merge.EntryKey]] = set()
        self._collect_entries: dict[tuple[int, merge.EntryKey], list[Any]] = {}
        # Packet counts of merged entries at the last idle check (see merge.kept_alive).
        self._seen: dict[int, dict[merge.EntryKey, int]] = {}
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
        except (FabricError, merge.MergeError) as exc:
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
        """FlowRemoved (on os-ken's event thread): counters to a waiting remove, mirror ends to
        a worker thread (it takes the lock and talks to the switch, whose replies arrive on
        this very thread); static entries with a timeout are re-added."""
        LOG.debug("switch %s: flow removed cookie=%#x reason=%s packets=%s", dp.id, msg.cookie, msg.reason,
                  msg.packet_count)
        reason = of13.REMOVED_REASONS.get(msg.reason, "unknown")
        if msg.cookie == STATIC_COOKIE and reason in ("idle_timeout", "hard_timeout"):
            hub.spawn(self._reassert_static, dp.id, msg.priority, of13.oxm_to_match(list(msg.match.items())))
            return
        if not is_mirror_cookie(msg.cookie):
            return
        key = merge.entry_key(msg.priority, of13.oxm_to_match(list(msg.match.items())))
        sink = self._collect_entries.get((dp.id, key))
        if sink is not None:
            sink.append(msg)
        if (dp.id, msg.cookie) in self._collect:
            self._collect[(dp.id, msg.cookie)].append(msg)
        if reason == "delete" and self._quiet.get((dp.id, msg.cookie), 0.0) > time.monotonic():
            return
        # named now: a remove of a tap from before a restart forgets the name once it has the counters
        hub.spawn(self._mirror_removed, dp.id, key, msg, reason, self.remembered.get(msg.cookie), time.time())

    def _mirror_removed(self, dpid: int, key: merge.EntryKey, msg: Any, reason: str, name: str | None,
                        now: float) -> None:
        with self.lock:
            if (dpid, key) in self._own_deletes:
                self._own_deletes.discard((dpid, key))
                return
            counters = {"packets": msg.packet_count, "bytes": msg.byte_count,
                        "duration_s": round(msg.duration_sec + msg.duration_nsec / 1e9, 3)}
            compiled = self.installed.get(dpid, {}).pop(key, None)
            if compiled is None:  # not ours (an earlier process's)
                self.publish("mirror_removed", {"tap_id": name, "dpid": dpid, "cookie": msg.cookie,
                                                "reason": reason, **counters})
                return
            ended = merge.ended_rules(compiled, reason, self.rules.get(dpid, {}), now)
            if reason == "idle_timeout":
                ended -= self._kept_alive(dpid, compiled)
            self._end_rules(dpid, ended, reason, counters, msg.cookie)
            try:
                self._sync(dpid)  # what is left of the taps gets its entries back
            except (RpcError, SwitchTimeout) as exc:
                LOG.warning("switch %s: could not recompile mirrors after a removal: %s", dpid, exc)

    def _end_rules(self, dpid: int, ended: set[merge.RuleKey], reason: str, counters: dict[str, Any],
                   cookie: int) -> None:
        """Forget ended rules (and taps with none left) and announce each."""
        events, gone = merge.end_rules(self.rules.get(dpid, {}), self.taps, dpid, ended, reason,
                                       counters, cookie)
        for tap in gone:
            self._remember(tap.cookie, None)
        for event in events:
            self.publish("mirror_removed", event)

    def _kept_alive(self, dpid: int, removed: merge.CompiledEntry) -> set[merge.RuleKey]:
        """Owners of an idled-out entry whose packets now hit a merged sub-region instead."""
        installed = self.installed.get(dpid, {})
        shared = [c for c in installed.values() if removed.owners & c.members]
        sw = self.switches.get(dpid)
        if not shared or sw is None:
            return set()
        try:
            rows = self._flow_table(sw, MIRROR_COOKIE, MIRROR_COOKIE_MASK)
        except (RpcError, SwitchTimeout) as exc:
            LOG.warning("switch %s: no counters to check idle taps against (%s): they end", dpid, exc)
            return set()
        packets = {merge.entry_key(e.priority, e.match): pk for e, pk, _, _ in rows if e.table_id == 0}
        seen = self._seen.setdefault(dpid, {})
        alive = merge.kept_alive(removed, installed, packets, seen)
        for c in shared:
            seen[c.key] = packets.get(c.key, 0)
        if alive:
            LOG.info("switch %s: %s idle on its own entry but active in a merged one: kept",
                     dpid, ", ".join(f"{t}/{d}" for t, d in sorted(alive)))
        return alive

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

    # ------------------------------------------------------------- mirrors
    def _compile(self, dpid: int, now: float | None = None) -> list[merge.CompiledEntry]:
        """The table-0 mirror entries of a switch (raises MergeError for too many overlaps)."""
        return of13.compile_mirrors(self.rules.get(dpid, {}).values(), time.time() if now is None else now,
                                    lambda match: forward_actions(self.static, dpid, match),
                                    uses_l2_table(self.fabric, dpid, "1.3"))

    def _apply(self, sw: SwitchState, to_add: list[merge.CompiledEntry], to_delete: list[merge.CompiledEntry],
               first: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
        """One batch, one barrier: ``first`` FlowMods, DELETE_STRICT stale entries, ADD the rest."""
        dpid = sw.link.dp.id
        mods = list(first)
        for c in to_delete:
            self._own_deletes.add((dpid, c.key))
            mods.append(of13.flow_mod(c.entry, "delete_strict"))
        for c in to_add:
            self._own_deletes.discard((dpid, c.key))
            self._seen.get(dpid, {}).pop(c.key, None)  # counters restart with the entry
            mods.append(of13.flow_mod(c.entry))
        if mods:
            sw.link.send_confirmed([_to_parser_flowmod(sw.link.dp, m) for m in mods])

    def _sync(self, dpid: int, collect: bool = False, first: list[dict[str, Any]] = ()  # type: ignore[assignment]
              ) -> list[Any]:
        """Bring a switch's mirror entries to what ``self.rules`` says; returns the FlowRemoved
        messages of deleted entries when ``collect``."""
        wanted = self._compile(dpid)
        installed = self.installed.get(dpid, {})
        to_add, to_delete = merge.diff(installed, wanted)
        sw = self.switches.get(dpid)
        collected: list[Any] = []
        if sw is not None:
            keys = [(dpid, c.key) for c in to_delete]
            if collect:
                for key in keys:
                    self._collect_entries[key] = collected
            try:
                self._apply(sw, to_add, to_delete, first)
                if collect:
                    # OVS may send the FlowRemoved messages after the barrier reply.
                    deadline = time.monotonic() + min(1.0, self.settings.barrier_timeout)
                    while len(collected) < len(keys) and time.monotonic() < deadline:
                        time.sleep(0.002)
            except (RpcError, SwitchTimeout):
                # Part of the batch may have been applied: assume all of it was, so that the
                # next sync deletes or rewrites whatever is not wanted.
                gone = {c.key for c in to_delete}
                self.installed[dpid] = {**{k: c for k, c in installed.items() if k not in gone},
                                        **{c.key: c for c in to_add}}
                raise
            finally:
                for key in keys:
                    self._collect_entries.pop(key, None)
        self.installed[dpid] = {c.key: c for c in wanted}
        return collected

    def rpc_install_mirror(self, params: dict[str, Any]) -> dict[str, Any]:
        spec = parse_mirror_params(params, "1.3")
        with self.lock:
            old = self.taps.get(spec.tap_id)
            if old is not None and old.spec == spec and old.live:
                return dict(old.result)
            self._switch(spec.dpid)  # unknown switch: an error before anything changes
            cookie = allocate_cookie(spec.tap_id, {t.cookie: t.spec.tap_id for t in self.taps.values()})
            now = time.time()
            new_rules = merge.rules_for(spec, cookie, now)
            saved = {d: dict(r) for d, r in self.rules.items()}
            if old is not None:
                for direction in ("forward", "reverse"):
                    self.rules.get(old.spec.dpid, {}).pop((spec.tap_id, direction), None)
            for r in new_rules:
                self.rules.setdefault(spec.dpid, {})[r.key] = r
            try:
                self._compile(spec.dpid, now)  # refuse before touching the switch
            except merge.MergeError:
                self.rules = saved
                raise
            first: list[dict[str, Any]] = []
            if old is None:
                # Entries of this cookie left from before a restart: cleared in the same batch.
                self._quiet[(spec.dpid, cookie)] = time.monotonic() + QUIET_WINDOW
                first.append(of13.delete_by_cookie(cookie))
            try:
                if old is not None and old.spec.dpid != spec.dpid and old.spec.dpid in self.switches:
                    self._sync(old.spec.dpid)
                self._sync(spec.dpid, first=first)
            except (RpcError, SwitchTimeout):
                self.rules = saved
                try:
                    self._sync(spec.dpid)  # leave the switch as it was
                except (RpcError, SwitchTimeout) as exc:
                    LOG.warning("switch %s: could not roll back a failed install: %s", spec.dpid, exc)
                raise
            self.taps.pop(spec.tap_id, None)
            entries = sum(1 for c in self.installed[spec.dpid].values()
                          if any(k[0] == spec.tap_id for k in c.members))
            result = {"tap_id": spec.tap_id, "dpid": spec.dpid, "cookie": cookie, "entries": entries,
                      "replaced": old is not None, "installed_at": round(now, 3)}
            self.taps[spec.tap_id] = Tap(spec, cookie, result, {r.direction for r in new_rules})
            self._remember(cookie, spec.tap_id)
            return dict(result)

    def rpc_remove_mirror(self, params: dict[str, Any]) -> dict[str, Any]:
        tap_id = parse_remove_params(params)
        with self.lock:
            tap = self.taps.get(tap_id)
            if tap is None:
                return self._remove_orphan(tap_id)
            dpid = tap.spec.dpid
            before = dict(self.installed.get(dpid, {}))
            for direction in ("forward", "reverse"):
                self.rules.get(dpid, {}).pop((tap_id, direction), None)
            collected = self._sync(dpid, collect=True)
            self.taps.pop(tap_id, None)
            self._remember(tap.cookie, None)
            for direction in sorted(tap.live):
                owned = [m for m in collected if self._owner_of(before, m) == (tap_id, direction)]
                event = {"tap_id": tap_id, "dpid": dpid, "cookie": tap.cookie, "reason": "delete",
                         "packets": sum(m.packet_count for m in owned), "bytes": sum(m.byte_count for m in owned),
                         "duration_s": max((round(m.duration_sec + m.duration_nsec / 1e9, 3) for m in owned),
                                           default=0.0)}
                if tap.spec.bidirectional:
                    event["direction"] = direction
                self.publish("mirror_removed", event)
            return {"tap_id": tap_id, "removed": True,
                    "packets": sum(m.packet_count for m in collected),
                    "bytes": sum(m.byte_count for m in collected)}

    @staticmethod
    def _owner_of(installed: dict[merge.EntryKey, merge.CompiledEntry], msg: Any) -> merge.RuleKey | None:
        compiled = installed.get(merge.entry_key(msg.priority, of13.oxm_to_match(list(msg.match.items()))))
        if compiled is None or not compiled.owners:
            return None
        return min(compiled.owners)

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
        """Known taps from their entries (counters summed over every entry they are a member
        of: a shared entry counts for each of its taps); other mirror entries (an earlier
        process's) grouped by cookie."""
        dpid = self._dpid_param(params, required=False)
        targets = [self._switch(dpid)] if dpid is not None else list(self.switches.values())
        out: list[dict[str, Any]] = []
        for sw in targets:
            dp_id = sw.link.dp.id
            rows = [r for r in self._flow_table(sw, MIRROR_COOKIE, MIRROR_COOKIE_MASK) if r[0].table_id == 0]
            with self.lock:
                compiled = dict(self.installed.get(dp_id, {}))
                taps = sorted((t for t in self.taps.values() if t.spec.dpid == dp_id), key=lambda t: t.spec.tap_id)
            claimed: set[int] = set()
            for tap in taps:
                record = merge.tap_record(tap.spec, tap.cookie, tap.result["installed_at"], rows, compiled, claimed)
                if record is not None:
                    out.append(record)
            strays: dict[int, list[tuple[Entry, int, int, float]]] = {}
            for i, row in enumerate(rows):
                if i not in claimed:
                    strays.setdefault(row[0].cookie, []).append(row)
            for cookie, group in sorted(strays.items()):
                record = mirror_record(dp_id, cookie, group, None, None)
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
                if self.rules.get(dpid):
                    self._sync(dpid)  # mirrors forward by the new port pairs
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
