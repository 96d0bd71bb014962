"""Backtest: run the policies over a recording, no network.

``demon-watch --policies DIR --replay FILE [--fabric FABRIC.json] [--json]``
reads either a capture of raw sFlow datagrams (pcap/pcapng: the engine recomputes
everything, so changed policies can be backtested; ``demon.replay_sflow``) or a
recording of an engine's answers (``docs/recordings.md``: JSON lines, or a
directory of numbered files). The latter holds the answers to the flow
definitions of the day it was made: its flow names must be the policies' (an
error names both sets otherwise). It feeds what the daemon would have seen to the
same decision core, with the clock taken from the recording (``t``):

* ``/events/json`` answers → threshold events (each event id once, as the
  daemon's event stream delivers them);
* ``/activeflows/{agent}/demon_<policy>/json`` answers → that policy's top-N;
* ``/demon/portmap/json`` answers → the port map;
* a ``Tick`` every second of recorded time between exchanges.

The controller is simulated: every install and remove succeeds at once. The
switches' roles come from the fabric description (``docs/fabric.md``), since a
recording holds no controller answers. Output: the decisions in order
(created, active, released, removed, waiting, refused… with their causes),
then one line per tap.

This module reads the recording, hands it to the right kind of backtest and writes
the output; the core both kinds drive is ``demon.replay_core``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Mapping

from demon.model import Tap
from demon.replay_core import Backtest, ReplayError, ReplayResult
from demon.replay_sflow import backtest_capture, datagrams, is_capture
from demon.runtime import load_config


def load_fabric(path: str | Path) -> list[dict[str, Any]]:
    """The ``switches`` of a fabric description, shaped like ``list_switches``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReplayError(f"cannot read the fabric description {path}: {exc}") from None
    except ValueError as exc:
        raise ReplayError(f"fabric description {path} is not JSON: {exc}") from None
    switches = data.get("switches") if isinstance(data, dict) else None
    if not isinstance(switches, list) or not switches:
        raise ReplayError(f"fabric description {path}: 'switches' must be a non-empty list "
                          "(see docs/fabric.md)")
    for n, sw in enumerate(switches):
        if not isinstance(sw, dict) or not isinstance(sw.get("dpid"), int):
            raise ReplayError(f"fabric description {path}: switches[{n}].dpid must be an "
                              "integer")
    return switches


def default_fabric_path(recording: Path) -> Path:
    """Where a recording's fabric is looked for when ``--fabric`` is not given."""
    if recording.is_dir():
        return recording / "fabric.json"  # beside the numbered files, or a recording's segments
    return recording.with_name(recording.name.split(".")[0] + ".fabric.json")


class Recording:
    """A recording read once, to be backtested by one policy set or several."""

    def __init__(self, path: str | Path, fabric: str | Path | None = None) -> None:
        from sflow.recorder import load_recording

        self.path = path = Path(path)
        if not path.exists():
            raise ReplayError(f"no recording at {path}")
        fabric_path = Path(fabric) if fabric else default_fabric_path(path)
        if not fabric and not fabric_path.exists():
            raise ReplayError(f"a replay needs the switches' roles: pass --fabric FILE (docs/"
                              f"fabric.md; `python -m topo.fabricgen` prints the lab's) or put "
                              f"it at {fabric_path}")
        self.switches = load_fabric(fabric_path)
        self.raw = is_capture(path)
        self.items: list[Any] = []
        self.exchanges: list[Any] = []
        if self.raw:
            self.items = datagrams(path)
            if not self.items:
                raise ReplayError(f"capture {path} holds no UDP datagram")
            return
        try:
            self.exchanges = load_recording(path)
        except (OSError, ValueError) as exc:
            raise ReplayError(f"cannot read the recording {path}: {exc}") from None
        if not self.exchanges:
            raise ReplayError(f"recording {path} holds no exchanges")
        self.exchanges.sort(key=lambda e: e.t)  # stable: same-time exchanges keep their order

    def names(self) -> tuple[set[str], set[str]]:
        """Flow names polled (``/activeflows``) and thresholds that fired (events)."""
        flows, thresholds = set(), set()
        for ex in self.exchanges:
            parts = ex.path.strip("/").split("/")
            if ex.path.startswith("/activeflows/") and len(parts) == 4:
                flows.add(parts[2])
            elif ex.path.startswith(("/flow/", "/threshold/")) and len(parts) == 3:
                (flows if parts[0] == "flow" else thresholds).add(parts[1])
            elif ex.path == "/events/json" and isinstance(ex.body, list):
                thresholds.update(str(e.get("thresholdID")) for e in ex.body
                                  if isinstance(e, dict) and e.get("thresholdID"))
            if ex.path == "/events/json" and isinstance(ex.query, dict) and \
                    isinstance(ex.query.get("thresholdID"), str):
                thresholds.add(ex.query["thresholdID"])
        return flows, thresholds

    def check_names(self, policies: Mapping[str, Any]) -> None:
        """A JSON recording answers the flow definitions it was made with: every
        policy that needs the engine must find its flow name in it."""
        from demon.policy import engine_policies

        wanted = {p.flow_name for p in engine_policies(policies).values()}
        flows, thresholds = self.names()
        missing = sorted(wanted - flows - thresholds)
        if missing:
            has = ", ".join(sorted(flows | thresholds)) or "none"
            raise ReplayError(
                f"recording {self.path} holds the engine's answers for {has}; the policies "
                f"want {', '.join(sorted(wanted))} (missing: {', '.join(missing)}): it was made "
                f"for other flow definitions, so it cannot show what these policies would "
                f"have done; backtest them on raw sFlow instead (--replay FILE.pcap)")

    def run(self, policies: Mapping[str, Any], limits: Any,
            progress: Callable[..., Iterable[Any]] | None = None) -> ReplayResult:
        """``progress`` wraps the loop (``sflow.cliopts.progress``: a bar on a terminal)."""
        if self.raw:
            return backtest_capture(policies, limits, self.switches, self.items, str(self.path),
                                    progress=progress)
        self.check_names(policies)
        run = Backtest(policies, limits, self.switches, self.exchanges[0].t)
        loop = progress(self.exchanges, total=len(self.exchanges), desc="backtest",
                        unit="exchange") if progress else self.exchanges
        for exchange in loop:
            run.feed(exchange)
        return run.result


