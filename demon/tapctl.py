# PYTHON_ARGCOMPLETE_OK
"""``demon-tap``: what is tapped, since when and why; tap, release, pause, resume.

Two ways to reach the daemon, with the same subcommands and the same output:

* ``--url URL`` (or ``$DEMON_URL``): the daemon's HTTP API, from any host
  that can reach it, with ``--token-file`` (or ``$DEMON_TOKEN_FILE``) for the
  operator actions (and for reads when the API is exposed beyond loopback).
  The daemon decides each action at once and this command prints its answer.
* ``--state FILE``: the daemon's state file, for a daemon that is *down*.
  With neither option, ``demon-tap`` asks the API at demon-watch's default
  address (``http://127.0.0.1:8734``) when a daemon answers there, and reads
  the default state file otherwise. Reads work as they
  are. An action is queued in the file's ``requests`` table with an expiry:
  a running daemon takes it within a second and answers; if no answer comes
  within ``--wait``, the request is withdrawn, so a daemon started later never
  acts on it. ``demon-tap requests`` lists what is still pending and
  ``--cancel ID`` withdraws one. This mode never creates a state file.

Exit statuses: 0 done, 1 the daemon refused (no such tap/policy, no room), 2
usage error, 3 no answer (the daemon is unreachable, or did not answer within
``--wait``), 4 not allowed (no token, a wrong or read-only token), 5 state file
unusable (missing, damaged).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import IO, Any

from demon.cli import default_state_path
from demon.model import HistoryEntry, Tap, tap_from_dict, tap_to_dict
from demon.store import REQUEST_TTL, Store, StoreError
from demon.tap_request import TapRequest, is_positive, parse_at
from demon.units import UnitError, format_rate, parse_duration
from sflow import cliopts

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_ANSWER, EXIT_AUTH, EXIT_STATE = 0, 1, 2, 3, 4, 5
DEFAULT_URL = "http://127.0.0.1:8734"  # demon-watch's default --listen
_POSITIVE = ("release requested", "paused", "resumed", "already paused", "not paused")
_WRITES = ("tap", "release", "pause", "resume")


class Failure(Exception):
    """One line for the operator and the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="demon-tap",
                                 description="Inspect and steer demon-watch's taps.")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--url", metavar="URL", default=os.environ.get("DEMON_URL") or None,
                       help="the daemon's API, e.g. http://127.0.0.1:8734 ($DEMON_URL)")
    where.add_argument("--state", metavar="FILE", default=None,
                       help="the state file of a daemon that is down (default when neither is "
                            f"given: the API at {DEFAULT_URL} if a daemon answers there, else "
                            "demon-watch's default state file)")
    ap.add_argument("--token-file", metavar="FILE",
                    default=os.environ.get("DEMON_TOKEN_FILE") or None,
                    help="with --url: an API token file (its first token is sent; "
                         "$DEMON_TOKEN_FILE)")
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
                         help="seconds to wait for the daemon's answer (with --state, 0 "
                              "queues it for up to a minute without waiting)")
    tap = sub.add_parser("tap", help="mirror a flow now, for a while (caps and budget apply)")
    tap.add_argument("policy", help="the policy whose match and destination the tap uses")
    tap.add_argument("flow_key", metavar="FLOW",
                     help="the flow in the policy's key order, e.g. 10.0.0.1,10.0.0.2,51792,5201")
    tap.add_argument("--for", dest="hold", metavar="DURATION",
                     help="keep it at least this long (e.g. 5m; default: the policy's duration)")
    tap.add_argument("--at", metavar="DPID/PORT",
                     help="where the flow enters (default: where the daemon or the engine saw it)")
    tap.add_argument("--wait", type=float, default=10.0, metavar="S",
                     help="seconds to wait for the daemon's answer")
    history = sub.add_parser("history", help="recorded transitions")
    history.add_argument("--since", metavar="WHEN",
                         help="epoch seconds, ISO time (2026-11-24T10:00) or an age (10m, 2h)")
    history.add_argument("--tap", metavar="TAP_ID", help="only this tap")
    requests_cmd = sub.add_parser("requests", help="with --state: requests queued for the "
                                                   "daemon and not answered yet")
    requests_cmd.add_argument("--cancel", type=int, metavar="ID", help="withdraw this request")
    return cliopts.add_common(ap, exits={
        EXIT_OK: "done", EXIT_REFUSED: "the daemon refused (no such tap or policy, no room)",
        EXIT_USAGE: "usage error",
        EXIT_NO_ANSWER: "no answer (the daemon is unreachable, or did not answer within --wait)",
        EXIT_AUTH: "not allowed (no token, a wrong or read-only token)",
        EXIT_STATE: "the state file cannot be used (missing, damaged)"}, log_level="warning")


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


# -- output (both modes) -------------------------------------------------------------------


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


