"""Decoded sFlow v5 structures: the contract between the decoder and the engine.

Plain slotted dataclasses, no behaviour beyond small derived properties. The
decoder (``sflow.decode``) builds them; flow keys (``sflow.keys``), the engine
and ``demon-sflow decode`` read them. Treat decoded structures as read-only:
for speed the decoder shares identical ``Interface`` and extended_switch
``Record`` objects between samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Interface value formats (sFlow v5 §5.2, "interface" encoding).
IF_FORMAT_IFINDEX = 0
IF_FORMAT_DISCARD = 1
IF_FORMAT_MULTIPLE = 2
IF_INTERNAL = 0x3FFFFFFF

# Data source classes.
DS_IFINDEX = 0
DS_VLAN = 1
DS_PHYSICAL = 2
DS_LOGICAL = 3


@dataclass(slots=True, frozen=True)
class Interface:
    """An input/output interface field, compact or expanded, normalised.

    ``format`` 0 = ifIndex (``value`` 0 unknown, 0x3FFFFFFF internal),
    1 = discarded (``value`` = reason code), 2 = multiple (``value`` = count,
    0 = unknown).
    """

    format: int
    value: int

    @property
    def is_ifindex(self) -> bool:
        return self.format == IF_FORMAT_IFINDEX and 0 < self.value != IF_INTERNAL


@dataclass(slots=True)
class Record:
    """One flow or counter record: ``enterprise:format`` plus its decoded fields.

    ``fields`` holds the decoded values (names follow sflowtool's where it has
    one); an unknown record keeps only its length (``fields == {}``,
    ``known=False``).
    """

    enterprise: int
    format: int
    length: int
    fields: dict[str, Any] = field(default_factory=dict)
    known: bool = True

    @property
    def tag(self) -> str:
        return f"{self.enterprise}:{self.format}"


@dataclass(slots=True)
class FlowSample:
    """A flow sample (0:1 compact, 0:3 expanded) or a drop notification (0:5)."""

    sequence: int
    source_class: int
    source_index: int
    sampling_rate: int
    sample_pool: int
    drops: int
    input: Interface
    output: Interface
    records: list[Record]
    expanded: bool = False
    discard_reason: int | None = None  # set for 0:5 discarded-packet samples

    def record(self, enterprise: int, fmt: int) -> Record | None:
        for rec in self.records:
            if rec.enterprise == enterprise and rec.format == fmt:
                return rec
        return None


@dataclass(slots=True)
class CounterSample:
    """A counter sample (0:2 compact, 0:4 expanded)."""

    sequence: int
    source_class: int
    source_index: int
    records: list[Record]
    expanded: bool = False
    #: the sample's counter_record<> as received (count + records), set by the decoder;
    #: the engine keeps these bytes and decodes them when something reads them
    raw: bytes | None = field(default=None, repr=False, compare=False)

    def record(self, enterprise: int, fmt: int) -> Record | None:
        for rec in self.records:
            if rec.enterprise == enterprise and rec.format == fmt:
                return rec
        return None


@dataclass(slots=True)
class UnknownSample:
    """A sample whose format the decoder does not know: skipped by its length."""

    enterprise: int
    format: int
    length: int


@dataclass(slots=True)
class Datagram:
    """One sFlow v5 datagram. ``agent`` is the agent address carried inside it."""

    agent: str
    sub_agent_id: int
    sequence: int
    uptime_ms: int
    flow_samples: list[FlowSample] = field(default_factory=list)
    counter_samples: list[CounterSample] = field(default_factory=list)
    unknown_samples: list[UnknownSample] = field(default_factory=list)
    version: int = 5
    agent_ip_version: int = 4  # 4, 6, or 0 for an UNKNOWN (type 0) agent address ("")
    # every sample above, in wire order (the typed lists lose the interleaving)
    samples: list[FlowSample | CounterSample | UnknownSample] = field(default_factory=list)
