# PYTHON_ARGCOMPLETE_OK
"""``demon-lab``: the whole loop on one machine, in one command.

Starts Open vSwitch if needed, the controller component (os-ken; ``--controller
pox``, from the POX checkout), the seed network, the capture agent on h11,
``demon-watch`` with its embedded sFlow engine, and sFlow on every bridge; runs
a traffic scenario (default: one TCP elephant h1->h2 among mice on both filter
switches), prints progress as it goes, and ends with the timeline of each tap
(flow start, threshold event, tap installed, first packet captured, flow end,
tap released) and what was captured where. Everything is torn down at the end
(also on Ctrl-C), unless ``--keep``.

Exit status: 0 when every elephant of the scenario was tapped, captured and
released and nothing else was tapped; 1 otherwise; 2 on a usage error; 3 when
the lab could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from sflow import cliopts
from topo.net import mininet_missing
from topo.scenarios import SCENARIOS, FlowRun, Scenario, run_scenario, scenario
from topo.session import LAB_POLICIES, LabSession, SessionOptions, TimelineEntry

# Open vSwitch credits a new mirror entry with the packets its datapath forwarded in the
# milliseconds before it revalidated onto the entry: those were never copied. So the
# switch's count may exceed the copies by that much, never the other way round.
COUNTER_SLACK = 0.05
MILESTONES = ("flow start", "tap created", "tap active", "first packet captured", "flow end", "tap removed")
LABELS = {"tap created": "threshold event -> tap created", "tap active": "tap installed (controller confirmed)",
          "tap removed": "tap released"}


class Printer:
    """Progress lines relative to the lab's start."""

    def __init__(self, out: TextIO, t0: float) -> None:
        self.out = out
        self.t0 = t0

    def __call__(self, e: TimelineEntry) -> None:
        who = f" [{e.tap_id}]" if e.tap_id else ""
        detail = e.detail.get("flow") or e.detail.get("cause") or ""
        if e.what == "tap created":
            detail = f"{e.detail.get('policy')} {e.detail.get('flow_key')} ({detail})"
        print(f"  +{e.at - self.t0:7.2f}s  {e.what}{who}  {detail}".rstrip(), file=self.out, flush=True)


def tap_report(session: LabSession, runs: list[FlowRun]) -> list[dict[str, Any]]:
    """Per tap: its milestones, its files, packets captured vs the switch's counter."""
    removed = {}
    for ev in session.mirror_events:
        prev = removed.get(ev["tap_id"], {"packets": 0, "bytes": 0})
        removed[ev["tap_id"]] = {"packets": prev["packets"] + ev.get("packets", 0),
                                 "bytes": prev["bytes"] + ev.get("bytes", 0), "reason": ev.get("reason")}
    status = session.agent_status().get("taps", {})
    timeline = session.timeline_dicts()
    out = []
    for tap_id, tap in sorted(session.taps.items(), key=lambda kv: kv[1].get("created_at", 0)):
        flow = next((r for r in runs if r.flow.key == tap.get("flow_key")), None)
        marks: dict[str, float] = {}
        for e in timeline:
            if e["tap_id"] == tap_id and e["what"] in MILESTONES:
                marks.setdefault(e["what"], e["at"])
            if flow and e["detail"].get("flow_key") == flow.flow.key and e["what"] in ("flow start", "flow end"):
                marks.setdefault(e["what"], e["at"])
        captured = status.get(tap_id, {})
        out.append({
            "tap_id": tap_id, "policy": tap.get("policy"), "flow_key": tap.get("flow_key"),
            "state": tap.get("state"), "switch": tap.get("dpid"), "in_port": tap.get("in_port"),
            "copy_port": tap.get("copy_port"), "milestones": marks,
            "captured_packets": captured.get("packets", 0), "captured_bytes": captured.get("bytes", 0),
            "switch_packets": removed.get(tap_id, {}).get("packets", tap.get("packets")),
            "switch_bytes": removed.get(tap_id, {}).get("bytes", tap.get("bytes")),
            "removed_reason": removed.get(tap_id, {}).get("reason"),
            "files": [str(p) for p in session.capture_files(tap_id)],
        })
    return out


