"""The POX controller component (OpenFlow 1.0): POX's events in, the service does the work.

Start it with POX (a git checkout; never ``pip install pox``)::

    pox.py openflow.of_01 --address=127.0.0.1 --port=6633 demon.controller.pox_tap \\
        --rpc=tcp:127.0.0.1:7733 --token-file=/run/pytapdemon/rpc.token --fabric=fabric.json

This module only translates: neutral changes to POX messages, POX's flow stats
and FlowRemoved back to neutral form, and pairs replies with requests by xid
(:class:`~demon.controller.replies.Replies`). POX's co-operative loop owns the
switch connections, so its handlers here never block and every message is handed
to that loop with ``core.callLater``; the calling thread waits for the barrier or
stats reply. Unlike the 2013 prototype it ignores PacketIn (no reinstall storm).

Standard library + POX only (``prometheus_client`` for metrics if it imports).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any, Callable

from demon.controller import of10
from demon.controller.book import MirrorBook
from demon.controller.changes import Change, FlowMod, PortNoFlood, Removed, Row
from demon.controller.fabric import Entry, Fabric, load_fabric, load_static
from demon.controller.replies import Replies
from demon.controller.service import TapService
from demon.controller.spec import port_description, port_stats_json
from demon.rpc import protocol as p
from demon.rpc.server import RpcServer
from demon.rpc.token import ensure_token

from pox.core import core  # type: ignore[import-not-found]
import pox.openflow.libopenflow_01 as of  # type: ignore[import-not-found]

log = logging.getLogger("demon.controller.pox")


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


def stats_row(stat: Any) -> Row:
    entry = Entry(stat.priority, neutral_match(stat.match), neutral_actions(stat.actions), stat.cookie,
                  stat.idle_timeout, stat.hard_timeout, table_id=stat.table_id)
    return entry, stat.packet_count, stat.byte_count, round(stat.duration_sec + stat.duration_nsec / 1e9, 3)


def removed_of(msg: Any) -> Removed:
    return Removed(msg.priority, neutral_match(msg.match), msg.cookie, of10.REMOVED_REASONS.get(msg.reason, "unknown"),
                   msg.packet_count, msg.byte_count, round(msg.duration_sec + msg.duration_nsec / 1e9, 3))


# ------------------------------------------------------------- one switch

class PoxSwitch:
    """The service's :class:`~demon.controller.service.SwitchIO` over one POX connection."""

    def __init__(self, event: Any, replies: Replies, call_later: Callable[..., None], timeout: float) -> None:
        self.dpid: int = event.dpid
        self.connection = event.connection
        phys = [pt for pt in event.ofp.ports if pt.port_no < of10.OFPP_MAX]
        self._ports = {pt.port_no: port_description(pt) for pt in phys}
        self.hw_addrs = {pt.port_no: pt.hw_addr for pt in phys}
        self.replies = replies
        self.call_later = call_later
        self.timeout = timeout

    def _request(self, msgs: list[Any], what: str) -> list[Any]:
        for msg in msgs:
            msg.xid = of.generate_xid()
        waiter = self.replies.expect([m.xid for m in msgs], self.connection)
        connection = self.connection

        def send_all() -> None:
            for msg in msgs:
                connection.send(msg)
        self.call_later(send_all)
        return self.replies.wait(waiter, what, self.dpid, self.timeout)

    def apply(self, changes: list[Change]) -> None:
        msgs = []
        for change in changes:
            if isinstance(change, FlowMod):
                command = of.OFPFC_ADD if change.command == "add" else of.OFPFC_DELETE_STRICT
                msgs.append(flow_mod(change.entry, command))
            elif isinstance(change, PortNoFlood):
                hw_addr = self.hw_addrs.get(change.port_no)
                if hw_addr is None:
                    log.warning("switch %s: port %s not present, cannot keep it out of flooding",
                                self.dpid, change.port_no)
                    continue
                msgs.append(of.ofp_port_mod(port_no=change.port_no, hw_addr=hw_addr, config=of.OFPPC_NO_FLOOD,
                                            mask=of.OFPPC_NO_FLOOD))
        if msgs:
            self._request(msgs + [of.ofp_barrier_request()], "the flow changes")

    def _stats(self, body: Any, what: str) -> list[Any]:
        return self._request([of.ofp_stats_request(body=body)], what)

    def table(self) -> list[Row]:
        return [stats_row(s) for s in self._stats(of.ofp_flow_stats_request(), "a flow-stats request")]

    def port_stats(self) -> list[dict[str, Any]]:
        stats = self._stats(of.ofp_port_stats_request(port_no=of.OFPP_NONE), "a port-stats request")
        return port_stats_json(stats, below=of10.OFPP_MAX)

    def ports(self) -> dict[int, dict[str, Any]]:
        return dict(self._ports)


# ---------------------------------------------------- POX's events (its loop)

