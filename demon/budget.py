"""Per-tap budgets (``max_packets``, ``max_bytes``): when to read the switch's counters
and when a tap has reached its budget, so that it stops within 10 % of it. Pure.

The daemon reads the mirrors' counters (``list_mirrors``) and releases a tap once
they reach its budget. Two things stand between the counter and the truth:

* **reads are discrete**: between two reads the counters grow unseen. With live
  counters (``counter_refresh: 0``) the next read is due after half the time the
  rest of the budget lasts at the measured rate while the crossing is far (more
  than ``2 x READ_MIN`` away: a rate that doubles between reads is still caught),
  then at the predicted crossing itself;
* **switch counters can be stale**: Open vSwitch moves its datapath statistics
  into the OpenFlow counters about every 500 ms (measured on OVS 3.1 in the lab:
  flow counters step every ~0.5 s whatever ``other_config:max-revalidator``
  says), and hardware switches often refresh theirs once a second. So a counter
  is read as "this many packets as of when it changed" (the middle of the two
  reads around the change), the rate is measured between changes, and the
  counter is extrapolated at that rate for at most ``counter_refresh``
  (``_global.yaml``, 500 ms by default): ``count + rate x min(now - changed,
  counter_refresh)``. Reads are placed at the predicted crossing when it comes
  before the next refresh, else just before and just after the expected refresh
  (every ``READ_FLOOR`` once it is overdue), which dates each change to a few
  milliseconds.

A tap ends when the (estimated) count reaches its budget. What the switch credits
the new entry with before it is live is not counted: Open vSwitch revalidates its
datapath as soon as its table changes (a few ms after the install) and credits the
new entry with what the datapath forwarded since its previous refresh (up to
500 ms of the flow, measured: 2,807 packets of a 100 Mbit/s flow, none of them
copied); the first change within ``SETTLE`` of the install is taken as that base. Reads are never closer
than ``READ_FLOOR`` nor further apart than ``READ_MAX``; until the counters first
move they are ``READ_FLOOR`` apart (``READ_MIN`` for live counters). At a steady rate the overshoot is about
``rate x (read-to-removal latency + READ_FLOOR)`` plus the rate's error over one
refresh; it stays under 10 % while that is under 10 % of the budget (a
10,000-packet budget at a 200 Mbit/s elephant's ~17,000 packets/s leaves about
50 ms), and while the budget lasts longer than the first refresh after the
install (a budget smaller than ``rate x counter_refresh`` can be overshot by up to
that much: nothing is known before the counters first move). A flow that slows
down within a refresh period makes the estimate run ahead: the tap may end up to
``rate x counter_refresh`` early.
"""

from __future__ import annotations

from typing import Iterable

from demon.model import Tap

READ_MIN = 0.05   # closer than twice this to the crossing: read at the crossing itself
READ_FLOOR = 0.01  # never two reads closer than this
READ_MAX = 2.0
SETTLE = 0.1       # a first change this soon after the install is the switch's credit
PARTIAL = 0.75     # a refresh interval this much slower than the one before: a partial push
_MIN_PACKET = 64


def has_budget(tap: Tap) -> bool:
    return bool(tap.max_packets or tap.max_bytes)


def initial_rates(tap: Tap) -> tuple[float, float]:
    """(packets/s, bytes/s) before any measurement, from the sFlow rate (64-byte
    packets: the most packets per byte); never used to extrapolate a counter."""
    byte_rate = tap.rate_bps / 8
    return byte_rate / _MIN_PACKET, byte_rate


def changed(tap: Tap, packets: int, octets: int, at: float,
            refresh: float) -> tuple[float, tuple[float, float] | None] | None:
    """The counters moved: (when they most likely changed, (packets/s, bytes/s) since
    the previous change or the install, or None when there is no interval to
    measure over), or None when they did not
    move (a stale counter says nothing). Live counters (``refresh`` 0) changed at
    the read. Refreshed ones changed between the previous read and this one: at
    the expected refresh (the last change + ``refresh``) if it lies in between (or
    at this read if it is due just after it), else the middle of the two reads
    (the first change, or a refresh off beat)."""
    if (packets, octets) == (tap.packets, tap.bytes):
        return None
    prev = max(tap.counters_at, tap.counted_at)
    if refresh <= 0 or not tap.counters_at:
        when = at
    elif tap.rate_measured and prev <= tap.counted_at + refresh <= at + READ_MIN:
        # on beat (the reads' own timing may put it a little after this one): there,
        # or at this read; when in doubt a change is dated late (a lower rate: a tap
        # ends a little late rather than early)
        when = min(tap.counted_at + refresh, at)
    else:
        when = (prev + at) / 2
    dt = when - tap.counted_at
    if tap.counted_at <= 0 or dt <= 0:
        return when, None  # no interval to measure over (a read crossing the install)
    return when, (max(0.0, (packets - tap.packets) / dt), max(0.0, (octets - tap.bytes) / dt))


def settles(tap: Tap, when: float, refresh: float) -> bool:
    """Whether a change of the counters at ``when`` is the switch crediting the new
    entry with traffic from before it was live: the first change, within ``SETTLE``
    of the install, of counters that refresh (Open vSwitch revalidates at once when
    its table changes, a few ms after the install, and credits the new entry with
    what its datapath forwarded since its last refresh, up to ``refresh`` earlier)."""
    return refresh > 0 and not tap.rate_measured and not tap.base_packets and \
        not tap.base_bytes and when - tap.counted_at <= min(SETTLE, refresh / 5)