def verdict(sc: Scenario, taps: list[dict[str, Any]], runs: list[FlowRun]) -> tuple[bool, list[str]]:
    """Did the loop do what the scenario expects? (reasons when not)."""
    problems = []
    keys = {f.key for f in sc.flows}
    for t in taps:
        if t["flow_key"] not in keys:
            problems.append(f"{t['tap_id']}: tapped {t['flow_key']}, which is not an elephant of the scenario")
    if sc.name in ("elephant", "two-elephants"):
        for f in sc.flows:
            mine = [t for t in taps if t["flow_key"] == f.key]
            if len(mine) != 1:
                problems.append(f"{f.label}: {len(mine)} taps (expected exactly 1)")
                continue
            t = mine[0]
            if t["state"] != "removed":
                problems.append(f"{t['tap_id']}: still {t['state']} at the end")
            counted, captured = t["switch_packets"], t["captured_packets"]
            if not captured:
                problems.append(f"{t['tap_id']}: nothing captured")
            elif counted is not None and not counted * (1 - COUNTER_SLACK) <= captured <= counted:
                problems.append(f"{t['tap_id']}: captured {captured} packets, the switch mirrored {counted}")
    return not problems, problems


def print_summary(out: TextIO, session: LabSession, taps: list[dict[str, Any]], runs: list[FlowRun],
                  ok: bool, problems: list[str]) -> None:
    t0 = session.started_at
    print("\nTimeline", file=out)
    if not taps:
        print("  (no tap was taken)", file=out)
    for t in taps:
        print(f"  {t['tap_id']}  {t['policy']}  {t['flow_key']}  at s{t['switch']} port {t['in_port']},"
              f" copy via port {t['copy_port']}", file=out)
        m = t["milestones"]
        for name in MILESTONES:
            at = m.get(name)
            when = f"+{at - t0:7.2f}s" if at else "       -"
            since = ""
            if at and m.get("flow start") and name != "flow start":
                since = f"  ({at - m['flow start']:+.2f}s after flow start)"
            print(f"    {when}  {LABELS.get(name, name)}{since}", file=out)
    print("\nCaptured", file=out)
    for t in taps:
        note = ""
        if t["switch_packets"] and t["switch_packets"] > t["captured_packets"]:
            note = (f"; the {t['switch_packets'] - t['captured_packets']} more it counted passed before its "
                    "datapath took the new entry")
        print(f"  {t['tap_id']}: {t['captured_packets']} packets, {t['captured_bytes']} bytes"
              f" (switch mirrored {t['switch_packets']} packets{note})", file=out)
        for f in t["files"]:
            print(f"    {f}", file=out)
    unmatched = session.agent_status().get("taps", {}).get("unmatched")
    if unmatched:
        print(f"  unmatched: {unmatched['packets']} packets (copies of no known tap) in "
              f"{session.paths['captures'] / 'unmatched'}", file=out)
    for r in runs:
        c, s = r.client_report, r.server_report
        print(f"  traffic {r.flow.label}: sent {c.get('bytes_sent')} bytes, receiver got "
              f"{c.get('bytes_received', s.get('bytes_sent'))}", file=out)
    print(f"\n{'OK' if ok else 'NOT OK'}: " + ("the loop worked" if ok else "; ".join(problems)), file=out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demon-lab", description="The whole tap loop on one machine: OVS seed "
                                "topology, embedded sFlow engine, controller, capture agent, demon-watch, "
                                "traffic; ends with a timeline.")
    p.add_argument("--out", type=Path, default=Path("lab-out"), help="output directory (default ./lab-out)")
    p.add_argument("--controller", choices=("os-ken", "pox"), default="os-ken",
                   help="controller component (pox: the checkout scripts/setup unpacks, or POX_HOME)")
    p.add_argument("--policies", type=Path, default=LAB_POLICIES,
                   help="policy directory (default policies/lab: policies/ with second-scale timers)")
    p.add_argument("--sflow-rt", metavar="URL", help="use a real sFlow-RT (its collector must be on this host)")
    p.add_argument("--sflow-collector", default="127.0.0.1:6343",
                   help="with --sflow-rt: its sFlow collector address (default 127.0.0.1:6343)")
    p.add_argument("--scenario", choices=SCENARIOS, default="elephant",
                   help="elephant (default): one TCP elephant among mice; two-elephants: one per filter "
                        "switch; over-cap: three on s1 (policy cap 2); mice: nothing may be tapped")
    p.add_argument("--rate", default="200M", help="elephant rate, bit/s (default 200M)")
    p.add_argument("--seconds", type=float, default=10, help="elephant duration (default 10)")
    p.add_argument("--sampling", type=int, default=100, help="sFlow 1-in-N (default 100)")
    p.add_argument("--polling", type=int, default=2, help="sFlow counter interval, s (default 2)")
    p.add_argument("--settle", type=float, default=30, help="max seconds to wait for taps to end after traffic")
    p.add_argument("--report", type=Path, help="write the timeline and summary as JSON here")
    p.add_argument("--render", type=Path, help="draw the topology with the mirrors taken (.png/.svg)")
    p.add_argument("--keep", action="store_true", help="leave the lab up (Mininet CLI) until you exit; "
                   "the daemon's API keeps serving")
    p.add_argument("--split-hosts", action="store_true",
                   help="the daemon, the capture host h11 and an operator namespace share only a "
                        "management network (192.168.231.0/24): the API and the sFlow collector on "
                        "the daemon's management address, the capture agent on the API's stream")
    p.add_argument("--no-lock", action="store_true",
                   help="do not take the machine-wide lab lock (the caller holds it)")
    return cliopts.add_common(p, exits={0: "every elephant was tapped once, captured and released, nothing else tapped",
                                        1: "the loop did not do that (the summary says why)",
                                        2: "usage error (not root, no mininet, bad option)",
                                        3: "the lab did not start"})


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = cliopts.parse_args(build_parser(), argv)
    missing = mininet_missing("demon-lab")
    if missing:
        print(missing, file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("demon-lab: needs root (Open vSwitch and Mininet)", file=sys.stderr)
        return 2
    from demon.controller.poxhome import pox_home

    if args.controller == "pox" and pox_home() is None:
        print("demon-lab: --controller pox: no POX checkout (run scripts/setup or set POX_HOME)", file=sys.stderr)
        return 2
    if not args.policies.is_dir():
        print(f"demon-lab: --policies {args.policies}: not a directory", file=sys.stderr)
        return 2
    sc = scenario(args.scenario, args.rate, args.seconds)
    lock = None if args.no_lock else _take_lab_lock(out)  # noqa: F841 — held until the process exits
    # SIGTERM ends the run like Ctrl-C: through the finally below, which tears down.
    signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.time()
    session = LabSession(SessionOptions(out=args.out, controller=args.controller, policies=args.policies,
                                        sflow_rt=args.sflow_rt, sflow_collector=args.sflow_collector,
                                        sampling=args.sampling, polling=args.polling,
                                        split_hosts=args.split_hosts),
                         progress=Printer(out, t0))
    session.started_at = t0
    print(f"demon-lab: scenario {sc.name}: {sc.description}; output in {session.out}", file=out, flush=True)
    try:
        try:
            session.start()
        except Exception as exc:  # noqa: BLE001 — one readable line, the logs have the rest
            print(f"demon-lab: the lab did not start: {exc}", file=sys.stderr)
            return 3
        if session.api_url:
            print(f"demon-lab: daemon API at {session.api_url}/api/v1/ (token file "
                  f"{session.paths['api_token']})", file=out, flush=True)
            _print_urls(session, out, "demon-lab: ")
        runs = run_scenario(session, sc, args.settle)
        if args.keep:
            # Say what happened first: the lab then stays up until the operator leaves.
            ok = _finish(args, out, session, sc, runs, t0)
            _keep(session, out)
            return ok
    except KeyboardInterrupt:
        print("\ndemon-lab: interrupted, tearing down", file=out)
        session.stop()
        return 1
    finally:
        session.stop()
    return _finish(args, out, session, sc, runs, t0)


def _finish(args: argparse.Namespace, out: TextIO, session: LabSession, sc: Scenario, runs: list[FlowRun],
            t0: float) -> int:
    """Summary, picture and JSON report; the exit status."""
    taps = tap_report(session, runs)
    ok, problems = verdict(sc, taps, runs)
    print_summary(out, session, taps, runs, ok, problems)
    if args.render:
        _render(args.render, session, taps)
        print(f"picture: {args.render}", file=out)
    if args.report:
        report = {"scenario": sc.name, "description": sc.description, "ok": ok, "problems": problems,
                  "started_at": t0, "output": str(session.out), "timeline": session.timeline_dicts(),
                  "taps": taps, "traffic": [{"flow": r.flow.label, "flow_key": r.flow.key,
                                             "client": r.client_report, "server": r.server_report}
                                            for r in runs],
                  "capture_agent": session.agent_status(), "mirror_removed_events": session.mirror_events}
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"report: {args.report}", file=out)
    return 0 if ok else 1


