"""What the mirror book knows of one switch, and the changes that bring it to what is wanted.

Pure and standard library only (the POX component imports it). A
:class:`SwitchView` holds the entries the switch holds as far as the book knows
(baseline and static by table/priority/match; mirrors as the
:class:`~demon.controller.merge.CompiledEntry` they were compiled as), entries of
taps nobody here knows (*strays*), and the deletes whose FlowRemoved is still to
come (so their final counters reach the right taps, and they are not mistaken
for news).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from demon.controller import merge
from demon.controller.changes import Change, FlowMod, Outcome, Row
from demon.controller.fabric import Entry, SwitchRole
from demon.controller.merge import CompiledEntry, EntryKey
from demon.controller.spec import BASELINE_COOKIE, STATIC_COOKIE, is_mirror_cookie

#: seconds the FlowRemoved of an entry the book deleted is waited for
DELETE_WAIT = 5.0
BaseKey = tuple[int, int, tuple[tuple[str, str], ...]]  # (table, priority, canonical match)


def base_key(entry: Entry) -> BaseKey:
    return (entry.table_id, entry.priority, merge.canonical(entry.match))


def same_base(a: Entry, b: Entry) -> bool:
    return (a.actions, a.cookie, a.idle_timeout, a.hard_timeout) == (b.actions, b.cookie, b.idle_timeout,
                                                                   b.hard_timeout)


def same_mirror(held: Entry, compiled: Entry) -> bool:
    """Does the switch's entry do what the compiled one would (its hard deadline aside)?"""
    return (held.actions, held.cookie, held.idle_timeout) == (compiled.actions, compiled.cookie,
                                                              compiled.idle_timeout)


def credit_of(compiled: CompiledEntry) -> dict[str, str]:
    """Who an entry's final counters go to: each member tap once (a tap whose two
    directions share an entry counts it once)."""
    out: dict[str, str] = {}
    for tap_id, direction in sorted(compiled.members):
        out.setdefault(tap_id, direction)
    return out


def _only_later(held: CompiledEntry, wanted: CompiledEntry) -> bool:
    """Is the one difference a later deadline for the same taps (nothing to send now)?"""
    return (held.members == wanted.members and wanted.expires_at >= held.expires_at
            and same_mirror(held.entry, wanted.entry))


def mirror_table(rows: list[Row]) -> dict[EntryKey, Entry]:
    """Table 0's mirror entries of a flow-table read, by (priority, match)."""
    return {merge.entry_key(e.priority, e.match): e for e, *_ in rows
            if e.table_id == 0 and is_mirror_cookie(e.cookie)}


@dataclass
class Deleting:
    """An entry the book deleted, whose FlowRemoved is expected: who its counters go to."""

    credit: dict[str, str]  # tap id → direction
    until: float


