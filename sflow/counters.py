"""Counter samples kept per (agent, data source); metrics and rates as sFlow-RT gives them.

Ingest does as little as possible: for each counter sample the store keeps the
sample's records as they came (the raw ``counter_record<>`` bytes, or the
decoded ``Record`` list when a datagram was built by hand), with its sequence
number and arrival time, and the previous sample's too. Everything else
happens when something reads: records are decoded (``sflow.decode``'s own
record decoders), counters turned into per-second rates from the two samples,
and derived metrics computed. Readers take a :meth:`CounterStore.snapshot`
under the engine lock (a shallow copy: entries are immutable tuples, replaced
on update) and do the work outside it, so a large store never stops ingest.

Rates, as sFlow-RT computes them: ``(counter now - counter before) / seconds
between the two samples`` (our clock), with 32- and 64-bit wrap handled
(``(now - before) mod 2^bits``); no rate when the sample sequence number went
back (an agent restart resets its counters) or when either value is the
"unknown" all-ones value (Open vSwitch's ``SFL_UNDEF_COUNTER``). Derived:
``ifinutilization``/``ifoututilization`` = octets/s x 8 / ifSpeed x 100 (%),
``ifinpkts``/``ifoutpkts`` = unicast + multicast + broadcast packets/s,
``cpu_*`` of host_cpu = share (%) of the CPU time that passed,
``ovs_dp_hitrate``/``missrate`` (%), ``ovs_dp_maskhitsperpacket``,
``mem_used``/``mem_utilization``, ``disk_utilization``. Names are sFlow-RT's
(lower case, e.g. ``ifinoctets``, ``ifname``, ``of_dpid``, ``load_one``); see
:data:`METRICS` and ``docs/engine-api.md``.

Bounded: at most ``max_datasources`` entries; the least recently updated
tenth goes when full (entries move to the end of the dict on update), counted
in :attr:`CounterStore.evicted`.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, NamedTuple

__all__ = ["CounterStore", "CounterSource", "METRICS", "datasource_name", "port_map_rows",
           "metric_rows", "MAX_DATASOURCES"]

MAX_DATASOURCES = 20_000
_U32_UNKNOWN = 0xFFFFFFFF
_U64_UNKNOWN = 0xFFFFFFFFFFFFFFFF
OFPP_LOCAL = 0xFFFE

# One entry per (agent, data source):
#   (seq, time, records, prev_seq, prev_time, prev_records)
# ``records``: raw counter_record<> bytes (count + records) or a list of Record.
Entry = tuple[int, float, Any, Any, Any, Any]


def datasource_name(cls: int, index: int) -> str:
    """sFlow-RT's dataSource text: the ifIndex for class 0, else ``class.index``."""
    return str(index) if cls == 0 else f"{cls}.{index}"


# --- what each record gives -----------------------------------------------------------
# (format, field, metric, kind) kind: "c32"/"c64" counters -> rates, "g" gauge,
# "t" text, or a callable(value) -> value (enums)

_IFTYPE = {1: "other", 6: "ethernetCsmacd", 24: "softwareLoopback", 53: "propVirtual",
           71: "ieee80211", 131: "tunnel", 135: "l2vlan", 136: "l3ipvlan", 161: "ieee8023adLag"}
_IFDIRECTION = {0: "unknown", 1: "full-duplex", 2: "half-duplex", 3: "in", 4: "out"}
_OS_NAME = ["unknown", "other", "linux", "windows", "darwin", "hpux", "aix", "dragonfly",
            "freebsd", "netbsd", "openbsd", "osf", "solaris", "java"]
_MACHINE = ["unknown", "other", "x86", "x86_64", "ia64", "sparc", "alpha", "powerpc", "m68k",
            "mips", "arm", "hppa", "s390"]


def _enum(names: Any) -> Any:
    def convert(value: int) -> str:
        if isinstance(names, dict):
            return names.get(value, str(value))
        return names[value] if 0 <= value < len(names) else str(value)
    return convert


