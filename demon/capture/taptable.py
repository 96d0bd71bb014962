"""The capture agent's tap table: which copy belongs to which tap.

A JSON file, re-read whenever it changes::

    {"version": 1, "taps": [
      {"tap_id": "t-1", "match": {"ipv4_src": "10.0.0.1", "tcp_dst": 5201, ...},
       "vlan_tag": null, "bidirectional": false,
       "policy": "elephant", "flow_key": "10.0.0.1,10.0.0.2,6,51792,5201",
       "trigger": {...}, "dpid": 1, "in_port": 1, "copy_port": 6,
       "start": 1700000000.0, "stop": null,
       "max_packets": 10000, "max_bytes": null, "limit": null}]}

``max_packets`` / ``max_bytes`` are the tap's capture budget (the policy's: the
daemon releases the tap when the mirror's switch counter reaches either; null
when there is none) and ``limit`` names what ended it once it ended
(``"max_packets"``, ``"max_bytes"``, ``"duration"``, ``"max_duration"``,
``"window"``, ``"hold"``; null otherwise). All three are optional: an entry
without them (a table written before they existed, an RPC ``list_mirrors``
result) reads as no budget and no limit known.

A bare list is accepted too, so the RPC ``list_mirrors`` result can be written
as is. A copy is told apart by its VLAN tag when the tap has one, else by the
tap's match (also reversed when ``bidirectional``). Unknown members are kept
in the entry (``Tap.info``); the manifests name a fixed set of fields
(:func:`demon.capture.sink.tap_fields`).

The table is the one meeting point of every way the agent learns taps: the
file (``--taps``), the daemon's state file (``--store``, read-only) and the
daemon's transition stream (``--daemon``, :mod:`demon.capture.stream`, through
:meth:`TapTable.upsert`). ``version`` counts changes, so the receive loop knows
when to recompile the kernel's demultiplexer.

A frame belongs to the newest matching tap that had not ended when the frame
was received (``stop`` + ``stop_slack``): the first copies of a re-tap never go
into the previous, ended tap's files, even before the re-tap is known (they
wait for it, see ``--grace``).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from demon.capture.packet import Fields, MatchError, compile_match, reverse_match

TAP_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class TapTableError(ValueError):
    """A bad tap table (the message names the entry and field)."""


ENDED_STATES = ("removed", "failed")
STOP_SLACK = 0.25  # s after a tap's recorded stop during which a copy is still its own


@dataclass
class Tap:
    tap_id: str
    info: dict[str, Any]
    vlan_tag: int | None
    predicates: list[Callable[[Fields], bool]] = field(default_factory=list)

    def matches(self, fields: Fields) -> bool:
        if self.vlan_tag is not None:
            return fields.get("vlan_vid") == self.vlan_tag
        return any(p(fields) for p in self.predicates)

    @property
    def start(self) -> float:
        value = self.info.get("start")
        return float(value) if isinstance(value, (int, float)) else 0.0

    @property
    def stop(self) -> float | None:
        value = self.info.get("stop")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def ended(self) -> bool:
        return self.stop is not None or self.info.get("state") in ENDED_STATES

    def covers(self, ts: float | None, slack: float = STOP_SLACK) -> bool:
        """Could a copy received at ``ts`` be this tap's? (No longer, once it ended.)"""
        stop = self.stop
        if stop is None:
            return not (self.info.get("state") in ENDED_STATES and ts is None)
        return ts is not None and ts <= stop + slack


def parse_taps(doc: Any, source: str = "tap table", errors: list[str] | None = None) -> list[Tap]:
    """The table's taps. A bad entry raises :class:`TapTableError`, or, when an
    ``errors`` list is given, is reported there and skipped (one bad tap must not
    send every other tap's packets to ``unmatched``)."""
    entries = doc.get("taps") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise TapTableError(f"{source}: expected a list of taps or {{\"taps\": [...]}}")
    taps: list[Tap] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        try:
            tap = _parse_tap(entry, f"{source}: taps[{i}]", seen)
        except TapTableError as exc:
            if errors is None:
                raise
            errors.append(str(exc))
            continue
        taps.append(tap)
    return taps