def _take_lab_lock(out: TextIO) -> Any:
    """The machine-wide lock the integration tests share: one lab at a time (the
    seed topology's names are fixed). Held until the process exits."""
    import fcntl

    path = Path(os.environ.get("DEMON_LAB_LOCK", "/tmp/pytapdemon-lab.lock"))
    handle = open(path, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"demon-lab: another lab run holds {path}; waiting for it", file=out, flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _print_urls(session: LabSession, out: TextIO, indent: str) -> None:
    """The dashboard and every part's Prometheus metrics (docs/dashboard.md)."""
    print(f"{indent}dashboard:   {session.api_url}/  (paste the token from {session.paths['api_token']} "
          "to release, pause, resume)", file=out)
    urls = session.metrics_urls()
    for part, label in (("daemon", "daemon + embedded engine"), ("engine", "engine HTTP"),
                        ("controller", "controller"), ("capture", "capture agent, in h11's network namespace "
                                                                   "(Mininet CLI: h11 curl -s URL)")):
        if part in urls:
            print(f"{indent}metrics:     {urls[part]}  {label}", file=out)
    out.flush()


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _render(path: Path, session: LabSession, taps: list[dict[str, Any]]) -> None:
    from topo.render import DrawnMirror, render

    mirrors = [DrawnMirror(t["switch"], t["in_port"], t["copy_port"], t["tap_id"]) for t in taps
               if t["switch"] is not None and t["copy_port"] is not None]
    render(path, mirrors, "mirrors taken during the run" if mirrors else "no mirror taken")


def _keep(session: LabSession, out: TextIO) -> None:
    print("\ndemon-lab: --keep: the lab stays up; exit the Mininet CLI (or Ctrl-C) to tear down", file=out)
    if session.api_url:
        where = ""
        token = session.paths["api_token"]
        if session.options.split_hosts:  # from the operator's machine, over the management network
            where, token = "ip netns exec dmn-ops ", session.paths["ops_token"]
        print(f"  daemon API:  {session.api_url}/api/v1/status\n"
              f"  operate:     {where}demon-tap --url {session.api_url} --token-file {token} list",
              file=out, flush=True)
        _print_urls(session, out, "  ")
    try:
        if sys.stdin.isatty():
            from mininet.cli import CLI

            CLI(session.lab.net)
        else:
            while True:
                time.sleep(1)
                session.poll()
    except KeyboardInterrupt:
        print("\ndemon-lab: tearing down", file=out)


if __name__ == "__main__":
    raise SystemExit(main())