METRICS: list[tuple[int, str, str, Any]] = [
    (1, "ifIndex", "ifindex", lambda v: str(v)),
    (1, "networkType", "iftype", _enum(_IFTYPE)),
    (1, "ifSpeed", "ifspeed", "g"),
    (1, "ifDirection", "ifdirection", _enum(_IFDIRECTION)),
    (1, "ifStatus", "ifadminstatus", lambda v: "up" if v & 1 else "down"),
    (1, "ifStatus", "ifoperstatus", lambda v: "up" if v & 2 else "down"),
    (1, "ifInOctets", "ifinoctets", "c64"),
    (1, "ifInUcastPkts", "ifinucastpkts", "c32"),
    (1, "ifInMulticastPkts", "ifinmulticastpkts", "c32"),
    (1, "ifInBroadcastPkts", "ifinbroadcastpkts", "c32"),
    (1, "ifInDiscards", "ifindiscards", "c32"),
    (1, "ifInErrors", "ifinerrors", "c32"),
    (1, "ifInUnknownProtos", "ifinunknownprotos", "c32"),
    (1, "ifOutOctets", "ifoutoctets", "c64"),
    (1, "ifOutUcastPkts", "ifoutucastpkts", "c32"),
    (1, "ifOutMulticastPkts", "ifoutmulticastpkts", "c32"),
    (1, "ifOutBroadcastPkts", "ifoutbroadcastpkts", "c32"),
    (1, "ifOutDiscards", "ifoutdiscards", "c32"),
    (1, "ifOutErrors", "ifouterrors", "c32"),
    (1, "ifPromiscuousMode", "ifpromiscuousmode", lambda v: "true" if v == 1 else "false"),
    *[(2, f, f.lower(), "c32") for f in (
        "dot3StatsAlignmentErrors", "dot3StatsFCSErrors", "dot3StatsSingleCollisionFrames",
        "dot3StatsMultipleCollisionFrames", "dot3StatsSQETestErrors",
        "dot3StatsDeferredTransmissions", "dot3StatsLateCollisions",
        "dot3StatsExcessiveCollisions", "dot3StatsInternalMacTransmitErrors",
        "dot3StatsCarrierSenseErrors", "dot3StatsFrameTooLongs",
        "dot3StatsInternalMacReceiveErrors", "dot3StatsSymbolErrors")],
    (5, "in_vlan", "vlan", lambda v: str(v)),
    (5, "octets", "vlan_octets", "c64"),
    (5, "ucastPkts", "vlan_ucastpkts", "c32"),
    (5, "multicastPkts", "vlan_multicastpkts", "c32"),
    (5, "broadcastPkts", "vlan_broadcastpkts", "c32"),
    (5, "discards", "vlan_discards", "c32"),
    (1001, "5s_cpu", "cpu_5sec", lambda v: None if v == _U32_UNKNOWN else v / 100),
    (1001, "1m_cpu", "cpu_1min", lambda v: None if v == _U32_UNKNOWN else v / 100),
    (1001, "5m_cpu", "cpu_5min", lambda v: None if v == _U32_UNKNOWN else v / 100),
    (1001, "total_memory_bytes", "mem_total", "g"),
    (1001, "free_memory_bytes", "mem_free", "g"),
    (1004, "openflow_datapath_id", "of_dpid", lambda v: f"{v:016x}"),
    (1004, "openflow_port", "of_port", lambda v: str(v)),
    (1005, "ifName", "ifname", "t"),
    (2000, "hostname", "host_name", "t"),
    (2000, "UUID", "uuid", "t"),
    (2000, "machine_type", "machine_type", _enum(_MACHINE)),
    (2000, "os_name", "os_name", _enum(_OS_NAME)),
    (2000, "os_release", "os_release", "t"),
    (2003, "cpu_load_one", "load_one", "g"),
    (2003, "cpu_load_five", "load_five", "g"),
    (2003, "cpu_load_fifteen", "load_fifteen", "g"),
    (2003, "cpu_proc_run", "proc_run", "g"),
    (2003, "cpu_proc_total", "proc_total", "g"),
    (2003, "cpu_num", "cpu_num", "g"),
    (2003, "cpu_speed", "cpu_speed", "g"),
    (2003, "cpu_uptime", "uptime", "g"),
    (2003, "cpuinterrupts", "interrupts", "c32"),
    (2003, "cpu_contexts", "contexts", "c32"),
    (2004, "mem_total", "mem_total", "g"),
    (2004, "mem_free", "mem_free", "g"),
    (2004, "mem_shared", "mem_shared", "g"),
    (2004, "mem_buffers", "mem_buffers", "g"),
    (2004, "mem_cached", "mem_cached", "g"),
    (2004, "swap_total", "swap_total", "g"),
    (2004, "swap_free", "swap_free", "g"),
    (2004, "page_in", "page_in", "c32"),
    (2004, "page_out", "page_out", "c32"),
    (2004, "swap_in", "swap_in", "c32"),
    (2004, "swap_out", "swap_out", "c32"),
    (2005, "disk_total", "disk_total", "g"),
    (2005, "disk_free", "disk_free", "g"),
    (2005, "disk_partition_max_used", "part_max_used",
     lambda v: None if v == _U32_UNKNOWN else v / 100),
    (2005, "disk_reads", "disk_reads", "c32"),
    (2005, "disk_bytes_read", "disk_bytes_read", "c64"),
    (2005, "disk_read_time", "disk_read_time", "c32"),
    (2005, "disk_writes", "disk_writes", "c32"),
    (2005, "disk_bytes_written", "disk_bytes_written", "c64"),
    (2005, "disk_write_time", "disk_write_time", "c32"),
    (2006, "nio_bytes_in", "bytes_in", "c64"),
    (2006, "nio_pkts_in", "pkts_in", "c32"),
    (2006, "nio_errs_in", "errs_in", "c32"),
    (2006, "nio_drops_in", "drops_in", "c32"),
    (2006, "nio_bytes_out", "bytes_out", "c64"),
    (2006, "nio_pkts_out", "pkts_out", "c32"),
    (2006, "nio_errs_out", "errs_out", "c32"),
    (2006, "nio_drops_out", "drops_out", "c32"),
    (2203, "user_time", "app_usertime", "c32"),
    (2203, "system_time", "app_systemtime", "c32"),
    (2203, "memory_used", "app_mem_used", "g"),
    (2203, "memory_max", "app_mem_max", "g"),
    (2203, "files_open", "app_fd_open", "g"),
    (2203, "files_max", "app_fd_max", "g"),
    (2203, "connections_open", "app_conn_open", "g"),
    (2203, "connections_max", "app_conn_max", "g"),
    (2207, "OVS_dp_hits", "ovs_dp_hits", "c32"),
    (2207, "OVS_dp_misses", "ovs_dp_misses", "c32"),
    (2207, "OVS_dp_lost", "ovs_dp_lost", "c32"),
    (2207, "OVS_dp_mask_hits", "ovs_mask_hits", "c32"),
    (2207, "OVS_dp_flows", "ovs_dp_flows", "g"),
    (2207, "OVS_dp_masks", "ovs_dp_masks", "g"),
]
_CPU_TIMES = ("cpu_user", "cpu_nice", "cpu_system", "cpu_idle", "cpu_wio", "cpuintr",
              "cpu_sintr", "cpu_steal", "cpu_guest", "cpu_guest_nice")
