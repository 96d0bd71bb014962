"""Compare two policy sets on the same recording: which taps the second one gains
and which it loses (``demon-watch --policies A --replay FILE --compare B``).

Both sets are backtested on the recording (``demon.replay``; raw sFlow lets the
sets differ in anything). A tap is the same in both when the switches would hold
the same mirror (same switch, same match) at overlapping times: that pair is
*kept* (its start and end may move); a tap of A alone is *lost*, one of B alone
*gained*. Policy names and tap ids may differ between the sets: what is captured
is what counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from demon.model import Tap
from demon.replay import Recording, ReplayResult, load_policies_for_replay, tap_summary


@dataclass
class Comparison:
    a: ReplayResult
    b: ReplayResult
    kept: list[tuple[Tap, Tap]] = field(default_factory=list)
    lost: list[Tap] = field(default_factory=list)
    gained: list[Tap] = field(default_factory=list)


def _mirror(tap: Tap) -> tuple[int, tuple[tuple[str, Any], ...]]:
    return (tap.dpid, tuple(sorted((k, str(v)) for k, v in tap.match.items())))


def _span(tap: Tap, end: float) -> tuple[float, float]:
    return tap.created_at, tap.ended_at if tap.ended_at is not None else end


def compare(a: ReplayResult, b: ReplayResult) -> Comparison:
    """Pair A's and B's taps of the same mirror at overlapping times, in time order."""
    out = Comparison(a, b)
    placed = [t for t in b.taps.values() if t.dpid]  # a tap never placed copied nothing
    unpaired_b = sorted(placed, key=lambda t: (t.created_at, t.tap_id))
    for tap in sorted((t for t in a.taps.values() if t.dpid),
                      key=lambda t: (t.created_at, t.tap_id)):
        start, end = _span(tap, a.end)
        match = next((other for other in unpaired_b if _mirror(other) == _mirror(tap)
                      and _span(other, b.end)[0] <= end and start <= _span(other, b.end)[1]),
                     None)
        if match is None:
            out.lost.append(tap)
        else:
            unpaired_b.remove(match)
            out.kept.append((tap, match))
    out.gained = unpaired_b
    return out


def compare_dirs(dir_a: str | Path, dir_b: str | Path, recording: str | Path,
                 fabric: str | Path | None = None) -> Comparison:
    rec = Recording(recording, fabric)
    results = []
    for directory in (dir_a, dir_b):
        policies, limits = load_policies_for_replay(directory)
        results.append(rec.run(policies, limits))
    return compare(*results)


def _line(result: ReplayResult, tap: Tap) -> str:
    s = tap_summary(result, tap)
    ended = "end" if s["ended"] is None else f"+{s['ended']}s"
    return (f"{tap.tap_id:<16} {tap.policy:<16} {tap.flow_key:<40} dpid {tap.dpid} port "
            f"{tap.in_port}  +{s['created']}s..{ended}  {tap.trigger}")


def write_text(cmp: Comparison, names: tuple[str, str], out: IO[str]) -> None:
    a, b = names
    print(f"A = {a}: {len(cmp.a.taps)} tap(s); B = {b}: {len(cmp.b.taps)} tap(s); "
          f"over {cmp.a.end - cmp.a.start:.1f}s of recording", file=out)
    print(f"gained (B only): {len(cmp.gained)}", file=out)
    for tap in cmp.gained:
        print(f"  + {_line(cmp.b, tap)}", file=out)
    print(f"lost (A only): {len(cmp.lost)}", file=out)
    for tap in cmp.lost:
        print(f"  - {_line(cmp.a, tap)}", file=out)
    print(f"kept (both): {len(cmp.kept)}", file=out)
    for ta, tb in cmp.kept:
        shift = (tb.created_at - cmp.b.start) - (ta.created_at - cmp.a.start)
        end_shift = _span(tb, cmp.b.end)[1] - cmp.b.start - (_span(ta, cmp.a.end)[1] - cmp.a.start)
        moved = "".join(f", {what} {delta:+.1f}s in B" for what, delta in
                        (("starts", shift), ("ends", end_shift)) if abs(delta) >= 0.05)
        print(f"  = {ta.tap_id} / {tb.tap_id}  {ta.flow_key}  dpid {ta.dpid} port "
              f"{ta.in_port}{moved}", file=out)


def write_json(cmp: Comparison, out: IO[str]) -> None:
    for tap in cmp.gained:
        print(json.dumps({"change": "gained", "a": None, "b": tap_summary(cmp.b, tap)},
                         default=str), file=out)
    for tap in cmp.lost:
        print(json.dumps({"change": "lost", "a": tap_summary(cmp.a, tap), "b": None},
                         default=str), file=out)
    for ta, tb in cmp.kept:
        print(json.dumps({"change": "kept", "a": tap_summary(cmp.a, ta),
                          "b": tap_summary(cmp.b, tb)}, default=str), file=out)


def compare_main(dir_a: str | Path, dir_b: str | Path, recording: str | Path, *,
                 as_json: bool = False, fabric: str | Path | None = None,
                 out: IO[str]) -> int:
    cmp = compare_dirs(dir_a, dir_b, recording, fabric)
    if as_json:
        write_json(cmp, out)
    else:
        write_text(cmp, (str(dir_a), str(dir_b)), out)
    return 0