@dataclass
class SwitchView:
    dpid: int
    name: str
    role: str | None
    connected: bool = False
    connected_at: float = 0.0
    ports: dict[int, dict[str, Any]] = field(default_factory=dict)
    base: dict[BaseKey, Entry] = field(default_factory=dict)
    installed: dict[EntryKey, CompiledEntry] = field(default_factory=dict)
    strays: dict[EntryKey, Entry] = field(default_factory=dict)
    deleting: dict[EntryKey, list[Deleting]] = field(default_factory=dict)
    #: packet counts of merged entries at the last idle check (see merge.kept_alive)
    seen: dict[EntryKey, int] = field(default_factory=dict)
    #: idled-out entries whose owners wait for the switch's counters
    idle_waiting: list[CompiledEntry] = field(default_factory=list)

    # ------------------------------------------------------------ mirrors

    def delete(self, key: EntryKey, entry: Entry, credit: dict[str, str], now: float, out: Outcome) -> FlowMod:
        """DELETE_STRICT an entry, expecting its FlowRemoved (counters to ``credit``)."""
        self.deleting.setdefault(key, []).append(Deleting(credit, now + DELETE_WAIT))
        out.awaiting.add((self.dpid, key))
        return FlowMod("delete_strict", entry)

    def own_delete(self, key: EntryKey) -> Deleting | None:
        """The book's delete a FlowRemoved (reason delete) of ``key`` answers, if any."""
        pending = self.deleting.get(key)
        if not pending:
            return None
        done = pending.pop(0)
        if not pending:
            del self.deleting[key]
        return done

    def forget_deletes(self, now: float) -> None:
        """FlowRemoved no longer expected (the entry was gone already) stop being waited for."""
        for key in list(self.deleting):
            self.deleting[key] = [d for d in self.deleting[key] if d.until > now]
            if not self.deleting[key]:
                del self.deleting[key]

    def push(self, wanted: list[CompiledEntry], now: float, out: Outcome, add_keeps_counters: bool) -> None:
        """Changes from what a connected switch holds to ``wanted``, keeping every entry's counters:

        * new entries are added first (a bigger region's copy never lapses), stale ones
          deleted last (their FlowRemoved brings their final counters);
        * an entry whose only change is a later deadline is left as it is (its hard
          timeout, a fail-safe, is re-armed when it fires: see ``merge.ended_rules``);
        * an entry whose content changes for the same taps is replaced by ADD where
          that keeps its counters (OpenFlow 1.3 without RESET_COUNTS,
          ``add_keeps_counters``), else deleted and added again; when its taps
          change it is always deleted and added, so its counters go to the taps
          that had its copies.
        """
        if not self.connected:
            return
        to_add, to_delete = merge.diff(self.installed, wanted)
        kept: dict[EntryKey, CompiledEntry] = {}
        mods: list[Change] = [FlowMod("add", c.entry) for c in to_add if c.key not in self.installed]
        for c in to_add:
            old = self.installed.get(c.key)
            if old is None:
                self.seen.pop(c.key, None)
            elif _only_later(old, c):
                kept[c.key] = old
            elif old.members == c.members and add_keeps_counters:
                mods.append(FlowMod("add", c.entry))
            else:
                mods += [self.delete(c.key, old.entry, credit_of(old), now, out), FlowMod("add", c.entry)]
                self.seen.pop(c.key, None)  # counters restart with the entry
        mods += [self.delete(c.key, c.entry, credit_of(c), now, out) for c in to_delete]
        self.installed = {c.key: kept.get(c.key, c) for c in wanted}
        out.add(self.dpid, mods)

    def adopt(self, table: Mapping[EntryKey, Entry], wanted: list[CompiledEntry]) -> dict[EntryKey, Entry]:
        """Take the switch's mirror entries as read now: those that do what they should are
        kept as they are (their counters go on); returns the entries left unexplained."""
        present = {c.key: c for c in wanted if c.key in table and same_mirror(table[c.key], c.entry)}
        for key, c in self.installed.items():  # outdated but still there: push deletes them
            if key not in present and key in table and same_mirror(table[key], c.entry):
                present[key] = c
        self.installed = present
        return {key: entry for key, entry in table.items() if key not in present}

    # ---------------------------------------------------- baseline, static

    def reconcile_base(self, rows: list[Row], intended: list[Entry], out: Outcome) -> None:
        """Baseline and static entries as read now → what ``intended`` says."""
        have = {base_key(e): e for e, *_ in rows if e.cookie in (BASELINE_COOKIE, STATIC_COOKIE)}
        self.base = have
        self.sync_base(intended, out)

    def sync_base(self, intended: list[Entry], out: Outcome) -> None:
        """Baseline and static entries to ``intended`` (replaced by ADD: their counters do not matter)."""
        want = {base_key(e): e for e in intended}
        mods: list[Change] = [FlowMod("delete_strict", e) for k, e in self.base.items() if k not in want]
        mods += [FlowMod("add", e) for k, e in want.items() if k not in self.base or not same_base(self.base[k], e)]
        self.base = want
        out.add(self.dpid, mods)

    # ------------------------------------------------------------- reading

    def record(self, role: SwitchRole | None) -> dict[str, Any]:
        """The ``list_switches`` record."""
        return {"dpid": self.dpid, "name": self.name, "role": self.role, "connected_at": round(self.connected_at, 3),
                "ports": [self.ports[n] for n in sorted(self.ports)],
                "host_ports": list(role.host_ports) if role else [],
                "uplinks": list(role.uplinks) if role else [],
                "capture_port": role.capture_port if role else None}