_CPU_NAMES = {"cpuintr": "cpu_intr"}
_BY_FORMAT: dict[int, list[tuple[str, str, Any]]] = {}
for _fmt, _field, _metric, _kind in METRICS:
    _BY_FORMAT.setdefault(_fmt, []).append((_field, _metric, _kind))


@functools.lru_cache(maxsize=8192)
def _decode_blob(blob: bytes) -> dict[int, dict[str, Any]]:
    """Raw counter_record<> bytes -> {format: fields} (standard formats only)."""
    from sflow.decode import COUNTER_DECODERS, _records

    if len(blob) < 4:
        return {}
    count = int.from_bytes(blob[:4], "big")
    try:
        records = _records(blob, 4, len(blob), count, COUNTER_DECODERS)
    except Exception:  # noqa: BLE001 - validated at ingest; a reader never fails on it
        return {}
    return {rec.format: rec.fields for rec in records if rec.enterprise == 0 and rec.known}


def _fields(records: Any) -> dict[int, dict[str, Any]]:
    if records is None:
        return {}
    if isinstance(records, bytes):
        return _decode_blob(records)
    return {rec.format: rec.fields for rec in records if rec.enterprise == 0 and rec.known}


def _delta(now: int, before: int, bits: int) -> int | None:
    unknown = _U32_UNKNOWN if bits == 32 else _U64_UNKNOWN
    if now == unknown or before == unknown:
        return None
    return (now - before) % (1 << bits)


