"""The controller component's service: RPC methods and switch events, around the mirror book.

Standard library only (the POX component runs it). Both components share it;
what differs between them is a :class:`SwitchIO` per connected switch (send a
batch of neutral changes and confirm it with a barrier, read the flow table,
read port counters) and how their framework's events reach :meth:`switch_up`,
:meth:`switch_down`, :meth:`flow_removed` and :meth:`port_status`.

Threads: RPC calls arrive on the RPC server's workers; switch events on the
framework's own thread, which only queues them (it must stay free to deliver
barrier and stats replies). One ``controller-events`` thread works the queue
and ticks the book every second. Whoever changes the book holds ``self.lock``,
and whoever holds it also feeds queued FlowRemoved messages to the book first,
so a ``remove_mirror`` waiting for its entries' final counters receives them.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import demon
from demon.controller import of13
from demon.controller.book import MirrorBook, UnknownSwitch
from demon.controller.changes import Change, FlowMod, Outcome, Removed, Row
from demon.controller.fabric import FabricError, parse_set_static_params
from demon.controller.merge import MergeError
from demon.controller.spec import SpecError, parse_dpid, parse_remove_params, require_exactly
from demon.rpc import protocol as p
from demon.rpc.protocol import RpcError

log = logging.getLogger("demon.controller")

METHODS = frozenset({"hello", "install_mirror", "remove_mirror", "list_mirrors", "list_switches",
                     "flow_stats", "port_stats", "set_static"})


class SwitchIO(Protocol):
    """One connected switch, as a component's framework reaches it (any thread may call)."""

    dpid: int

    def apply(self, changes: list[Change]) -> None:
        """Send the changes and a barrier; return once confirmed, else raise RpcError."""

    def table(self) -> list[Row]:
        """The whole flow table with counters (raises RpcError)."""

    def port_stats(self) -> list[dict[str, Any]]:
        """``port_stats`` rows (raises RpcError)."""

    def ports(self) -> dict[int, dict[str, Any]]:
        """The switch's ports as ``list_switches`` shows them (raises RpcError)."""


