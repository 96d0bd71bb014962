"""The controller RPC wire format (``docs/rpc-protocol.md``): JSON lines.

Pure encode/decode, shared by the server (inside POX or os-ken) and the
daemon's client, plus the one state-file format both controller components
write. Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

PROTOCOL_VERSION = 1
DEFAULT_ADDRESS = "tcp:127.0.0.1:7733"
DEFAULT_TOKEN_FILE = "/run/pytapdemon/rpc.token"
#: Longest accepted line, newline excluded.
MAX_LINE = 1 << 20

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
UNAUTHORIZED = -32001
UNKNOWN_SWITCH = -32002
UNKNOWN_TAP = -32003
SWITCH_REJECTED = -32004
SWITCH_TIMEOUT = -32005
# Raised by the client only, never sent on the wire.
CLIENT_TIMEOUT = -32010
CONTROLLER_UNREACHABLE = -32011

ERROR_NAMES = {
    PARSE_ERROR: "parse error",
    INVALID_REQUEST: "invalid request",
    METHOD_NOT_FOUND: "unknown method",
    INVALID_PARAMS: "invalid params",
    INTERNAL_ERROR: "internal error",
    UNAUTHORIZED: "missing or wrong token",
    UNKNOWN_SWITCH: "unknown switch",
    UNKNOWN_TAP: "unknown tap",
    SWITCH_REJECTED: "switch rejected the flow",
    SWITCH_TIMEOUT: "timed out waiting for the switch",
    CLIENT_TIMEOUT: "no reply in time (client side)",
    CONTROLLER_UNREACHABLE: "controller unreachable (client side)",
}

RequestId = Union[int, str, None]

#: JSON nested deeper than this is refused (``json`` itself recurses once per level).
MAX_DEPTH = 64


class RpcError(Exception):
    """An error reply: ``code`` from the table above, ``message`` for humans."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class InvalidParams(RpcError):
    """``-32602`` naming the offending field, e.g. ``params.match.tcp_dst``."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(INVALID_PARAMS, f"{field_name}: {problem}")
        self.field = field_name


class BadRequest(RpcError):
    """A line that cannot be served; carries the request id when one was readable."""

    def __init__(self, code: int, message: str, request_id: RequestId = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    id: RequestId
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    token: str | None = None


@dataclass(frozen=True)
class Reply:
    id: RequestId
    result: Any = None
    error: RpcError | None = None


@dataclass(frozen=True)
class Event:
    event: str
    params: dict[str, Any] = field(default_factory=dict)


def _dump(message: dict[str, Any]) -> bytes:
    # allow_nan=False: NaN/Infinity are not JSON and other parsers refuse them.
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def encode_request(request_id: RequestId, method: str, params: dict[str, Any] | None = None,
                   token: str | None = None) -> bytes:
    message: dict[str, Any] = {"id": request_id, "method": method, "params": params or {}}
    if token is not None:
        message["token"] = token
    return _dump(message)


def encode_result(request_id: RequestId, result: Any) -> bytes:
    return _dump({"id": request_id, "result": result})


def encode_error(request_id: RequestId, code: int, message: str) -> bytes:
    return _dump({"id": request_id, "error": {"code": code, "message": message}})


def encode_event(event: str, params: dict[str, Any]) -> bytes:
    return _dump({"event": event, "params": params})


def _load_object(line: bytes | str) -> dict[str, Any]:
    if isinstance(line, bytes):
        if len(line.rstrip(b"\r\n")) > MAX_LINE:
            raise BadRequest(INVALID_REQUEST, f"line longer than {MAX_LINE} bytes")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(PARSE_ERROR, f"line is not UTF-8: {exc.reason} at byte {exc.start}") from None
    else:
        text = line
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise BadRequest(PARSE_ERROR, f"line nests JSON deeper than {MAX_DEPTH} levels")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise BadRequest(PARSE_ERROR, f"line is not valid JSON: {exc}") from None
    except RecursionError:  # a fallback: _depth stops ordinary cases first
        raise BadRequest(PARSE_ERROR, f"line nests JSON deeper than {MAX_DEPTH} levels") from None
    if not isinstance(obj, dict):
        raise BadRequest(INVALID_REQUEST, f"expected a JSON object, got {type(obj).__name__}")
    if "\\ud" in text or "\\uD" in text:  # only \u escapes can make a lone surrogate
        where = _lone_surrogate(obj, "")
        if where is not None:
            code = UNAUTHORIZED if where == "token" else INVALID_REQUEST
            raise BadRequest(code, f"{where}: not valid Unicode (a lone surrogate)",
                             obj.get("id") if _valid_id(obj.get("id")) else None)
    return obj


def _depth(text: str) -> int:
    """How deep arrays and objects nest in ``text`` (brackets inside strings ignored)."""
    deepest = depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The dotted path of the first string (or key) holding a lone surrogate, else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(line)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if _lone_surrogate(key, sub) is not None:
                return (path + "." if path else "") + "(a key)"
            found = _lone_surrogate(item, sub)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (int, str)) and not isinstance(value, bool))


def decode_request(line: bytes | str) -> Request:
    """Parse one request line; raises ``BadRequest`` with the code to answer."""
    obj = _load_object(line)
    request_id = obj.get("id")
    if not _valid_id(request_id):
        raise BadRequest(INVALID_REQUEST, "id: must be an integer, a string or null")
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        raise BadRequest(INVALID_REQUEST, "method: must be a non-empty string", request_id)
    params = obj.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadRequest(INVALID_PARAMS, "params: must be an object", request_id)
    token = obj.get("token")
    if token is not None and not isinstance(token, str):
        raise BadRequest(UNAUTHORIZED, "token: must be a string", request_id)
    return Request(id=request_id, method=method, params=params, token=token)


def decode_message(line: bytes | str) -> Reply | Event:
    """Parse one line the server sent: a reply or an event."""
    obj = _load_object(line)
    if "event" in obj:
        name = obj["event"]
        params = obj.get("params") or {}
        if not isinstance(name, str) or not isinstance(params, dict):
            raise BadRequest(INVALID_REQUEST, "event: needs a string name and object params")
        return Event(name, params)
    if "id" not in obj:
        raise BadRequest(INVALID_REQUEST, "reply without id")
    if "error" in obj:
        err = obj["error"]
        if not isinstance(err, dict) or not isinstance(err.get("code"), int):
            raise BadRequest(INVALID_REQUEST, "error: needs an integer code", obj["id"])
        return Reply(obj["id"], error=RpcError(err["code"], str(err.get("message", ""))))
    if "result" not in obj:
        raise BadRequest(INVALID_REQUEST, "reply has neither result nor error", obj["id"])
    return Reply(obj["id"], result=obj["result"])


def parse_address(address: str) -> tuple[str, Any]:
    """``tcp:HOST:PORT`` / ``tcp:PORT`` / ``tcp:[::1]:PORT`` / ``unix:/path``.

    Returns ``("tcp", (host, port))`` or ``("unix", path)``. A missing host means
    loopback, never all interfaces.
    """
    kind, sep, rest = address.partition(":")
    if not sep or kind not in ("tcp", "unix") or not rest:
        raise ValueError(f"address: expected tcp:HOST:PORT or unix:/path, got {address!r}")
    if kind == "unix":
        return "unix", rest
    if rest.startswith("["):
        host, _, port_text = rest[1:].partition("]:")
    elif ":" in rest:
        host, _, port_text = rest.rpartition(":")
    else:
        host, port_text = "", rest
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"address: port must be an integer in {address!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"address: port must be 0..65535 in {address!r}")
    return "tcp", (host or "127.0.0.1", port)


def format_address(kind: str, where: Any) -> str:
    if kind == "unix":
        return f"unix:{where}"
    host, port = where[0], where[1]
    return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"


# ------------------------------------------------------------- state file

#: The controller components' state file (``--state-file``): the taps they installed,
#: with the counters of entries that have left the switch, so a restart neither
#: forgets a tap nor zeroes its counters. Both components write this format.
STATE_VERSION = 1
DIRECTIONS = ("forward", "reverse")


class StateFileError(ValueError):
    """A state file that cannot be read as a whole (the message says why)."""


def encode_state(component: str, taps: list[dict[str, Any]]) -> str:
    """The state file's text: ``{"version", "component", "taps": [...]}``.

    A tap record: ``params`` (the ``install_mirror`` params it was installed
    with), ``cookie``, ``installed_at`` (epoch s), ``result`` (the answer to its
    install), ``live`` (directions still mirrored) and ``counters`` (direction →
    ``{"packets", "bytes", "duration_s"}`` of its entries that have left the switch).
    """
    return json.dumps({"version": STATE_VERSION, "component": component, "taps": taps},
                      separators=(",", ":"), sort_keys=True, allow_nan=False)


def _state_tap(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise StateFileError(f"{where}: must be an object")
    for name, kind in (("params", Mapping), ("result", Mapping), ("live", list)):
        if not isinstance(item.get(name), kind):
            raise StateFileError(f"{where}.{name}: missing or not {'a list' if kind is list else 'an object'}")
    cookie, installed_at = item.get("cookie"), item.get("installed_at")
    if isinstance(cookie, bool) or not isinstance(cookie, int) or not 0 <= cookie < 2**64:
        raise StateFileError(f"{where}.cookie: must be a 64-bit integer")
    if isinstance(installed_at, bool) or not isinstance(installed_at, (int, float)):
        raise StateFileError(f"{where}.installed_at: must be a number (epoch seconds)")
    live = item["live"]
    if not live or any(d not in DIRECTIONS for d in live):
        raise StateFileError(f"{where}.live: must list forward and/or reverse")
    counters: dict[str, dict[str, Any]] = {}
    raw = item.get("counters") or {}
    if not isinstance(raw, Mapping):
        raise StateFileError(f"{where}.counters: must be an object")
    for direction, c in raw.items():
        if direction not in DIRECTIONS or not isinstance(c, Mapping):
            raise StateFileError(f"{where}.counters.{direction}: unknown direction or not an object")
        values = {}
        for name in ("packets", "bytes", "duration_s"):
            v = c.get(name, 0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise StateFileError(f"{where}.counters.{direction}.{name}: must be a number >= 0")
            values[name] = v
        counters[direction] = values
    return {"params": dict(item["params"]), "cookie": cookie, "installed_at": float(installed_at),
            "result": dict(item["result"]), "live": list(live), "counters": counters}


def decode_state(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The tap records of a state file, and one line per record left out (with why).

    Raises ``StateFileError`` when the file as a whole is unusable. Files written
    before the format had a version (the POX component's, same records without
    counters) are read too.
    """
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise StateFileError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise StateFileError("must be a JSON object")
    version = obj.get("version", STATE_VERSION)
    if version != STATE_VERSION:
        raise StateFileError(f"version {version!r} is not known (this is version {STATE_VERSION})")
    taps = obj.get("taps", [])
    if isinstance(taps, dict):  # the os-ken component's first format: cookie → tap id only
        raise StateFileError("holds tap names only (an older format): earlier taps are not remembered")
    if not isinstance(taps, list):
        raise StateFileError("taps: must be a list")
    out: list[dict[str, Any]] = []
    problems: list[str] = []
    for i, item in enumerate(taps):
        try:
            out.append(_state_tap(item, f"taps[{i}]"))
        except StateFileError as exc:
            problems.append(str(exc))
    return out, problems
