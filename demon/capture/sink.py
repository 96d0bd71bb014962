"""Where one tap's frames go: its rotating files, its counters and its manifests.

Manifests are the record of truth, written beside the files::

    DIR/<tap_id>/<tap_id>-0001.pcapng + <tap_id>-0001.json   one per file
    DIR/<tap_id>/tap.json                                     the whole tap

``tap.json`` holds, per tap: the tap (policy, flow, trigger, placement, start
and stop), every file with its figures (deleted ones marked, with the reason),
packets and bytes captured, frames the kernel dropped, frames not written
(disk full, budget), the switch's mirrored counter once the tap was released,
and the difference between the two in words, the tap's capture budget
(``max_packets``, ``max_bytes``) and which limit ended it (``limit``).

Frames are batched: the receive loop appends records to ``bufs`` and calls
:meth:`Sink.flush` once per kernel block, so a file gets one ``writev`` per
block rather than one write per frame.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from demon.capture.files import (RECORDERS, CaptureWriteError, RotatingFile, Segment)
from demon.capture.taptable import Tap, tap_budget

log = logging.getLogger("demon.capture")

UNMATCHED = "unmatched"
RETRY_AFTER = 5.0  # s before writing is tried again after a write error
JSON_RESERVE = 4096  # manifests are padded to this, so they can be rewritten on a full disk


def write_json(path: Path, doc: Any) -> None:
    """Replace a JSON file atomically; on a full disk, overwrite the old one in place
    (it was padded for that), so an error can still be recorded."""
    text = json.dumps(doc, indent=1, default=str) + "\n"
    size = -(-len(text) // JSON_RESERVE) * JSON_RESERVE
    data = text.encode().ljust(size, b" ")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
    try:
        old = path.stat().st_size
    except OSError:
        old = 0
    if old < len(text) + 1:
        raise OSError(errno.ENOSPC, f"{path}: no space to record it")
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, text.encode().ljust(old, b" "), 0)
    finally:
        os.close(fd)


def tap_fields(tap: Tap | None, transitions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The tap as every manifest names it. The budget and the limit that ended the tap
    come from the tap table entry's own fields; for an entry from before it carried
    ``limit``, the last transition from the daemon that named one (its ``detail``)."""
    if tap is None:
        return {"tap_id": UNMATCHED}
    info = tap.info
    budget = tap_budget(info)
    if budget["limit"] is None and "limit" not in info:
        budget["limit"] = next((t["limit"] for t in reversed(transitions or ())
                                if isinstance(t.get("limit"), str) and t["limit"]), None)
    return {
        "tap_id": tap.tap_id,
        "policy": info.get("policy"),
        "flow_key": info.get("flow_key"),
        "trigger": info.get("trigger"),
        "switch": info.get("dpid"),
        "port": info.get("in_port"),
        "copy_port": info.get("copy_port"),
        "vlan_tag": tap.vlan_tag,
        "match": info.get("match"),
        "bidirectional": bool(info.get("bidirectional")),
        "state": info.get("state"),
        "start": info.get("start", info.get("installed_at")),
        "stop": info.get("stop"),
        **budget,
    }


def explain(captured: int, switch: int | None, kernel_drops: int, not_written: int, ended: bool) -> str:
    """The difference between what the switch mirrored and what was captured, in words."""
    if switch is None:
        return ("the switch's mirrored counter is not known yet (it is recorded when the tap is released)"
                if not ended else "the daemon recorded no switch counter for this tap")
    diff = switch - captured
    parts: list[str] = []
    if diff == 0:
        return "every packet the switch mirrored was captured"
    if diff > 0:
        accounted = 0
        if kernel_drops:
            parts.append(f"{kernel_drops} dropped by the capture host's kernel (ring full)")
            accounted += kernel_drops
        if not_written:
            parts.append(f"{not_written} received but not written (disk full or budget)")
            accounted += not_written
        rest = diff - accounted
        if rest > 0:
            parts.append(f"{rest} counted by the switch but never received: packets its datapath "
                         "forwarded before the mirror took effect (Open vSwitch credits a new entry "
                         "with them), or copies lost on the way to the capture host")
        elif rest < 0:
            parts.append(f"{-rest} more lost here than the switch's surplus")
        return f"the switch counted {diff} more than were captured: " + "; ".join(parts)
    return (f"captured {-diff} more than the switch counted: the switch's counter restarted "
            "(the mirror was re-installed) or copies of another entry with the same flow were filed here")


