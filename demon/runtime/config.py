"""Configuration while the daemon runs: reloading the policy set, defining it in
the engine again, keeping the state file bounded.

A mixin of :class:`demon.runtime.loop.Runtime`, not a collaborator: each of
these changes the mutator's own state (the core's context, the thresholds map,
the poll schedule, the reload record and counters) and pruning falls back on
the runtime's handling of a state file that refuses writes and re-reads its
read model; a collaborator would need a back-reference to nearly all of it.
Its methods run on the mutator's thread only, like the rest of the loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from apscheduler.schedulers.background import BackgroundScheduler

from demon.core import Context
from demon.runtime.engine_side import EngineSide, load_config, thresholds_of
from demon.store import Store, StoreError
from sflow.client import SFlowRTError

log = logging.getLogger("demon.runtime")


class Configuration:
    """Reload, redefine, prune: the runtime's configuration items (``_Reload``,
    ``_Redefine``, ``_Prune``)."""

    # What it uses of the runtime (set by ``Runtime.__init__`` and ``start``).
    policies_dir: Path
    engine: EngineSide
    store: Store
    clock: Callable[[], float]
    ctx: Context | None
    counters: dict[str, int]
    reload_info: dict[str, Any]
    _by_threshold: dict[str, str]
    _scheduler: BackgroundScheduler | None
    _store_failed: Callable[[StoreError], None]
    _load_view: Callable[[], None]
    _schedule_polls: Callable[[], None]

    def _prune(self) -> None:
        """Keep the state file bounded (``limits.history_retain``; 0 keeps all)."""
        assert self.ctx is not None
        keep = self.ctx.limits.history_retain
        if keep <= 0:
            return
        try:
            gone = self.store.prune(self.clock() - keep)
        except StoreError as exc:
            self._store_failed(exc)
            return
        if any(gone.values()):
            log.info("pruned from the state file (older than %gs): %d tap(s), %d history "
                     "entries, %d operator request(s)", keep, gone["taps"], gone["history"],
                     gone["requests"])
            try:
                self._load_view()  # the read model holds what the file holds
            except StoreError as exc:
                log.error("cannot re-read the state file after pruning: %s", exc)

    def _reload(self) -> None:
        from demon.policy import PolicyError

        assert self.ctx is not None
        old = self.ctx.policies
        try:
            policies, limits = load_config(self.policies_dir)
        except PolicyError as exc:
            log.error("reload rejected, keeping the %d running polic%s: %s", len(old),
                      "y" if len(old) == 1 else "ies", exc)
            self._reloaded(False, str(exc))
            return
        try:
            self.engine.define(policies, old)
        except SFlowRTError as exc:
            log.error("reload rejected: the engine refused the definitions (%s); "
                      "restoring the running set", exc)
            try:
                self.engine.define(old, policies)
            except SFlowRTError:
                log.exception("could not restore the running definitions")
            self._reloaded(False, f"the engine refused the definitions: {exc}")
            return
        self.engine.policies = policies
        self.ctx = replace(self.ctx, policies=policies, limits=limits)
        self._by_threshold = thresholds_of(policies)
        if self._scheduler is not None:
            self._schedule_polls()
        log.info("reloaded %d polic%s: %s", len(policies), "y" if len(policies) == 1 else "ies",
                 ", ".join(sorted(policies)))
        self._reloaded(True, None)

    def _reloaded(self, ok: bool, error: str | None) -> None:
        assert self.ctx is not None
        self.counters["reloads_ok" if ok else "reloads_rejected"] += 1
        self.reload_info = {"at": time.time(), "ok": ok, "error": error, "what": "reload",
                            "policies": sorted(self.ctx.policies)}

    def _redefine(self, why: str) -> None:
        """The engine forgot our definitions: put back the *running* set (a poll
        that failed before a reload must not bring back a removed policy's flow)."""
        assert self.ctx is not None
        try:
            self.engine.define(self.ctx.policies, {})
        except SFlowRTError as exc:
            log.warning("cannot define the policies again (%s): %s", why, exc)
            return
        self.engine.redefinitions += 1
        log.info("defined the running policies in the engine again (%s)", why)
