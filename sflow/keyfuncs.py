"""Key functions that read the HTTP API's state: ``group:``, ``map:``, ``link:``, ``node:``,
``country:``, ``asn:`` (registered with ``sflow.filterexpr.register_key_function``).

``group:<key>:<group>[:<group>...]``  the label of the first group whose CIDRs hold
                                      the address (longest prefix within a group)
``map:<key>:<map>``                   the label listing the key's value
``link:<ifindex key>``                the topology link the port (agent, ifIndex) ends
``node:<ifindex key>``                the topology node the port belongs to
``country:<key>``                     ISO country code of the address (``--asn-file``)
``asn:<key>[:number|name]``           its AS number (default) or AS name (``--asn-file``)

A value that cannot be found is missing (the sample is not counted by a
definition that keys on it; wrap it in ``null:`` to keep it).

The registry of key functions is process-wide while groups, maps and the
topology belong to one API: a definition is compiled while its API is bound
(:func:`bound`), and its functions keep a reference to that API's
:class:`KeyContext`. Compiled outside any API, ``group:`` and the others are
refused with the same 400 as before. The engine memoises flow keys; the API
calls ``Engine.key_functions_changed()`` when groups, maps or the topology change.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from sflow.filterexpr import ExprError, KeyFn, register_key_function
from sflow.groups import AddressGroup, AsnTable, ValueMap
from sflow.topology import TopologyIndex

__all__ = ["KeyContext", "bound", "register", "FUNCTIONS"]

FUNCTIONS = ("group", "map", "link", "node", "country", "asn")


@dataclass
class KeyContext:
    """What the key functions consult; the API owns and updates it."""

    groups: dict[str, AddressGroup] = field(default_factory=dict)
    maps: dict[str, ValueMap] = field(default_factory=dict)
    index: TopologyIndex | None = None
    asn_table: AsnTable | None = None


_CURRENT: contextvars.ContextVar[KeyContext | None] = contextvars.ContextVar(
    "sflow_key_context", default=None)


@contextlib.contextmanager
def bound(ctx: KeyContext) -> Iterator[None]:
    """Compile definitions within this block against ``ctx``."""
    token = _CURRENT.set(ctx)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def _context(name: str, base: int) -> KeyContext:
    ctx = _CURRENT.get()
    if ctx is None:
        raise ExprError(f"key function '{name}:' is not supported here: it reads the engine's "
                        f"HTTP API state (groups, maps, topology) at {base}")
    return ctx


def _group(args: list[tuple[str, int]], base: int, compile_key: Callable[..., KeyFn]) -> KeyFn:
    if len(args) < 2 or not all(a for a, _ in args[1:]):
        raise ExprError(f"group: takes a key and one or more group names at {base}")
    ctx = _context("group", base)
    fn = compile_key(*args[0])
    names = [a for a, _ in args[1:]]
    groups = ctx.groups

    def label(keys: Mapping[str, Any]) -> str | None:
        value = fn(keys)
        if value is None:
            return None
        for name in names:
            group = groups.get(name)
            if group is not None:
                found = group.label(value)
                if found is not None:
                    return found
        return None
    return label


def _map(args: list[tuple[str, int]], base: int, compile_key: Callable[..., KeyFn]) -> KeyFn:
    if len(args) != 2 or not args[1][0]:
        raise ExprError(f"map: takes a key and a map name at {base}")
    ctx = _context("map", base)
    fn = compile_key(*args[0])
    name = args[1][0]
    maps = ctx.maps

    def label(keys: Mapping[str, Any]) -> str | None:
        value = fn(keys)
        table = maps.get(name)
        return None if value is None or table is None else table.label(value)
    return label


def _port(kind: str) -> Callable[..., KeyFn]:
    def build(args: list[tuple[str, int]], base: int,
              compile_key: Callable[..., KeyFn]) -> KeyFn:
        if len(args) != 1:
            raise ExprError(f"{kind}: takes one ifIndex key (e.g. inputifindex) at {base}")
        ctx = _context(kind, base)
        fn = compile_key(*args[0])

        def lookup(keys: Mapping[str, Any]) -> str | None:
            index = ctx.index
            if index is None:
                return None
            if_index = fn(keys)
            agent = keys.get("agent")
            if if_index is None or agent is None:
                return None
            ref = index.ports.get((str(agent), if_index))
            if ref is None:
                return None
            return ref.link if kind == "link" else ref.node
        return lookup
    return build


def _table(ctx: KeyContext, kind: str, base: int) -> AsnTable:
    if ctx.asn_table is None:
        raise ExprError(f"{kind}: needs an IP-to-AS/country table: start demon-sflow with "
                        f"--asn-file FILE (ip2asn TSV) at {base}")
    return ctx.asn_table


def _country(args: list[tuple[str, int]], base: int, compile_key: Callable[..., KeyFn]) -> KeyFn:
    if len(args) != 1:
        raise ExprError(f"country: takes an address key at {base}")
    table = _table(_context("country", base), "country", base)
    fn = compile_key(*args[0])
    return lambda keys: None if (v := fn(keys)) is None else table.country(v)


def _asn(args: list[tuple[str, int]], base: int, compile_key: Callable[..., KeyFn]) -> KeyFn:
    if len(args) not in (1, 2):
        raise ExprError(f"asn: takes an address key and optionally number or name at {base}")
    attr = args[1][0] if len(args) == 2 else "number"
    if attr not in ("number", "name", "descr"):
        raise ExprError(f"asn: the attribute is number or name, got {attr!r} at {args[1][1]}")
    attr = "name" if attr == "descr" else attr
    table = _table(_context("asn", base), "asn", base)
    fn = compile_key(*args[0])
    return lambda keys: None if (v := fn(keys)) is None else table.asn(v, attr)


def register() -> None:
    """Register the key functions (idempotent)."""
    register_key_function("group", _group)
    register_key_function("map", _map)
    # link:/node: look the port up by the sample's agent too
    register_key_function("link", _port("link"), reads=("agent",))
    register_key_function("node", _port("node"), reads=("agent",))
    register_key_function("country", _country)
    register_key_function("asn", _asn)