def load_policies_for_replay(policies_dir: str | Path) -> tuple[Mapping[str, Any], Any]:
    from demon.policy import PolicyError

    try:
        return load_config(policies_dir)
    except PolicyError as exc:
        raise ReplayError(f"bad policy set in {policies_dir}:\n{exc}") from None


def backtest(policies_dir: str | Path, recording: str | Path,
             fabric: str | Path | None = None,
             progress: Callable[..., Iterable[Any]] | None = None) -> ReplayResult:
    """Replay ``recording`` (raw sFlow or an engine's answers) through the policies of
    ``policies_dir``."""
    policies, limits = load_policies_for_replay(policies_dir)
    return Recording(recording, fabric).run(policies, limits, progress)


# -- output ------------------------------------------------------------------------


def tap_summary(result: ReplayResult, tap: Tap) -> dict[str, Any]:
    return {"tap_id": tap.tap_id, "policy": tap.policy, "flow_key": tap.flow_key,
            "dpid": tap.dpid, "in_port": tap.in_port, "copy_port": tap.copy_port,
            "state": tap.state, "created": round(tap.created_at - result.start, 3),
            "ended": None if tap.ended_at is None else round(tap.ended_at - result.start, 3),
            "extended": result.extensions.get(tap.tap_id, 0), "reason": tap.reason,
            "trigger": tap.trigger}


def write_text(result: ReplayResult, out: IO[str]) -> None:
    raw = "" if result.datagrams is None else \
        f" of raw sFlow ({result.datagrams} datagrams, {result.malformed} not decoded)"
    print(f"replayed {result.end - result.start:.1f}s{raw}: {result.events} event(s), "
          f"{result.polls} top-N poll(s)", file=out)
    for entry in result.timeline:
        detail = dict(entry.detail)
        cause = detail.pop("cause", "")
        print(f"+{entry.at - result.start:7.1f}s  {entry.kind:<14} {entry.tap_id or '-':<16} "
              f"{cause}", file=out)
    taps = sorted(result.taps.values(), key=lambda t: (t.created_at, t.tap_id))
    print(f"{len(taps)} tap(s):", file=out)
    for tap in taps:
        s = tap_summary(result, tap)
        ended = "still active at the end" if s["ended"] is None else f"ended +{s['ended']}s"
        print(f"  {tap.tap_id:<16} {tap.policy:<16} {tap.flow_key:<40} dpid {tap.dpid} port "
              f"{tap.in_port} -> {tap.copy_port}  +{s['created']}s, extended {s['extended']}x, "
              f"{ended}, {tap.state}{': ' + tap.reason if tap.reason else ''}", file=out)


def write_json(result: ReplayResult, out: IO[str]) -> None:
    for entry in result.timeline:
        print(json.dumps({"t": round(entry.at - result.start, 3), "tap_id": entry.tap_id,
                          "kind": entry.kind, "detail": dict(entry.detail)}, default=str),
              file=out)
    for tap in sorted(result.taps.values(), key=lambda t: (t.created_at, t.tap_id)):
        print(json.dumps({"tap": tap_summary(result, tap)}, default=str), file=out)


def replay_main(policies_dir: str | Path, recording: str | Path, *, as_json: bool = False,
                fabric: str | Path | None = None, out: IO[str],
                progress: Callable[..., Iterable[Any]] | None = None) -> int:
    result = backtest(policies_dir, recording, fabric, progress)
    (write_json if as_json else write_text)(result, out)
    return 0
