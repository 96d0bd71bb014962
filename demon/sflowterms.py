"""sFlow-RT vocabulary for validating policies, over the embedded engine's own parser.

The flow and threshold definitions a policy makes are parsed by the engine's
parser (``sflow.flowdef``, compiled as the engine's HTTP API compiles them), so
``demon-watch --check`` refuses exactly what the engine would refuse at start or
reload: RE2 regular expressions (no backreferences or lookaround), the nesting
and length limits, each key function's arguments. There is no second parser here
to disagree with it. On top of the engine's checks, the key names a definition
reads are checked against sFlow-RT's vocabulary: the engine takes any name (a key
a sample lacks is missing), so a typo would make a flow that never matches.

Key functions that read the engine's HTTP API state (``group:``, ``map:``,
``link:``, ``node:``) are checked against an empty state, as the daemon's
embedded engine starts; ``country:``/``asn:`` need a table the daemon's engine
is not given, so they are refused as it refuses them.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from typing import Any, Iterator, Mapping, Sequence

from sflow import keyfuncs
from sflow.filterexpr import recording_key_names
from sflow.flowdef import DefinitionError, parse_flow, parse_threshold

KNOWN_KEYS: frozenset[str] = frozenset("""
agent inputifindex outputifindex direction stack bytes frames stripped ip_offset
vlansource vlandestination prioritysource prioritydestination ipnexthoprouter
ipsourcemaskbits ipdestinationmaskbits bgpnexthop bgpas bgpsourceas bgpsourcepeeras
bgpdestinationas bgpdestinationaspath bgpcommunities bgplocalpref
queueindex queuedepth transitdelay reason
macsource macdestination ethernetprotocol vlan priority isbroadcast ismulticast isunicast
ipsource ipdestination ipprotocol iptos ipdscp ipdscpname ipbytes ipttl
ip6source ip6destination ip6nexthdr ip6tos ip6dscpname ip6fragm ip6fragoffset
tcpsourceport tcpdestinationport tcpflags udpsourceport udpdestinationport
icmptype icmpcode icmp6type icmpseqno icmpunreachablenet icmpunreachablehost
icmpunreachableprotocol icmpunreachableport
vxlanvni genevevni grevsid dnsqname dnsqtypename dnsqr arpoperation arpipsender
requests duration tcprtt
""".split())

_SUFFIX = re.compile(r"\.\d+$")
#: a flow name for checking a single attribute (the engine wants a valid one)
_CHECK_NAME = "demon_check"


class TermError(ValueError):
    """An sFlow-RT key or filter that cannot be right; ``field`` names the
    definition attribute the engine refused (``keys``, ``filter``...) when known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@contextlib.contextmanager
def _as_the_engine() -> Iterator[set[str]]:
    """Compile as the daemon's embedded engine does; yields the key names read."""
    keyfuncs.register()
    with keyfuncs.bound(keyfuncs.KeyContext()), recording_key_names() as names:
        yield names


def _refused(exc: DefinitionError, fields: Mapping[str, str] | None = None) -> TermError:
    """The engine's ``field: message`` as a TermError of that field."""
    field, sep, message = str(exc).partition(": ")
    if not sep:
        return TermError(str(exc))
    return TermError(message, (fields or {}).get(field, field))


def _check_vocabulary(names: set[str]) -> None:
    for name in sorted(names):
        base = _SUFFIX.sub("", name)
        if base not in KNOWN_KEYS:
            close = difflib.get_close_matches(base, KNOWN_KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise TermError(f"{name!r} is not an sFlow-RT flow key{hint}")


def _check_attribute(body: dict[str, Any]) -> None:
    with _as_the_engine() as names:
        try:
            parse_flow(_CHECK_NAME, body)
        except DefinitionError as exc:
            raise _refused(exc) from None
    _check_vocabulary(names)


def check_keys(keys: Sequence[str]) -> None:
    """Raise TermError unless the engine takes ``keys`` and they read known flow keys."""
    _check_attribute({"keys": list(keys)})


def check_filter(text: str) -> None:
    """Raise TermError unless the engine takes the filter ``text`` and it reads known keys."""
    if not text:  # the engine reads "" as no filter; a policy that names one means one
        raise TermError("empty filter")
    _check_attribute({"filter": text})


#: a threshold's attributes as the policy fields they come from
_THRESHOLD_FIELDS = {"value": "threshold", "timeout": "t", "metric": "name"}


def check_definition(name: str, flow: Mapping[str, Any] | None,
                     threshold: Mapping[str, Any] | None) -> None:
    """Raise TermError (with ``field``) unless the engine takes the flow and threshold
    definitions a policy would make, exactly as the daemon would send them."""
    with _as_the_engine():
        if flow is not None:
            try:
                parse_flow(name, dict(flow))
            except DefinitionError as exc:
                raise _refused(exc) from None
        if threshold is not None:
            try:
                parse_threshold(name, dict(threshold))
            except DefinitionError as exc:
                raise _refused(exc, _THRESHOLD_FIELDS) from None
