# PYTHON_ARGCOMPLETE_OK
"""``demon-tap``: what is tapped, since when and why; tap, release, pause, resume.

Reads the daemon's state file directly (SQLite WAL: reading never blocks the
daemon). Commands that change something (``tap``, ``release``, ``pause``, ``resume``)
are queued in the file's ``requests`` table; the daemon picks them up within
a second and writes its answer back, which this command waits for
(``--wait``), so no extra listener is needed.

Exit statuses: 0 done, 1 the daemon refused (no such tap/policy), 2 usage
error, 3 not answered within ``--wait`` (is demon-watch running?), 5 state
file unusable.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from datetime import datetime, timezone
from typing import IO, Any

from demon.cli import default_state_path
from demon.model import HistoryEntry, Tap, tap_to_dict
from demon.store import Store, StoreError
from demon.tap_request import TapRequest, is_positive, parse_at
from demon.units import UnitError, format_rate, parse_duration
from sflow import cliopts

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_ANSWER, EXIT_STATE = 0, 1, 2, 3, 5
_POSITIVE = ("release requested", "paused", "resumed")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="demon-tap",
                                 description="Inspect and steer demon-watch's taps.")
    ap.add_argument("--state", metavar="FILE", default=None,
                    help="demon-watch's state file (same default as demon-watch)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="active taps")
    show = sub.add_parser("show", help="one tap's full story")
    show.add_argument("tap_id")
    for name, target, what in (("release", "tap_id", "remove a tap now"),
                               ("pause", "policy", "stop a policy taking new taps"),
                               ("resume", "policy", "let a paused policy tap again")):
        cmd = sub.add_parser(name, help=what)
        cmd.add_argument(target)
        cmd.add_argument("--wait", type=float, default=5.0, metavar="S",
                         help="seconds to wait for the daemon's answer (0: just queue)")
    tap = sub.add_parser("tap", help="mirror a flow now, for a while (caps and budget apply)")
    tap.add_argument("policy", help="the policy whose match and destination the tap uses")
    tap.add_argument("flow_key", metavar="FLOW",
                     help="the flow in the policy's key order, e.g. 10.0.0.1,10.0.0.2,51792,5201")
    tap.add_argument("--for", dest="hold", metavar="DURATION",
                     help="keep it at least this long (e.g. 5m; default: the policy's duration)")
    tap.add_argument("--at", metavar="DPID/PORT",
                     help="where the flow enters (default: where the daemon or the engine saw it)")
    tap.add_argument("--wait", type=float, default=10.0, metavar="S",
                     help="seconds to wait for the daemon's answer (0: just queue)")
    history = sub.add_parser("history", help="recorded transitions")
    history.add_argument("--since", metavar="WHEN",
                         help="epoch seconds, ISO time (2026-11-24T10:00) or an age (10m, 2h)")
    history.add_argument("--tap", metavar="TAP_ID", help="only this tap")
    return cliopts.add_common(ap, exits={
        EXIT_OK: "done", EXIT_REFUSED: "the daemon refused (no such tap or policy)",
        EXIT_USAGE: "usage error", EXIT_NO_ANSWER: "not answered within --wait (is demon-watch running?)",
        EXIT_STATE: "the state file cannot be used"})


def parse_since(text: str, now: float) -> float:
    """Epoch seconds from an epoch number, an ISO time (UTC if no zone) or an age."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()
    try:
        return now - parse_duration(text)
    except UnitError:
        raise ValueError(f"--since: {text!r} is neither epoch seconds, an ISO time nor "
                         "an age like 10m") from None


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _tap_row(tap: Tap) -> list[str]:
    return [tap.tap_id, tap.policy, tap.flow_key, f"{tap.dpid}/{tap.in_port}",
            str(tap.copy_port), tap.state, _when(tap.created_at), _when(tap.expires_at),
            format_rate(tap.rate_bps)]


def _table(header: list[str], rows: list[list[str]], out: IO[str]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)


def _entry_json(entry: HistoryEntry) -> dict[str, Any]:
    return {"tap_id": entry.tap_id, "at": entry.at, "kind": entry.kind,
            "detail": dict(entry.detail)}


def _entry_line(entry: HistoryEntry) -> str:
    detail = dict(entry.detail)
    cause = detail.pop("cause", "")
    extra = " ".join(f"{k}={v}" for k, v in sorted(detail.items()))
    return f"{_when(entry.at)}  {entry.tap_id or '-':<16} {entry.kind:<12} {cause}" + \
        (f"  [{extra}]" if extra else "")


def cmd_list(store: Store, as_json: bool, out: IO[str]) -> int:
    taps = store.taps(live_only=True)
    if as_json:
        json.dump([tap_to_dict(t) for t in taps], out, indent=1, default=str)
        print(file=out)
        return EXIT_OK
    if not taps:
        print("no active taps", file=out)
        return EXIT_OK
    _table(["TAP", "POLICY", "FLOW", "SWITCH/PORT", "UPLINK", "STATE", "SINCE", "EXPIRES",
            "RATE"], [_tap_row(t) for t in taps], out)
    return EXIT_OK


