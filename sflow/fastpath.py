"""The form the engine ingests (:class:`Parsed`) and the pure-Python reader of the
common datagram; the shared key objects both ingest paths use.

Nearly every datagram a switch sends is an IPv4-agent datagram of compact flow
samples (0:1), each carrying one sampled header (0:1) and maybe an
extended_switch record (0:1001). :func:`parse_compact` reads exactly that
shape and returns a :class:`Parsed` datagram: per sample only the sequence
number, data source, sampling rate, drops, frame length and two shared
objects whose union is the sample's flow keys less the per-sample ``bytes``,
``frames`` and ``_rate``: :class:`HeaderKeys` (from the sampled header) and
:class:`Context` (agent, interfaces, direction, extended_switch, data
source). No ``Datagram``/``FlowSample``/``Record`` objects are built per
sample. Anything else (counter samples, other records, IPv6 agents,
malformed input) returns None and goes through ``sflow.decode``
(``sflow.ingest.parse``), so decode errors keep their reasons. The compiled
kernel (``sflow._ingest``) reads the same shape in C and builds the same
shared objects through :func:`make_header` and ``_context``.

Identical keys: both parts come from the full path's own functions
(``sflow.headers.header_keys``; ``sflow.keys.sample_keys`` of the sample
without its header) and are cached on exactly what they depend on: the
header bytes ``sflow.headers`` caches its keys on, and (agent, data source,
interfaces, extended_switch fields). A header outside that cacheable shape
(ARP, IPv6, VLAN tags, IP options, VXLAN...) still takes the fast path, its
keys built for the sample. Each cache holds at most ``CACHE_MAX`` entries
(cleared when full, like ``sflow.headers``'s).
"""

from __future__ import annotations

import socket
import struct
from typing import Any, NamedTuple

from sflow.decode import _iface_compact
from sflow.headers import _fast_ipv4, header_keys
from sflow.keys import datasource_of, sample_keys
from sflow.model import FlowSample, Record

__all__ = ["HeaderKeys", "Context", "Compact", "Parsed", "parse_compact", "view", "full_keys",
           "key_names", "PER_SAMPLE_KEYS", "CONTEXT_KEYS", "CACHE_MAX", "FLOW", "COUNTER",
           "intern_names", "split_keys"]

#: keys that differ per sample, kept out of the shared parts
PER_SAMPLE_KEYS = ("bytes", "frames", "_rate")
CACHE_MAX = 8192  # header keys: ~1.5 kB each (the contexts are few)

_HEAD = struct.Struct(">II4sIIII")  # version, address type, IPv4 agent, sub, seq, uptime, n
_TLV = struct.Struct(">II")
_FLOW = struct.Struct(">8I")        # seq, src, rate, pool, drops, in, out, nrec
_HEADER = struct.Struct(">IIII")    # protocol, frame length, stripped, header length
_SWITCH = struct.Struct(">4I")
_inet_ntoa = socket.inet_ntoa


class HeaderKeys:
    """The flow keys of one cacheable sampled header (shared; read-only).

    ``memo`` is the engine's: the flow key a flow table gets from these keys
    (``memo[table]``) or from these keys with a :class:`Context`
    (``memo[table, context]``), or its skip marker.
    """

    __slots__ = ("keys", "memo", "names")

    def __init__(self, keys: dict[str, Any]) -> None:
        self.keys = keys
        self.memo: dict[Any, Any] = {}
        self.names = intern_names(keys)


class Context:
    """What a sample's keys owe to everything but its header: agent, interfaces,
    direction, extended_switch; and its data source (shared per data source)."""

    __slots__ = ("keys", "agent", "datasource", "where", "names")

    def __init__(self, keys: dict[str, Any], agent: str, datasource: str) -> None:
        self.keys = keys
        self.agent = agent
        self.datasource = datasource
        self.where = (agent, datasource)
        self.names = intern_names(keys)


_NAMES: dict[tuple[str, ...], tuple[str, ...]] = {}


def intern_names(keys: dict[str, Any]) -> tuple[str, ...]:
    """The key names as one shared tuple per distinct set (``/flowkeys/json`` bookkeeping)."""
    names = tuple(keys)
    found = _NAMES.get(names)
    if found is None:
        if len(_NAMES) >= 4096:
            _NAMES.clear()
        found = _NAMES[names] = names
    return found


