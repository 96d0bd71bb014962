"""Per-tap budgets (``max_packets``, ``max_bytes``): when to read the switch's
counters so that a tap stops within 10 % of its budget. Pure.

A tap is released once its mirror's switch counters (``list_mirrors``) reach
its budget. Between two reads the counters grow unseen, so the overshoot is
what the mirror copies between the read that crosses and the removal:

    overshoot <= rate x (time since the previous read + read-to-removal latency)

``next_read`` keeps the first term small: while the crossing is far (more than
``2 x READ_MIN`` away at the measured rate) the next read is due after half the
time the remaining budget lasts (so a rate that doubles between reads is still
caught), then at the predicted crossing itself; never sooner than
``READ_FLOOR`` after the last read nor later than ``READ_MAX``. Before any
measurement the rate is taken from the flow's sFlow rate with 64-byte packets
(the most packets per byte: an early first read). At a steady rate the
overshoot is then ``rate x latency`` (the read-to-removal time), and it stays
under 10 % while ``rate x (latency + READ_FLOOR) < 0.1 x budget``: a
10,000-packet budget holds up to ~30,000 packets/s with 20 ms of latency. A
switch whose counters lag (Open vSwitch updates OpenFlow statistics from its
datapath every revalidator round, up to 500 ms by default) adds that lag to the
latency: see docs/budgets.md.
"""

from __future__ import annotations

from typing import Iterable

from demon.model import Tap

READ_MIN = 0.05   # closer than twice this to the crossing: read at the crossing itself
READ_FLOOR = 0.01  # never two reads closer than this
READ_MAX = 2.0
_MIN_PACKET = 64


def has_budget(tap: Tap) -> bool:
    return bool(tap.max_packets or tap.max_bytes)


def initial_rates(tap: Tap) -> tuple[float, float]:
    """(packets/s, bytes/s) to plan the first read by, from the sFlow rate."""
    byte_rate = tap.rate_bps / 8
    return byte_rate / _MIN_PACKET, byte_rate


def measured(tap: Tap, packets: int, octets: int, at: float) -> tuple[float, float]:
    """Rates between the tap's last read and this one (the old ones if no time passed)."""
    dt = at - tap.counters_at
    if tap.counters_at <= 0 or dt <= 0:
        return tap.packet_rate, tap.byte_rate
    return max(0.0, (packets - tap.packets) / dt), max(0.0, (octets - tap.bytes) / dt)


def next_read(tap: Tap) -> float | None:
    """When the tap's counters must be read next (None: no budget, or not active)."""
    if tap.state != "active" or not has_budget(tap):
        return None
    wait = READ_MAX
    for limit, count, rate in ((tap.max_packets, tap.packets, tap.packet_rate),
                               (tap.max_bytes, tap.bytes, tap.byte_rate)):
        if not limit:
            continue
        remaining = limit - count
        if remaining <= 0:
            return tap.counters_at
        if rate > 0:
            crossing = remaining / rate
            # far: halve the distance (a rate that doubles is still caught); near:
            # read at the predicted crossing itself
            wait = min(wait, crossing / 2 if crossing > 2 * READ_MIN else crossing)
    return tap.counters_at + max(READ_FLOOR, wait)


def reached(tap: Tap) -> tuple[str, str] | None:
    """(limit, cause) when the tap's counters have reached its budget."""
    if tap.max_packets and tap.packets >= tap.max_packets:
        return "max_packets", (f"packet budget reached: {tap.packets} of {tap.max_packets} "
                               f"packets ({tap.bytes} bytes)")
    if tap.max_bytes and tap.bytes >= tap.max_bytes:
        return "max_bytes", (f"byte budget reached: {tap.bytes} of {tap.max_bytes:.0f} bytes "
                             f"({tap.packets} packets)")
    return None


def reads_due(taps: Iterable[Tap]) -> float | None:
    """The earliest ``next_read`` of these taps (None: nothing to read)."""
    due = [t for t in (next_read(tap) for tap in taps) if t is not None]
    return min(due) if due else None