def cmd_show(store: Store, tap_id: str, as_json: bool, out: IO[str], err: IO[str]) -> int:
    tap = store.tap(tap_id)
    if tap is None:
        print(f"demon-tap: no tap {tap_id!r} in {store.path}", file=err)
        return EXIT_REFUSED
    entries = store.history(tap_id)
    if as_json:
        json.dump({"tap": tap_to_dict(tap), "history": [_entry_json(e) for e in entries]},
                  out, indent=1, default=str)
        print(file=out)
        return EXIT_OK
    fields = [("tap", tap.tap_id), ("policy", tap.policy), ("flow", tap.flow_key),
              ("match", json.dumps(dict(tap.match), sort_keys=True)),
              ("switch/port", f"dpid {tap.dpid} port {tap.in_port}"),
              ("uplink", str(tap.copy_port)), ("vlan", str(tap.vlan_tag or "-")),
              ("bidirectional", "yes" if tap.bidirectional else "no"),
              ("state", tap.state + (f" ({tap.reason})" if tap.reason else "")),
              ("trigger", tap.trigger or "-"), ("rate", format_rate(tap.rate_bps)),
              ("created", _when(tap.created_at)),
              ("last trigger", _when(tap.last_trigger_at)),
              ("expires", _when(tap.expires_at)),
              ("ended", _when(tap.ended_at)),
              ("mirrored", f"{tap.packets} packets, {tap.bytes} bytes")]
    for name, value in fields:
        print(f"{name + ':':<15}{value}", file=out)
    print("history:", file=out)
    for entry in entries:
        print("  " + _entry_line(entry), file=out)
    return EXIT_OK


def cmd_history(store: Store, since: float | None, tap_id: str | None, as_json: bool,
                out: IO[str]) -> int:
    entries = store.history(tap_id=tap_id, since=since)
    if as_json:
        for entry in entries:
            print(json.dumps(_entry_json(entry), default=str), file=out)
        return EXIT_OK
    for entry in entries:
        print(_entry_line(entry), file=out)
    return EXIT_OK


def cmd_request(store: Store, kind: str, target: str, wait: float, as_json: bool,
                out: IO[str], err: IO[str]) -> int:
    who = f"{getpass.getuser()} (demon-tap)"
    request_id = store.enqueue_request(kind, target, who)
    deadline = time.monotonic() + wait
    answer = store.request(request_id)
    while answer is not None and answer.done_at is None and time.monotonic() < deadline:
        time.sleep(0.1)
        answer = store.request(request_id)
    outcome = answer.outcome if answer is not None else None
    if as_json:
        print(json.dumps({"request": request_id, "kind": kind,
                          "target": json.loads(target) if kind == "tap" else target,
                          "outcome": outcome}), file=out)
    if kind == "tap":
        req = TapRequest.from_target(target)
        target = f"{req.policy} {req.flow_key}"
    if outcome is None:
        if not as_json:
            print(f"{kind} {target}: queued as request {request_id}"
                  + (f"; no answer within {wait:g}s — is demon-watch running on "
                     f"{store.path}?" if wait > 0 else ""), file=err if wait > 0 else out)
        return EXIT_NO_ANSWER if wait > 0 else EXIT_OK
    ok = outcome in _POSITIVE or (kind == "tap" and is_positive(outcome))
    if not as_json:
        print(f"{kind} {target}: {outcome}", file=out if ok else err)
    return EXIT_OK if ok else EXIT_REFUSED


def main(argv: list[str] | None = None, *, stdout: IO[str] | None = None,
         stderr: IO[str] | None = None) -> int:
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    args = cliopts.parse_args(build_parser(), argv, log_stream=err)
    since = None
    if args.command == "history" and args.since:
        try:
            since = parse_since(args.since, time.time())
        except ValueError as exc:
            print(f"demon-tap: {exc}", file=err)
            return EXIT_USAGE
    target = None
    if args.command == "tap":
        try:
            hold = parse_duration(args.hold) if args.hold else None
            if hold is not None and not 0 < hold <= 86400:
                raise ValueError(f"--for: {args.hold!r} must be above 0 and at most 1d")
            at = parse_at(args.at) if args.at else None
        except (UnitError, ValueError) as exc:
            print(f"demon-tap: {exc}", file=err)
            return EXIT_USAGE
        target = TapRequest(args.policy, args.flow_key, hold, at).to_target()
    path = args.state or default_state_path()
    try:
        store = Store(path, readonly=args.command in ("list", "show", "history"))
    except StoreError as exc:
        print(f"demon-tap: {exc}", file=err)
        return EXIT_STATE
    with store:
        if args.command == "list":
            return cmd_list(store, args.json, out)
        if args.command == "show":
            return cmd_show(store, args.tap_id, args.json, out, err)
        if args.command == "history":
            return cmd_history(store, since, args.tap, args.json, out)
        if target is None:
            target = args.tap_id if args.command == "release" else args.policy
        return cmd_request(store, args.command, target, args.wait, args.json, out, err)


if __name__ == "__main__":
    sys.exit(main())