#: the per-sample key names, with and without ``bytes``
SAMPLE_NAMES = ("bytes", "frames", "_rate")
SAMPLE_NAMES_NO_BYTES = ("frames", "_rate")


#: the names a Context's keys may have (a flow definition naming none of them
#: gets the same flow key from the header keys alone)
CONTEXT_KEYS = ("agent", "inputifindex", "outputifindex", "direction", "reason", "vlansource",
                "prioritysource", "vlandestination", "prioritydestination")


def view(header: HeaderKeys, context: Context) -> dict[str, Any]:
    """A sample's keys without ``bytes``, ``frames`` and ``_rate`` (a new dict)."""
    keys = header.keys.copy()
    keys.update(context.keys)
    return keys


def full_keys(header: HeaderKeys, context: Context, frame_len: int | None,
              rate: int) -> dict[str, Any]:
    """A sample's complete keys, as ``sflow.keys.sample_keys`` gives them
    (``frame_len`` None: the sample carried no length, so no ``bytes`` key)."""
    keys = view(header, context)
    if frame_len is not None:
        keys["bytes"] = frame_len
    keys["frames"] = 1
    keys["_rate"] = rate
    return keys


def key_names(header: HeaderKeys, context: Context) -> list[str]:
    return [*header.keys, *context.keys, *PER_SAMPLE_KEYS]


#: sample row kinds
FLOW, COUNTER = 0, 1
# A flow row:    (FLOW, (sub-agent, class, index), sequence, drops, sampling rate,
#                 HeaderKeys, Context, bytes or None)
# A counter row: (COUNTER, (sub-agent, class, index), sequence, dataSource, records)
#                 records: the raw counter_record<> bytes, or decoded Records
Row = tuple[Any, ...]


class Parsed(NamedTuple):
    """A datagram as the engine ingests it: header fields and its samples in wire order."""

    agent: str
    sub_agent_id: int
    sequence: int
    uptime_ms: int
    samples: list[Row]


Compact = Parsed  # the name parse_compact's result had before


_HEADERS: dict[tuple[Any, ...], HeaderKeys] = {}
_CONTEXTS: dict[tuple[Any, ...], Context] = {}
_AGENTS: dict[bytes, str] = {}


_SIG_TCP = struct.Struct(">18s5xB2x12s8x2s")  # the bytes sflow.headers keys TCP keys on
_SIG_UDP = struct.Struct(">18s5xB2x12s")
_SIG_ICMP = struct.Struct(">18s5xB2x10s")
_SIG_IP = struct.Struct(">18s5xB2x8s")


def _header_signature(data: bytes, hs: int, n: int, protocol: int) -> tuple[Any, ...] | None:
    """The header bytes ``sflow.headers.header_keys`` caches keys on, None if it does not."""
    if (protocol != 1 or n < 48 or data[hs + 12] != 8 or data[hs + 13] != 0
            or data[hs + 14] != 0x45 or data[hs + 20] & 0x1F or data[hs + 21]):
        return None
    proto = data[hs + 23]
    if proto == 6:
        return _SIG_TCP.unpack_from(data, hs)
    if proto == 17:
        if data[hs + 36] == 0x12 and data[hs + 37] == 0xB5:  # VXLAN: the general walk
            return None
        return _SIG_UDP.unpack_from(data, hs)
    if proto == 1:
        return _SIG_ICMP.unpack_from(data, hs)
    return _SIG_IP.unpack_from(data, hs)


def _records(data: bytes, switch_at: int) -> list[Record]:
    if switch_at < 0:
        return []
    in_vlan, in_prio, out_vlan, out_prio = _SWITCH.unpack_from(data, switch_at)
    return [Record(0, 1001, 16, {"in_vlan": in_vlan, "in_priority": in_prio,
                                 "out_vlan": out_vlan, "out_priority": out_prio})]


