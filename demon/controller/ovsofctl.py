"""Parse ``ovs-ofctl dump-flows`` output into neutral entries, by key, never by position.

The prototype's test took ``line[5].split(',')[2]`` as ``in_port``; that broke with every
change of OVS's output format. Here each line is split into ``key=value`` items and
flags wherever they appear, OVS's field names are mapped to the OXM-style names of
``docs/rpc-protocol.md``, and actions are normalised to the ``flow_stats`` strings.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from typing import Any, Callable

from demon.controller.fabric import Entry

# OVS shorthand protocols → prerequisite fields they stand for
_SHORTHANDS: dict[str, dict[str, int]] = {
    "ip": {"eth_type": 0x0800}, "ipv6": {"eth_type": 0x86DD}, "arp": {"eth_type": 0x0806},
    "icmp": {"eth_type": 0x0800, "ip_proto": 1}, "tcp": {"eth_type": 0x0800, "ip_proto": 6},
    "udp": {"eth_type": 0x0800, "ip_proto": 17}, "sctp": {"eth_type": 0x0800, "ip_proto": 132},
    "icmp6": {"eth_type": 0x86DD, "ip_proto": 58}, "tcp6": {"eth_type": 0x86DD, "ip_proto": 6},
    "udp6": {"eth_type": 0x86DD, "ip_proto": 17},
}
_NAMES = {"dl_type": "eth_type", "nw_proto": "ip_proto", "nw_src": "ipv4_src", "nw_dst": "ipv4_dst",
          "dl_src": "eth_src", "dl_dst": "eth_dst", "dl_vlan": "vlan_vid", "in_port": "in_port",
          "ipv6_src": "ipv6_src", "ipv6_dst": "ipv6_dst", "eth_type": "eth_type", "ip_proto": "ip_proto",
          "tcp_src": "tcp_src", "tcp_dst": "tcp_dst", "udp_src": "udp_src", "udp_dst": "udp_dst",
          "tp_src": "tp_src", "tp_dst": "tp_dst", "vlan_vid": "vlan_vid", "eth_src": "eth_src",
          "eth_dst": "eth_dst"}
# counters and other per-flow state that is not part of an entry's identity
_IGNORED = {"duration", "n_packets", "n_bytes", "idle_age", "hard_age", "importance", "reset_counts",
            "no_packet_counts", "no_byte_counts", "check_overlap", "out_port", "out_group"}
_RESERVED = {"NORMAL", "FLOOD", "ALL", "IN_PORT", "LOCAL", "CONTROLLER"}


class ParseError(ValueError):
    pass


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses/brackets (``learn(...)``, ``ct(commit,...)``)."""
    out, depth, current = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    if current:
        out.append("".join(current))
    return [item.strip() for item in out if item.strip()]


def _int(value: str) -> int:
    return int(value, 0)


def _address(value: str) -> str:
    net = ipaddress.ip_network(value, strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def normalise_actions(text: str) -> tuple[str, ...]:
    out: list[str] = []
    for item in _split_top(text):
        if item == "drop":
            continue
        if item in _RESERVED:
            out.append(item)
        elif item.startswith("CONTROLLER:"):
            out.append("CONTROLLER")
        elif item.startswith("output:"):
            port = item.split(":", 1)[1]
            out.append(port if port in _RESERVED else f"output:{int(port)}")
        elif item.isdigit():
            out.append(f"output:{int(item)}")
        elif item.startswith("push_vlan:"):
            out.append(f"push_vlan:{_int(item.split(':', 1)[1]):#06x}")
        elif item.startswith("set_field:") and item.endswith("->vlan_vid"):
            value = item[len("set_field:"):-len("->vlan_vid")].split("/")[0]
            out.append(f"set_field:vlan_vid={_int(value) & 0x0FFF}")
        elif item.startswith("mod_vlan_vid:"):
            # OF1.0's way of tagging an untagged packet: same effect as push + set
            out += ["push_vlan:0x8100", f"set_field:vlan_vid={_int(item.split(':', 1)[1])}"]
        elif item in ("strip_vlan", "pop_vlan"):
            out.append("pop_vlan")
        elif item.startswith("learn("):
            table = re.search(r"\btable=(\d+)", item)
            out.append(f"learn(table={table.group(1) if table else 0})")
        elif item.startswith("goto_table:"):
            out.append(f"goto_table:{int(item.split(':', 1)[1])}")
        else:
            out.append(item)
    return tuple(out)


def parse_flow_line(line: str) -> Entry | None:
    """One ``dump-flows`` line → :class:`Entry`; ``None`` for header/blank lines."""
    line = line.strip()
    if not line or line.startswith(("OFPST_FLOW", "NXST_FLOW", "OFPST_", "NXST_")) or "actions=" not in line:
        return None
    head, _, actions = line.rpartition("actions=")
    fields: dict[str, Any] = {"priority": 32768, "cookie": 0, "idle_timeout": 0, "hard_timeout": 0,
                              "table": 0}
    match: dict[str, Any] = {}
    tp: dict[str, int] = {}
    flags: set[str] = set()
    for item in _split_top(head.replace(", ", ",").replace(" ", ",")):
        key, eq, value = item.partition("=")
        if not eq:
            if key in _SHORTHANDS:
                match.update(_SHORTHANDS[key])
            else:
                flags.add(key)
            continue
        if key in _IGNORED:
            continue
        if key in ("cookie", "priority", "idle_timeout", "hard_timeout", "table"):
            fields[key] = _int(value.split("/")[0])
            continue
        name = _NAMES.get(key)
        if name is None:
            match[key] = value  # kept verbatim: an unknown field still makes entries differ
        elif name in ("tp_src", "tp_dst"):
            tp[name] = _int(value)
        elif name.startswith(("ipv4_", "ipv6_")):
            match[name] = _address(value)
        elif name in ("eth_src", "eth_dst"):
            match[name] = value.lower()
        elif name == "in_port":
            match[name] = int(value) if value.isdigit() else value
        else:
            match[name] = _int(value)
    if tp:
        proto = {6: "tcp", 17: "udp"}.get(match.get("ip_proto", -1), "tp")
        for name, value in tp.items():
            match[name.replace("tp", proto)] = value
    try:
        return Entry(priority=fields["priority"], match=match, actions=normalise_actions(actions),
                     cookie=fields["cookie"], idle_timeout=fields["idle_timeout"],
                     hard_timeout=fields["hard_timeout"], send_flow_rem="send_flow_rem" in flags,
                     table_id=fields["table"])
    except ValueError as exc:
        raise ParseError(f"cannot parse flow {line!r}: {exc}") from None


def parse_dump_flows(text: str) -> list[Entry]:
    out = []
    for line in text.splitlines():
        entry = parse_flow_line(line)
        if entry is not None:
            out.append(entry)
    return out


Runner = Callable[[list[str]], str]


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


def dump_flows(switch: str, openflow: str = "1.3", runner: Runner = _run) -> list[Entry]:
    """The switch's table read with ``ovs-ofctl`` (needs root on the OVS host)."""
    version = {"1.0": "OpenFlow10", "1.3": "OpenFlow13"}[openflow]
    if not re.match(r"^[A-Za-z0-9_.-]+$", switch):
        raise ValueError(f"switch: bad bridge name {switch!r}")
    return parse_dump_flows(runner(["ovs-ofctl", "-O", version, "--no-names", "dump-flows", switch]))
