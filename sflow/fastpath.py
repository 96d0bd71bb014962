"""The collector's fast path: the common datagram straight to what the engine needs.

Nearly every datagram a switch sends is an IPv4-agent datagram of compact flow
samples (0:1), each carrying one sampled header (0:1) and maybe an
extended_switch record (0:1001). :func:`parse_compact` reads exactly that
shape and returns a :class:`Compact` datagram: per sample only the sequence
number, data source, sampling rate, drops, frame length and a shared
:class:`SampleKeys` (the sample's flow keys without the per-sample ``bytes``,
``frames`` and ``_rate``). No ``Datagram``/``FlowSample``/``Record`` objects
are built. Anything else (counter samples, other records, IPv6 agents,
malformed input) returns None and goes through ``sflow.decode`` as before,
so decode errors keep their reasons.

Identical keys: a :class:`SampleKeys` is built once by the very functions of
the full path (``sflow.keys.sample_keys`` on a ``FlowSample``) and cached on
everything its keys depend on (agent, data source, interfaces,
extended_switch fields and the header bytes that ``sflow.headers`` caches
its keys on). A header outside that cacheable shape (ARP, IPv6, VLAN tags,
IP options, VXLAN...) still takes the fast path, with keys built uncached.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, NamedTuple

from sflow.decode import _iface_compact
from sflow.headers import header_keys
from sflow.keys import datasource_of, sample_keys
from sflow.model import FlowSample, Record

__all__ = ["SampleKeys", "Compact", "parse_compact", "PER_SAMPLE_KEYS", "CACHE_MAX"]

#: keys that differ per sample; :class:`SampleKeys` leaves them out
PER_SAMPLE_KEYS = ("bytes", "frames", "_rate")
CACHE_MAX = 32768

_HEAD = struct.Struct(">II4sIIII")  # version, address type, IPv4 agent, sub, seq, uptime, n
_TLV = struct.Struct(">II")
_FLOW = struct.Struct(">8I")        # seq, src, rate, pool, drops, in, out, nrec
_HEADER = struct.Struct(">IIII")    # protocol, frame length, stripped, header length
_SWITCH = struct.Struct(">4I")
_inet_ntoa = socket.inet_ntoa


class SampleKeys:
    """Flow keys shared by the samples of one flow at one data source (read-only).

    The keys are two shared dicts, ``header`` (from the sampled header) and
    ``context`` (agent, interfaces, direction, extended_switch), merged only
    on demand (:meth:`view`). ``memo`` is the engine's: per flow table, the
    flow key these keys give (or a skip marker).
    """

    __slots__ = ("header", "context", "agent", "datasource", "where", "memo")

    def __init__(self, header: dict[str, Any], context: "_Context") -> None:
        self.header = header
        self.context = context.keys
        self.agent = context.agent
        self.datasource = context.datasource
        self.where = context.where
        self.memo: dict[Any, Any] = {}

    def view(self) -> dict[str, Any]:
        """The keys without ``bytes``, ``frames`` and ``_rate`` (a new dict)."""
        keys = self.header.copy()
        keys.update(self.context)
        return keys

    def names(self) -> list[str]:
        return [*self.header, *self.context, *PER_SAMPLE_KEYS]

    def full(self, frame_len: int, rate: int) -> dict[str, Any]:
        """The sample's complete keys, as ``sflow.keys.sample_keys`` gives them."""
        keys = self.view()
        keys["bytes"] = frame_len
        keys["frames"] = 1
        keys["_rate"] = rate
        return keys


class _Context:
    """What a sample's keys owe to everything but its header (shared per data source)."""

    __slots__ = ("keys", "agent", "datasource", "where")

    def __init__(self, keys: dict[str, Any], agent: str, datasource: str) -> None:
        self.keys = keys
        self.agent = agent
        self.datasource = datasource
        self.where = (agent, datasource)


class Compact(NamedTuple):
    """A datagram of compact flow samples; ``samples`` rows are
    (sequence, source id (class << 24 | index), sampling rate, drops, keys, frame length)."""

    agent: str
    sub_agent_id: int
    sequence: int
    uptime_ms: int
    samples: list[tuple[int, int, int, int, SampleKeys, int]]


_CACHE: dict[tuple[Any, ...], SampleKeys] = {}
_CONTEXTS: dict[tuple[Any, ...], _Context] = {}
_HEADERS: dict[bytes, dict[str, Any]] = {}
_AGENTS: dict[bytes, str] = {}


