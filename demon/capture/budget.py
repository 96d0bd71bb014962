"""Disk budgets: per tap and overall, enforced by removing whole closed files.

What goes first: files left by an earlier run of the agent, then the files of
taps that have ended, oldest first, then closed files of live taps, oldest
first. The file a tap is writing is never removed: when only open files are
left and the budget is still exceeded, the taps stop writing (each counts the
frames it could not keep, and says so in its manifest) until room is made.

Checked on every tick of the agent (0.2 s), so a budget can be passed by what
arrives within one tick.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from demon.capture.sink import Sink

log = logging.getLogger("demon.capture")

CAPTURE_SUFFIXES = (".pcap", ".pcapng")


@dataclass
class DiskBudget:
    total: int = 0  # bytes for all captures (0 = no budget)
    per_tap: int = 0  # bytes for one tap's files (0 = no budget)
    removed_files: int = 0
    removed_bytes: int = 0
    leftovers: list[tuple[float, Path, int]] = field(default_factory=list)  # (mtime, path, size)

    def adopt(self, out_dir: Path, own: Iterable[Path] = ()) -> None:
        """Count the capture files an earlier run left in ``out_dir`` (removed first)."""
        mine = set(own)
        found: list[tuple[float, Path, int]] = []
        for path in Path(out_dir).glob("*/*"):
            if path.suffix in CAPTURE_SUFFIXES and path not in mine:
                try:
                    st = path.stat()
                except OSError:
                    continue
                found.append((st.st_mtime, path, st.st_size))
        self.leftovers = sorted(found)

    def enforce(self, sinks: Iterable[Sink]) -> None:
        sinks = list(sinks)
        if self.per_tap:
            for sink in sinks:
                self._tap(sink)
        if self.total:
            self._total(sinks)

    def _tap(self, sink: Sink) -> None:
        files = sink.disk_files()
        used = sum(s.size for s, _ in files)
        for seg, is_open in files:
            if used <= self.per_tap:
                break
            if not is_open:
                used -= self._remove(sink, seg, "tap disk budget")
        over = used > self.per_tap
        if over != sink.over_budget and over:
            log.error("tap %s: its disk budget (%d bytes) is used by the file it writes: "
                      "not writing until room is made", sink.name, self.per_tap)
        sink.over_budget = over

    def _total(self, sinks: list[Sink]) -> None:
        used = sum(sink.disk_bytes() for sink in sinks) + sum(size for _m, _p, size in self.leftovers)
        while used > self.total and self.leftovers:
            _mtime, path, size = self.leftovers.pop(0)
            try:
                path.unlink()
            except OSError:
                pass
            self.removed_files += 1
            self.removed_bytes += size
            used -= size
            log.info("disk budget: removed %s (%d bytes) left by an earlier run", path, size)
        if used > self.total:
            # ended taps' files first, then live taps' closed files; oldest first in each
            candidates = []
            for sink in sinks:
                ended = sink.tap is None or sink.tap.ended
                for seg, is_open in sink.disk_files():
                    if not is_open:
                        candidates.append((0 if ended else 1, seg.closed_at or 0.0, sink, seg))
            for _rank, _at, sink, seg in sorted(candidates, key=lambda c: (c[0], c[1])):
                if used <= self.total:
                    break
                used -= self._remove(sink, seg, "overall disk budget")
        over = used > self.total
        for sink in sinks:
            if over and not sink.over_budget:
                log.error("tap %s: the overall disk budget (%d bytes) is used by open files: "
                          "not writing until room is made", sink.name, self.total)
            if over or not self.per_tap or sink.disk_bytes() <= self.per_tap:
                sink.over_budget = over

    def _remove(self, sink: Sink, seg, why: str) -> int:  # type: ignore[no-untyped-def]
        size = sink.delete(seg, why)
        self.removed_files += 1
        self.removed_bytes += size
        log.info("disk budget: removed %s (%d bytes, %s)", seg.path, size, why)
        return size


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
