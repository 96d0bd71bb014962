"""Address groups (``/group/{name}/json``), value maps (``/map/{name}/json``), and the
optional IP → country/AS data behind ``country:`` and ``asn:``.

Group body (sFlow-RT's ``Group`` schema): ``{"label": ["10.0.0.0/8", "::/0", ...], ...}``.
``group:<key>:<group>`` labels an address with the label whose CIDR is the
*longest* prefix containing it, across the group's labels (so ``external:
[0.0.0.0/0]`` is what is left over once ``private: [10.0.0.0/8]`` matched).
Several groups (``group:ipsource:g1:g2``) are tried in order until one matches.

Map body (``Map`` schema): ``{"web": ["80", "443"], "mail": ["25"]}``;
``map:<key>:<map>`` gives the label listing the key's value.

``country:<key>`` / ``asn:<key>[:number|name]`` read a table of IP ranges
(``--asn-file``): the ``ip2asn`` TSV layout (range start, range end, AS
number, country code, AS description; IPv4 and IPv6 lines, e.g. iptoasn.com's
public-domain ``ip2asn-combined.tsv``). Without one, flows using them are
refused with a 400 that says so.

Pure; the HTTP API owns the stores and their lock.
"""

from __future__ import annotations

import bisect
import gzip
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

__all__ = ["GroupError", "AddressGroup", "ValueMap", "AsnTable", "MAX_GROUP_BYTES",
           "MAX_ENTRIES", "MAX_SETS"]

MAX_GROUP_BYTES = 8 << 20
#: CIDRs in one group / values in one map
MAX_ENTRIES = 200_000
#: groups (and maps) the engine keeps
MAX_SETS = 1_000
_MAX_LABEL = 200


class GroupError(ValueError):
    """A group, map or data file we refuse; the message names the field or line."""


def _labels(body: Any, what: str) -> dict[str, list[str]]:
    if not isinstance(body, dict):
        raise GroupError(f"body: expected a JSON object of label: [{what}, ...]")
    total = 0
    out: dict[str, list[str]] = {}
    for label, values in body.items():
        if not isinstance(label, str) or not label or len(label) > _MAX_LABEL:
            raise GroupError(f"{label!r}: a label is 1-{_MAX_LABEL} characters")
        if not isinstance(values, list):
            raise GroupError(f"{label}: expected a list of {what}s")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise GroupError(f"{label}: expected {what}s as strings, got {value!r}")
        total += len(values)
        if total > MAX_ENTRIES:
            raise GroupError(f"{label}: more than {MAX_ENTRIES} entries in all")
        out[label] = [str(v) for v in values]
    return out


class AddressGroup:
    """A named set of labelled CIDRs; :meth:`label` is a longest-prefix match."""

    def __init__(self, body: dict[str, list[str]]) -> None:
        self.body = body
        # per family: prefix lengths (longest first) and {(plen, network int): label}
        self._v4: dict[int, dict[int, str]] = {}
        self._v6: dict[int, dict[int, str]] = {}
        for label, cidrs in body.items():
            for text in cidrs:
                try:
                    net = ipaddress.ip_network(text.strip(), strict=False)
                except ValueError:
                    raise GroupError(f"{label}: {text!r} is not an IP address or CIDR") from None
                table = self._v4 if net.version == 4 else self._v6
                # the first label listing a CIDR keeps it (a duplicate is ignored)
                table.setdefault(net.prefixlen, {}).setdefault(int(net.network_address), label)
        self._lens4 = sorted(self._v4, reverse=True)
        self._lens6 = sorted(self._v6, reverse=True)

    @classmethod
    def parse(cls, body: Any) -> "AddressGroup":
        return cls(_labels(body, "CIDR"))

    def label(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        value = int(ip)
        if ip.version == 4:
            lens, table, bits = self._lens4, self._v4, 32
        else:
            lens, table, bits = self._lens6, self._v6, 128
        for plen in lens:
            network = value >> (bits - plen) << (bits - plen) if plen else 0
            found = table[plen].get(network)
            if found is not None:
                return found
        return None


class ValueMap:
    """A named map of labels to key values; :meth:`label` finds a value's label."""

    def __init__(self, body: dict[str, list[str]]) -> None:
        self.body = body
        self._lookup: dict[str, str] = {}
        for label, values in body.items():
            for value in values:
                self._lookup.setdefault(value, label)

    @classmethod
    def parse(cls, body: Any) -> "ValueMap":
        return cls(_labels(body, "value"))

    def label(self, value: str) -> str | None:
        return self._lookup.get(value)


def parse_json_bytes(raw: bytes) -> Any:
    if len(raw) > MAX_GROUP_BYTES:
        raise GroupError(f"body: larger than {MAX_GROUP_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise GroupError(f"body: not JSON: {exc}") from None


@dataclass(frozen=True)
class _Range:
    asn: int
    country: str
    name: str


class AsnTable:
    """IP ranges → (AS number, country code, AS name), from an ip2asn TSV file."""

    def __init__(self) -> None:
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._rows: dict[int, list[tuple[int, int, _Range]]] = {4: [], 6: []}

    @classmethod
    def load(cls, path: str | Path) -> "AsnTable":
        """Read ``range_start<TAB>range_end<TAB>AS_number<TAB>country<TAB>description``
        lines (``.gz`` is read compressed). A malformed line is an error naming it."""
        table = cls()
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        rows: dict[int, list[tuple[int, int, _Range]]] = {4: [], 6: []}
        try:
            with opener(path, "rt", encoding="utf-8", errors="replace") as fh:  # type: ignore[operator]
                for number, line in enumerate(fh, 1):
                    line = line.rstrip("\r\n")
                    if not line or line.startswith("#"):
                        continue
                    parts = line.split("\t")
                    if len(parts) < 4:
                        raise GroupError(f"{path}:{number}: expected start, end, AS number, "
                                         "country and description separated by tabs")
                    try:
                        start = ipaddress.ip_address(parts[0])
                        end = ipaddress.ip_address(parts[1])
                        asn = int(parts[2])
                    except ValueError as exc:
                        raise GroupError(f"{path}:{number}: {exc}") from None
                    if start.version != end.version or int(end) < int(start):
                        raise GroupError(f"{path}:{number}: bad range {parts[0]}-{parts[1]}")
                    country = parts[3].strip()
                    name = parts[4].strip() if len(parts) > 4 else ""
                    rows[start.version].append((int(start), int(end), _Range(asn, country, name)))
        except OSError as exc:
            raise GroupError(f"{path}: cannot read: {exc}") from None
        for version, items in rows.items():
            items.sort(key=lambda r: r[0])
            table._rows[version] = items
            table._starts[version] = [r[0] for r in items]
        return table

    def _find(self, address: str) -> _Range | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        value = int(ip)
        starts = self._starts[ip.version]
        i = bisect.bisect_right(starts, value) - 1
        if i < 0:
            return None
        start, end, rng = self._rows[ip.version][i]
        return rng if start <= value <= end else None

    def country(self, address: str) -> str | None:
        rng = self._find(address)
        if rng is None or not rng.country or rng.country == "None":
            return None
        return rng.country

    def asn(self, address: str, attr: str = "number") -> str | None:
        rng = self._find(address)
        if rng is None or rng.asn == 0:  # 0: not routed
            return None
        if attr == "name":
            return rng.name or None
        return str(rng.asn)

    def __len__(self) -> int:
        return len(self._rows[4]) + len(self._rows[6])


def sets_json(sets: Mapping[str, AddressGroup | ValueMap]) -> dict[str, Any]:
    return {name: s.body for name, s in sets.items()}
