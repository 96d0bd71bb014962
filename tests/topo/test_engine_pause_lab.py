"""Issue 14 #4 in the lab: the analytics engine paused for 20 s (SIGSTOP) while an
elephant runs. Before: the tap was released during the pause (a ~20 s capture
gap). Now the daemon takes silence for silence, not for a cleared condition: it
asks the engine again once it answers, lets its rates settle, and the tap goes
on: one tap, no gap in what h11 captured.

The engine runs as its own process (``demon-sflow``, used by ``demon-watch
--sflow-rt`` as a real sFlow-RT would be), so that it can be paused alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

from tests.topo.test_loop_end_to_end import TcpFlow, run_flows, taps_of
from tests.topo.test_split_hosts_lab import RATE, capture_gaps, flow_bytes, lab_policies
from topo.components import free_port
from topo.net import tcp_listening
from topo.session import LabSession, SessionOptions

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning:mininet.*")]



@pytest.fixture(scope="module")
def lab(module_lab_lock: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    out = tmp_path_factory.mktemp("pause")
    sflow_port, http_port = free_port(kind=2), free_port()
    log = open(out / "demon-sflow.log", "wb")
    engine = subprocess.Popen([sys.executable, "-m", "sflow.cli", "--sflow-host", "127.0.0.1",
                               "--sflow-port", str(sflow_port), "--http-host", "127.0.0.1",
                               "--http-port", str(http_port)], stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not tcp_listening("127.0.0.1", http_port, 0.2):
            assert engine.poll() is None and time.monotonic() < deadline, "demon-sflow did not start"
            time.sleep(0.1)
        session = LabSession(SessionOptions(out=out / "lab", policies=lab_policies(out / "policies"),
                                            sflow_rt=f"http://127.0.0.1:{http_port}",
                                            sflow_collector=f"127.0.0.1:{sflow_port}"))
        session.start()
        try:
            yield {"session": session, "engine": engine}
        finally:
            session.stop()
    finally:
        if engine.poll() is None:
            os.kill(engine.pid, signal.SIGCONT)
            engine.terminate()
            engine.wait(10)
        log.close()


def test_an_engine_paused_20_s_never_ends_the_tap_of_a_running_flow(lab: dict[str, Any]) -> None:
    session: LabSession = lab["session"]
    engine: subprocess.Popen = lab["engine"]
    flow = TcpFlow(session, 1, 2, 43001, 5501, nbytes=flow_bytes(45), rate=RATE)
    # The daemon learns the ports from the engine's port map first: allow for it.
    assert session.wait(lambda s: any(t["state"] == "active" for t in taps_of(s, flow.key)), 40)
    (tap,) = taps_of(session, flow.key)
    time.sleep(2)
    os.kill(engine.pid, signal.SIGSTOP)
    try:
        paused_at = time.time()
        time.sleep(20)
        session.poll()
        assert [t["state"] for t in taps_of(session, flow.key)] == ["active"]
    finally:
        os.kill(engine.pid, signal.SIGCONT)
    run_flows(session, [flow], timeout=90)
    flow.results()
    assert session.wait(lambda s: all(t["state"] in ("removed", "failed")
                                      for t in taps_of(s, flow.key)), 30)
    (after,) = taps_of(session, flow.key)  # no second tap
    assert after["tap_id"] == tap["tap_id"]
    assert flow.ended_at is not None and flow.ended_at > paused_at + 25
    assert (after["ended_at"] or 0) >= flow.ended_at - 1.0, after  # not before the flow ended
    gap, copies = capture_gaps(session, tap["tap_id"])
    assert copies > 0.5 * flow.nbytes / 1500 and gap < 1.0, (gap, copies)
