"""The controller RPC wire format (``docs/rpc-protocol.md``): JSON lines.

Pure encode/decode, shared by the server (inside POX or os-ken) and the
daemon's client. Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Union

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
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise BadRequest(PARSE_ERROR, f"line is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRequest(INVALID_REQUEST, f"expected a JSON object, got {type(obj).__name__}")
    return obj


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
