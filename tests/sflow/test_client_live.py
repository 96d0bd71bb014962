"""The client suite against the live embedded engine, fed by replaying the OVS capture.

Each scenario gets a fresh engine on ephemeral ports behind a small TCP proxy
(the client's URL), so an outage (proxy down: connections refused) and an engine
restart (a new engine behind the same URL) need nothing from the engine itself.
The capture's sFlow datagrams are sent to the engine's UDP port over loopback
at their recorded pace times ``speed``.

``DEMON_RECORD_FIXTURES=1`` re-records ``tests/fixtures/sflowrt/<scenario>/``
from every passing test (the recorded suite then makes the same requests).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

from sflow.client import SFlowRTClient
from sflow.recorder import Recorder, write_split

from .client_suite import (  # noqa: F401 (collected by pytest)
    CAPTURE,
    FIXTURES,
    make_client,
    test_agents,
    test_bad_definition_is_rejected_with_reason,
    test_event_stream_follows_an_engine_restart,
    test_event_stream_survives_an_outage,
    test_events_cursor,
    test_flow_define_get_delete,
    test_port_map_matches_the_capture_topology,
    test_read_only_engine_refuses_writes,
    test_threshold_define_get_delete,
    test_top_active_flow_is_the_elephant,
    test_unknown_names,
    test_version,
)

pytestmark = pytest.mark.slow

RECORD = os.environ.get("DEMON_RECORD_FIXTURES") == "1"


def _engine_class() -> Any:
    import sflow

    if not (Path(sflow.__file__).parent / "embedded.py").exists():
        pytest.skip("the embedded engine (sflow/embedded.py) is not written yet")
    from sflow.embedded import EmbeddedEngine  # once it exists, a broken import fails

    return EmbeddedEngine


def _start_engine(readonly: bool = False) -> Any:
    engine_class = _engine_class()
    return engine_class(sflow_addr=("127.0.0.1", 0), http_addr=("127.0.0.1", 0),
                        readonly=readonly).start()


def _http_address(engine: Any) -> tuple[str, int]:
    parts = urlsplit(engine.url)
    return parts.hostname or "127.0.0.1", int(parts.port or 80)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to an upstream; stop() refuses and cuts connections."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._conns -= {a, b}


def _capture_datagrams(path: Path) -> list[tuple[float, bytes]]:
    import dpkt

    out: list[tuple[float, bytes]] = []
    with open(path, "rb") as handle:
        for ts, frame in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(frame).data
            udp = getattr(ip, "data", None)
            if isinstance(udp, dpkt.udp.UDP) and udp.dport == 6343:
                out.append((ts, bytes(udp.data)))
    start = out[0][0]
    return [(ts - start, payload) for ts, payload in out]


def replay(datagrams: list[tuple[float, bytes]], target: tuple[str, int], speed: float) -> None:
    """Send the datagrams to ``target`` at their recorded pace divided by ``speed``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        began = time.monotonic()
        for offset, payload in datagrams:
            delay = began + offset / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sock.sendto(payload, target)


class LiveEngine:
    kind = "live"

    def __init__(self, datagrams: list[tuple[float, bytes]]) -> None:
        self.datagrams = datagrams
        self.engine: Any = None
        self.proxy: TcpProxy | None = None
        self.recorder: Recorder | None = None
        self.scenario_name: str | None = None
        self._readonly = False

    def _client(self, name: str) -> SFlowRTClient:
        self.proxy = TcpProxy(_http_address(self.engine))
        self.proxy.start()
        url = f"http://127.0.0.1:{self.proxy.port}"
        self.scenario_name = name
        session = None
        if RECORD:
            self.recorder = Recorder()
            session = self.recorder.session(url)
        return make_client(url, session=session)

    def scenario(self, name: str) -> SFlowRTClient:
        self.engine = _start_engine()
        return self._client(name)

    def readonly_scenario(self, name: str) -> SFlowRTClient:
        self._readonly = True
        self.engine = _start_engine(readonly=True)
        return self._client(name)

    @contextlib.contextmanager
    def traffic(self, speed: float = 1.0) -> Iterator[None]:
        target = self.engine.sflow_address
        thread = threading.Thread(target=replay, args=(self.datagrams, target, speed), daemon=True)
        thread.start()
        try:
            yield
        finally:
            thread.join()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def outage(self) -> None:
        assert self.proxy is not None
        self.proxy.stop()

    def restore(self) -> None:
        assert self.proxy is not None
        self.proxy.start()

    def restart_engine(self) -> None:
        assert self.proxy is not None
        self.engine.stop()
        self.engine = _start_engine(readonly=self._readonly)
        self.proxy.upstream = _http_address(self.engine)

    def close(self, passed: bool) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.engine is not None:
            self.engine.stop()
        if RECORD and passed and self.recorder is not None and self.scenario_name:
            write_split(self.recorder.entries, FIXTURES / self.scenario_name)