class CounterSource(NamedTuple):
    """One data source's last two counter samples (a read-only snapshot)."""

    agent: str
    datasource: str
    seq: int
    time: float
    records: Any
    prev_seq: int | None
    prev_time: float | None
    prev_records: Any

    def fields(self) -> dict[int, dict[str, Any]]:
        """The latest sample's records decoded: {format: fields}."""
        return _fields(self.records)

    def metrics(self) -> dict[str, Any]:
        """Every metric of this data source: gauges, text, and rates (per second)."""
        now = self.fields()
        before = _fields(self.prev_records) if self.prev_records is not None else {}
        dt = (self.time - self.prev_time) if self.prev_time is not None else 0.0
        rates_ok = (dt > 0 and self.prev_seq is not None and self.seq > self.prev_seq)
        out: dict[str, Any] = {}
        for fmt, fields in now.items():
            old = before.get(fmt) if rates_ok else None
            for field, metric, kind in _BY_FORMAT.get(fmt, ()):
                value = fields.get(field)
                if value is None:
                    continue
                if kind == "c32" or kind == "c64":
                    if old is not None and field in old:
                        delta = _delta(value, old[field], 32 if kind == "c32" else 64)
                        if delta is not None:
                            out[metric] = delta / dt
                elif kind == "g":
                    if value != _U64_UNKNOWN:
                        out[metric] = value
                elif kind == "t":
                    out[metric] = value
                else:
                    converted = kind(value)
                    if converted is not None:
                        out[metric] = converted
            if fmt == 2003 and old is not None:
                _cpu_shares(fields, old, out)
        _derived(out, now)
        return out

    def last_update_ms(self, now: float) -> int:
        return int((now - self.time) * 1000)


def _cpu_shares(fields: dict[str, Any], old: dict[str, Any], out: dict[str, Any]) -> None:
    deltas = {}
    for name in _CPU_TIMES:
        if name in fields and name in old:
            delta = _delta(fields[name], old[name], 32)
            if delta is not None:
                deltas[name] = delta
    total = sum(deltas.values())
    if total <= 0:
        return
    for name, delta in deltas.items():
        out[_CPU_NAMES.get(name, name)] = 100.0 * delta / total
    if "cpu_idle" in deltas:
        out["cpu_utilization"] = 100.0 * (1 - deltas["cpu_idle"] / total)


def _derived(out: dict[str, Any], fields: dict[int, dict[str, Any]]) -> None:
    speed = out.get("ifspeed")
    for way in ("in", "out"):
        octets = out.get(f"if{way}octets")
        if octets is not None and speed:
            out[f"if{way}utilization"] = octets * 8 / speed * 100
        parts = [out[f"if{way}{k}pkts"] for k in ("ucast", "multicast", "broadcast")
                 if f"if{way}{k}pkts" in out]
        if parts:
            out[f"if{way}pkts"] = sum(parts)
    hits, misses = out.get("ovs_dp_hits"), out.get("ovs_dp_misses")
    if hits is not None and misses is not None:
        total = hits + misses
        out["ovs_dp_hitrate"] = 100.0 * hits / total if total else 100.0
        out["ovs_dp_missrate"] = 100.0 * misses / total if total else 0.0
        if "ovs_mask_hits" in out:
            out["ovs_dp_maskhitsperpacket"] = out["ovs_mask_hits"] / total if total else 0.0
    mem = fields.get(2004)
    if mem and mem.get("mem_total"):
        used = mem["mem_total"] - mem["mem_free"] - mem["mem_buffers"] - mem["mem_cached"]
        out["mem_used"] = used
        out["mem_utilization"] = 100.0 * used / mem["mem_total"]
    disk = fields.get(2005)
    if disk and disk.get("disk_total"):
        out["disk_utilization"] = 100.0 * (disk["disk_total"] - disk["disk_free"]) / disk["disk_total"]