def _parse_tap(entry: Any, where: str, seen: set[str]) -> Tap:
    if not isinstance(entry, dict):
        raise TapTableError(f"{where}: must be an object")
    tap_id = entry.get("tap_id")
    if not isinstance(tap_id, str) or not TAP_ID.match(tap_id):
        raise TapTableError(f"{where}.tap_id: 1-64 chars of [A-Za-z0-9_.:-] required, got {tap_id!r}")
    if tap_id in seen:
        raise TapTableError(f"{where}.tap_id: duplicate {tap_id!r}")
    seen.add(tap_id)
    vlan = entry.get("vlan_tag")
    if vlan is not None and (not isinstance(vlan, int) or not 1 <= vlan <= 4094):
        raise TapTableError(f"{where}.vlan_tag: must be 1..4094 or null, got {vlan!r}")
    match = entry.get("match")
    predicates: list[Callable[[Fields], bool]] = []
    if vlan is None:
        if not isinstance(match, dict):
            raise TapTableError(f"{where}.match: an object is required when there is no vlan_tag")
        try:
            predicates.append(compile_match(match, f"{where}.match"))
            if entry.get("bidirectional"):
                predicates.append(compile_match(reverse_match(match), f"{where}.match"))
        except MatchError as exc:
            raise TapTableError(str(exc)) from None
    return Tap(tap_id, dict(entry), vlan, predicates)


