"""The os-ken controller component (OpenFlow 1.3): os-ken's events in, the service does the work.

Started by ``demon-controller`` (:mod:`demon.controller.launcher`), which builds the
:class:`~demon.controller.service.TapService` and calls :func:`configure` before
os-ken instantiates :class:`TapApp`. This module only translates: neutral changes
to os-ken FlowMods (:func:`demon.controller.of13.flow_mod` → parser objects),
flow-stats and FlowRemoved messages back to neutral rows, and pairs replies with
requests by xid (:class:`~demon.controller.replies.Replies`). Callers wait on plain
``threading.Event`` objects with their own timeout (os-ken's native hub).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3

from demon.controller import of13
from demon.controller.changes import Change, FlowMod, Removed, Row
from demon.controller.replies import Replies
from demon.controller.service import TapService
from demon.controller.spec import port_description, port_stats_json

LOG = logging.getLogger("demon.controller.osken")

_CONFIG: dict[str, Any] = {}


def configure(service: TapService, barrier_timeout: float = 5.0) -> None:
    """Hand the app its service (os-ken instantiates apps without arguments)."""
    _CONFIG.update(service=service, barrier_timeout=barrier_timeout)


# ------------------------------------------------------ neutral <-> os-ken

def to_parser_flowmod(dp: Any, mod: dict[str, Any]) -> Any:
    """An :func:`of13.flow_mod` dict as os-ken's ``OFPFlowMod``."""
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


def actions_of(instructions: list[Any]) -> list[tuple[Any, ...]]:
    """os-ken instructions → :mod:`of13` action tuples (goto_table last, as it runs)."""
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


def stats_row(stat: Any) -> Row:
    entry = of13.stats_to_entry({
        "table_id": stat.table_id, "priority": stat.priority, "cookie": stat.cookie,
        "match": list(stat.match.items()), "actions": actions_of(stat.instructions),
        "idle_timeout": stat.idle_timeout, "hard_timeout": stat.hard_timeout, "flags": stat.flags})
    return entry, stat.packet_count, stat.byte_count, round(stat.duration_sec + stat.duration_nsec / 1e9, 3)


def removed_of(msg: Any) -> Removed:
    return Removed(msg.priority, of13.oxm_to_match(list(msg.match.items())), msg.cookie,
                   of13.REMOVED_REASONS.get(msg.reason, "unknown"), msg.packet_count, msg.byte_count,
                   round(msg.duration_sec + msg.duration_nsec / 1e9, 3), getattr(msg, "table_id", 0))


# ------------------------------------------------------------ one switch

class OsKenSwitch:
    """The service's :class:`~demon.controller.service.SwitchIO` over one os-ken datapath."""

    def __init__(self, dp: Any, timeout: float) -> None:
        self.dp = dp
        self.dpid: int = dp.id
        self.timeout = timeout
        self.replies = Replies()
        self._xid_lock = threading.Lock()  # os-ken's set_xid is not thread-safe

    def _request(self, msgs: list[Any], what: str) -> list[Any]:
        with self._xid_lock:
            xids = [self.dp.set_xid(m) for m in msgs]
        waiter = self.replies.expect(xids, self)
        for msg in msgs:
            if not self.dp.send_msg(msg):
                self.replies.lost(self)
                break
        return self.replies.wait(waiter, what, self.dpid, self.timeout)

    def apply(self, changes: list[Change]) -> None:
        # OFPPC_NO_FLOOD means nothing to Open vSwitch in 1.3: the baseline floods explicitly.
        mods = [to_parser_flowmod(self.dp, of13.flow_mod(c.entry, c.command))
                for c in changes if isinstance(c, FlowMod)]
        if mods:
            self._request(mods + [self.dp.ofproto_parser.OFPBarrierRequest(self.dp)], "the flow changes")

    def table(self) -> list[Row]:
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        request = parser.OFPFlowStatsRequest(self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, 0, 0)
        return [stats_row(stat) for stat in self._request([request], "a flow-stats request")]

    def port_stats(self) -> list[dict[str, Any]]:
        request = self.dp.ofproto_parser.OFPPortStatsRequest(self.dp, 0, self.dp.ofproto.OFPP_ANY)
        return port_stats_json(self._request([request], "a port-stats request"), below=of13.OFPP_IN_PORT)

    def ports(self) -> dict[int, dict[str, Any]]:
        request = self.dp.ofproto_parser.OFPPortDescStatsRequest(self.dp, 0)
        return {port.port_no: port_description(port) for port in self._request([request], "a port description")
                if port.port_no < of13.OFPP_IN_PORT}


# ------------------------------------------------------------------ the app

class TapApp(app_manager.OSKenApp):
    """os-ken glue: OpenFlow events in, :class:`TapService` does the work."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not _CONFIG:
            raise RuntimeError("demon.controller.osken_app.configure() was not called (use demon-controller)")
        self.service: TapService = _CONFIG["service"]
        self.timeout: float = _CONFIG["barrier_timeout"]
        self.switches: dict[int, OsKenSwitch] = {}  # by id(datapath)

    def _switch(self, dp: Any) -> OsKenSwitch | None:
        return self.switches.get(id(dp))

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev: Any) -> None:
        dp = ev.datapath
        if dp.id is None:
            return
        if ev.state == MAIN_DISPATCHER:
            sw = self.switches[id(dp)] = OsKenSwitch(dp, self.timeout)
            self.service.switch_up(sw)
        else:
            gone = self.switches.pop(id(dp), None)
            if gone is not None:
                gone.replies.lost(gone)
                self.service.switch_down(gone)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev: Any) -> None:
        sw = self._switch(ev.msg.datapath)
        if sw is not None:
            sw.replies.reply(ev.msg.xid)

    @set_ev_cls([ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPPortStatsReply,
                 ofp_event.EventOFPPortDescStatsReply], MAIN_DISPATCHER)
    def _multipart(self, ev: Any) -> None:
        sw = self._switch(ev.msg.datapath)
        if sw is not None:
            sw.replies.reply(ev.msg.xid, ev.msg.body, last=not ev.msg.flags & sw.dp.ofproto.OFPMPF_REPLY_MORE)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev: Any) -> None:
        LOG.warning("switch %s: OpenFlow error type=%s code=%s", ev.msg.datapath.id, ev.msg.type, ev.msg.code)
        sw = self._switch(ev.msg.datapath)
        if sw is not None:
            sw.replies.error(ev.msg.xid, ev.msg.type, ev.msg.code)

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def _flow_removed(self, ev: Any) -> None:
        sw = self._switch(ev.msg.datapath)
        if sw is not None:
            self.service.flow_removed(sw, removed_of(ev.msg))

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev: Any) -> None:
        sw, port = self._switch(ev.msg.datapath), ev.msg.desc
        if sw is not None and port.port_no < of13.OFPP_IN_PORT:
            deleted = ev.msg.reason == ev.msg.datapath.ofproto.OFPPR_DELETE
            self.service.port_status(sw, port.port_no, None if deleted else port_description(port))
