"""The POX controller component (OpenFlow 1.0): fabric roles, static mode, mirrors over RPC.

Start it with POX (a git checkout; never ``pip install pox``)::

    pox.py openflow.of_01 --address=127.0.0.1 --port=6633 demon.controller.pox_tap \\
        --rpc=tcp:127.0.0.1:7733 --token-file=/run/pytapdemon/rpc.token --fabric=fabric.json

Threads: POX's co-operative loop owns the switch connections. Its event
handlers here never block: they complete waiters (barrier, stats, errors) and
queue switch-up/down and flow-removed work for one ``pox-tap-events`` thread.
RPC calls run on the RPC server's worker threads. Both take ``self.lock`` while
they change state, hand every message to POX's loop with ``core.callLater`` and
wait (with a timeout) for the barrier or stats reply. So the loop is never
blocked by an RPC call, and a not-yet-connected switch is an error reply
(``-32002``), never a crash.

Unlike the 2013 prototype this component ignores PacketIn (no reinstall
storm), installs each switch's pipeline once on ConnectionUp (re-asserted on
every reconnect), and keeps each static mirror on its own switch.

Standard library + POX only.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import demon
from demon.controller import merge, of10
from demon.controller.fabric import (Entry, Fabric, FabricError, StaticConfig, forward_actions,
                                     intended_entries, load_fabric, load_static, mirror_record,
                                     no_flood_ports, parse_set_static_params, static_entries)
from demon.controller.spec import (BASELINE_COOKIE, STATIC_COOKIE, MirrorSpec, SpecError,
                                   allocate_cookie, cookie_for_tap, is_mirror_cookie, parse_dpid,
                                   parse_mirror_params, parse_remove_params, port_stats_json)
from demon.rpc import protocol as p
from demon.rpc.protocol import RpcError
from demon.rpc.server import RpcServer
from demon.rpc.token import ensure_token

from pox.core import core  # type: ignore[import-not-found]
import pox.openflow.libopenflow_01 as of  # type: ignore[import-not-found]

log = logging.getLogger("demon.controller.pox")

METHODS = frozenset({"hello", "install_mirror", "remove_mirror", "list_mirrors", "list_switches",
                     "flow_stats", "port_stats", "set_static"})


# ----------------------------------------------------- POX objects <-> neutral

def ofp_match(match: dict[str, Any]) -> Any:
    fields = of10.to_of10_match(match)
    m = of.ofp_match()
    # POX otherwise un-wildcards fields the match's protocol makes irrelevant; Open vSwitch
    # then keeps them as exact zero-matches, and a DELETE_STRICT from any other tool
    # (ovs-ofctl, the network check) no longer finds the entry.
    m.adjust_wildcards = False
    for name, value in fields.items():
        setattr(m, name, value)
    return m


def neutral_match(m: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in ("in_port", "dl_vlan", "dl_type", "nw_proto", "tp_src", "tp_dst", "dl_src", "dl_dst"):
        fields[name] = getattr(m, name)
    for name in ("nw_src", "nw_dst"):
        addr, bits = getattr(m, "get_" + name)()
        if addr is not None and bits:
            fields[name] = f"{addr}/{bits}"
    return of10.from_of10_match(fields)


def ofp_actions(actions: tuple[str, ...]) -> list[Any]:
    out = []
    for action in of10.to_of10_actions(actions):
        if action[0] == "output":
            out.append(of.ofp_action_output(port=action[1]))
        elif action[0] == "set_vlan_vid":
            out.append(of.ofp_action_vlan_vid(vlan_vid=action[1]))
        elif action[0] == "strip_vlan":
            out.append(of.ofp_action_strip_vlan())
    return out


def neutral_actions(actions: list[Any]) -> tuple[str, ...]:
    tuples: list[tuple[Any, ...]] = []
    for a in actions:
        if isinstance(a, of.ofp_action_output):
            tuples.append(("output", a.port))
        elif isinstance(a, of.ofp_action_vlan_vid):
            tuples.append(("set_vlan_vid", a.vlan_vid))
        elif isinstance(a, of.ofp_action_strip_vlan):
            tuples.append(("strip_vlan",))
        else:
            tuples.append((type(a).__name__,))
    return of10.from_of10_actions(tuples)


def flow_mod(entry: Entry, command: int) -> Any:
    msg = of.ofp_flow_mod(command=command, match=ofp_match(dict(entry.match)), priority=entry.priority)
    if command != of.OFPFC_DELETE_STRICT:
        msg.cookie = entry.cookie
        msg.idle_timeout = entry.idle_timeout
        msg.hard_timeout = entry.hard_timeout
        msg.flags = of.OFPFF_SEND_FLOW_REM if entry.send_flow_rem else 0
        msg.actions = ofp_actions(entry.actions)
    return msg


def stats_row(stat: Any) -> tuple[Entry, int, int, float]:
    entry = Entry(stat.priority, neutral_match(stat.match), neutral_actions(stat.actions), stat.cookie,
                  stat.idle_timeout, stat.hard_timeout, table_id=stat.table_id)
    return entry, stat.packet_count, stat.byte_count, round(stat.duration_sec + stat.duration_nsec / 1e9, 3)


def entry_to_json(entry: Entry, packets: int, nbytes: int, duration_s: float) -> dict[str, Any]:
    return {"table_id": entry.table_id, "priority": entry.priority, "cookie": entry.cookie,
            "match": dict(entry.match), "actions": list(entry.actions), "packets": packets,
            "bytes": nbytes, "duration_s": duration_s, "idle_timeout": entry.idle_timeout,
            "hard_timeout": entry.hard_timeout}


# ------------------------------------------------------------------ state

class _Waiter:
    """A barrier or stats reply (and any errors for the same messages) awaited by a thread."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.done = threading.Event()
        self.stats: list[Any] = []
        self.errors: list[str] = []
        self.lost = False