class PoxEvents:
    """POX's OpenFlow listener: never blocks; replies to waiters, the rest to the service."""

    def __init__(self, service: TapService, timeout: float, call_later: Callable[..., None]) -> None:
        self.service = service
        self.timeout = timeout
        self.call_later = call_later
        self.replies = Replies()
        self.switches: dict[int, PoxSwitch] = {}  # by id(connection)

    def _handle_ConnectionUp(self, event: Any) -> None:
        try:  # else a barrier after a flow-mod waits ~40 ms for a delayed ACK
            event.connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError) as exc:
            log.debug("switch %s: TCP_NODELAY not set: %s", event.dpid, exc)
        sw = self.switches[id(event.connection)] = PoxSwitch(event, self.replies, self.call_later, self.timeout)
        self.service.switch_up(sw)

    def _handle_ConnectionDown(self, event: Any) -> None:
        self.replies.lost(event.connection)
        sw = self.switches.pop(id(event.connection), None)
        if sw is not None:
            self.service.switch_down(sw)

    def _handle_BarrierIn(self, event: Any) -> None:
        self.replies.reply(event.xid)

    def _handle_ErrorIn(self, event: Any) -> None:
        if self.replies.error(event.xid, event.ofp.type, event.ofp.code):
            event.should_log = False
            log.warning("switch %s rejected xid %s: type %s code %s", event.dpid, event.xid, event.ofp.type,
                        event.ofp.code)

    def _stats_reply(self, event: Any) -> None:
        parts = event.ofp if isinstance(event.ofp, list) else [event.ofp]
        self.replies.reply(parts[0].xid, event.stats)

    _handle_FlowStatsReceived = _stats_reply
    _handle_PortStatsReceived = _stats_reply

    def _handle_FlowRemoved(self, event: Any) -> None:
        sw = self.switches.get(id(event.connection))
        if sw is not None:
            self.service.flow_removed(sw, removed_of(event.ofp))

    def _handle_PortStatus(self, event: Any) -> None:
        sw, port = self.switches.get(id(event.connection)), event.ofp.desc
        if sw is not None and port.port_no < of10.OFPP_MAX:
            deleted = event.ofp.reason == of.OFPPR_DELETE
            self.service.port_status(sw, port.port_no, None if deleted else port_description(port))


# ----------------------------------------------------------------- launch

def _serve_metrics(service: TapService, server: RpcServer, listen: str) -> Any:
    """The metrics listener, if asked for and ``prometheus_client`` (and uvicorn) import here."""
    if not listen:
        return None
    try:
        from demon.controller import metrics  # third-party imports: only when metrics are on
    except ImportError as exc:
        log.info("metrics off: %s does not import in POX's interpreter", exc.name)
        return None
    listener = metrics.serve(service, server, listen)  # a bad or busy address fails the launch
    log.info("metrics at %s/metrics", listener.url)
    return listener


def launch(rpc: str = p.DEFAULT_ADDRESS, token_file: str = p.DEFAULT_TOKEN_FILE, fabric: str | None = None,
           static: str | None = None, barrier_timeout: str = "5", state_file: str | None = None,
           metrics_listen: str = "127.0.0.1:8735") -> None:
    """POX entry point (``demon.controller.pox_tap --rpc=… --token-file=… --fabric=… --static=…``).

    ``--static`` takes a JSON file of the fabric's ``static`` shape or the prototype's
    ``mirrorPorts.txt``; it overrides the fabric's own ``static`` section. ``--state-file``
    (default ``pox-taps.json`` beside the token file) remembers the taps across restarts.
    ``--metrics-listen=HOST:PORT`` serves Prometheus metrics at ``GET /metrics`` when
    ``prometheus_client`` imports (``--metrics-listen=`` turns them off).
    """
    fab = load_fabric(fabric) if fabric else Fabric({})
    stat = load_static(static) if static else None
    token = ensure_token(token_file)
    state = Path(state_file) if state_file else Path(token_file).parent / "pox-taps.json"
    timeout = float(barrier_timeout)
    service = TapService(MirrorBook(fab, "1.0", stat), "pox", state_file=state, collect_timeout=min(1.0, timeout))
    server = RpcServer(rpc, token, service).start()  # bind now: a taken port fails the launch
    service.publish = server.publish
    metrics = _serve_metrics(service, server, "" if metrics_listen is True else str(metrics_listen))
    service.start()
    events = PoxEvents(service, timeout, core.callLater)

    def openflow_ready() -> None:
        # Keep the switch's entries across a controller restart: mirrors live on
        # until their hard timeout and the daemon reconciles through list_mirrors.
        core.openflow.clear_flows_on_connect = False
        core.openflow.addListeners(events)

    def going_down(event: Any) -> None:
        server.close()
        service.close()
        if metrics is not None:
            metrics.stop()

    core.call_when_ready(openflow_ready, ["openflow"])
    core.addListenerByName("GoingDownEvent", going_down)
    log.info("pytapdemon POX component: RPC on %s, %d fabric switches, static mode %s",
             server.address, len(fab.switches), "on" if (stat or fab.static) else "off")
