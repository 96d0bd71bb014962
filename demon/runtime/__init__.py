"""The daemon's runtime: threads, scheduler, signals, RPC and persistence around
the pure decision core (``demon.core.step``).

* ``loop``: the mutating loop (:class:`Runtime`), the one thread that owns the
  state and the state file;
* ``engine_side``: definitions, events, polls and the port map (the engine);
* ``controller_side``: the RPC worker, the subscription, reconciliation;
* ``view``: the read interface (snapshots and the transition log) the API,
  the notifications and the metrics use;
* ``options``, ``items``: settings and the queue's internal items.
"""

from demon.runtime.controller_side import ControllerSide
from demon.runtime.engine_side import (FLOW_PREFIX, EngineSide, engine_policies, load_config,
                                       threshold_event, thresholds_of, top_flows)
from demon.runtime.items import Ask, _Events
from demon.runtime.loop import CAUSE_CLASSES, Runtime, cause_class, describe
from demon.runtime.options import ON_EXIT_CHOICES, RuntimeOptions, StartupError, accelerated_clock
from demon.runtime.view import ReadModel, Snapshot, Transition, tap_record

__all__ = ["Ask", "CAUSE_CLASSES", "ControllerSide", "EngineSide", "FLOW_PREFIX", "ON_EXIT_CHOICES",
           "ReadModel", "Runtime", "RuntimeOptions", "Snapshot", "StartupError", "Transition",
           "_Events", "accelerated_clock", "cause_class", "describe", "engine_policies",
           "load_config", "tap_record", "threshold_event", "thresholds_of", "top_flows"]