class TapTable:
    """The taps of a JSON file, reloaded when its mtime or size changes (or, with
    no file, the taps given to :meth:`upsert`).

    An unreadable file is reported and the previous table stays in use; a bad
    entry is reported and skipped, the others load.
    """

    def __init__(self, path: Path | None = None, stop_slack: float = STOP_SLACK) -> None:
        self.path = Path(path) if path else None
        self.stop_slack = stop_slack
        self.taps: list[Tap] = []
        self.by_id: dict[str, Tap] = {}
        self.last_error: str | None = None
        self.version = 0
        self._stamp: tuple[int, int] | None = None

    def check(self) -> None:
        """Raise :class:`TapTableError` (one line) when the file cannot be used at all:
        missing, unreadable, not JSON, not a table. For the command line, at start."""
        if self.path is None:
            return
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise TapTableError(f"{self.path}: no such file") from None
        except OSError as exc:
            raise TapTableError(f"{self.path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise TapTableError(f"{self.path}: not a JSON tap table (not text)") from None
        except ValueError as exc:
            raise TapTableError(f"{self.path}: not a JSON tap table ({exc})") from None
        parse_taps(doc, str(self.path))  # strict: the first bad entry is the error

    def replace(self, taps: list[Tap]) -> None:
        # Oldest first (stable for equal starts): lookup walks it from the end.
        new = sorted(taps, key=lambda t: t.start)
        if [t.info for t in new] == [t.info for t in self.taps] and self.version:
            return  # re-read, nothing new: the kernel's program and the manifests stay
        self.taps = new
        self.by_id = {t.tap_id: t for t in self.taps}
        self.version += 1

    def upsert(self, entry: dict[str, Any]) -> Tap | None:
        """Add or update one tap (from the daemon's transition stream). A bad or never
        placed entry is reported in ``last_error`` and leaves the table as it was."""
        if not placed(entry):
            old = self.by_id.get(entry.get("tap_id"))  # type: ignore[arg-type]
            if old is not None:  # a placed tap that lost its placement: keep the old match
                entry = {**entry, "match": old.info.get("match"), "vlan_tag": old.vlan_tag}
            else:
                return None
        try:
            tap = _parse_tap(entry, f"tap {entry.get('tap_id')!r}", set())
        except TapTableError as exc:
            self.last_error = str(exc)
            return None
        old = self.by_id.get(tap.tap_id)
        if old is not None and old.info == tap.info:
            return old
        self.replace([t for t in self.taps if t.tap_id != tap.tap_id] + [tap])
        return tap

    def forget(self, before: float) -> list[str]:
        """Drop taps that ended before ``before`` (a long-running agent's table stays small)."""
        gone = [t.tap_id for t in self.taps if t.stop is not None and t.stop < before]
        if gone:
            self.replace([t for t in self.taps if t.tap_id not in gone])
        return gone

    def reload_if_changed(self) -> bool:
        """True if a new table was loaded."""
        if self.path is None:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        errors: list[str] = []
        try:
            taps = parse_taps(json.loads(self.path.read_text()), str(self.path), errors)
        except (OSError, ValueError) as exc:  # JSONDecodeError and TapTableError are ValueErrors
            self.last_error = str(exc)
            return False
        self.last_error = "; ".join(errors) or None
        self.replace(taps)
        return True

    def lookup(self, fields: Fields, ts: float | None = None) -> Tap | None:
        """The tap a frame received at ``ts`` belongs to: the newest matching one that
        had not ended by then. None when no tap matches, or only ended ones (the
        frame may be the first copy of a re-tap the table does not know yet)."""
        for tap in reversed(self.taps):
            if tap.matches(fields) and tap.covers(ts, self.stop_slack):
                return tap
        return None


def write_tap_table(path: Path, taps: list[dict[str, Any]]) -> None:
    """Replace the table atomically (the agent never reads half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "taps": taps}, indent=1, default=str))
    os.replace(tmp, path)


def tap_table_entry(tap: dict[str, Any]) -> dict[str, Any]:
    """A tap table entry from the daemon's tap (``demon.model.tap_to_dict``)."""
    return {"tap_id": tap["tap_id"], "match": tap.get("match"), "vlan_tag": tap.get("vlan_tag"),
            "bidirectional": tap.get("bidirectional", False), "policy": tap.get("policy"),
            "flow_key": tap.get("flow_key"), "trigger": tap.get("trigger"), "dpid": tap.get("dpid"),
            "in_port": tap.get("in_port"), "copy_port": tap.get("copy_port"),
            "start": tap.get("created_at"), "stop": tap.get("ended_at"), "state": tap.get("state"),
            "packets": tap.get("packets"), "bytes": tap.get("bytes"),
            "max_packets": budget_count(tap.get("max_packets")),
            "max_bytes": budget_count(tap.get("max_bytes")),
            "limit": tap.get("limit") or None}


def budget_count(value: Any) -> int | None:
    """A budget as a whole count, None when there is none (or it is not a number).

    The daemon keeps ``max_bytes`` as a float (``1.5GiB`` is parsed); a switch counts
    whole bytes and the budget is reached at the first count >= it, so it is
    rounded up."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return int(math.ceil(value))


def tap_budget(info: dict[str, Any]) -> dict[str, Any]:
    """The budget and the ending limit of a tap table entry, as the manifests give them:
    ``max_packets``, ``max_bytes`` (null: none, or an entry from before they were
    carried) and ``limit`` (what ended it; null while it lives or when not known)."""
    limit = info.get("limit")
    return {"max_packets": budget_count(info.get("max_packets")),
            "max_bytes": budget_count(info.get("max_bytes")),
            "limit": limit if isinstance(limit, str) and limit else None}


def placed(tap: dict[str, Any]) -> bool:
    """A tap that was never placed (failed before any install) has nothing to match."""
    return bool(tap.get("match") or tap.get("vlan_tag"))


class StoreTapTable(TapTable):
    """The taps of the daemon's state file (``demon-watch --state``), read-only,
    re-read when the file or its write-ahead log changes."""

    def __init__(self, path: Path, stop_slack: float = STOP_SLACK) -> None:
        super().__init__(None, stop_slack)
        self.store_path = Path(path)
        self._store: Any = None
        self._store_stamp: tuple[int, ...] | None = None

    def _stamp_now(self) -> tuple[int, ...]:
        out: list[int] = []
        for suffix in ("", "-wal"):
            try:
                st = os.stat(f"{self.store_path}{suffix}")
                out += [st.st_mtime_ns, st.st_size]
            except FileNotFoundError:
                out += [0, 0]
        return tuple(out)

    def reload_if_changed(self) -> bool:
        stamp = self._stamp_now()
        if stamp == self._store_stamp:
            return False
        self._store_stamp = stamp
        from demon.model import tap_to_dict
        from demon.store import Store, StoreError

        try:
            if self._store is None:
                self._store = Store(self.store_path, readonly=True)
            entries = [tap_table_entry(tap_to_dict(t)) for t in self._store.taps()]
        except (StoreError, OSError, ValueError) as exc:
            self.last_error = f"{self.store_path}: {exc}"
            self._store = None
            return False
        except Exception as exc:  # noqa: BLE001 — sqlite errors while the daemon migrates
            self.last_error = f"{self.store_path}: {exc}"
            return False
        errors: list[str] = []
        taps = parse_taps([e for e in entries if placed(e)], str(self.store_path), errors)
        self.last_error = "; ".join(errors) or None
        self.replace(taps)
        return True