def print_list(taps: list[Tap], as_json: bool, out: IO[str]) -> int:
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


def print_story(tap: Tap, entries: list[HistoryEntry], as_json: bool, out: IO[str]) -> int:
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


def print_history(entries: list[HistoryEntry], as_json: bool, out: IO[str]) -> int:
    for entry in entries:
        print(json.dumps(_entry_json(entry), default=str) if as_json else _entry_line(entry),
              file=out)
    return EXIT_OK


def print_answer(kind: str, label: str, outcome: str, ok: bool, as_json: bool,
                 out: IO[str], err: IO[str], extra: dict[str, Any] | None = None) -> int:
    if as_json:
        print(json.dumps({"kind": kind, "target": label, "outcome": outcome, "ok": ok,
                          **(extra or {})}, default=str), file=out)
    else:
        print(f"{kind} {label}: {outcome}", file=out if ok else err)
    return EXIT_OK if ok else EXIT_REFUSED


# -- the API ------------------------------------------------------------------------------


def _tap_of(data: dict[str, Any]) -> Tap:
    return tap_from_dict({k: v for k, v in data.items() if k != "live"})


def _entry_of(record: dict[str, Any]) -> HistoryEntry:
    return HistoryEntry(record.get("tap_id"), float(record["at"]), str(record["kind"]),
                        {"cause": record.get("cause", ""), **(record.get("detail") or {})})


def run_api(args: argparse.Namespace, since: float | None, out: IO[str], err: IO[str]) -> int:
    from demon.api.client import ApiClient, ApiClientError
    from demon.rpc.token import TokenError, client_token

    token = None
    if args.token_file:
        try:
            token = client_token(args.token_file)
        except TokenError as exc:
            raise Failure(f"{exc} (--token-file)", EXIT_USAGE) from None
    elif args.command in _WRITES:
        raise Failure(f"{args.command} over the API needs --token-file (or $DEMON_TOKEN_FILE)",
                      EXIT_USAGE)
    wait = float(getattr(args, "wait", 30.0) or 30.0)
    client = ApiClient(args.url, token, timeout=max(wait, 5.0) + 5.0)
    try:
        return _api_command(client, args, since, out, err)
    except ApiClientError as exc:
        status = (EXIT_NO_ANSWER if exc.status in (0, 503, 504) else
                  EXIT_AUTH if exc.status in (401, 403) else EXIT_REFUSED)
        if args.command in _WRITES and exc.status in (400, 404, 409):
            return print_answer(args.command, _label(args), exc.message, False, args.json,
                                out, err, {"outcome_code": exc.body.get("outcome")})
        raise Failure(exc.message, status) from None
    finally:
        client.close()


def _label(args: argparse.Namespace) -> str:
    if args.command == "tap":
        return f"{args.policy} {args.flow_key}"
    return args.tap_id if args.command == "release" else args.policy


def _api_command(client: Any, args: argparse.Namespace, since: float | None, out: IO[str],
                 err: IO[str]) -> int:
    from urllib.parse import quote

    cmd = args.command
    if cmd == "list":
        body = client.get("/api/v1/taps", state="live")
        return print_list([_tap_of(t) for t in body["taps"]], args.json, out)
    if cmd == "show":
        try:
            story = client.get(f"/api/v1/taps/{quote(args.tap_id, safe='')}")
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                raise Failure(f"no tap {args.tap_id!r} at {client.url}", EXIT_REFUSED) from None
            raise
        return print_story(_tap_of(story["tap"]),
                           [_entry_of(r) for r in story["transitions"]], args.json, out)
    if cmd == "history":
        if args.tap:
            try:
                records = client.get(f"/api/v1/taps/{quote(args.tap, safe='')}")["transitions"]
            except Exception as exc:
                if getattr(exc, "status", None) == 404:
                    records = []
                else:
                    raise
        else:
            records = list(client.transitions())
        entries = [_entry_of(r) for r in records
                   if since is None or float(r["at"]) >= since]
        return print_history(entries, args.json, out)
    if cmd == "requests":
        raise Failure("requests: only with --state (over the API each action is answered "
                      "at once; nothing is queued)", EXIT_USAGE)
    if cmd == "tap":
        body: dict[str, Any] = {"policy": args.policy, "flow": args.flow_key}
        if args.hold:
            body["hold"] = parse_duration(args.hold)
        if args.at:
            body["at"] = args.at
        answer = client.post("/api/v1/taps", body, timeout=args.wait + 5)
    elif cmd == "release":
        answer = client.post(f"/api/v1/taps/{quote(args.tap_id, safe='')}/release",
                             timeout=args.wait + 5)
    else:
        answer = client.post(f"/api/v1/policies/{quote(args.policy, safe='')}/{cmd}",
                             timeout=args.wait + 5)
    return print_answer(cmd, _label(args), answer["message"], True, args.json, out, err,
                        {"outcome_code": answer.get("outcome"), "tap_id": answer.get("tap_id"),
                         "who": answer.get("who")})


