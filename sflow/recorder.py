"""Record an analytics engine's REST answers as a timeline, and serve them again.

Recording format (also in ``docs/recordings.md``): a JSON-lines file, one object
per HTTP exchange, in the order the exchanges completed::

    {"t": 1764000000.125, "method": "GET", "path": "/events/json",
     "query": {"eventID": "-1", "maxEvents": "100", "timeout": "1"},
     "status": 200, "content_type": "application/json", "body": [ ... ]}

- ``t``: epoch seconds (float) when the answer (or the failure) arrived.
- ``method``: HTTP method; absent means ``GET``.
- ``path``: the URL path below the engine's base URL, e.g. ``/activeflows/ALL/tcp/json``.
- ``query``: query parameters as sent on the wire: name → string, or list of
  strings when repeated; ``{}`` when none.
- ``request``: the JSON body the client sent (PUT), absent otherwise.
- ``status``: HTTP status; ``body``: the parsed JSON body, or the text when the
  answer is not JSON (``/version``), ``null`` when empty (204); ``content_type``
  the answer's media type.
- ``error`` instead of ``status``/``body``: the request failed without an answer;
  the value is the ``requests`` exception name (``ConnectionError``,
  ``ReadTimeout``, ``ConnectTimeout``) and ``message`` says why.

A recording may also be a directory of numbered files (``001-GET-version.json``,
``002-PUT-flow.json``, ...), each holding one such object: the form test fixtures
take (``tests/fixtures/sflowrt/<scenario>/``). :func:`load_recording` reads
both; :func:`register_recording` serves one with the ``responses`` library,
successive answers to the same request in recorded order.

Command line::

    python -m sflow.recorder --url http://127.0.0.1:8008 --flow demon_tcp \\
        --threshold demon_elephant --duration 60 --out run.jsonl

polls ``/events/json`` (long poll, ``thresholdID``), ``/activeflows/ALL/<flow>/json``
every ``--interval`` s, and ``/demon/portmap/json`` at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable
from urllib.parse import parse_qs, urlsplit

import requests

from sflow.client import EventStream, SFlowRTClient, SFlowRTError

log = logging.getLogger(__name__)

_ERRORS: dict[str, type[Exception]] = {
    "ConnectionError": requests.ConnectionError,
    "ConnectTimeout": requests.ConnectTimeout,
    "ReadTimeout": requests.ReadTimeout,
    "Timeout": requests.Timeout,
}


@dataclass(slots=True)
class Exchange:
    """One recorded request and its answer (or failure)."""

    t: float
    path: str
    method: str = "GET"
    query: dict[str, str | list[str]] = field(default_factory=dict)
    status: int | None = None
    body: Any = None
    content_type: str | None = None
    request: Any = None
    error: str | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"t": round(self.t, 6), "method": self.method,
                               "path": self.path, "query": self.query}
        if self.request is not None:
            obj["request"] = self.request
        if self.error is not None:
            obj["error"] = self.error
            obj["message"] = self.message or ""
        else:
            obj["status"] = self.status
            obj["content_type"] = self.content_type
            obj["body"] = self.body
        return obj

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "Exchange":
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
        for name in ("t", "path"):
            if name not in obj:
                raise ValueError(f"{where}: field {name!r} missing")
        if not isinstance(obj["path"], str) or not obj["path"].startswith("/"):
            raise ValueError(f"{where}: field 'path' must start with '/': {obj['path']!r}")
        query = obj.get("query") or {}
        if not isinstance(query, dict):
            raise ValueError(f"{where}: field 'query' must be an object")
        error = obj.get("error")
        if error is None and not isinstance(obj.get("status"), int):
            raise ValueError(f"{where}: field 'status' (an integer) or 'error' required")
        if error is not None and error not in _ERRORS:
            raise ValueError(f"{where}: field 'error' must be one of {sorted(_ERRORS)}, got {error!r}")
        return cls(t=float(obj["t"]), path=obj["path"], method=str(obj.get("method", "GET")).upper(),
                   query={str(k): v if isinstance(v, list) else str(v) for k, v in query.items()},
                   status=obj.get("status"), body=obj.get("body"),
                   content_type=obj.get("content_type"), request=obj.get("request"),
                   error=error, message=obj.get("message"))


def _query_of(url: str) -> tuple[str, dict[str, str | list[str]]]:
    parts = urlsplit(url)
    query: dict[str, str | list[str]] = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        query[name] = values[0] if len(values) == 1 else values
    return parts.path, query


class RecordingSession(requests.Session):
    """A ``requests.Session`` that appends every exchange to ``sink`` (a callable).

    Paths are recorded relative to ``base_path`` (the engine URL's path, usually empty).
    """

    def __init__(self, sink: "Recorder", base_path: str = "") -> None:
        super().__init__()
        self._sink = sink
        self._base_path = base_path.rstrip("/")

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        path, query = _query_of(request.url or "")
        if self._base_path and path.startswith(self._base_path):
            path = path[len(self._base_path):] or "/"
        sent: Any = None
        if request.body:
            raw = request.body.decode() if isinstance(request.body, bytes) else request.body
            try:
                sent = json.loads(raw)
            except ValueError:
                sent = raw
        entry = Exchange(t=0.0, path=path, method=str(request.method), query=query, request=sent)
        try:
            response = super().send(request, **kwargs)
        except requests.RequestException as exc:
            entry.t = time.time()
            entry.error = next((name for name, kind in _ERRORS.items() if type(exc) is kind),
                               "ConnectionError")
            entry.message = str(exc)
            self._sink.write(entry)
            raise
        entry.t = time.time()
        entry.status = response.status_code
        entry.content_type = (response.headers.get("Content-Type") or "").split(";")[0] or None
        if response.content:
            try:
                entry.body = response.json()
            except ValueError:
                entry.body = response.text
        self._sink.write(entry)
        return response


class Recorder:
    """Appends exchanges to a JSON-lines file (thread-safe), or collects them in memory."""

    def __init__(self, out: str | Path | IO[str] | None = None) -> None:
        self.entries: list[Exchange] = []
        self._lock = threading.Lock()
        self._owned: IO[str] | None = None
        if isinstance(out, (str, Path)):
            self._owned = open(out, "w", encoding="utf-8")
            self._out: IO[str] | None = self._owned
        else:
            self._out = out

    def write(self, entry: Exchange) -> None:
        with self._lock:
            self.entries.append(entry)
            if self._out is not None:
                self._out.write(json.dumps(entry.to_json(), separators=(",", ":")) + "\n")
                self._out.flush()

    def session(self, base_url: str = "") -> RecordingSession:
        return RecordingSession(self, urlsplit(base_url).path)

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_recording(path: str | Path) -> list[Exchange]:
    """Exchanges of a JSON-lines recording, or of a directory of numbered ``*.json`` files."""
    path = Path(path)
    entries: list[Exchange] = []
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise ValueError(f"{path}: no *.json exchange files")
        for file in files:
            try:
                obj = json.loads(file.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ValueError(f"{file}: not JSON: {exc}") from None
            entries.append(Exchange.from_json(obj, str(file)))
        return entries
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
            entries.append(Exchange.from_json(obj, f"{path}:{number}"))
    return entries


def _slug(entry: Exchange) -> str:
    words = [w for w in entry.path.strip("/").split("/") if w and w != "json"]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(words[:2]) or "root")


def write_split(entries: Iterable[Exchange], directory: str | Path) -> list[Path]:
    """Write exchanges as numbered files ``NNN-METHOD-slug.json`` (the fixture form)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.json"):
        old.unlink()
    written = []
    for number, entry in enumerate(entries, 1):
        file = directory / f"{number:03d}-{entry.method}-{_slug(entry)}.json"
        file.write_text(json.dumps(entry.to_json(), indent=1, sort_keys=True) + "\n",
                        encoding="utf-8")
        written.append(file)
    return written


def register_recording(mock: Any, entries: Iterable[Exchange], base_url: str,
                       match_body: bool = True) -> int:
    """Register exchanges with a ``responses.RequestsMock`` (or the ``responses`` module).

    Each request is matched on method, path and its exact query (and, for
    requests that sent a JSON body, that body when ``match_body``). Successive
    exchanges of the same request are answered in recorded order; the last one
    keeps answering after that. Returns how many were registered.
    """
    from responses import matchers  # test-only dependency

    base = base_url.rstrip("/")
    count = 0
    for entry in entries:
        match = [matchers.query_param_matcher(entry.query)]
        if match_body and isinstance(entry.request, (dict, list)):
            match.append(matchers.json_params_matcher(entry.request))
        url = base + entry.path
        if entry.error is not None:
            mock.add(entry.method, url, body=_ERRORS[entry.error](entry.message or entry.error),
                     match=match)
        elif isinstance(entry.body, (dict, list)) or (
                entry.content_type == "application/json" and entry.body is not None):
            mock.add(entry.method, url, json=entry.body, status=entry.status, match=match)
        else:
            mock.add(entry.method, url, body="" if entry.body is None else str(entry.body),
                     status=entry.status, content_type=entry.content_type or "text/plain",
                     match=match)
        count += 1
    return count


def record(url: str, flow: str, threshold: str | None, duration: float, out: str | Path,
           interval: float = 1.0, max_flows: int = 20) -> int:
    """Record a timeline from the engine at ``url`` for ``duration`` s into ``out``.

    Returns the number of exchanges written. Engine failures are recorded and
    the loop carries on until the duration is over.
    """
    with Recorder(out) as recorder:
        client = SFlowRTClient(url, retries=0, session=recorder.session(url))
        # a long poll never outlasts one active-flow interval
        stream = EventStream(client, threshold_id=threshold, poll_timeout=interval)
        deadline = time.monotonic() + duration
        _try(client.port_map)
        next_flows = time.monotonic()
        while time.monotonic() < deadline:
            if time.monotonic() >= next_flows:
                _try(lambda: client.activeflows(flow, max_flows=max_flows))
                next_flows += interval
            if not _try(stream.poll):
                # nothing new (or an engine that does not hold long polls): wait for the tick
                time.sleep(max(0.0, min(next_flows, deadline) - time.monotonic()))
        _try(client.port_map)
        return len(recorder.entries)


def _try(call: Any) -> Any:
    try:
        return call()
    except SFlowRTError as exc:
        log.warning("%s", exc)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sflow.recorder",
                                     description="Record an sFlow-RT compatible engine's answers "
                                                 "(events, active flows, port map) as JSON lines.")
    parser.add_argument("--url", required=True, help="engine base URL, e.g. http://127.0.0.1:8008")
    parser.add_argument("--flow", required=True, help="flow definition whose active flows to record")
    parser.add_argument("--threshold", help="only events of this threshold (default: all)")
    parser.add_argument("--duration", type=float, required=True, help="seconds to record")
    parser.add_argument("--out", required=True, help="JSON-lines file to write")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between active-flow polls (default 1)")
    parser.add_argument("--max-flows", type=int, default=20, help="maxFlows per poll (default 20)")
    parser.add_argument("--split", metavar="DIR",
                        help="also write the exchanges as numbered files into DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.duration <= 0 or args.interval <= 0:
        parser.error("--duration and --interval must be positive")
    try:
        count = record(args.url, args.flow, args.threshold, args.duration, args.out,
                       interval=args.interval, max_flows=args.max_flows)
    except (OSError, ValueError) as exc:
        print(f"sflow.recorder: {exc}", file=sys.stderr)
        return 1
    if args.split:
        write_split(load_recording(args.out), args.split)
    log.info("recorded %d exchanges into %s", count, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