class CounterStore:
    """The last two counter samples of every (agent, data source), bounded."""

    def __init__(self, max_datasources: int = MAX_DATASOURCES) -> None:
        self.max_datasources = max(1, max_datasources)
        #: (agent, dataSource) -> Entry; least recently updated first
        self.sources: dict[tuple[str, str], Entry] = {}
        self.evicted = 0

    def put(self, agent: str, datasource: str, seq: int, now: float, records: Any) -> None:
        """Keep one counter sample (the compiled path does the same on existing entries)."""
        key = (agent, datasource)
        sources = self.sources
        old = sources.pop(key, None)
        if old is None:
            if len(sources) >= self.max_datasources:
                self._evict()
            sources[key] = (seq, now, records, None, None, None)
        else:
            sources[key] = (seq, now, records, old[0], old[1], old[2])

    def _evict(self) -> None:
        sources = self.sources
        count = max(1, len(sources) // 10)
        for key in [k for k, _ in zip(sources, range(count))]:
            del sources[key]
        self.evicted += count

    def forget_agent(self, agent: str) -> None:
        for key in [k for k in self.sources if k[0] == agent]:
            del self.sources[key]

    def expire(self, older_than: float) -> int:
        """Forget data sources not updated since ``older_than``; how many went."""
        stale = [k for k, e in self.sources.items() if e[1] < older_than]
        for key in stale:
            del self.sources[key]
        return len(stale)

    def snapshot(self, agents: Iterable[str] | None = None) -> list[CounterSource]:
        """Every data source (of ``agents``), cheap enough to take under the engine lock."""
        wanted = None if agents is None else set(agents)
        return [CounterSource(key[0], key[1], *entry) for key, entry in list(self.sources.items())
                if wanted is None or key[0] in wanted]

    def get(self, agent: str, datasource: str) -> CounterSource | None:
        entry = self.sources.get((agent, datasource))
        return None if entry is None else CounterSource(agent, datasource, *entry)

    def attributes(self, agent: str, datasource: str) -> dict[str, Any]:
        """What a threshold ``filter`` can select a data source on: ``agent``,
        ``datasource``, ``ifindex`` and every non-rate metric (``ifname``,
        ``ifspeed``, ``host_name``, ``os_name``...)."""
        attrs: dict[str, Any] = {"agent": agent, "datasource": datasource}
        if datasource.isdigit():
            attrs["ifindex"] = datasource
        source = self.get(agent, datasource)
        if source is not None:
            for fmt, fields in source.fields().items():
                for field, metric, kind in _BY_FORMAT.get(fmt, ()):
                    if kind in ("c32", "c64") or field not in fields:
                        continue
                    value = fields[field]
                    attrs[metric] = value if kind in ("g", "t") else kind(value)
        return attrs


def metric_rows(snapshot: Iterable[CounterSource], now: float,
                names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Per data source: agent, dataSource, lastUpdate (ms ago), metrics (all, or ``names``).

    Pure; run it on a snapshot outside the engine lock.
    """
    wanted = None if names is None else set(names)
    rows = []
    for source in snapshot:
        metrics = source.metrics()
        if wanted is not None:
            metrics = {k: v for k, v in metrics.items() if k in wanted}
        rows.append({"agent": source.agent, "dataSource": source.datasource,
                     "lastUpdate": source.last_update_ms(now), "metrics": metrics})
    return rows


def port_map_rows(snapshot: Iterable[CounterSource], now: float) -> list[dict[str, Any]]:
    """``/demon/portmap/json``: (agent, ifIndex) -> (dpid, OpenFlow port, name).

    From counter records 0:1004 (of_port) and 0:1005 (port_name) of ifIndex data
    sources; a bridge's own port (OpenFlow LOCAL) is left out. Pure.
    """
    out = []
    for source in snapshot:
        if not source.datasource.isdigit():
            continue
        fields = source.fields()
        of = fields.get(1004)
        name = fields.get(1005)
        if of is None and name is None:
            continue
        dpid = of.get("openflow_datapath_id") if of else None
        of_port = of.get("openflow_port") if of else None
        if of_port == OFPP_LOCAL:
            continue
        out.append({"agent": source.agent, "ifIndex": int(source.datasource), "dpid": dpid,
                    "dpidHex": None if dpid is None else f"{dpid:016x}", "ofPort": of_port,
                    "name": name.get("ifName") if name else None,
                    "lastSeen": source.last_update_ms(now)})
    out.sort(key=lambda row: (row["agent"], row["ifIndex"]))
    return out