# -- the state file -------------------------------------------------------------------------


def run_state(args: argparse.Namespace, since: float | None, target: str | None,
              out: IO[str], err: IO[str]) -> int:
    path = args.state or default_state_path()
    try:
        store = Store(path, create=False, readonly=args.command in ("list", "show", "history"))
    except StoreError as exc:
        raise Failure(str(exc), EXIT_STATE) from None
    with store:
        try:
            return _state_command(store, args, since, target, out, err)
        except StoreError as exc:
            raise Failure(str(exc), EXIT_STATE) from None


def _state_command(store: Store, args: argparse.Namespace, since: float | None,
                   target: str | None, out: IO[str], err: IO[str]) -> int:
    cmd = args.command
    if cmd == "list":
        return print_list(store.taps(live_only=True), args.json, out)
    if cmd == "show":
        tap = store.tap(args.tap_id)
        if tap is None:
            raise Failure(f"no tap {args.tap_id!r} in {store.path}", EXIT_REFUSED)
        return print_story(tap, store.history(args.tap_id), args.json, out)
    if cmd == "history":
        return print_history(store.history(tap_id=args.tap, since=since), args.json, out)
    if cmd == "requests":
        return _requests(store, args, out, err)
    if target is None:
        target = args.tap_id if cmd == "release" else args.policy
    return _queue(store, cmd, target, args.wait, args.json, out, err)


def _requests(store: Store, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    who = f"{getpass.getuser()} (demon-tap)"
    if args.cancel is not None:
        if not store.cancel_request(args.cancel, who):
            raise Failure(f"request {args.cancel} is not pending (answered, expired or "
                          "unknown)", EXIT_REFUSED)
        print(f"request {args.cancel}: cancelled", file=out)
        return EXIT_OK
    pending = store.requests(pending_only=True)
    if args.json:
        json.dump([{"id": r.id, "kind": r.kind, "target": r.target, "who": r.who,
                    "created_at": r.created_at, "expires_at": r.expires_at} for r in pending],
                  out, indent=1)
        print(file=out)
        return EXIT_OK
    if not pending:
        print("no pending requests", file=out)
        return EXIT_OK
    _table(["ID", "KIND", "TARGET", "WHO", "QUEUED", "EXPIRES"],
           [[str(r.id), r.kind, r.target, r.who, _when(r.created_at), _when(r.expires_at)]
            for r in pending], out)
    return EXIT_OK


def _queue(store: Store, kind: str, target: str, wait: float, as_json: bool,
           out: IO[str], err: IO[str]) -> int:
    """Queue a request (it expires), wait for the answer, withdraw it if none comes."""
    who = f"{getpass.getuser()} (demon-tap)"
    ttl = wait if wait > 0 else REQUEST_TTL
    request_id = store.enqueue_request(kind, target, who, ttl=ttl)
    label = target
    if kind == "tap":
        req = TapRequest.from_target(target)
        label = f"{req.policy} {req.flow_key}"
    if wait <= 0:
        print(f"{kind} {label}: queued as request {request_id} (expires in {ttl:g}s unless "
              "demon-watch takes it up)", file=out)
        return EXIT_OK
    deadline = time.monotonic() + wait
    answer = store.request(request_id)
    while answer is not None and answer.done_at is None and time.monotonic() < deadline:
        time.sleep(0.1)
        answer = store.request(request_id)
    if answer is None or answer.done_at is None:
        store.cancel_request(request_id, f"{who}: no answer within {wait:g}s")
        answer = store.request(request_id)
        if answer is None or answer.code == "cancelled":
            raise Failure(f"{kind} {label}: no answer within {wait:g}s — is demon-watch "
                          f"running on {store.path}? (request {request_id} withdrawn: nothing "
                          "will be done)", EXIT_NO_ANSWER)
    outcome = answer.outcome or ""
    ok = (answer.code == "ok") if answer.code not in (None, "expired", "cancelled") else (
        outcome in _POSITIVE or (kind == "tap" and is_positive(outcome)))
    return print_answer(kind, label, outcome, ok, as_json, out, err,
                        {"request": request_id, "outcome_code": answer.code})


def _answers(url: str) -> bool:
    """Something accepts connections at ``url``'s address (a quick look, no request)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80),
                                      timeout=0.3):
            return True
    except OSError:
        return False


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
    try:
        if not args.url and not args.state and _answers(DEFAULT_URL):
            args.url = DEFAULT_URL  # a daemon runs here: ask it, not its state file
        if args.url:
            return run_api(args, since, out, err)
        return run_state(args, since, target, out, err)
    except Failure as exc:
        print(f"demon-tap: {exc}", file=err)
        return exc.status


if __name__ == "__main__":
    sys.exit(main())
