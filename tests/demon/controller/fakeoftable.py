"""A fake OpenFlow flow table (1.0 or 1.3), after Faucet's ``clib/fakeoftable.py``.

It does what a switch does with the neutral changes the mirror book emits
(:mod:`demon.controller.changes`): ADD replaces an entry of equal table, priority
and match (OpenFlow 1.0 clears its counters, 1.3 copies them over, as Open vSwitch
does; its timeouts start again), DELETE_STRICT removes exactly one, an entry
with ``send_flow_rem`` reports its removal (reason and final counters); idle and
hard timeouts run on the clock the test passes; an output to a port the switch
does not have is refused. And it answers what a packet would do: the single
highest-priority matching entry of table 0 wins (a tie between two matching
entries is a bug: OpenFlow leaves it undefined), its counters move, and its
actions say where the packet and its copies go, the VLAN tag pushed, set and
popped as each version's actions do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from demon.controller import merge, of10, of13
from demon.controller.changes import Change, FlowMod, PortNoFlood, Removed, Row
from demon.controller.fabric import Entry
from demon.controller.spec import is_mirror_cookie

Key = tuple[int, int, tuple[tuple[str, str], ...]]  # (table, priority, canonical match)


class Refused(Exception):
    """A change the switch answered with an OpenFlow error (the others of the batch apply)."""

    def __init__(self, type_: int, code: int) -> None:
        super().__init__(f"OpenFlow error type={type_} code={code}")
        self.type, self.code = type_, code


@dataclass
class Held:
    entry: Entry
    since: float
    last_hit: float
    packets: int = 0
    bytes: int = 0


def key_of(entry: Entry) -> Key:
    return (entry.table_id, entry.priority, merge.canonical(entry.match))


class FakeFlowTable:
    """One switch's flow tables. ``miss``: the forwarding reported for a packet no entry
    of table 0 matches; ``forward_ports``: outputs that forward the packet (a static
    pair) rather than copy it."""

    def __init__(self, openflow: str = "1.3", ports: Iterable[int] = range(1, 12), now: float = 0.0,
                 miss: tuple[str, ...] = ("baseline",), forward_ports: Iterable[int] = ()) -> None:
        self.openflow = openflow
        self.ports = set(ports)
        self.now = now
        self.miss = list(miss)
        self.forward_ports = set(forward_ports)
        self.held: dict[Key, Held] = {}
        self.no_flood: set[int] = set()
        #: FlowRemoved messages sent and not yet taken (:meth:`take_removed`)
        self.removed: list[Removed] = []

    # ---------------------------------------------------------------- changes
    def apply(self, changes: Iterable[Change], now: float | None = None) -> None:
        """Apply a batch in order; raises Refused after the batch if any change was refused."""
        now = self.now if now is None else now
        refused: Refused | None = None
        for change in changes:
            if isinstance(change, PortNoFlood):
                self.no_flood.add(change.port_no)
                continue
            assert isinstance(change, FlowMod), change
            entry = change.entry
            if change.command == "add":
                bad = [a for a in entry.actions if a.startswith("output:") and int(a[7:]) not in self.ports]
                if bad:
                    refused = refused or Refused(2, 4)  # OFPET_BAD_ACTION / OFPBAC_BAD_OUT_PORT
                    continue
                old = self.held.get(key_of(entry))
                held = self.held[key_of(entry)] = Held(entry, now, now)
                if old is not None and self.openflow == "1.3":  # 1.3 copies the counters over
                    held.packets, held.bytes = old.packets, old.bytes
            elif change.command == "delete_strict":
                self._remove(key_of(entry), "delete")
            else:
                raise AssertionError(f"unknown command {change.command}")
        if refused is not None:
            raise refused

    def _remove(self, key: Key, reason: str) -> None:
        held = self.held.pop(key, None)
        if held is not None and held.entry.send_flow_rem:
            e = held.entry
            self.removed.append(Removed(e.priority, dict(e.match), e.cookie, reason, held.packets, held.bytes,
                                        round(self.now - held.since, 3), e.table_id))

    def take_removed(self) -> list[Removed]:
        out, self.removed = self.removed, []
        return out

    def advance(self, now: float) -> None:
        """The clock moves on: idle and hard timeouts remove entries."""
        self.now = now
        for key, held in list(self.held.items()):
            e = held.entry
            if e.hard_timeout and now >= held.since + e.hard_timeout:
                self._remove(key, "hard_timeout")
            elif e.idle_timeout and now >= held.last_hit + e.idle_timeout:
                self._remove(key, "idle_timeout")

    def wipe(self) -> None:
        """Every entry gone without a word (a switch restart)."""
        self.held.clear()

    # ----------------------------------------------------------------- reads
    def rows(self) -> list[Row]:
        return [(h.entry, h.packets, h.bytes, round(self.now - h.since, 3)) for h in self.held.values()]

    def entries(self, cookie: int | None = None, table: int | None = None) -> list[Entry]:
        return sorted((h.entry for h in self.held.values()
                       if (cookie is None or h.entry.cookie == cookie) and (table is None or h.entry.table_id == table)),
                      key=lambda e: (e.table_id, -e.priority, merge.canonical(e.match)))

    def mirrors(self) -> dict[merge.EntryKey, Entry]:
        """Table 0's mirror entries by (priority, match)."""
        return {merge.entry_key(h.entry.priority, h.entry.match): h.entry for h in self.held.values()
                if h.entry.table_id == 0 and is_mirror_cookie(h.entry.cookie)}

    def lookup(self, packet: Mapping[str, Any]) -> Entry | None:
        """The entry of table 0 a packet hits."""
        held = self._winner(packet)
        return None if held is None else held.entry

    def _winner(self, packet: Mapping[str, Any]) -> Held | None:
        hits = [h for h in self.held.values() if h.entry.table_id == 0 and merge.matches_packet(h.entry.match, packet)]
        if not hits:
            return None
        top = max(h.entry.priority for h in hits)
        winners = [h for h in hits if h.entry.priority == top]
        assert len(winners) == 1, f"ambiguous: {len(winners)} entries of priority {top} match {packet}"
        return winners[0]

    # ------------------------------------------------------------- packets
    def send(self, packet: Mapping[str, Any], count: int = 1, size: int = 100) -> tuple[list[str], list[tuple[int, int | None]]]:
        """``count`` packets like ``packet`` arrive: counters move; returns their route."""
        held = self._winner(packet)
        if held is not None:
            held.packets += count
            held.bytes += count * size
            held.last_hit = self.now
        return self.route(packet)

    def route(self, packet: Mapping[str, Any]) -> tuple[list[str], list[tuple[int, int | None]]]:
        """(forwarding, copies as (port, vlan)) of an untagged packet."""
        entry = self.lookup(packet)
        if entry is None:
            return list(self.miss), []
        return self._route13(entry) if self.openflow == "1.3" else self._route10(entry)

    def _route10(self, entry: Entry) -> tuple[list[str], list[tuple[int, int | None]]]:
        forward: list[str] = []
        copies: list[tuple[int, int | None]] = []
        vlan = None
        for action in of10.from_of10_actions(of10.to_of10_actions(entry.actions)):
            if action == "NORMAL" or (action.startswith("output:") and int(action[7:]) in self.forward_ports):
                assert vlan is None, "forwarded traffic must never carry the copy's VLAN tag"
                forward.append(action)
            elif action.startswith("output:"):
                copies.append((int(action[7:]), vlan))
            elif action.startswith("set_field:vlan_vid="):
                vlan = int(action.split("=")[1])
        return forward, copies

    def _route13(self, entry: Entry) -> tuple[list[str], list[tuple[int, int | None]]]:
        mod = of13.flow_mod(entry)  # the FlowMod the app sends, run as the switch would
        forward: list[str] = []
        copies: list[tuple[int, int | None]] = []
        tags: list[int] = []
        for action in mod["actions"]:
            if action[0] == "push_vlan":
                tags.append(0)
            elif action[0] == "set_field" and action[1] == "vlan_vid":
                assert tags, "set_field:vlan_vid on an untagged packet"
                tags[-1] = action[2] & 0x0FFF
            elif action[0] == "pop_vlan":
                tags.pop()
            elif action == ("output", of13.OFPP_NORMAL) or (action[0] == "output" and action[1] in self.forward_ports):
                assert not tags, "forwarded traffic must never carry a copy's VLAN tag"
                forward.append(of13.action_to_string(action))
            elif action[0] == "output":
                assert len(tags) <= 1, "a copy carries at most one tag"
                copies.append((action[1], tags[-1] if tags else None))
        if mod["goto_table"] is not None:
            assert mod["goto_table"] == 1 and not tags, "the L2 table must see the packet untagged"
            forward.append("goto_table:1")
        return forward, copies


def compiled_changes(to_add: Iterable[merge.CompiledEntry], to_delete: Iterable[merge.CompiledEntry]) -> list[Change]:
    """The changes for a :func:`merge.diff` (stale entries deleted, new or changed ones added)."""
    return [FlowMod("delete_strict", c.entry) for c in to_delete] + [FlowMod("add", c.entry) for c in to_add]