@dataclass
class _Switch:
    dpid: int
    connection: Any
    name: str
    role: str | None
    connected_at: float
    ports: dict[int, dict[str, Any]] = field(default_factory=dict)
    ready: bool = False


@dataclass
class _Tap:
    spec: MirrorSpec
    cookie: int
    result: dict[str, Any]
    live: set[str]


class PoxTapService:
    """The RPC handler and the OpenFlow event listener."""

    def __init__(self, fabric: Fabric, static: StaticConfig | None, barrier_timeout: float = 5.0,
                 call_later: Callable[..., None] | None = None, state_file: Path | None = None) -> None:
        self.fabric = fabric
        self.static = static if static is not None else fabric.static
        self.barrier_timeout = barrier_timeout
        self.call_later = call_later or core.callLater
        self.lock = threading.RLock()
        self.switches: dict[int, _Switch] = {}
        self.taps: dict[str, _Tap] = {}
        self.rules: dict[int, dict[of10.RuleKey, of10.MirrorRule]] = {}
        self.installed: dict[int, dict[of10.EntryKey, of10.CompiledEntry]] = {}
        # FlowRemoved of entries we deleted ourselves: not news (dpid, key).
        self._own_deletes: set[tuple[int, of10.EntryKey]] = set()
        self._collect: dict[tuple[int, of10.EntryKey], list[Any]] = {}
        self._collected = threading.Event()
        # Packet counts of merged entries at the last idle check (see of10.kept_alive).
        self._seen: dict[int, dict[of10.EntryKey, int]] = {}
        self._waiting: dict[int, _Waiter] = {}
        self._plock = threading.Lock()
        self._events: "queue.Queue[tuple[Callable[..., None], tuple[Any, ...]]]" = queue.Queue()
        self.publish: Callable[[str, dict[str, Any]], Any] = lambda event, params: None
        self.state_file = state_file
        self._load_state()
        self._worker = threading.Thread(target=self._event_loop, name="pox-tap-events", daemon=True)
        self._worker.start()

    # ------------------------------------------------------- remembered taps

    def _load_state(self) -> None:
        """Taps installed before a restart (their entries outlive the process): the switch's
        table decides on connection which of them still exist."""
        if self.state_file is None or not self.state_file.exists():
            return
        try:
            raw = json.loads(self.state_file.read_text())
            now = time.time()
            for item in raw.get("taps", []):
                spec = parse_mirror_params(item["params"], "1.0")
                installed_at = float(item["installed_at"])
                if installed_at + spec.hard_timeout <= now:
                    continue  # its hard timeout has removed it already
                rules = [r for r in of10.rules_for(spec, int(item["cookie"]), installed_at)
                         if r.direction in item["live"]]
                if not rules:
                    continue
                for r in rules:
                    self.rules.setdefault(spec.dpid, {})[r.key] = r
                self.taps[spec.tap_id] = _Tap(spec, int(item["cookie"]), dict(item["result"]),
                                              {r.direction for r in rules})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("state file %s unreadable (%s): earlier taps unknown until re-installed",
                        self.state_file, exc)
        else:
            log.info("state file %s: %d taps remembered", self.state_file, len(self.taps))

    def _save_state(self) -> None:
        if self.state_file is None:
            return
        taps = [{"params": t.spec.to_params(), "cookie": t.cookie, "installed_at": t.result["installed_at"],
                 "result": t.result, "live": sorted(t.live)} for _, t in sorted(self.taps.items())]
        try:
            tmp = self.state_file.with_name(self.state_file.name + ".tmp")
            tmp.write_text(json.dumps({"taps": taps}))
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.warning("cannot write state file %s: %s", self.state_file, exc)

    def _end_rules(self, dpid: int, ended: set[of10.RuleKey], reason: str, counters: dict[str, Any],
                   cookie: int) -> None:
        """Forget ended rules (and taps with none left) and announce each."""
        events, _gone = merge.end_rules(self.rules.get(dpid, {}), self.taps, dpid, ended, reason,
                                        counters, cookie)
        for event in events:
            self.publish("mirror_removed", event)
        if ended:
            self._save_state()

    # ---------------------------------------------------------- RPC entry

    def methods(self) -> set[str]:
        return set(METHODS)

    def call(self, method: str, params: dict[str, Any]) -> Any:
        if method not in METHODS:
            raise RpcError(p.METHOD_NOT_FOUND, f"unknown method {method!r}")
        try:
            return getattr(self, f"rpc_{method}")(params)
        except (SpecError, FabricError, of10.Of10Error) as exc:
            raise RpcError(p.INVALID_PARAMS, str(exc)) from None

    # ------------------------------------------------- talking to switches

    def _switch(self, dpid: int) -> _Switch:
        sw = self.switches.get(dpid)
        if sw is None or not sw.ready:
            raise RpcError(p.UNKNOWN_SWITCH, f"params.dpid: switch {dpid} is not connected")
        return sw

    def _register(self, connection: Any, xids: list[int]) -> _Waiter:
        waiter = _Waiter(connection)
        with self._plock:
            for xid in xids:
                self._waiting[xid] = waiter
        return waiter

    def _wait(self, waiter: _Waiter, xids: list[int], what: str, dpid: int) -> None:
        ok = waiter.done.wait(self.barrier_timeout)
        with self._plock:
            for xid in xids:
                self._waiting.pop(xid, None)
        if waiter.lost:
            raise RpcError(p.UNKNOWN_SWITCH, f"switch {dpid} disconnected during {what}")
        if waiter.errors:
            raise RpcError(p.SWITCH_REJECTED, f"switch {dpid} rejected {what}: {'; '.join(waiter.errors)}")
        if not ok:
            raise RpcError(p.SWITCH_TIMEOUT, f"switch {dpid}: no reply to {what} within {self.barrier_timeout:g} s")

    def _send_confirmed(self, sw: _Switch, msgs: list[Any], what: str = "flow-mods") -> None:
        """Send ``msgs`` and a barrier; return once the switch has applied them."""
        if not msgs:
            return
        barrier = of.ofp_barrier_request()
        for msg in msgs + [barrier]:
            msg.xid = of.generate_xid()
        xids = [m.xid for m in msgs + [barrier]]
        waiter = self._register(sw.connection, xids)
        connection = sw.connection

        def send_all() -> None:
            for msg in msgs:
                connection.send(msg)
            connection.send(barrier)
        self.call_later(send_all)
        self._wait(waiter, xids, what, sw.dpid)

    def _stats(self, sw: _Switch, body: Any) -> list[Any]:
        request = of.ofp_stats_request(body=body)
        request.xid = of.generate_xid()
        waiter = self._register(sw.connection, [request.xid])
        self.call_later(sw.connection.send, request)
        self._wait(waiter, [request.xid], "a stats request", sw.dpid)
        return waiter.stats

    def _flow_table(self, sw: _Switch) -> list[tuple[Entry, int, int, float]]:
        return [stats_row(s) for s in self._stats(sw, of.ofp_flow_stats_request())]

    def _apply(self, sw: _Switch, to_add: list[Entry], to_delete: list[Entry]) -> None:
        msgs = []
        for entry in to_delete:
            key = of10.entry_key(entry.priority, entry.match)
            self._own_deletes.add((sw.dpid, key))
            msgs.append(flow_mod(entry, of.OFPFC_DELETE_STRICT))
        for entry in to_add:
            key = of10.entry_key(entry.priority, entry.match)
            self._own_deletes.discard((sw.dpid, key))
            self._seen.get(sw.dpid, {}).pop(key, None)  # counters restart with the entry
            msgs.append(flow_mod(entry, of.OFPFC_ADD))
        self._send_confirmed(sw, msgs)

    # ------------------------------------------------------------ mirrors

    def _forward(self, dpid: int) -> Callable[[Any], tuple[str, ...]]:
        return lambda match: forward_actions(self.static, dpid, match)

    def _recompile(self, dpid: int, now: float | None = None) -> tuple[list[of10.CompiledEntry], list[Entry], list[Entry]]:
        """(wanted, to_add, to_delete) for the mirrors of one switch. Raises Of10Error."""
        now = time.time() if now is None else now
        wanted = of10.compile_mirrors(self.rules.get(dpid, {}).values(), now, self._forward(dpid))
        to_add, to_delete = of10.diff(self.installed.get(dpid, {}), wanted)
        return wanted, [c.entry for c in to_add], [c.entry for c in to_delete]

    def _sync(self, dpid: int, collect: bool = False) -> list[Any]:
        """Bring a switch's mirror entries to what ``self.rules`` says; returns FlowRemoved
        messages of deleted entries when ``collect``."""
        wanted, to_add, to_delete = self._recompile(dpid)
        sw = self.switches.get(dpid)
        collected: list[Any] = []
        if sw is not None and sw.ready:
            keys = [(dpid, of10.entry_key(e.priority, e.match)) for e in to_delete]
            if collect:
                with self._plock:
                    for key in keys:
                        self._collect[key] = collected
            try:
                self._apply(sw, to_add, to_delete)
                if collect:
                    self._await_removed(collected, len(keys))
            finally:
                if collect:
                    with self._plock:
                        for key in keys:
                            self._collect.pop(key, None)
        self.installed[dpid] = {c.key: c for c in wanted}
        return collected

    def _await_removed(self, collected: list[Any], expected: int, timeout: float = 1.0) -> None:
        # Open vSwitch may send the FlowRemoved of a delete after the barrier reply.
        deadline = time.monotonic() + timeout
        while True:
            with self._plock:
                if len(collected) >= expected:
                    return
                self._collected.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                log.debug("only %d of %d FlowRemoved arrived for deleted entries", len(collected), expected)
                return
            self._collected.wait(left)

    def rpc_hello(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"protocol": p.PROTOCOL_VERSION, "component": "pox", "version": demon.__version__,
                "openflow": "1.0"}

    def rpc_install_mirror(self, params: dict[str, Any]) -> dict[str, Any]:
        spec = parse_mirror_params(params, "1.0")
        with self.lock:
            old = self.taps.get(spec.tap_id)
            if old is not None and old.spec == spec and old.live:
                return dict(old.result)
            self._switch(spec.dpid)
            cookie = allocate_cookie(spec.tap_id, {t.cookie: t.spec.tap_id for t in self.taps.values()
                                                   if t.spec.tap_id != spec.tap_id})
            now = time.time()
            new_rules = of10.rules_for(spec, cookie, now)
            saved = {d: dict(r) for d, r in self.rules.items()}
            if old is not None:
                self.rules.get(old.spec.dpid, {}).pop((spec.tap_id, "forward"), None)
                self.rules.get(old.spec.dpid, {}).pop((spec.tap_id, "reverse"), None)
            for r in new_rules:
                self.rules.setdefault(spec.dpid, {})[r.key] = r
            try:
                self._recompile(spec.dpid, now)  # refuse before touching the switch
            except of10.Of10Error:
                self.rules = saved
                raise
            self.taps.pop(spec.tap_id, None)
            if old is not None and old.spec.dpid != spec.dpid:
                self._sync(old.spec.dpid)
            try:
                self._sync(spec.dpid)
            except RpcError:
                # Undo in memory and try to leave the switch as it was.
                self.rules = saved
                if old is not None:
                    self.taps[spec.tap_id] = old
                try:
                    self._sync(spec.dpid)
                except RpcError as exc:
                    log.warning("switch %s: could not roll back a failed install: %s", spec.dpid, exc)
                raise
            entries = sum(1 for c in self.installed[spec.dpid].values()
                          if any(k[0] == spec.tap_id for k in c.members))
            result = {"tap_id": spec.tap_id, "dpid": spec.dpid, "cookie": cookie, "entries": entries,
                      "replaced": old is not None, "installed_at": round(now, 3)}
            self.taps[spec.tap_id] = _Tap(spec, cookie, result, {r.direction for r in new_rules})
            self._save_state()
            return dict(result)

    def rpc_remove_mirror(self, params: dict[str, Any]) -> dict[str, Any]:
        tap_id = parse_remove_params(params)
        with self.lock:
            tap = self.taps.pop(tap_id, None)
            if tap is None:
                return self._remove_orphan(tap_id)
            dpid = tap.spec.dpid
            rules = self.rules.get(dpid, {})
            before = self.installed.get(dpid, {})
            mine = {k for k, c in before.items() if any(m[0] == tap_id for m in c.members)}
            for direction in ("forward", "reverse"):
                rules.pop((tap_id, direction), None)
            collected = self._sync(dpid, collect=True) if dpid in self.switches else []
            packets = sum(m.packet_count for m in collected)
            nbytes = sum(m.byte_count for m in collected)
            for direction in sorted(tap.live):
                owned = [m for m in collected if self._owner_of(before, dpid, m) == (tap_id, direction)]
                event = {"tap_id": tap_id, "dpid": dpid, "cookie": tap.cookie, "reason": "delete",
                         "packets": sum(m.packet_count for m in owned), "bytes": sum(m.byte_count for m in owned),
                         "duration_s": max((self._duration(m) for m in owned), default=0.0)}
                if tap.spec.bidirectional:
                    event["direction"] = direction
                self.publish("mirror_removed", event)
            self._save_state()
            log.info("tap %s removed from switch %s (%d entries touched)", tap_id, dpid, len(mine))
            return {"tap_id": tap_id, "removed": True, "packets": packets, "bytes": nbytes}

    def _remove_orphan(self, tap_id: str) -> dict[str, Any]:
        """A tap this process does not know (installed before a restart): delete its cookie's entries."""
        cookie = cookie_for_tap(tap_id)
        packets = nbytes = 0
        removed = False
        for dpid, sw in sorted(self.switches.items()):
            if not sw.ready:
                continue
            rows = [r for r in self._flow_table(sw) if r[0].cookie == cookie]
            if rows:
                self._apply(sw, [], [r[0] for r in rows])
                removed = True
                packets += sum(r[1] for r in rows)
                nbytes += sum(r[2] for r in rows)
        return {"tap_id": tap_id, "removed": removed, "packets": packets, "bytes": nbytes}

    @staticmethod
    def _duration(msg: Any) -> float:
        return round(msg.duration_sec + msg.duration_nsec / 1e9, 3)

    @staticmethod
    def _owner_of(installed: dict[of10.EntryKey, of10.CompiledEntry], dpid: int, msg: Any
                  ) -> of10.RuleKey | None:
        compiled = installed.get(of10.entry_key(msg.priority, neutral_match(msg.match)))
        if compiled is None or not compiled.owners:
            return None
        return min(compiled.owners)

    def rpc_list_mirrors(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        unknown = set(params) - {"dpid"}
        if unknown:
            raise SpecError(f"params.{sorted(unknown)[0]}", "unknown parameter (known: dpid)")
        dpid = None if params.get("dpid") is None else parse_dpid(params["dpid"])
        with self.lock:
            targets = [self._switch(dpid)] if dpid is not None else \
                [sw for _, sw in sorted(self.switches.items()) if sw.ready]
            out: list[dict[str, Any]] = []
            for sw in targets:
                rows = [r for r in self._flow_table(sw) if is_mirror_cookie(r[0].cookie)]
                compiled = self.installed.get(sw.dpid, {})
                claimed: set[int] = set()
                for tap in sorted(self.taps.values(), key=lambda t: t.spec.tap_id):
                    if tap.spec.dpid != sw.dpid:
                        continue
                    record = self._tap_record(tap, rows, compiled, claimed)
                    if record is not None:
                        out.append(record)
                strays: dict[int, list[tuple[Entry, int, int, float]]] = {}
                for i, row in enumerate(rows):
                    if i not in claimed:
                        strays.setdefault(row[0].cookie, []).append(row)
                for cookie, group in sorted(strays.items()):
                    out.append(mirror_record(sw.dpid, cookie, group, None, None))
            return out

    @staticmethod
    def _tap_record(tap: _Tap, rows: list[tuple[Entry, int, int, float]],
                    compiled: dict[of10.EntryKey, of10.CompiledEntry], claimed: set[int]) -> dict[str, Any] | None:
        """The tap as the switch holds it: present if an entry it owns is in the table."""
        return merge.tap_record(tap.spec, tap.cookie, tap.result["installed_at"], rows, compiled, claimed)

    def rpc_list_switches(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self.lock:
            out = []
            for dpid, sw in sorted(self.switches.items()):
                if not sw.ready:
                    continue
                role = self.fabric.role(dpid)
                out.append({"dpid": dpid, "name": sw.name, "role": sw.role,
                            "connected_at": round(sw.connected_at, 3),
                            "ports": [sw.ports[n] for n in sorted(sw.ports)],
                            "host_ports": list(role.host_ports) if role else [],
                            "uplinks": list(role.uplinks) if role else [],
                            "capture_port": role.capture_port if role else None})
            return out

    def _dpid_param(self, params: dict[str, Any]) -> int:
        unknown = set(params) - {"dpid"}
        if unknown:
            raise SpecError(f"params.{sorted(unknown)[0]}", "unknown parameter (known: dpid)")
        if params.get("dpid") is None:
            raise SpecError("params.dpid", "is required")
        return parse_dpid(params["dpid"])

    def rpc_flow_stats(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        sw = self._switch(self._dpid_param(params))
        rows = self._flow_table(sw)
        return [entry_to_json(*row) for row in sorted(rows, key=lambda r: (-r[0].priority, r[0].cookie))]

    def rpc_port_stats(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        sw = self._switch(self._dpid_param(params))
        stats = self._stats(sw, of.ofp_port_stats_request(port_no=of.OFPP_NONE))
        return port_stats_json(stats, below=of10.OFPP_MAX)

    def rpc_set_static(self, params: dict[str, Any]) -> dict[str, Any]:
        static = parse_set_static_params(params)
        with self.lock:
            self.static = static
            switches = entries = 0
            for dpid, sw in sorted(self.switches.items()):
                if not sw.ready:
                    continue
                wanted = static_entries(static, dpid)
                self._replace_cookie_entries(sw, STATIC_COOKIE, wanted)
                self._sync(dpid)  # mirrors forward like the new static pairs
                if wanted:
                    switches += 1
                    entries += len(wanted)
            return {"switches": switches, "entries": entries}

    def _replace_cookie_entries(self, sw: _Switch, cookie: int, wanted: list[Entry]) -> None:
        """OpenFlow 1.0 cannot delete by cookie: read the table, DELETE_STRICT what is not wanted."""
        wanted_keys = {of10.entry_key(e.priority, e.match) for e in wanted}
        stale = [r[0] for r in self._flow_table(sw)
                 if r[0].cookie == cookie and of10.entry_key(r[0].priority, r[0].match) not in wanted_keys]
        self._apply(sw, wanted, stale)

    # --------------------------------------------------- OpenFlow events
    # These run in POX's loop: never block here.

    def _handle_ConnectionUp(self, event: Any) -> None:
        try:
            event.connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError) as exc:
            log.debug("switch %s: TCP_NODELAY not set: %s", event.dpid, exc)
        phys = [pt for pt in event.ofp.ports if pt.port_no < of10.OFPP_MAX]
        ports = {pt.port_no: self._port_json(pt) for pt in phys}
        hw_addrs = {pt.port_no: pt.hw_addr for pt in phys}
        self._events.put((self._switch_up, (event.dpid, event.connection, ports, hw_addrs)))

    def _handle_ConnectionDown(self, event: Any) -> None:
        with self._plock:
            for waiter in self._waiting.values():
                if waiter.connection is event.connection:
                    waiter.lost = True
                    waiter.done.set()
        self._events.put((self._switch_down, (event.dpid, event.connection)))

    def _handle_BarrierIn(self, event: Any) -> None:
        with self._plock:
            waiter = self._waiting.get(event.xid)
        if waiter is not None:
            waiter.done.set()

    def _handle_ErrorIn(self, event: Any) -> None:
        with self._plock:
            waiter = self._waiting.get(event.xid)
        if waiter is not None:
            err = event.ofp
            waiter.errors.append(f"OpenFlow error type {err.type} code {err.code}"
                                 f" ({of.ofp_error_type_map.get(err.type, '?')})")
            event.should_log = False
            log.warning("switch %s rejected xid %s: type %s code %s", event.dpid, event.xid, err.type, err.code)

    def _stats_reply(self, event: Any) -> None:
        parts = event.ofp if isinstance(event.ofp, list) else [event.ofp]
        with self._plock:
            waiter = self._waiting.get(parts[0].xid)
        if waiter is not None:
            waiter.stats = list(event.stats)
            waiter.done.set()

    _handle_FlowStatsReceived = _stats_reply
    _handle_PortStatsReceived = _stats_reply

    def _handle_FlowRemoved(self, event: Any) -> None:
        msg = event.ofp
        key = (event.dpid, of10.entry_key(msg.priority, neutral_match(msg.match)))
        with self._plock:
            sink = self._collect.get(key)
            if sink is not None:
                sink.append(msg)
                self._collected.set()
        self._events.put((self._flow_removed, (event.dpid, event.connection, msg, time.time())))

    def _handle_PortStatus(self, event: Any) -> None:
        self._events.put((self._port_status, (event.dpid, event.connection, event.ofp)))

    @staticmethod
    def _port_json(port: Any) -> dict[str, Any]:
        name = port.name.decode(errors="replace") if isinstance(port.name, bytes) else str(port.name)
        down = bool(port.config & of.OFPPC_PORT_DOWN) or bool(port.state & of.OFPPS_LINK_DOWN)
        return {"port_no": port.port_no, "name": name, "hw_addr": str(port.hw_addr), "up": not down}

    # ------------------------------------------- work off POX's loop

    def _event_loop(self) -> None:
        while True:
            fn, args = self._events.get()
            try:
                fn(*args)
            except RpcError as exc:
                log.warning("%s: %s", fn.__name__, exc.message)
            except Exception:
                log.exception("%s failed", fn.__name__)

    def _switch_up(self, dpid: int, connection: Any, ports: dict[int, dict[str, Any]],
                   hw_addrs: dict[int, Any]) -> None:
        """Install the role's pipeline and static entries, re-assert known mirrors, announce."""
        role = self.fabric.role(dpid)
        sw = _Switch(dpid, connection, role.name if role else f"dpid{dpid}", role.role if role else None,
                     time.time(), ports)
        with self.lock:
            self.switches[dpid] = sw
            if role is not None:
                mods = []
                for port_no in no_flood_ports(role):
                    hw_addr = hw_addrs.get(port_no)
                    if hw_addr is None:
                        log.warning("switch %s: port %s not present, cannot keep it out of flooding", dpid, port_no)
                        continue
                    mods.append(of.ofp_port_mod(port_no=port_no, hw_addr=hw_addr, config=of.OFPPC_NO_FLOOD,
                                                mask=of.OFPPC_NO_FLOOD))
                self._send_confirmed(sw, mods, "port-mods")
            intended = intended_entries(self.fabric, dpid, "1.0", self.static or StaticConfig())
            rows = self._flow_table(sw)
            wanted_keys = {of10.entry_key(e.priority, e.match) for e in intended}
            stale = [r[0] for r in rows if r[0].cookie in (BASELINE_COOKIE, STATIC_COOKIE)
                     and of10.entry_key(r[0].priority, r[0].match) not in wanted_keys]
            self._apply(sw, intended, stale)
            self._adopt_mirrors(dpid, rows)
            sw.ready = True
            self._sync(dpid)
        log.info("switch %s (%s) up, role %s, %d baseline/static entries", dpid, sw.name, sw.role, len(intended))
        self.publish("switch_up", {"dpid": dpid, "name": sw.name, "role": sw.role})

    def _adopt_mirrors(self, dpid: int, rows: list[tuple[Entry, int, int, float]]) -> None:
        """The switch's table is the truth after a reconnect or a restart: entries it still
        holds as compiled are kept (not re-sent); a tap none of whose own entries it holds
        was removed while we were not listening (reason ``unknown``)."""
        table = {of10.entry_key(e.priority, e.match): e for e, _, _, _ in rows if is_mirror_cookie(e.cookie)}
        wanted = of10.compile_mirrors(self.rules.get(dpid, {}).values(), time.time(), self._forward(dpid))
        present = {c.key: c for c in wanted if c.key in table
                   and (table[c.key].actions, table[c.key].cookie) == (c.entry.actions, c.entry.cookie)}
        owned_somewhere = {k for c in wanted if c.key in table for k in c.owners}
        gone = set(self.rules.get(dpid, {})) - owned_somewhere
        self.installed[dpid] = present
        # Entries of our taps that the switch holds in an outdated shape (the taps changed
        # while it was away): replaced by _sync, so delete the old shape now.
        cookies = {t.cookie for t in self.taps.values() if t.spec.dpid == dpid}
        wanted_keys = {c.key for c in wanted}
        outdated = [e for k, e in table.items() if k not in wanted_keys and e.cookie in cookies]
        if outdated:
            self._apply(self.switches[dpid], [], outdated)
        if gone:
            log.info("switch %s: no longer holds %s", dpid, ", ".join(f"{t}/{d}" for t, d in sorted(gone)))
            self._end_rules(dpid, gone, "unknown", {"packets": 0, "bytes": 0, "duration_s": 0.0}, 0)

    def _switch_down(self, dpid: int, connection: Any) -> None:
        with self.lock:
            sw = self.switches.get(dpid)
            if sw is None or sw.connection is not connection:
                return
            del self.switches[dpid]
        log.info("switch %s down", dpid)
        self.publish("switch_down", {"dpid": dpid})

    def _port_status(self, dpid: int, connection: Any, msg: Any) -> None:
        with self.lock:
            sw = self.switches.get(dpid)
            if sw is None or sw.connection is not connection or msg.desc.port_no >= of10.OFPP_MAX:
                return
            if msg.reason == of.OFPPR_DELETE:
                sw.ports.pop(msg.desc.port_no, None)
            else:
                sw.ports[msg.desc.port_no] = self._port_json(msg.desc)

    def _flow_removed(self, dpid: int, connection: Any, msg: Any, now: float) -> None:
        reason = of10.REMOVED_REASONS.get(msg.reason, "unknown")
        match = neutral_match(msg.match)
        key = of10.entry_key(msg.priority, match)
        if msg.cookie == STATIC_COOKIE and reason in ("idle_timeout", "hard_timeout"):
            self._reassert_static(dpid, key)  # the prototype's timed entries come back (B5)
            return
        if not is_mirror_cookie(msg.cookie):
            return
        with self.lock:
            if (dpid, key) in self._own_deletes:
                self._own_deletes.discard((dpid, key))
                return
            compiled = self.installed.get(dpid, {}).pop(key, None)
            counters = {"packets": msg.packet_count, "bytes": msg.byte_count, "duration_s": self._duration(msg)}
            if compiled is None:
                self.publish("mirror_removed", {"tap_id": None, "dpid": dpid, "cookie": msg.cookie,
                                                "reason": reason, **counters})
                return
            ended = of10.ended_rules(compiled, reason, self.rules.get(dpid, {}), now)
            if reason == "idle_timeout":
                ended -= self._kept_alive(dpid, compiled)
            self._end_rules(dpid, ended, reason, counters, msg.cookie)
            self._sync(dpid)

    def _kept_alive(self, dpid: int, removed: of10.CompiledEntry) -> set[of10.RuleKey]:
        """Owners of an idled-out entry whose packets now hit a merged sub-region instead."""
        installed = self.installed.get(dpid, {})
        shared = [c for c in installed.values() if removed.owners & c.members]
        sw = self.switches.get(dpid)
        if not shared or sw is None or not sw.ready:
            return set()
        packets = {of10.entry_key(e.priority, e.match): pk for e, pk, _, _ in self._flow_table(sw)}
        seen = self._seen.setdefault(dpid, {})
        alive = of10.kept_alive(removed, installed, packets, seen)
        for c in shared:
            seen[c.key] = packets.get(c.key, 0)
        if alive:
            log.info("switch %s: %s idle on its own entry but active in a merged one: kept",
                     dpid, ", ".join(f"{t}/{d}" for t, d in sorted(alive)))
        return alive

    def _reassert_static(self, dpid: int, key: of10.EntryKey) -> None:
        with self.lock:
            sw = self.switches.get(dpid)
            if sw is None or not sw.ready:
                return
            wanted = [e for e in static_entries(self.static, dpid) if of10.entry_key(e.priority, e.match) == key]
            self._apply(sw, wanted, [])


# ----------------------------------------------------------------- launch

def launch(rpc: str = p.DEFAULT_ADDRESS, token_file: str = p.DEFAULT_TOKEN_FILE, fabric: str | None = None,
           static: str | None = None, barrier_timeout: str = "5", state_file: str | None = None) -> None:
    """POX entry point (``demon.controller.pox_tap --rpc=… --token-file=… --fabric=… --static=…``).

    ``--static`` takes a JSON file of the fabric's ``static`` shape or the prototype's
    ``mirrorPorts.txt``; it overrides the fabric's own ``static`` section. ``--state-file``
    (default ``pox-taps.json`` beside the token file) remembers the taps across restarts.
    """
    fab = load_fabric(fabric) if fabric else Fabric({})
    stat = load_static(static) if static else None
    token = ensure_token(token_file)
    state = Path(state_file) if state_file else Path(token_file).parent / "pox-taps.json"
    service = PoxTapService(fab, stat, float(barrier_timeout), state_file=state)
    server = RpcServer(rpc, token, service).start()  # bind now: a taken port fails the launch
    service.publish = server.publish

    def openflow_ready() -> None:
        # Keep the switch's entries across a controller restart: mirrors live on
        # until their hard timeout and the daemon reconciles through list_mirrors.
        core.openflow.clear_flows_on_connect = False
        core.openflow.addListeners(service)

    core.call_when_ready(openflow_ready, ["openflow"])
    core.addListenerByName("GoingDownEvent", lambda event: server.close())
    log.info("pytapdemon POX component: RPC on %s, %d fabric switches, static mode %s",
             server.address, len(fab.switches), "on" if (stat or fab.static) else "off")