class Sink:
    """One tap's (or the unmatched frames') files, counters and manifests."""

    def __init__(self, name: str, directory: Path, tap: Tap | None, *, fmt: str = "pcapng",
                 snaplen: int = 262144, rotate_bytes: int = 0, rotate_seconds: float = 0,
                 application: str = "demon-capture", interface: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.directory = Path(directory)
        self.tap = tap
        self.clock = clock
        self.application = application
        self.interface = interface
        self.files = RotatingFile(self.directory, name, fmt=fmt, snaplen=snaplen, max_bytes=rotate_bytes,
                                  max_seconds=rotate_seconds, header=self._header,
                                  on_segment=self._segment_closed, clock=clock)
        self.record = RECORDERS[fmt]
        self.overhead = 16 if fmt == "pcap" else 35
        self.snaplen = snaplen
        # figures
        self.packets = 0
        self.bytes = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.kernel_drops = 0
        self.not_written = 0
        self.write_errors = 0
        self.budget_dropped = 0
        self.last_error: str | None = None
        self.error_at = 0.0
        self.writing = True
        self.over_budget = False
        self.files_opened = 0
        self.deleted: dict[str, str] = {}  # file name -> why it was removed
        self.flows: collections.Counter[str] = collections.Counter()
        self.transitions: list[dict[str, Any]] = []
        self.created_at = clock()
        self.closed_at: float | None = None
        self.dirty = False
        # the batch being gathered for one writev
        self.bufs: list[Any] = []
        self.pend_bytes = 0
        self.pend_packets = 0
        self.pend_orig = 0
        self.pend_first = 0
        self.pend_last = 0

    # -- metadata ----------------------------------------------------------------------
    def _header(self) -> dict[str, str]:
        """pcapng section header options: the tap's metadata as JSON in the comment."""
        doc = tap_fields(self.tap, self.transitions)
        doc["file_opened_at"] = self.clock()
        return {"comment": "demon-capture tap " + json.dumps(doc, default=str, separators=(",", ":")),
                "application": self.application, "interface": self.interface,
                "interface_description": f"capture port, tap {self.name}"}

    # -- writing -----------------------------------------------------------------------
    def room(self) -> int:
        """Bytes the batch may grow to before the open file must rotate."""
        if self.files.current is None:
            self.open()
        return self.files.room() - self.pend_bytes if self.files.current is not None else 1 << 62

    def open(self) -> None:
        if not self.writing or self.over_budget:
            return
        try:
            self.files.ensure_open(0)
            self.files_opened = self.files.index
        except CaptureWriteError as exc:
            self._failed(exc)
        except OSError as exc:
            self._failed(CaptureWriteError(exc.errno, f"{self.directory}: {exc.strerror or exc}"))

    def append(self, ts_ns: int, data: Any, snap: int, orig: int) -> None:
        """One frame (the slow path; the receive loop inlines this for tap rings)."""
        if not self.writing or self.over_budget:
            self._refuse(1)
            return
        if self.closed_at is not None:
            self.closed_at = None  # a late frame after the files closed: the tap's record reopens
        size = snap + self.overhead
        if size > self.room():
            f = self.files.current
            if self.pend_packets or (f is not None and f.packets):
                self.flush(rotate=True)
        self.pend_bytes += self.record(self.bufs, ts_ns, data, snap, orig)
        if not self.pend_packets:
            self.pend_first = ts_ns
        self.pend_packets += 1
        self.pend_orig += orig
        self.pend_last = ts_ns

    def _refuse(self, frames: int) -> None:
        self.not_written += frames
        self.dirty = True
        if self.over_budget:
            self.budget_dropped += frames

    def flush(self, rotate: bool = False) -> None:
        """Write the gathered batch; then close the file when ``rotate``."""
        if self.pend_packets:
            n = self.pend_packets
            try:
                f = self.files.ensure_open(0) if self.files.current is None else self.files.current
                self.files_opened = self.files.index
                f.write(self.bufs, self.pend_bytes, n, self.pend_orig, self.pend_first, self.pend_last)
            except CaptureWriteError as exc:
                self._failed(exc, lost=n)
            except OSError as exc:
                self._failed(CaptureWriteError(exc.errno, f"{self.directory}: {exc.strerror or exc}"), lost=n)
            else:
                self.packets += n
                self.bytes += self.pend_orig
                if self.first_ns is None:
                    self.first_ns = self.pend_first
                self.last_ns = self.pend_last
                self.dirty = True
            self.bufs = []
            self.pend_bytes = self.pend_packets = self.pend_orig = 0
        if rotate:
            self.files.close_current()

    def _failed(self, exc: CaptureWriteError, lost: int = 0) -> None:
        self.write_errors += 1
        self.not_written += lost
        self.writing = False
        self.error_at = self.clock()
        self.last_error = str(exc)
        self.dirty = True
        log.error("tap %s: writing stopped: %s (retrying in %gs)", self.name, exc, RETRY_AFTER)

    def tick(self) -> None:
        if not self.writing and self.clock() - self.error_at >= RETRY_AFTER:
            self.writing = True  # space may have come back; the next write tells
        self.files.tick()

    # -- manifests ---------------------------------------------------------------------
    def switch_counters(self) -> tuple[int | None, int | None]:
        """The switch's mirrored packets and bytes, once the daemon recorded the release."""
        if self.tap is None or not self.tap.ended:
            return None, None
        p, b = self.tap.info.get("packets"), self.tap.info.get("bytes")
        return (p if isinstance(p, int) else None), (b if isinstance(b, int) else None)

    def segment_manifest(self, seg: Segment) -> dict[str, Any]:
        doc = tap_fields(self.tap, self.transitions)
        doc.update({
            "pcap": seg.path.name, "format": self.files.fmt, "snaplen": self.snaplen,
            "segment": seg.index, "opened_at": seg.opened_at, "closed_at": seg.closed_at,
            "complete": seg.closed_at is not None, "packets": seg.packets, "bytes": seg.bytes,
            "file_bytes": seg.size, "first_packet_at": seg.first_ts, "last_packet_at": seg.last_ts,
            "tap_packets": self.packets, "tap_bytes": self.bytes,
        })
        if self.tap is None:
            doc["flows"] = dict(self.flows.most_common(100))
        if seg.path.name in self.deleted:
            doc["deleted"] = self.deleted[seg.path.name]
        if self.last_error:
            doc["error"] = self.last_error
        return doc

    def _segment_closed(self, seg: Segment) -> None:
        self._write_json(seg.path.with_suffix(".json"), self.segment_manifest(seg))
        self.dirty = True

    def segments(self) -> list[Segment]:
        snap = self.files.snapshot()
        return self.files.segments + ([snap] if snap is not None else [])

    def summary(self) -> dict[str, Any]:
        switch_packets, switch_bytes = self.switch_counters()
        ended = self.tap is not None and self.tap.ended
        doc = tap_fields(self.tap, self.transitions)
        doc.update({
            "packets": self.packets, "bytes": self.bytes,
            "first_packet_at": None if self.first_ns is None else self.first_ns / 1e9,
            "last_packet_at": None if self.last_ns is None else self.last_ns / 1e9,
            "kernel_drops": self.kernel_drops, "not_written": self.not_written,
            "budget_dropped": self.budget_dropped, "write_errors": self.write_errors,
            "error": self.last_error, "writing": self.writing and not self.over_budget,
            "switch_packets": switch_packets, "switch_bytes": switch_bytes,
            "difference": None if switch_packets is None else switch_packets - self.packets,
            "explanation": (explain(self.packets, switch_packets, self.kernel_drops, self.not_written, ended)
                            if self.tap is not None else "frames of no known tap"),
            "complete": self.closed_at is not None,
            "files": [{"file": s.path.name, "packets": s.packets, "bytes": s.bytes, "file_bytes": s.size,
                       "first_packet_at": s.first_ts, "last_packet_at": s.last_ts,
                       "complete": s.closed_at is not None, "deleted": self.deleted.get(s.path.name)}
                      for s in self.segments()],
            "transitions": self.transitions[-50:],
        })
        if self.tap is None:
            doc["flows"] = dict(self.flows.most_common(100))
        return doc

    def write_manifests(self) -> None:
        """The open file's manifest and the tap's summary (after new frames or news)."""
        snap = self.files.snapshot()
        if snap is not None:
            self._write_json(snap.path.with_suffix(".json"), self.segment_manifest(snap))
        self._write_json(self.directory / "tap.json", self.summary())
        self.dirty = False

    def _write_json(self, path: Path, doc: Any) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_json(path, doc)
        except OSError as exc:
            if self.last_error is None:
                self.last_error = f"{path}: {exc.strerror or exc}"
            log.warning("tap %s: manifest %s not written: %s", self.name, path.name, exc.strerror or exc)

    def close(self) -> None:
        self.flush()
        self.files.close()
        self.closed_at = self.clock()
        self.write_manifests()

    # -- disk ----------------------------------------------------------------------------
    def disk_files(self) -> list[tuple[Segment, bool]]:
        """Files still on disk, oldest first, with whether each is the open one."""
        out = [(s, False) for s in self.files.segments if s.path.name not in self.deleted]
        snap = self.files.snapshot()
        if snap is not None:
            out.append((snap, True))
        return out

    def disk_bytes(self) -> int:
        return sum(s.size for s, _open in self.disk_files())

    def delete(self, seg: Segment, why: str) -> int:
        """Remove a closed file (never the open one); its manifest stays, marked."""
        try:
            seg.path.unlink()
        except FileNotFoundError:
            pass
        self.deleted[seg.path.name] = why
        self._write_json(seg.path.with_suffix(".json"), self.segment_manifest(seg))
        self.dirty = True
        return seg.size