def _header_signature(data: bytes, hs: int, n: int, protocol: int) -> bytes | None:
    """The header bytes ``sflow.headers.header_keys`` caches keys on, None if it does not."""
    if (protocol != 1 or n < 48 or data[hs + 12] != 8 or data[hs + 13] != 0
            or data[hs + 14] != 0x45 or data[hs + 20] & 0x1F or data[hs + 21]):
        return None
    proto = data[hs + 23]
    if proto == 6:
        return data[hs:hs + 18] + data[hs + 23:hs + 24] + data[hs + 26:hs + 38] + data[hs + 46:hs + 48]
    if proto == 17:
        if data[hs + 36] == 0x12 and data[hs + 37] == 0xB5:  # VXLAN: the general walk
            return None
        return data[hs:hs + 18] + data[hs + 23:hs + 24] + data[hs + 26:hs + 38]
    if proto == 1:
        return data[hs:hs + 18] + data[hs + 23:hs + 24] + data[hs + 26:hs + 36]
    return data[hs:hs + 18] + data[hs + 23:hs + 24] + data[hs + 26:hs + 34]


def _records(data: bytes, header_at: int, switch_at: int) -> list[Record]:
    """The sample's records as the decoder makes them (header left out if ``header_at`` < 0)."""
    records = []
    if header_at >= 0:
        proto, frame_len, stripped, n = _HEADER.unpack_from(data, header_at)
        records.append(Record(0, 1, 0, {"headerProtocol": proto, "sampledPacketSize": frame_len,
                                        "strippedBytes": stripped, "headerLen": n,
                                        "header": data[header_at + 16:header_at + 16 + n]}))
    if switch_at >= 0:
        in_vlan, in_prio, out_vlan, out_prio = _SWITCH.unpack_from(data, switch_at)
        records.append(Record(0, 1001, 16, {"in_vlan": in_vlan, "in_priority": in_prio,
                                            "out_vlan": out_vlan, "out_priority": out_prio}))
    return records


def _sample(data: bytes, start: int, header_at: int, switch_at: int) -> FlowSample:
    seq, src, rate, pool, drops, inp, out, _ = _FLOW.unpack_from(data, start)
    return FlowSample(seq, src >> 24, src & 0xFFFFFF, rate, pool, drops,
                      _iface_compact(inp), _iface_compact(out),
                      _records(data, header_at, switch_at))


def _build(agent: str, data: bytes, start: int, header_at: int, switch_at: int) -> SampleKeys:
    """Keys of one sample by the full path's own functions (uncached)."""
    sample = _sample(data, start, header_at, switch_at)
    keys = sample_keys(agent, sample)
    for name in PER_SAMPLE_KEYS:
        keys.pop(name, None)
    return SampleKeys(keys, _Context({}, agent, datasource_of(sample)))


def _context(agent: str, data: bytes, start: int, switch_at: int) -> _Context:
    """The keys a sample gets from everything but its header (agent, interfaces,
    direction, extended_switch), and its data source: ``sample_keys`` without a header."""
    sample = _sample(data, start, -1, switch_at)
    keys = sample_keys(agent, sample)
    for name in PER_SAMPLE_KEYS:
        keys.pop(name, None)
    return _Context(keys, agent, datasource_of(sample))


def _header_keys(data: bytes, hs: int, n: int) -> dict[str, Any]:
    return header_keys(1, data[hs:hs + n])


def _combine(agent: str, data: bytes, start: int, header_at: int, switch_at: int,
             ckey: tuple[Any, ...], hlen: int) -> SampleKeys:
    """A cache miss: header keys and context keys, each cached on its own, merged."""
    context = _CONTEXTS.get(ckey[:5])
    if context is None:
        context = _context(agent, data, start, switch_at)
        if len(_CONTEXTS) >= CACHE_MAX:
            _CONTEXTS.clear()
        _CONTEXTS[ckey[:5]] = context
    sig = ckey[5]
    header = _HEADERS.get(sig)
    if header is None:
        header = _header_keys(data, header_at + 16, hlen)
        if len(_HEADERS) >= CACHE_MAX:
            _HEADERS.clear()
        _HEADERS[sig] = header
    entry = SampleKeys(header, context)
    if len(_CACHE) >= CACHE_MAX:
        _CACHE.clear()
    _CACHE[ckey] = entry
    return entry


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
    cache = _CACHE
    samples = []
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
        sig = _header_signature(data, header_at + 16, hlen, protocol)
        if sig is None:
            keys = _build(agent, data, start, header_at, switch_at)
        else:
            ckey = (addr, src, inp, out,
                    data[switch_at:switch_at + 16] if switch_at >= 0 else None, sig)
            keys = cache.get(ckey)  # type: ignore[assignment]
            if keys is None:
                keys = _combine(agent, data, start, header_at, switch_at, ckey, hlen)
        append((seq, src, rate, drops, keys, frame_len))
        off = end
    return Compact(agent, sub, dseq, uptime, samples)
