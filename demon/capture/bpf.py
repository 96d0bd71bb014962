"""Classic BPF programs compiled from the tap table, for the kernel to run.

Two kinds of program, both over one Ethernet frame:

* the **demultiplexer** (:func:`demux_program`), run by the kernel's
  ``PACKET_FANOUT_CBPF`` group: it returns the index of the ring (socket) the
  frame belongs to — the ring of the first tap whose VLAN tag or match it
  satisfies, else ring 0 (the catch-all, where frames of taps not known yet
  wait for the tap table);
* the **ring filter** (:func:`ring_filter`): accepts a frame with the snap
  length as its return value (the kernel keeps only that many bytes) or drops
  it (0): outgoing frames always, IPv6 link-local chatter unless asked to keep
  it.

Every load is relative to the link-layer header (``SKF_LL_OFF``), because the
fanout program runs where the kernel's packet data starts at the network
header while a socket filter runs where it starts at the Ethernet header.
VLAN tags are read both where the kernel stripped them (ancillary
``SKF_AD_VLAN_TAG``) and where they are still in the frame.

The semantics are those of :func:`demon.capture.packet.compile_match` (the
slow path in Python): a frame matches a tap when every field of its match
holds; IPv6 frames with extension headers carry no ports here (the Python
path files them). A tap this compiler cannot express is left to the
catch-all ring, so nothing is lost, only filed more slowly.

Standard library only.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

# -- opcodes (linux/filter.h, linux/bpf_common.h) ---------------------------------
LD, LDX, ST, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, MSH = 0x00, 0x20, 0x40, 0x60, 0xA0
ADD, AND, LSH = 0x00, 0x50, 0x60
JA, JEQ, JSET = 0x00, 0x10, 0x40
K, X = 0x00, 0x08
RET_A = 0x10
TAX, TXA = 0x00, 0x80

SKF_AD_OFF = -0x1000
SKF_AD_PKTTYPE = 4
SKF_AD_VLAN_TAG = 44
SKF_AD_VLAN_TAG_PRESENT = 48
SKF_LL_OFF = -0x200000
BPF_MAXINSNS = 4096
PACKET_OUTGOING = 4

# Scratch memory the prelude fills (M[] registers).
M_L3, M_ETYPE, M_L4, M_PROTO, M_VID = 0, 1, 2, 3, 4
NO_VLAN = 0xFFFF

_INSN = struct.Struct("HBBI")


class BpfError(ValueError):
    """A match this compiler cannot express (the frame then takes the Python path)."""


@dataclass(frozen=True)
class Insn:
    code: int
    jt: int | str = 0  # an int offset or a label resolved by :func:`assemble`
    jf: int | str = 0
    k: int | str = 0


def ll(off: int) -> int:
    """A link-layer-relative offset, as a 32-bit immediate."""
    return (SKF_LL_OFF + off) & 0xFFFFFFFF


def ad(off: int) -> int:
    return (SKF_AD_OFF + off) & 0xFFFFFFFF


class Asm:
    """Instructions with forward labels; :meth:`program` resolves them."""

    def __init__(self) -> None:
        self.code: list[Insn | str] = []

    def label(self, name: str) -> None:
        self.code.append(name)

    def __call__(self, code: int, k: int = 0, jt: int | str = 0, jf: int | str = 0) -> None:
        self.code.append(Insn(code, jt, jf, k))

    def extend(self, other: "Asm") -> None:
        self.code.extend(other.code)

    def program(self) -> list[tuple[int, int, int, int]]:
        where: dict[str, int] = {}
        n = 0
        for item in self.code:
            if isinstance(item, str):
                if item in where:
                    raise BpfError(f"label {item!r} defined twice")
                where[item] = n
            else:
                n += 1
        out: list[tuple[int, int, int, int]] = []
        pc = 0
        for item in self.code:
            if isinstance(item, str):
                continue

            def rel(target: int | str) -> int:
                if isinstance(target, int):
                    return target
                off = where[target] - pc - 1
                if off < 0:
                    raise BpfError(f"backward jump to {target!r}")
                return off

            jt, jf = rel(item.jt), rel(item.jf)
            k = item.k
            if isinstance(k, str):  # a long jump (ja) to a label
                k = rel(k)
            if jt > 255 or jf > 255:
                raise BpfError("conditional jump beyond 255 instructions")
            out.append((item.code, jt, jf, k & 0xFFFFFFFF))
            pc += 1
        if len(out) > BPF_MAXINSNS:
            raise BpfError(f"program of {len(out)} instructions exceeds {BPF_MAXINSNS}")
        return out


def pack(program: Sequence[tuple[int, int, int, int]]) -> bytes:
    """The ``struct sock_filter`` array the kernel takes."""
    return b"".join(_INSN.pack(*insn) for insn in program)


# -- the prelude: where the layers are -------------------------------------------------
def prelude(a: Asm) -> None:
    """M[L3] = network header offset, M[ETYPE] = inner ethertype, M[PROTO] = IP protocol
    (0 if none), M[L4] = transport header offset (0: none, e.g. a later fragment),
    M[VID] = VLAN id or NO_VLAN. Falls through to the next instruction."""
    a(LD | W | ABS, ad(SKF_AD_VLAN_TAG_PRESENT))
    a(JMP | JEQ | K, 0, jt="p_no_ad", jf=0)
    a(LD | W | ABS, ad(SKF_AD_VLAN_TAG))
    a(ALU | AND | K, 0x0FFF)
    a(ST, M_VID)
    a(LD | H | ABS, ll(12))
    a(ST, M_ETYPE)
    a(LD | IMM, 14)
    a(ST, M_L3)
    a(JMP | JA, "p_l3")
    a.label("p_no_ad")
    a(LD | H | ABS, ll(12))
    a(JMP | JEQ | K, 0x8100, jt="p_tag", jf=0)
    a(JMP | JEQ | K, 0x88A8, jt="p_tag", jf="p_untagged")
    a.label("p_tag")
    a(LD | H | ABS, ll(14))
    a(ALU | AND | K, 0x0FFF)
    a(ST, M_VID)
    a(LD | H | ABS, ll(16))
    a(ST, M_ETYPE)
    a(LD | IMM, 18)
    a(ST, M_L3)
    a(JMP | JA, "p_l3")
    a.label("p_untagged")
    a(ST, M_ETYPE)
    a(LD | IMM, NO_VLAN)
    a(ST, M_VID)
    a(LD | IMM, 14)
    a(ST, M_L3)
    a.label("p_l3")
    a(LDX | MEM, M_L3)
    a(LD | MEM, M_ETYPE)
    a(JMP | JEQ | K, 0x0800, jt=0, jf="p_not4")
    a(LD | B | IND, ll(9))
    a(ST, M_PROTO)
    a(LD | H | IND, ll(6))
    a(JMP | JSET | K, 0x1FFF, jt="p_nol4", jf=0)
    a(LD | B | IND, ll(0))
    a(ALU | AND | K, 0x0F)
    a(ALU | LSH | K, 2)
    a(ALU | ADD | X, 0)
    a(ST, M_L4)
    a(JMP | JA, "p_done")
    a.label("p_not4")
    a(JMP | JEQ | K, 0x86DD, jt=0, jf="p_noip")
    a(LD | B | IND, ll(6))
    a(ST, M_PROTO)
    a(MISC | TXA)
    a(ALU | ADD | K, 40)
    a(ST, M_L4)
    a(JMP | JA, "p_done")
    a.label("p_noip")
    a(LD | IMM, 0)
    a(ST, M_PROTO)
    a.label("p_nol4")
    a(LD | IMM, 0)
    a(ST, M_L4)
    a.label("p_done")


# -- one tap's test ------------------------------------------------------------------
_PORTS = {"tcp_src": (6, 0), "tcp_dst": (6, 2), "udp_src": (17, 0), "udp_dst": (17, 2)}
_ADDRS = {"ipv4_src": (0x0800, 12, 4), "ipv4_dst": (0x0800, 16, 4),
          "ipv6_src": (0x86DD, 8, 16), "ipv6_dst": (0x86DD, 24, 16)}


def _check_match(a: Asm, match: dict[str, Any], fail: str) -> None:
    """Instructions that fall through when the frame satisfies ``match``, else jump to ``fail``."""
    fields = {k: v for k, v in match.items() if k != "in_port"}
    if not fields:
        raise BpfError("match: needs at least one field besides in_port")
    for key, value in fields.items():
        if key in _ADDRS:
            etype, off, size = _ADDRS[key]
            try:
                net = ipaddress.ip_network(str(value), strict=False)
            except ValueError as exc:
                raise BpfError(f"match.{key}: {exc}") from None
            if (net.version == 4) != (size == 4):
                raise BpfError(f"match.{key}: wrong address family")
            a(LD | MEM, M_ETYPE)
            a(JMP | JEQ | K, etype, jt=0, jf=fail)
            a(LDX | MEM, M_L3)
            addr = int(net.network_address).to_bytes(size, "big")
            mask = int(net.netmask).to_bytes(size, "big")
            for word in range(size // 4):
                m = int.from_bytes(mask[4 * word: 4 * word + 4], "big")
                if m == 0:
                    continue
                a(LD | W | IND, ll(off + 4 * word))
                if m != 0xFFFFFFFF:
                    a(ALU | AND | K, m)
                a(JMP | JEQ | K, int.from_bytes(addr[4 * word: 4 * word + 4], "big"), jt=0, jf=fail)
        elif key in _PORTS:
            proto, off = _PORTS[key]
            _int(key, value, 0xFFFF)
            a(LD | MEM, M_PROTO)
            a(JMP | JEQ | K, proto, jt=0, jf=fail)
            a(LD | MEM, M_L4)
            a(JMP | JEQ | K, 0, jt=fail, jf=0)
            a(MISC | TAX)
            a(LD | H | IND, ll(off))
            a(JMP | JEQ | K, value, jt=0, jf=fail)
        elif key == "ip_proto":
            _int(key, value, 0xFF)
            a(LD | MEM, M_PROTO)
            a(JMP | JEQ | K, value, jt=0, jf=fail)
            # parse_frame sets ip_proto only for IPv4/IPv6 frames
            a(LD | MEM, M_ETYPE)
            a(JMP | JEQ | K, 0x0800, jt=1, jf=0)
            a(JMP | JEQ | K, 0x86DD, jt=0, jf=fail)
        elif key == "eth_type":
            _int(key, value, 0xFFFF)
            a(LD | MEM, M_ETYPE)
            a(JMP | JEQ | K, value, jt=0, jf=fail)
        elif key == "vlan_vid":
            _int(key, value, 0x0FFF)
            a(LD | MEM, M_VID)
            a(JMP | JEQ | K, value, jt=0, jf=fail)
        else:
            raise BpfError(f"match.{key}: unknown match field")


def _int(key: str, value: Any, top: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        raise BpfError(f"match.{key}: must be an integer 0..{top}, got {value!r}")


@dataclass(frozen=True)
class TapRule:
    """What the demultiplexer needs of a tap: its ring and how to recognise its copies."""

    ring: int
    vlan_tag: int | None = None
    match: dict[str, Any] | None = None
    bidirectional: bool = False


def tap_block(a: Asm, rule: TapRule, n: int) -> None:
    """Return ``rule.ring`` for a frame of this tap; else fall through."""
    from demon.capture.packet import reverse_match

    end = f"t{n}_end"
    if rule.vlan_tag is not None:
        a(LD | MEM, M_VID)
        a(JMP | JEQ | K, rule.vlan_tag, jt=0, jf=end)
        a(RET | K, rule.ring)
        a.label(end)
        return
    if not rule.match:
        raise BpfError("a tap needs a vlan_tag or a match")
    variants = [rule.match] + ([reverse_match(rule.match)] if rule.bidirectional else [])
    for i, match in enumerate(variants):
        fail = f"t{n}_v{i}_fail"
        _check_match(a, match, fail)
        a(RET | K, rule.ring)
        a.label(fail)
    a.label(end)


def demux_program(rules: Iterable[TapRule], default: int = 0) -> tuple[list[tuple[int, int, int, int]], list[TapRule]]:
    """The fanout program and the rules it could not express (their frames go to ``default``).

    Rules are tried in the order given: put the newest tap first.
    """
    a = Asm()
    a(LD | W | ABS, ad(SKF_AD_PKTTYPE))
    a(JMP | JEQ | K, PACKET_OUTGOING, jt="out", jf=0)
    prelude(a)
    # IPv6 extension headers hide the ports from this compiler: such frames take the
    # Python path (ring 0), which skips them, so an older tap never takes a newer one's frame.
    a(LD | MEM, M_ETYPE)
    a(JMP | JEQ | K, 0x86DD, jt=0, jf="taps")
    a(LD | MEM, M_PROTO)
    for nh in (0, 43, 60):
        a(JMP | JEQ | K, nh, jt="out", jf=0)
    a.label("taps")
    left: list[TapRule] = []
    used = 0
    for n, rule in enumerate(rules):
        block = Asm()
        try:
            tap_block(block, rule, n)
            trial = Asm()
            trial.code = a.code + block.code + [Insn(RET | K, 0, 0, default)]
            trial.label("out")
            trial(RET | K, default)
            if len(trial.program()) > BPF_MAXINSNS:
                raise BpfError("program full")
        except BpfError:
            left.append(rule)
            continue
        a.extend(block)
        used += 1
    a(RET | K, default)
    a.label("out")
    a(RET | K, default)
    return a.program(), left


def ring_filter(snaplen: int, keep_noise: bool = False) -> list[tuple[int, int, int, int]]:
    """Accept a frame (keeping ``snaplen`` bytes) unless it is outgoing or, without
    ``keep_noise``, IPv6 chatter (link-local or unspecified source, multicast destination)."""
    if not 1 <= snaplen <= 0xFFFFFFFF:
        raise BpfError(f"snaplen: must be >= 1, got {snaplen}")
    a = Asm()
    a(LD | W | ABS, ad(SKF_AD_PKTTYPE))
    a(JMP | JEQ | K, PACKET_OUTGOING, jt="drop", jf=0)
    if not keep_noise:
        prelude(a)
        a(LD | MEM, M_ETYPE)
        a(JMP | JEQ | K, 0x86DD, jt=0, jf="accept")
        a(LDX | MEM, M_L3)
        a(LD | H | IND, ll(8))  # source fe80::/10
        a(ALU | AND | K, 0xFFC0)
        a(JMP | JEQ | K, 0xFE80, jt="drop", jf=0)
        a(LD | B | IND, ll(24))  # destination ff00::/8
        a(JMP | JEQ | K, 0xFF, jt="drop", jf=0)
        for word in range(4):  # source :: (duplicate address detection)
            a(LD | W | IND, ll(8 + 4 * word))
            a(JMP | JEQ | K, 0, jt=0, jf="accept")
        a(JMP | JA, "drop")
    a.label("accept")
    a(RET | K, snaplen)
    a.label("drop")
    a(RET | K, 0)
    return a.program()


def reject_all() -> list[tuple[int, int, int, int]]:
    return [(RET | K, 0, 0, 0)]