class _Meter:
    """One budgeted counter of a tap: what the switch last showed, the change before
    it, and how to read them as of a time."""

    __slots__ = ("name", "limit", "count", "rate", "at", "prior", "prior_at", "live")

    def __init__(self, tap: Tap, name: str) -> None:
        packets = name == "max_packets"
        base = tap.base_packets if packets else tap.base_bytes
        self.name = name
        self.limit = float(tap.max_packets if packets else tap.max_bytes or 0)
        self.count = (tap.packets if packets else tap.bytes) - base
        self.rate = tap.packet_rate if packets else tap.byte_rate
        self.at = tap.counted_at
        self.live = tap.rate_measured
        self.prior, self.prior_at = 0.0, 0.0
        prior_rate = tap.prior_packet_rate if packets else tap.prior_byte_rate
        if tap.prior_at > 0 and self.rate < PARTIAL * prior_rate:
            # the last refresh showed much less than the one before said the flow does:
            # a partial push (Open vSwitch does that); go on from the one before
            self.prior = (tap.prior_packets if packets else tap.prior_bytes) - base
            self.prior_at, self.rate = tap.prior_at, prior_rate

    def value(self, at: float, refresh: float) -> float:
        """The count as of ``at``: extrapolated from the last change at the measured
        rate (only once measured; at most ``refresh``), or after a partial push from
        the change before it (at most ``2 x refresh``), whichever says more."""
        if not self.live:
            return float(self.count)
        last = estimate(self.count, self.rate, self.at, at, refresh)
        if self.prior_at <= 0:
            return last
        return max(last, estimate(self.prior, self.rate, self.prior_at, at, 2 * refresh))

    def crossing(self, refresh: float) -> float | None:
        """When ``value`` reaches the limit, if it does within its extrapolation."""
        if not self.live or self.rate <= 0:
            return None
        times = [self.at + (self.limit - self.count) / self.rate]
        if self.prior_at > 0:
            times.append(self.prior_at + (self.limit - self.prior) / self.rate)
        return min(times)


def _meters(tap: Tap) -> Iterable[_Meter]:
    if tap.max_packets:
        yield _Meter(tap, "max_packets")
    if tap.max_bytes:
        yield _Meter(tap, "max_bytes")


def estimate(count: float, rate: float, changed: float, at: float, span: float) -> float:
    """A counter last seen changing to ``count`` at ``changed``, as of ``at``,
    extrapolated at ``rate`` for at most ``span`` seconds."""
    return count + rate * min(max(0.0, at - changed), span)


def next_read(tap: Tap, refresh: float) -> float | None:
    """When the tap's counters must be read next (None: no budget, or not active)."""
    if tap.state != "active" or not has_budget(tap):
        return None
    last = tap.counters_at
    if not tap.rate_measured:
        # until the counters first move: no rate to plan with; close reads date the
        # first change (and so the rate) well
        return last + (READ_FLOOR if refresh > 0 else READ_MIN)
    wait = READ_MAX
    for meter in _meters(tap):
        if meter.value(last, refresh) >= meter.limit:
            return last
        crossing = meter.crossing(refresh)
        if crossing is None:
            continue
        if refresh <= 0:  # live counters: halve the distance, then hit the crossing
            gap = crossing - last
            wait = min(wait, gap / 2 if gap > 2 * READ_MIN else gap)
            continue
        horizon = tap.counted_at + refresh  # the switch's next refresh, expected
        if crossing <= horizon:
            wait = min(wait, crossing - last)
        elif last < horizon - READ_FLOOR:
            wait = min(wait, horizon - READ_FLOOR - last)  # just before the refresh...
        elif last < horizon:
            wait = min(wait, horizon + READ_FLOOR - last)  # ... and just after it
        else:
            wait = min(wait, READ_FLOOR)  # overdue: watch for it closely
    return last + max(READ_FLOOR, wait)


def reached(tap: Tap, at: float, refresh: float) -> tuple[str, str] | None:
    """(limit, cause) when the tap's counters, as of ``at``, have reached its budget."""
    for meter in _meters(tap):
        value = meter.value(at, refresh)
        if value < meter.limit:
            continue
        noun = "packet" if meter.name == "max_packets" else "byte"
        other = f"{tap.bytes} bytes" if meter.name == "max_packets" else f"{tap.packets} packets"
        base = tap.base_packets if meter.name == "max_packets" else tap.base_bytes
        before = f"; {base} more credited before the mirror was live" if base else ""
        if value == meter.count:
            return meter.name, (f"{noun} budget reached: {meter.count} of {meter.limit:.0f} "
                                f"{noun}s ({other}{before})")
        return meter.name, (f"{noun} budget reached: about {value:.0f} of {meter.limit:.0f} "
                            f"{noun}s (the switch counted {meter.count} {at - meter.at:.2f}s "
                            f"ago, at {meter.rate:.0f} {noun}s/s{before})")
    return None


def reads_due(taps: Iterable[Tap], refresh: float) -> float | None:
    """The earliest ``next_read`` of these taps (None: nothing to read)."""
    due = [t for t in (next_read(tap, refresh) for tap in taps) if t is not None]
    return min(due) if due else None