@pytest.fixture(scope="module")
def capture(captures_dir: Path) -> list[tuple[float, bytes]]:
    return _capture_datagrams(captures_dir / CAPTURE)


@pytest.fixture
def sflowrt(request: pytest.FixtureRequest, capture: list[tuple[float, bytes]]) -> Iterator[LiveEngine]:
    _engine_class()
    live = LiveEngine(capture)
    failed_before = request.session.testsfailed
    yield live
    live.close(passed=request.session.testsfailed == failed_before)


def test_recorder_cli_records_a_live_elephant(capture: list[tuple[float, bytes]],
                                              tmp_path: Path) -> None:
    """``python -m sflow.recorder`` against the engine while the capture plays."""
    import subprocess
    import sys

    import responses

    from sflow.client import EventStream
    from sflow.recorder import load_recording, register_recording

    from .client_suite import ELEPHANT, LOW_BYTES_PER_S, QUICK_FLOW

    engine = _start_engine()
    try:
        client = SFlowRTClient(engine.url)
        client.define_flow("demon_rec_tcp", QUICK_FLOW)
        client.define_threshold("demon_rec_elephant", {"metric": "demon_rec_tcp",
                                                       "value": LOW_BYTES_PER_S, "byFlow": True})
        out = tmp_path / "live.jsonl"
        player = threading.Thread(target=replay, args=(capture, engine.sflow_address, 4.0))
        player.start()
        result = subprocess.run(
            [sys.executable, "-m", "sflow.recorder", "--url", engine.url, "--flow", "demon_rec_tcp",
             "--threshold", "demon_rec_elephant", "--duration", "3", "--interval", "0.5",
             "--out", str(out)], capture_output=True, text=True, timeout=60,
            cwd=Path(__file__).resolve().parents[2])
        player.join()
    finally:
        engine.stop()
    assert result.returncode == 0, result.stderr
    entries = load_recording(out)
    assert entries[0].path == entries[-1].path == "/demon/portmap/json"
    assert all(e.status == 200 for e in entries if e.path != "/flow/demon_rec_tcp/json")
    snapshots = [e.body for e in entries if e.path == "/activeflows/ALL/demon_rec_tcp/json"]
    assert len(snapshots) >= 4 and any(s and s[0]["key"] == ",".join(ELEPHANT) for s in snapshots)
    seen = [ev for e in entries if e.path == "/events/json" for ev in e.body]
    assert ",".join(ELEPHANT) in {ev["flowKey"] for ev in seen}
    ids = sorted({ev["eventID"] for ev in seen})
    # replayed, the recording walks a new stream through the same polls: every event once
    polls = sum(1 for e in entries if e.path == "/events/json")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        register_recording(mock, entries, "http://replayed:8008")
        stream = EventStream(SFlowRTClient("http://replayed:8008", retries=0),
                             threshold_id="demon_rec_elephant", poll_timeout=0.5)
        delivered: list[int] = []
        for _ in range(polls):
            delivered += [e.event_id for e in stream.poll()]
    assert delivered == ids
