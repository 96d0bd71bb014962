"""The mirror book: the one core both controller components share (Faucet's valve shape).

Pure and standard library only (the POX component imports it): every input is a
method call that is handed ``now`` and returns an :class:`~demon.controller.changes.Outcome`
(flow changes per switch in neutral form, events to publish, the RPC answer). The
components (:mod:`demon.controller.service` and the thin os-ken / POX adapters
under it) read the clock, send the changes, confirm them with a barrier and feed
back what the switches say; nothing here does I/O.

What it keeps:

* the switches of the fabric: connected or not, ports, the baseline and static
  entries each holds, the mirror entries it holds (:class:`~demon.controller.merge.CompiledEntry`),
  entries of unknown taps found on it (*strays*: an earlier process's);
* the taps asked for (``install_mirror``), one :class:`~demon.controller.merge.MirrorRule`
  per direction, compiled per switch with overlapping taps merged
  (:mod:`demon.controller.merge`, actions by :mod:`~demon.controller.of10` /
  :mod:`~demon.controller.of13`);
* each tap's counters of entries that have left the switch, so a tap's figures
  accumulate across re-installs, merges and restarts (they go in the state file).

Where the truth lies after a (re)connection (:meth:`MirrorBook.reconcile`): for
taps installed by this process the book knows best, so entries a switch lost
(it restarted, its flows were wiped while it was away) are installed again; for
taps remembered from the state file of an earlier process the switch knows best,
since they may have timed out meanwhile: those it still holds are adopted as
they are, the others ended (reason ``unknown``).

Entries are changed by ADD when new, DELETE_STRICT then ADD when their content
changes (so the old entry's FlowRemoved brings its final counters), and
DELETE_STRICT when stale. FlowRemoved of the book's own deletes only credit
counters; any other one ends the rules :func:`merge.ended_rules` names, after
asking for the switch's counters when an idle tap may be kept alive by traffic
in a merged entry (:func:`merge.kept_alive`).
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping

from demon.controller import merge, of10, of13, taps
from demon.controller.changes import Change, FlowMod, Outcome, PortNoFlood, Removed, Row
from demon.controller.fabric import (Entry, Fabric, StaticConfig, forward_actions, intended_entries,
                                     mirror_record, no_flood_ports, static_entries, uses_l2_table)
from demon.controller.merge import CompiledEntry, EntryKey, MirrorRule, RuleKey
from demon.controller.spec import (BASELINE_COOKIE, STATIC_COOKIE, MirrorSpec, allocate_cookie,
                                   cookie_for_tap, is_mirror_cookie, parse_mirror_params)
from demon.controller.switchview import SwitchView, credit_of, mirror_table
from demon.controller.taps import DIRECTIONS, Removal, Tap


class UnknownSwitch(LookupError):
    """The call names a switch that is not connected."""

    def __init__(self, dpid: int) -> None:
        super().__init__(f"params.dpid: switch {dpid} is not connected")
        self.dpid = dpid


class MirrorBook:
    """The taps, the switches and what each switch holds; see the module doc."""

    #: a rule still held this long past its hard deadline is ended by :meth:`tick`
    HARD_SLACK = 5.0

    def __init__(self, fabric: Fabric, openflow: str, static: StaticConfig | None = None) -> None:
        if openflow not in ("1.0", "1.3"):
            raise ValueError("openflow must be 1.0 or 1.3")
        self.fabric = fabric
        self.openflow = openflow
        # OpenFlow 1.3 copies an entry's counters to the one an ADD puts in its place (unless
        # OFPFF_RESET_COUNTS); 1.0 clears them (Open vSwitch does both as written).
        self._add_keeps_counters = openflow == "1.3"
        self.static = static if static is not None else fabric.static
        self.switches: dict[int, SwitchView] = {}
        self.rules: dict[int, dict[RuleKey, MirrorRule]] = {}
        self.taps: dict[str, Tap] = {}
        self.removing: dict[str, Removal] = {}
        #: FlowRemoved messages seen, by reason (read by the metrics)
        self.flow_removed_total: dict[str, int] = {}
        #: set when what the state file holds changed; the component clears it once saved
        self.dirty = False

    # ------------------------------------------------------------ state file

    def state(self) -> list[dict[str, Any]]:
        """The tap records of the state file (``demon.rpc.protocol.encode_state``)."""
        return [tap.record() for _, tap in sorted(self.taps.items())]

    def load(self, records: Iterable[Mapping[str, Any]], now: float) -> list[str]:
        """Taps of an earlier process (``decode_state`` records), unconfirmed until their
        switch's table is seen; returns one line per record left out."""
        problems = []
        for record in records:
            try:
                spec = parse_mirror_params(record["params"], self.openflow)
                rules = [r for r in self._rules_for(spec, record["cookie"], record["installed_at"])
                         if r.direction in record["live"]]
            except ValueError as exc:  # SpecError, MergeError
                problems.append(f"tap {record['params'].get('tap_id')!r}: {exc}")
                continue
            if not rules or record["installed_at"] + spec.hard_timeout <= now:
                continue  # its hard timeout has removed it already
            for r in rules:
                self.rules.setdefault(spec.dpid, {})[r.key] = r
            self.taps[spec.tap_id] = Tap(spec, record["cookie"], record["installed_at"], dict(record["result"]),
                                         {r.direction for r in rules}, taps.counters_of(record), confirmed=False)
        return problems

    # -------------------------------------------------------------- switches

    def switch_up(self, dpid: int, ports: Mapping[int, Mapping[str, Any]], rows: list[Row],
                  now: float) -> Outcome:
        """A switch connected; ``rows``: its flow table as it is now."""
        sw = self._view(dpid)
        sw.connected, sw.connected_at = True, now
        sw.ports = {int(n): dict(p) for n, p in ports.items()}
        sw.deleting.clear()  # FlowRemoved of an earlier connection will not come
        sw.idle_waiting.clear()
        out = Outcome()
        role = self.fabric.role(dpid)
        if role is not None and self.openflow == "1.0":
            out.add(dpid, [PortNoFlood(p) for p in no_flood_ports(role)])
        out.extend(self.reconcile(dpid, rows, now))
        out.events.append(("switch_up", {"dpid": dpid, "name": sw.name, "role": sw.role}))
        return out

    def reconcile(self, dpid: int, rows: list[Row], now: float) -> Outcome:
        """Bring the switch's baseline, static and mirror entries to what the book wants,
        given its table as read now (see the module doc for who knows best)."""
        sw = self.switches[dpid]
        out = Outcome()
        self._expire(now, out, skip=dpid)  # this switch is brought in line below
        sw.reconcile_base(rows, self._intended(dpid), out)
        table = mirror_table(rows)
        self._confirm_remembered(dpid, table, now, out)
        wanted = self._compile(dpid, now)
        owners = {t.cookie: t for t in self.taps.values() if t.spec.dpid == dpid}
        sw.strays = {}
        mods: list[Change] = []
        for key, entry in sw.adopt(table, wanted).items():
            tap = owners.get(entry.cookie)
            if tap is None:
                sw.strays[key] = entry
            else:  # one of ours in an older shape: replaced, its counters still the tap's
                mods.append(sw.delete(key, entry, {tap.spec.tap_id: min(tap.live)}, now, out))
        out.add(dpid, mods)
        sw.push(wanted, now, out, self._add_keeps_counters)
        return out

    def switch_down(self, dpid: int, now: float) -> Outcome:
        sw = self.switches.get(dpid)
        if sw is None or not sw.connected:
            return Outcome()
        sw.connected = False
        sw.idle_waiting.clear()
        return Outcome(events=[("switch_down", {"dpid": dpid})])

    def port_status(self, dpid: int, port_no: int, port: Mapping[str, Any] | None) -> None:
        """A port appeared or changed (``port``), or was deleted (``None``)."""
        sw = self.switches.get(dpid)
        if sw is None:
            return
        if port is None:
            sw.ports.pop(port_no, None)
        else:
            sw.ports[port_no] = dict(port)

    def connected(self, dpid: int) -> SwitchView:
        sw = self.switches.get(dpid)
        if sw is None or not sw.connected:
            raise UnknownSwitch(dpid)
        return sw

    # ----------------------------------------------------------------- calls

    def install_mirror(self, params: Any, now: float) -> Outcome:
        """Install or replace a tap (idempotent: the same spec again answers the same result).
        Raises SpecError / MergeError (bad params) or UnknownSwitch before changing anything."""
        spec = parse_mirror_params(params, self.openflow)
        old = self.taps.get(spec.tap_id)
        if old is not None and old.spec == spec and old.live and old.confirmed:
            return Outcome(result=dict(old.result))
        sw = self.connected(spec.dpid)
        undo = self._snapshot()
        cookie = allocate_cookie(spec.tap_id, {t.cookie: t.spec.tap_id for t in self.taps.values()})
        new_rules = self._rules_for(spec, cookie, now)
        if old is not None:
            for d in DIRECTIONS:
                self.rules.get(old.spec.dpid, {}).pop((spec.tap_id, d), None)
        for r in new_rules:
            self.rules.setdefault(spec.dpid, {})[r.key] = r
        try:
            wanted = self._compile(spec.dpid, now)  # refuse before touching the switch
        except merge.MergeError:
            self._restore(undo)
            raise
        tap = Tap(spec, cookie, now, {}, {r.direction for r in new_rules}, old.counters if old else {})
        self.taps[spec.tap_id] = tap
        out = Outcome(undo=undo)
        for other in self.switches.values():  # an earlier process's entries of this tap id
            if other.connected:
                out.add(other.dpid, [other.delete(key, entry, {spec.tap_id: "forward"}, now, out)
                                     for key, entry in list(other.strays.items()) if entry.cookie == cookie])
                other.strays = {k: e for k, e in other.strays.items() if e.cookie != cookie}
        if old is not None and old.spec.dpid != spec.dpid:
            self._sync(old.spec.dpid, now, out)
        sw.push(wanted, now, out, self._add_keeps_counters)
        entries = sum(1 for c in sw.installed.values() if any(k[0] == spec.tap_id for k in c.members))
        tap.result = {"tap_id": spec.tap_id, "dpid": spec.dpid, "cookie": cookie, "entries": entries,
                      "replaced": old is not None, "installed_at": round(now, 3)}
        out.result = dict(tap.result)
        self.dirty = True
        return out

    def remove_mirror(self, tap_id: str, now: float) -> Outcome:
        """Delete a tap's entries (or, for a tap this process does not know, the entries of
        its deterministic cookie); :meth:`finish_remove` answers once their counters are in."""
        out = Outcome(undo=self._snapshot())
        tap = self.taps.pop(tap_id, None)
        self.removing[tap_id] = Removal(tap, tap.counters if tap else {}, tap is not None)
        if tap is not None:
            for d in DIRECTIONS:
                self.rules.get(tap.spec.dpid, {}).pop((tap_id, d), None)
            self._sync(tap.spec.dpid, now, out)
            self.dirty = True
            return out
        cookie = cookie_for_tap(tap_id)
        for sw in self.switches.values():
            mine = {k: e for k, e in sw.strays.items() if e.cookie == cookie}
            if sw.connected and mine:
                self.removing[tap_id].found = True
                out.add(sw.dpid, [sw.delete(k, e, {tap_id: "forward"}, now, out) for k, e in mine.items()])
                sw.strays = {k: e for k, e in sw.strays.items() if k not in mine}
        return out

    def finish_remove(self, tap_id: str, now: float) -> Outcome:
        removal = self.removing.pop(tap_id, None)
        if removal is None:
            return Outcome(result={"tap_id": tap_id, "removed": False, "packets": 0, "bytes": 0})
        out = Outcome()
        tap = removal.tap
        if tap is not None:
            for direction in sorted(tap.live):
                event = {"tap_id": tap_id, "dpid": tap.spec.dpid, "cookie": tap.cookie, "reason": "delete",
                         **tap.counts(direction)}
                if tap.spec.bidirectional:
                    event["direction"] = direction
                out.events.append(("mirror_removed", event))
        packets, nbytes = taps.total(removal.counters)
        out.result = {"tap_id": tap_id, "removed": removal.found, "packets": packets, "bytes": nbytes}
        return out

    def set_static(self, static: StaticConfig, now: float) -> Outcome:
        """New static (prototype) entries on every connected switch; mirrors forward by them."""
        out = Outcome(undo=self._snapshot())
        self.static = static
        switches = entries = 0
        for dpid, sw in sorted(self.switches.items()):
            if not sw.connected:
                continue
            sw.sync_base(self._intended(dpid), out)
            self._sync(dpid, now, out)
            wanted = static_entries(static, dpid)
            switches += bool(wanted)
            entries += len(wanted)
        out.result = {"switches": switches, "entries": entries}
        return out

    def rollback(self, undo: Any, now: float) -> Outcome:
        """The switches refused (or did not confirm) an outcome: the book returns to where it
        was, assuming every change was applied, and answers what brings the switches back."""
        self._restore(undo)
        out = Outcome()
        for dpid, sw in sorted(self.switches.items()):
            if sw.connected:
                sw.sync_base(self._intended(dpid), out)
                try:
                    self._sync(dpid, now, out)
                except merge.MergeError:  # cannot happen for a state that compiled before
                    pass
        return out

    def awaiting(self, keys: Iterable[tuple[int, EntryKey]]) -> set[tuple[int, EntryKey]]:
        """Those of ``keys`` whose FlowRemoved has not arrived yet."""
        return {(d, k) for d, k in keys if d in self.switches and self.switches[d].deleting.get(k)}

    # ------------------------------------------------------------- listings

    def list_mirrors(self, dpid: int, rows: list[Row], now: float) -> list[dict[str, Any]]:
        """``list_mirrors`` records of one switch from its table as read now (counters: what
        the switch holds plus what the tap's earlier entries counted)."""
        sw = self.connected(dpid)
        rows = [r for r in rows if r[0].table_id == 0 and is_mirror_cookie(r[0].cookie)]
        out: list[dict[str, Any]] = []
        claimed: set[int] = set()
        for tap_id, tap in sorted(self.taps.items()):
            if tap.spec.dpid != dpid:
                continue
            record = merge.tap_record(tap.spec, tap.cookie, tap.result.get("installed_at", tap.installed_at),
                                      rows, sw.installed, claimed)
            if record is not None:
                packets, nbytes = tap.retired()
                record["packets"] += packets
                record["bytes"] += nbytes
                out.append(record)
        strays: dict[int, list[Row]] = {}
        for i, row in enumerate(rows):
            if i not in claimed:
                strays.setdefault(row[0].cookie, []).append(row)
        for cookie, group in sorted(strays.items()):
            out.append(mirror_record(dpid, cookie, group, None, None, now))
        return out

    def list_switches(self) -> list[dict[str, Any]]:
        return [sw.record(self.fabric.role(dpid)) for dpid, sw in sorted(self.switches.items()) if sw.connected]

    def mirror_entries(self) -> int:
        """Mirror flow entries the connected switches hold (as far as the book knows)."""
        return sum(len(sw.installed) for sw in list(self.switches.values()) if sw.connected)

    # ------------------------------------------------------- switch reports

    def flow_removed(self, dpid: int, removed: Removed, now: float) -> Outcome:
        out = Outcome()
        self.flow_removed_total[removed.reason] = self.flow_removed_total.get(removed.reason, 0) + 1
        sw = self.switches.get(dpid)
        if sw is None or not sw.connected:
            return out
        if removed.cookie in (BASELINE_COOKIE, STATIC_COOKIE):
            key = (removed.table_id, removed.priority, merge.canonical(removed.match))
            if removed.reason in ("idle_timeout", "hard_timeout") and key in sw.base:
                out.add(dpid, [FlowMod("add", sw.base[key])])  # the prototype's timed entries come back (B5)
            return out
        if not is_mirror_cookie(removed.cookie):
            return out
        key = merge.entry_key(removed.priority, removed.match)
        mine = sw.own_delete(key) if removed.reason == "delete" else None
        if mine is not None:
            self._credit(mine.credit, removed)
            return out
        compiled = sw.installed.pop(key, None)
        if compiled is None:
            sw.strays.pop(key, None)
            out.events.append(("mirror_removed", {"tap_id": None, "dpid": dpid, "cookie": removed.cookie,
                                                  "reason": removed.reason, "packets": removed.packets,
                                                  "bytes": removed.bytes, "duration_s": removed.duration_s}))
            return out
        self._credit(credit_of(compiled), removed)
        rules = self.rules.get(dpid, {})
        if removed.reason == "idle_timeout" and any(compiled.owners & c.members for c in sw.installed.values()):
            sw.idle_waiting.append(compiled)  # decided on the switch's counters (stats_reply)
            out.stats.add(dpid)
            return out
        self._end(dpid, merge.ended_rules(compiled, removed.reason, rules, now), removed.reason, out)
        self._sync(dpid, now, out)
        return out

    def stats_reply(self, dpid: int, rows: list[Row], now: float) -> Outcome:
        """The switch's counters for the idled-out entries waiting on them."""
        out = Outcome()
        sw = self.switches.get(dpid)
        if sw is None:
            return out
        waiting, sw.idle_waiting = sw.idle_waiting, []
        packets = {merge.entry_key(e.priority, e.match): (pk, by) for e, pk, by, _ in rows
                   if e.table_id == 0 and is_mirror_cookie(e.cookie)}
        for removed in waiting:
            alive = merge.kept_alive(removed, sw.installed, {k: v[0] for k, v in packets.items()}, sw.seen)
            shared = [c for c in sw.installed.values() if removed.owners & c.members]
            ended = set(removed.owners) - alive
            # an ended tap's figures include what its merged entries counted until now
            extra = {rk: [sum(packets.get(c.key, (0, 0))[0] for c in shared if rk in c.members),
                          sum(packets.get(c.key, (0, 0))[1] for c in shared if rk in c.members)] for rk in ended}
            for c in shared:
                sw.seen[c.key] = packets.get(c.key, (0, 0))[0]
            self._end(dpid, ended, "idle_timeout", out, extra)
        if sw.connected:
            self._sync(dpid, now, out)
        return out

    def stats_failed(self, dpid: int, now: float) -> Outcome:
        """No counters came: the idled-out taps waiting on them end (their own traffic stopped)."""
        out = Outcome()
        sw = self.switches.get(dpid)
        if sw is None:
            return out
        waiting, sw.idle_waiting = sw.idle_waiting, []
        for removed in waiting:
            self._end(dpid, set(removed.owners), "idle_timeout", out)
        if sw.connected:
            self._sync(dpid, now, out)
        return out

    def tick(self, now: float) -> Outcome:
        """Time passes: rules long past their deadline end (a switch that was away could not
        report it), and FlowRemoved no longer expected for the book's deletes is forgotten."""
        out = Outcome()
        self._expire(now, out)
        for sw in self.switches.values():
            sw.forget_deletes(now)
        return out

    # ------------------------------------------------------------- internals

    def _view(self, dpid: int) -> SwitchView:
        sw = self.switches.get(dpid)
        if sw is None:
            role = self.fabric.role(dpid)
            sw = SwitchView(dpid, role.name if role else f"dpid{dpid}", role.role if role else None)
            self.switches[dpid] = sw
        return sw

    def _intended(self, dpid: int) -> list[Entry]:
        return intended_entries(self.fabric, dpid, self.openflow, self.static or StaticConfig())

    def _rules_for(self, spec: MirrorSpec, cookie: int, at: float) -> list[MirrorRule]:
        return (of10.rules_for if self.openflow == "1.0" else merge.rules_for)(spec, cookie, at)

    def _compile(self, dpid: int, now: float) -> list[CompiledEntry]:
        """The mirror entries one switch needs now (raises MergeError for too many overlaps)."""
        rules = self.rules.get(dpid, {}).values()

        def forward(match: Mapping[str, Any]) -> tuple[str, ...]:
            return forward_actions(self.static, dpid, match)

        if self.openflow == "1.0":
            return of10.compile_mirrors(rules, now, forward)
        return of13.compile_mirrors(rules, now, forward, uses_l2_table(self.fabric, dpid, "1.3"))

    def _sync(self, dpid: int, now: float, out: Outcome) -> None:
        self.switches[dpid].push(self._compile(dpid, now), now, out, self._add_keeps_counters)

    def _credit(self, credit: Mapping[str, str], removed: Removed) -> None:
        """Add a departed entry's final counters to each tap that had its copy."""
        for tap_id, direction in credit.items():
            tap = self.taps.get(tap_id)
            counters = tap.counters if tap is not None else \
                self.removing[tap_id].counters if tap_id in self.removing else None
            if counters is not None:
                taps.add(counters, direction, removed)
                self.dirty = True

    def _end(self, dpid: int, ended: Iterable[RuleKey], reason: str, out: Outcome,
             extra: Mapping[RuleKey, list[int]] | None = None) -> None:
        """Forget ended rules (and taps with no live direction left) and announce each."""
        rules = self.rules.get(dpid, {})
        for tap_id, direction in sorted(ended):
            rules.pop((tap_id, direction), None)
            tap = self.taps.get(tap_id)
            if tap is None:
                continue
            if extra and (tap_id, direction) in extra:
                c = tap.counters.setdefault(direction, [0, 0, 0.0])
                c[0] += extra[(tap_id, direction)][0]
                c[1] += extra[(tap_id, direction)][1]
            event = {"tap_id": tap_id, "dpid": dpid, "cookie": tap.cookie, "reason": reason, **tap.counts(direction)}
            if tap.spec.bidirectional:
                event["direction"] = direction
            tap.live.discard(direction)
            if not tap.live:
                del self.taps[tap_id]
            out.events.append(("mirror_removed", event))
            self.dirty = True

    def _expire(self, now: float, out: Outcome, skip: int | None = None) -> None:
        for dpid, rules in list(self.rules.items()):
            due = {k for k, r in rules.items() if r.expires_at + self.HARD_SLACK <= now}
            if due:
                self._end(dpid, due, "hard_timeout", out)
                if dpid != skip:
                    self._sync(dpid, now, out)

    def _confirm_remembered(self, dpid: int, table: Mapping[EntryKey, Entry], now: float, out: Outcome) -> None:
        """Taps of an earlier process on this switch: kept if it holds an entry each direction
        owns, else ended (removed while nobody listened)."""
        pending = [t for t in self.taps.values() if t.spec.dpid == dpid and not t.confirmed]
        if not pending:
            return
        held: set[RuleKey] = set()
        for c in self._compile(dpid, now):
            if c.key in table:
                held |= c.owners
        gone = {(t.spec.tap_id, d) for t in pending for d in t.live if (t.spec.tap_id, d) not in held}
        for t in pending:
            t.confirmed = True
        self._end(dpid, gone, "unknown", out)

    def _snapshot(self) -> dict[str, Any]:
        return {"rules": {d: dict(r) for d, r in self.rules.items()}, "taps": copy.deepcopy(self.taps),
                "static": self.static, "removing": dict(self.removing)}

    def _restore(self, undo: Mapping[str, Any]) -> None:
        self.rules = {d: dict(r) for d, r in undo["rules"].items()}
        self.taps = copy.deepcopy(undo["taps"])
        self.static = undo["static"]
        self.removing = dict(undo["removing"])
        self.dirty = True