def _context(agent: str, data: bytes, start: int, switch_at: int) -> Context:
    """``sflow.keys.sample_keys`` of the sample without its header record."""
    seq, src, rate, pool, drops, inp, out, _ = _FLOW.unpack_from(data, start)
    sample = FlowSample(seq, src >> 24, src & 0xFFFFFF, rate, pool, drops,
                        _iface_compact(inp), _iface_compact(out), _records(data, switch_at))
    keys = sample_keys(agent, sample)
    for name in PER_SAMPLE_KEYS:
        keys.pop(name, None)
    return Context(keys, agent, datasource_of(sample))


def parse_compact(data: bytes) -> Compact | None:
    """The datagram as a :class:`Compact`, or None when it is not the common shape."""
    n = len(data)
    if n < 28 or data.__class__ is not bytes:
        return None
    version, addr_type, addr, sub, dseq, uptime, nsamples = _HEAD.unpack_from(data, 0)
    if version != 5 or addr_type != 1:
        return None
    agent = _AGENTS.get(addr)
    if agent is None:
        agent = _inet_ntoa(addr)
        if len(_AGENTS) < 4096:
            _AGENTS[addr] = agent
    tlv = _TLV.unpack_from
    flow = _FLOW.unpack_from
    headers = _HEADERS
    contexts = _CONTEXTS
    samples: list[Row] = []
    append = samples.append
    off = 28
    for _ in range(nsamples):
        if off + 8 > n:
            return None
        fmt, length = tlv(data, off)
        start = off + 8
        end = start + length
        if fmt != 1 or end > n or start + 32 > end:
            return None
        seq, src, rate, _pool, drops, inp, out, nrec = flow(data, start)
        header_at = switch_at = -1
        roff = start + 32
        for _ in range(nrec):
            if roff + 8 > end:
                return None
            rfmt, rlen = tlv(data, roff)
            rstart = roff + 8
            roff = rstart + rlen
            if roff > end:
                return None
            if rfmt == 1 and header_at < 0:
                if rstart + 16 > roff or rstart + 16 + tlv(data, rstart + 8)[1] > roff:
                    return None
                header_at = rstart
            elif rfmt == 1001 and switch_at < 0:
                if rstart + 16 > roff:
                    return None
                switch_at = rstart
            else:
                return None
        if header_at < 0:
            return None
        protocol, frame_len, _stripped, hlen = _HEADER.unpack_from(data, header_at)
        hs = header_at + 16
        sig = _header_signature(data, hs, hlen, protocol)
        if sig is None:  # keys not cacheable on a part of the header: built for this sample
            header = HeaderKeys(header_keys(protocol, data[hs:hs + hlen]))
        else:
            header = headers.get(sig)  # type: ignore[assignment]
            if header is None:
                # what header_keys computes on a miss, without filling its cache too
                found: dict[str, Any] = {}
                _fast_ipv4(data[hs:hs + hlen], data[hs + 23], found)
                header = HeaderKeys(found)
                if len(headers) >= CACHE_MAX:
                    headers.clear()
                headers[sig] = header
        ckey = (addr, src, inp, out, data[switch_at:switch_at + 16] if switch_at >= 0 else None)
        context = contexts.get(ckey)
        if context is None:
            context = _context(agent, data, start, switch_at)
            if len(contexts) >= CACHE_MAX:
                contexts.clear()
            contexts[ckey] = context
        append((FLOW, (sub, src >> 24, src & 0xFFFFFF), seq, drops, rate, header, context,
                frame_len))
        off = end
    return Parsed(agent, sub, dseq, uptime, samples)


def split_keys(keys: dict[str, Any], agent: str, datasource: str
               ) -> tuple[HeaderKeys, Context, int | None]:
    """A sample's complete keys (``sflow.keys.sample_keys``) as fresh, unshared
    (HeaderKeys, Context, bytes): what a sample outside the common shape becomes."""
    rest = dict(keys)
    nbytes = rest.pop("bytes", None)
    for name in PER_SAMPLE_KEYS:
        rest.pop(name, None)
    context = {name: rest.pop(name) for name in CONTEXT_KEYS if name in rest}
    return HeaderKeys(rest), Context(context, agent, datasource), nbytes


def make_header(protocol: int, header: bytes) -> HeaderKeys:
    """The header keys of one sampled header (the compiled kernel's cache-miss path)."""
    return HeaderKeys(header_keys(protocol, header))
