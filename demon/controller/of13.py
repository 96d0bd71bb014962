"""OpenFlow 1.3 compilation of neutral :class:`~demon.controller.fabric.Entry` values.

Pure: produces and reads plain data (``FlowMod`` dicts, OXM dicts with os-ken's field
names and value forms, action tuples), so it is testable without os-ken; the app turns
them into parser objects in one place.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable, Mapping, Sequence

from demon.controller import merge
from demon.controller.fabric import L2_TABLE, LEARN_IDLE, LEARN_PRIORITY, Entry
from demon.controller.spec import LEARNED_COOKIE

OFPP_IN_PORT = 0xFFFFFFF8
OFPP_NORMAL = 0xFFFFFFFA
OFPP_FLOOD = 0xFFFFFFFB
OFPP_ALL = 0xFFFFFFFC
OFPP_CONTROLLER = 0xFFFFFFFD
OFPP_LOCAL = 0xFFFFFFFE
OFPP_ANY = 0xFFFFFFFF
OFPG_ANY = 0xFFFFFFFF
OFPTT_ALL = 0xFF
OFPFF_SEND_FLOW_REM = 1
OFPVID_PRESENT = 0x1000
RESERVED_PORTS = {OFPP_IN_PORT: "IN_PORT", OFPP_NORMAL: "NORMAL", OFPP_FLOOD: "FLOOD",
                  OFPP_ALL: "ALL", OFPP_CONTROLLER: "CONTROLLER", OFPP_LOCAL: "LOCAL"}
_PORT_BY_NAME = {name: number for number, name in RESERVED_PORTS.items()}
#: FlowRemoved reasons (OF1.3 §A.4.2) in the protocol's words.
REMOVED_REASONS = {0: "idle_timeout", 1: "hard_timeout", 2: "delete", 3: "group_delete"}

Action = tuple[Any, ...]


def _mask_from_prefix(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return str(net.netmask)


def match_to_oxm(match: Mapping[str, Any]) -> dict[str, Any]:
    """Neutral match → os-ken ``OFPMatch(**kwargs)`` values."""
    out: dict[str, Any] = {}
    for key, value in match.items():
        if key == "vlan_vid":
            out[key] = OFPVID_PRESENT | value
        elif key.startswith(("ipv4_", "ipv6_")):
            net = ipaddress.ip_network(value, strict=False)
            if net.prefixlen == net.max_prefixlen:
                out[key] = str(net.network_address)
            else:
                out[key] = (str(net.network_address), _mask_from_prefix(net))
        elif key in ("eth_dst", "eth_src") and "/" in str(value):
            addr, mask = str(value).split("/")
            out[key] = (addr, mask)
        else:
            out[key] = value
    return out


def oxm_to_match(oxm: Iterable[tuple[str, Any]] | Mapping[str, Any]) -> dict[str, Any]:
    """os-ken ``match.items()`` (or ``ovs-ofctl``-derived OXM pairs) → neutral match."""
    items = oxm.items() if isinstance(oxm, Mapping) else oxm
    out: dict[str, Any] = {}
    for key, value in items:
        if key == "vlan_vid":
            if isinstance(value, tuple):
                value = value[0]
            out[key] = value & 0x0FFF
        elif key.startswith(("ipv4_", "ipv6_")):
            if isinstance(value, tuple):
                net = ipaddress.ip_network(f"{value[0]}/{value[1]}", strict=False)
                out[key] = str(net) if net.prefixlen != net.max_prefixlen else str(net.network_address)
            else:
                out[key] = str(ipaddress.ip_address(value))
        elif key in ("eth_dst", "eth_src"):
            if isinstance(value, tuple):
                out[key] = f"{value[0].lower()}/{value[1].lower()}"
            else:
                out[key] = str(value).lower()
        else:
            out[key] = value
    return out


def port_name(port: int) -> str:
    return RESERVED_PORTS.get(port, str(port))


def action_from_string(text: str) -> Action:
    """``NORMAL`` / ``output:6`` / ``push_vlan:0x8100`` / ``set_field:vlan_vid=10`` → action tuple."""
    if text in _PORT_BY_NAME:
        return ("output", _PORT_BY_NAME[text])
    kind, _, arg = text.partition(":")
    if kind == "output":
        return ("output", _PORT_BY_NAME.get(arg) or int(arg))
    if kind == "goto_table":
        return ("goto_table", int(arg))
    if text.startswith("learn(table=") and text.endswith(")"):
        # the one learn the fabric uses: eth_dst = this eth_src → output: this in_port
        return ("learn", int(text[len("learn(table="):-1]), LEARN_IDLE, LEARN_PRIORITY, LEARNED_COOKIE)
    if kind == "push_vlan":
        return ("push_vlan", int(arg, 0))
    if kind == "pop_vlan":
        return ("pop_vlan",)
    if kind == "set_field":
        name, _, value = arg.partition("=")
        number = int(value, 0)
        return ("set_field", name, OFPVID_PRESENT | number if name == "vlan_vid" else number)
    raise ValueError(f"unsupported action {text!r}")


def action_to_string(action: Action) -> str:
    kind = action[0]
    if kind == "output":
        port = action[1]
        return RESERVED_PORTS[port] if port in RESERVED_PORTS else f"output:{port}"
    if kind == "push_vlan":
        return f"push_vlan:{action[1]:#06x}"
    if kind == "pop_vlan":
        return "pop_vlan"
    if kind == "goto_table":
        return f"goto_table:{action[1]}"
    if kind == "learn":
        return f"learn(table={action[1]})"
    if kind == "set_field":
        value = action[2] & 0x0FFF if action[1] == "vlan_vid" else action[2]
        return f"set_field:{action[1]}={value}"
    return ":".join(str(a) for a in action)


def flow_mod(entry: Entry, command: str = "add") -> dict[str, Any]:
    """The FlowMod for adding ``entry`` (``command`` ``add``) or deleting exactly it
    (``delete_strict``: table, priority and match name it; no instructions, which a switch
    would otherwise check, e.g. an output to a port it refused)."""
    if command == "delete_strict":
        return {"command": command, "table_id": entry.table_id, "priority": entry.priority, "cookie": 0,
                "cookie_mask": 0, "idle_timeout": 0, "hard_timeout": 0, "flags": 0,
                "match": match_to_oxm(entry.match), "actions": [], "goto_table": None, "out_port": OFPP_ANY,
                "out_group": OFPG_ANY}
    return {
        "command": command,
        "table_id": entry.table_id,
        "priority": entry.priority,
        "cookie": entry.cookie,
        "cookie_mask": 0,
        "idle_timeout": entry.idle_timeout,
        "hard_timeout": entry.hard_timeout,
        "flags": OFPFF_SEND_FLOW_REM if entry.send_flow_rem else 0,
        "match": match_to_oxm(entry.match),
        "actions": [action_from_string(a) for a in entry.actions if not a.startswith("goto_table:")],
        "goto_table": next((int(a.split(":")[1]) for a in entry.actions if a.startswith("goto_table:")), None),
        "out_port": OFPP_ANY,
        "out_group": OFPG_ANY,
    }


def delete_by_cookie(cookie: int, cookie_mask: int = 0xFFFFFFFF_FFFFFFFF) -> dict[str, Any]:
    """A FlowMod deleting every entry (all tables) whose cookie matches under ``cookie_mask``."""
    return {"command": "delete", "table_id": OFPTT_ALL, "priority": 0, "cookie": cookie,
            "cookie_mask": cookie_mask, "idle_timeout": 0, "hard_timeout": 0, "flags": 0,
            "match": {}, "actions": [], "goto_table": None, "out_port": OFPP_ANY, "out_group": OFPG_ANY}


def stats_to_entry(stat: Mapping[str, Any]) -> Entry:
    """A flow-stats record (``table_id priority cookie match actions idle_timeout hard_timeout
    flags``; match as OXM pairs, actions as tuples) → neutral entry."""
    return Entry(priority=stat["priority"], match=oxm_to_match(stat["match"]),
                 actions=tuple(action_to_string(a) for a in stat["actions"]),
                 cookie=stat["cookie"], idle_timeout=stat.get("idle_timeout", 0),
                 hard_timeout=stat.get("hard_timeout", 0),
                 send_flow_rem=bool(stat.get("flags", 0) & OFPFF_SEND_FLOW_REM),
                 table_id=stat.get("table_id", 0))


def entry_to_json(entry: Entry, packets: int = 0, nbytes: int = 0, duration_s: float = 0.0
                  ) -> dict[str, Any]:
    """The ``flow_stats`` RPC record of an entry."""
    return {"table_id": entry.table_id, "priority": entry.priority, "cookie": entry.cookie,
            "match": dict(entry.match), "actions": list(entry.actions), "packets": packets,
            "bytes": nbytes, "duration_s": duration_s, "idle_timeout": entry.idle_timeout,
            "hard_timeout": entry.hard_timeout}


def entry_from_json(record: Mapping[str, Any]) -> Entry:
    """Inverse of :func:`entry_to_json` (counters dropped)."""
    return Entry(priority=record["priority"], match=dict(record["match"]),
                 actions=tuple(record["actions"]), cookie=record["cookie"],
                 idle_timeout=record.get("idle_timeout", 0), hard_timeout=record.get("hard_timeout", 0),
                 table_id=record.get("table_id", 0))


# ------------------------------------------------------------------ mirrors

def mirror_actions(forward: tuple[str, ...], members: Sequence[merge.MirrorRule], l2_table: bool
                   ) -> tuple[str, ...]:
    """The actions of one (possibly merged) mirror entry: every member's copy, each once.

    Untagged copies go first; tagged ones follow with one ``push_vlan`` and a
    ``set_field`` per distinct tag (in OpenFlow 1.3 a second push would stack a
    second tag). With the learned L2 table the copies come first, the tag is popped
    and ``goto_table:1`` forwards as before (an instruction, run after the
    actions); otherwise the static forwarding comes first, before any tag.
    """
    untagged, tagged = merge.copies(members)
    out = [f"output:{port}" for port in untagged]
    current: int | None = None
    for vlan, port in tagged:
        if current is None:
            out.append("push_vlan:0x8100")
        if vlan != current:
            out.append(f"set_field:vlan_vid={vlan}")
            current = vlan
        out.append(f"output:{port}")
    if l2_table and forward == ("NORMAL",):
        return tuple(out) + (("pop_vlan",) if tagged else ()) + (f"goto_table:{L2_TABLE}",)
    return forward + tuple(out)


def compile_mirrors(rules: Iterable[merge.MirrorRule], now: float,
                    forward: Callable[[Mapping[str, Any]], tuple[str, ...]], l2_table: bool
                    ) -> list[merge.CompiledEntry]:
    """Every table-0 entry one OpenFlow 1.3 switch needs for ``rules`` (merged where they overlap)."""
    return merge.compile_mirrors(rules, now, lambda region, members: mirror_actions(forward(region), members,
                                                                                    l2_table))