class TapService:
    """Every method of ``docs/rpc-protocol.md`` and every switch event, through one book."""

    def __init__(self, book: MirrorBook, component: str, *, state_file: Path | None = None,
                 collect_timeout: float = 1.0, tick: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.book = book
        self.component = component
        self.state_file = state_file
        self.collect_timeout = collect_timeout
        self.tick_seconds = tick
        self.clock = clock
        self.lock = threading.RLock()
        self.ios: dict[int, SwitchIO] = {}
        self.publish: Callable[[str, dict[str, Any]], Any] = lambda event, params: None
        #: FlowMods sent, by command (read by the metrics)
        self.flow_mods_total: dict[str, int] = {}
        self._work: "queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None]" = queue.Queue()
        self._removed: list[tuple[SwitchIO, Removed]] = []
        self._removed_cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._load_state()

    # ------------------------------------------------------------- life cycle

    def start(self) -> "TapService":
        self._thread = threading.Thread(target=self._loop, name="controller-events", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the event worker (after the event at hand) and write the state file, so
        that a stop loses no change the book made since the last write."""
        if self._thread is not None:
            self._work.put(None)
            self._thread.join(timeout=5)
            self._thread = None
        with self.lock:
            self._save()

    def pump(self) -> None:
        """Work off everything queued now, on this thread (tests; no worker running)."""
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                with self.lock:
                    self._drain()
                    item[0](*item[1])
        with self.lock:
            self._drain()

    def _loop(self) -> None:
        next_tick = time.monotonic() + self.tick_seconds
        while True:
            try:
                item = self._work.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                item = (self._on_tick, ())
                next_tick = time.monotonic() + self.tick_seconds
            if item is None:
                return
            try:
                with self.lock:
                    self._drain()
                    item[0](*item[1])
            except Exception:  # the component must keep running whatever one event does
                log.exception("%s failed", getattr(item[0], "__name__", item[0]))

    # ------------------------------------------------- events (any thread)

    def switch_up(self, io: SwitchIO) -> None:
        self._work.put((self._on_switch_up, (io,)))

    def switch_down(self, io: SwitchIO) -> None:
        self._work.put((self._on_switch_down, (io,)))

    def flow_removed(self, io: SwitchIO, removed: Removed) -> None:
        with self._removed_cond:
            self._removed.append((io, removed))
            self._removed_cond.notify_all()
        self._work.put((lambda: None, ()))  # wakes the worker, which drains

    def port_status(self, io: SwitchIO, port_no: int, port: Mapping[str, Any] | None) -> None:
        self._work.put((self._on_port_status, (io, port_no, port)))

    # --------------------------------------------- events (worker, locked)

    def _on_switch_up(self, io: SwitchIO) -> None:
        self.ios[io.dpid] = io
        try:
            out = self.book.switch_up(io.dpid, io.ports(), io.table(), self.clock())
            self._send(io, out.changes.pop(io.dpid, []))
        except RpcError as exc:
            log.error("switch %s: could not install its baseline: %s", io.dpid, exc.message)
            self.ios.pop(io.dpid, None)
            self.book.switch_down(io.dpid, self.clock())
            return
        self._run(out)
        sw = self.book.switches[io.dpid]
        log.info("switch %s (%s) up, role %s, %d mirror entries", io.dpid, sw.name, sw.role, len(sw.installed))

    def _on_switch_down(self, io: SwitchIO) -> None:
        if self.ios.get(io.dpid) is not io:
            return  # an earlier connection of a switch that is back already
        del self.ios[io.dpid]
        log.info("switch %s down", io.dpid)
        self._run(self.book.switch_down(io.dpid, self.clock()))

    def _on_port_status(self, io: SwitchIO, port_no: int, port: Mapping[str, Any] | None) -> None:
        if self.ios.get(io.dpid) is io:
            self.book.port_status(io.dpid, port_no, port)

    def _on_tick(self) -> None:
        self._run(self.book.tick(self.clock()))

    def _drain(self) -> None:
        """Feed queued FlowRemoved messages to the book (lock held)."""
        while True:
            with self._removed_cond:
                items, self._removed = self._removed, []
            if not items:
                return
            for io, removed in items:
                if self.ios.get(io.dpid) is io:
                    self._run(self.book.flow_removed(io.dpid, removed, self.clock()))

    # ------------------------------------------------- carrying outcomes out

    def _send(self, io: SwitchIO, changes: list[Change]) -> None:
        if not changes:
            return
        io.apply(changes)
        for change in changes:
            if isinstance(change, FlowMod):
                self.flow_mods_total[change.command] = self.flow_mods_total.get(change.command, 0) + 1

    def _run(self, out: Outcome) -> None:
        """Carry out an outcome nobody waits on: a switch that does not confirm its changes
        has its table read again and brought in line."""
        for dpid, changes in sorted(out.changes.items()):
            io = self.ios.get(dpid)
            if io is None:
                continue
            try:
                self._send(io, changes)
            except RpcError as exc:
                log.warning("switch %s: changes not confirmed (%s): reading its table again", dpid, exc.message)
                self._resync(io)
        self._finish(out)

    def _commit(self, out: Outcome) -> None:
        """Carry out a call's outcome; if a switch refuses, undo it in the book and on the switches."""
        try:
            for dpid, changes in sorted(out.changes.items()):
                io = self.ios.get(dpid)
                if io is None:
                    raise RpcError(p.UNKNOWN_SWITCH, f"switch {dpid} disconnected")
                self._send(io, changes)
        except RpcError:
            back = self.book.rollback(out.undo, self.clock())
            for dpid, changes in sorted(back.changes.items()):
                try:
                    self._send(self.ios[dpid], changes)
                except (RpcError, KeyError) as exc:
                    log.warning("switch %s: could not roll back a refused change: %s", dpid, exc)
            self._save()
            raise
        self._finish(out)

    def _finish(self, out: Outcome) -> None:
        for event, params in out.events:
            self.publish(event, params)
        for dpid in sorted(out.stats):
            io = self.ios.get(dpid)
            try:
                if io is None:
                    raise RpcError(p.UNKNOWN_SWITCH, f"switch {dpid} is not connected")
                rows = io.table()
            except RpcError as exc:
                log.warning("switch %s: no counters to check idle taps against (%s): they end", dpid, exc.message)
                self._run(self.book.stats_failed(dpid, self.clock()))
                continue
            self._run(self.book.stats_reply(dpid, rows, self.clock()))
        self._save()

    def _resync(self, io: SwitchIO) -> None:
        try:
            out = self.book.reconcile(io.dpid, io.table(), self.clock())
            self._send(io, out.changes.pop(io.dpid, []))
        except RpcError as exc:
            log.warning("switch %s: table not brought in line (%s); next chance on reconnect", io.dpid, exc.message)
            return
        self._run(out)

    def _await(self, keys: set[tuple[int, Any]]) -> None:
        """Wait (lock held) until the FlowRemoved of ``keys`` arrived, at most ``collect_timeout``:
        Open vSwitch may send them after the barrier reply."""
        deadline = time.monotonic() + self.collect_timeout
        while True:
            self._drain()
            if not self.book.awaiting(keys):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                log.debug("%d deleted entries' FlowRemoved did not arrive", len(self.book.awaiting(keys)))
                return
            with self._removed_cond:
                if not self._removed:
                    self._removed_cond.wait(left)

    # ------------------------------------------------------------ state file

    def _load_state(self) -> None:
        path = self.state_file
        if path is None or not path.exists():
            return
        try:
            records, problems = p.decode_state(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, p.StateFileError) as exc:
            log.warning("state file %s: %s; earlier taps unknown until installed again", path, exc)
            return
        problems += self.book.load(records, self.clock())
        for problem in problems:
            log.warning("state file %s: %s (left out)", path, problem)
        log.info("state file %s: %d taps remembered", path, len(self.book.taps))

    def _save(self) -> None:
        if self.state_file is None or not self.book.dirty:
            return
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        try:
            tmp.write_text(p.encode_state(self.component, self.book.state()), encoding="utf-8")
            os.replace(tmp, self.state_file)
            self.book.dirty = False
        except OSError as exc:
            log.warning("cannot write state file %s: %s", self.state_file, exc)

    # --------------------------------------------------------------- RPC

    def methods(self) -> set[str]:
        return set(METHODS)

    def call(self, method: str, params: Any) -> Any:
        if method not in METHODS:
            raise RpcError(p.METHOD_NOT_FOUND, f"unknown method {method!r}")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RpcError(p.INVALID_PARAMS, "params: must be an object")
        try:
            return getattr(self, f"rpc_{method}")(params)
        except (SpecError, FabricError, MergeError) as exc:
            raise RpcError(p.INVALID_PARAMS, str(exc)) from None
        except UnknownSwitch as exc:
            raise RpcError(p.UNKNOWN_SWITCH, str(exc)) from None

    def _dpid(self, params: dict[str, Any], required: bool = True) -> int | None:
        unknown = set(params) - {"dpid"}
        if unknown:
            raise SpecError(f"params.{sorted(unknown)[0]}", "unknown parameter (known: dpid)")
        if params.get("dpid") is None:
            if required:
                raise SpecError("params.dpid", "is required")
            return None
        return parse_dpid(params["dpid"])

    def _io(self, dpid: int) -> SwitchIO:
        with self.lock:
            self.book.connected(dpid)
            io = self.ios.get(dpid)
        if io is None:
            raise UnknownSwitch(dpid)
        return io

    def rpc_hello(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"protocol": p.PROTOCOL_VERSION, "component": self.component, "version": demon.__version__,
                "openflow": self.book.openflow}

    def rpc_install_mirror(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self._drain()
            out = self.book.install_mirror(params, self.clock())
            self._commit(out)
            return out.result

    def rpc_remove_mirror(self, params: dict[str, Any]) -> dict[str, Any]:
        tap_id = parse_remove_params(params)
        with self.lock:
            self._drain()
            out = self.book.remove_mirror(tap_id, self.clock())
            self._commit(out)
            self._await(out.awaiting)
            done = self.book.finish_remove(tap_id, self.clock())
            self._run(done)
            if done.result["removed"]:
                log.info("tap %s removed (%d packets)", tap_id, done.result["packets"])
            return done.result

    def rpc_list_mirrors(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        dpid = self._dpid(params, required=False)
        with self.lock:
            targets = [(dpid, self._io(dpid))] if dpid is not None else sorted(self.ios.items())
        out: list[dict[str, Any]] = []
        for d, io in targets:
            rows = io.table()
            with self.lock:
                try:
                    out += self.book.list_mirrors(d, rows, self.clock())
                except UnknownSwitch:
                    if dpid is not None:
                        raise
        return out

    def rpc_list_switches(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        require_exactly(params, ())
        with self.lock:
            return self.book.list_switches()

    def rpc_flow_stats(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        rows = self._io(self._dpid(params)).table()  # type: ignore[arg-type]
        rows.sort(key=lambda r: (r[0].table_id, -r[0].priority, r[0].cookie))
        return [of13.entry_to_json(*row) for row in rows]

    def rpc_port_stats(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self._io(self._dpid(params)).port_stats()  # type: ignore[arg-type]

    def rpc_set_static(self, params: dict[str, Any]) -> dict[str, Any]:
        static = parse_set_static_params(params)
        with self.lock:
            self._drain()
            out = self.book.set_static(static, self.clock())
            self._commit(out)
            return out.result
