"""Backtest on raw sFlow (``demon-watch --replay FILE.pcap``): the policies run through
the embedded engine on the capture's clock, and tap when the live daemon would.

Captures: ``../shared/captures/ovs-seed-elephant.pcap`` (OVS on the seed topology,
an iperf3 elephant 10.0.0.1 → 10.0.0.2 at 200 Mbit/s entering s1 port 1).
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
import socket
import threading
import time
from pathlib import Path

import pytest

from demon import cli
from demon.replay import backtest
from demon.replay_core import ReplayError
from demon.replay_sflow import datagrams
from demon.rpc.client import RpcClient
from demon.runtime import Runtime, RuntimeOptions
from demon.store import Store
from sflow.embedded import EmbeddedEngine
from sflow.rolling import RollingRecorder
from tests.demon.fakes import TOKEN, FakeController, wait_for

pytestmark = pytest.mark.replay

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "replay"
SEED_FABRIC = FIXTURES / "elephant_session.fabric.json"
REPO = Path(__file__).resolve().parents[2]
ELEPHANT = "10.0.0.1,10.0.0.2,51792,5201"
ELEPHANT_POLICY = """\
name: elephant_tcp
kind: elephant
keys: ipsource,ipdestination,tcpsourceport,tcpdestinationport
threshold: {threshold}
interval: 1s
duration: 3s
max_duration: 2m
holddown: 10s
"""
#: OVS exports each agent's samples at least once a second (the capture's largest gap).
EXPORT_INTERVAL = 1.0


@pytest.fixture(scope="module")
def capture(captures_dir: Path) -> Path:
    return captures_dir / "ovs-seed-elephant.pcap"


def policies(tmp: Path, threshold: str = "50Mbps", text: str = ELEPHANT_POLICY) -> Path:
    directory = tmp / f"policies-{threshold}"
    directory.mkdir(exist_ok=True)
    (directory / "elephant.yaml").write_text(text.format(threshold=threshold))
    return directory


def test_the_elephant_policy_taps_the_elephant(tmp_path: Path, capture: Path) -> None:
    result = backtest(policies(tmp_path), capture, fabric=SEED_FABRIC)
    tap = result.taps["elephant_tcp.1"]
    assert list(result.taps) == ["elephant_tcp.1"]
    assert tap.flow_key == ELEPHANT and (tap.dpid, tap.in_port) == (1, 1)
    assert tap.match == {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "ip_proto": 6,
                         "tcp_src": 51792, "tcp_dst": 5201, "in_port": 1}
    # the engine's EWMA (t = 2 s) of a 200 Mbit/s flow passes 50 Mbit/s within its first second
    assert 0.3 < tap.created_at - result.start < 2.0
    assert result.events == 1 and result.datagrams == 382 and result.malformed == 0
    assert tap.state == "removed" and "condition cleared" in tap.reason


def test_a_threshold_above_the_elephant_taps_nothing(tmp_path: Path, capture: Path) -> None:
    result = backtest(policies(tmp_path, "400Mbps"), capture, fabric=SEED_FABRIC)
    assert result.taps == {} and result.events == 0
    assert not [e for e in result.timeline if e.kind in ("created", "waiting", "refused")]


def test_a_changed_policy_is_backtested_on_raw_sflow_not_on_json(tmp_path: Path,
                                                                  capture: Path) -> None:
    """New keys (host pairs), a filter and another smoothing: the engine recomputes it
    all from the datagrams; a JSON recording of the old definitions cannot."""
    pairs = policies(tmp_path, text=(
        "name: pairs\nkind: top_talkers\nkeys: ipsource,ipdestination\nfilter: ipprotocol=6\n"
        "t: 1s\ntop: 1\nmin_rate: 10Mbps\ninterval: 1s\nduration: 2s\nmax_duration: 1m\n"))
    result = backtest(pairs, capture, fabric=SEED_FABRIC)
    assert [(t.flow_key, t.match) for t in result.taps.values()] == [
        ("10.0.0.1,10.0.0.2", {"ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "in_port": 1})]
    with pytest.raises(ReplayError) as info:
        backtest(pairs, FIXTURES / "live_session.jsonl")
    assert str(info.value).startswith(
        f"recording {FIXTURES / 'live_session.jsonl'} holds the engine's answers for "
        "demon_elephant; the policies want demon_pairs (missing: demon_pairs)")
    err = io.StringIO()
    assert cli.main(["--policies", str(pairs), "--replay", str(FIXTURES / "live_session.jsonl")],
                    stdout=io.StringIO(), stderr=err) == cli.EXIT_CONFIG
    assert len(err.getvalue().splitlines()) == 1 and "--replay FILE.pcap" in err.getvalue()


def test_the_cli_prints_the_same_report_as_for_json(tmp_path: Path, capture: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["--policies", str(policies(tmp_path)), "--replay", str(capture),
                     "--fabric", str(SEED_FABRIC)], stdout=out, stderr=err) == 0, err.getvalue()
    text = out.getvalue()
    assert text.startswith("replayed 14.0s of raw sFlow (382 datagrams, 0 not decoded): "
                           "1 event(s), 14 top-N poll(s)\n")
    assert "created        elephant_tcp.1   event 1: demon_elephant_tcp" in text
    assert f"elephant_tcp.1   elephant_tcp     {ELEPHANT}" in text
    out = io.StringIO()
    assert cli.main(["--policies", str(policies(tmp_path)), "--replay", str(capture),
                     "--fabric", str(SEED_FABRIC), "--json"], stdout=out, stderr=err) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["tap"]["tap_id"] for line in lines if "tap" in line] == ["elephant_tcp.1"]


def test_a_rolling_recording_directory_replays_like_the_capture(tmp_path: Path,
                                                                capture: Path) -> None:
    rec_dir = tmp_path / "sflow"
    items = datagrams(capture)
    with RollingRecorder(rec_dir, segment_seconds=3, clock=lambda: items[0][0]) as rec:
        for ts, src, payload in items:
            rec.record(ts, src, 50000, payload)
    direct = backtest(policies(tmp_path), capture, fabric=SEED_FABRIC)
    rolled = backtest(policies(tmp_path), rec_dir, fabric=SEED_FABRIC)
    assert len(list(rec_dir.iterdir())) == 5
    assert [(t.flow_key, t.created_at, t.ended_at) for t in rolled.taps.values()] == \
        [(t.flow_key, t.created_at, t.ended_at) for t in direct.taps.values()]


def test_a_capture_without_a_fabric_says_what_to_pass(tmp_path: Path, capture: Path) -> None:
    with pytest.raises(ReplayError, match="ovs-seed-elephant.fabric.json"):
        backtest(policies(tmp_path), capture)


def _send_live(items: list[tuple[float, str, bytes]], address: tuple[str, int],
               seconds: float) -> float:
    """Send the capture's first ``seconds`` to ``address`` at its own pace; returns the
    wall-clock time the first datagram went (capture time 0)."""
    start = time.time()
    first = items[0][0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for ts, _src, payload in items:
            if ts - first > seconds:
                break
            delay = start + (ts - first) - time.time()
            if delay > 0:
                time.sleep(delay)
            sock.sendto(payload, address)
    return start


def test_the_tap_comes_at_the_capture_time_the_live_daemon_takes_it(tmp_path: Path,
                                                                    capture: Path) -> None:
    """The same capture sent over UDP at its own pace to a live daemon (embedded engine,
    the fake controller of the seed fabric): its tap comes at the same capture time as
    the backtest's, within one export interval."""
    pol = policies(tmp_path)
    replayed = backtest(pol, capture, fabric=SEED_FABRIC).taps["elephant_tcp.1"]
    items = datagrams(capture)
    offset_backtest = replayed.created_at - items[0][0]
    engine = EmbeddedEngine(sflow_addr=("127.0.0.1", 0), http_addr=("127.0.0.1", 0)).start()
    controller = FakeController().start()
    store = Store(tmp_path / "state.sqlite")
    runtime = Runtime(pol, engine.url, RpcClient(controller.address, token=TOKEN, timeout=2),
                      store, RuntimeOptions(event_poll_timeout=1))
    try:
        runtime.start()
        thread = threading.Thread(target=runtime.run, daemon=True)
        thread.start()
        start = _send_live(items, engine.sflow_address, offset_backtest + 2 * EXPORT_INTERVAL)
        wait_for(lambda: runtime.state.taps, timeout=5, what="the live tap")
        (live,) = runtime.state.taps.values()
    finally:
        runtime.request_stop("test over")
        time.sleep(0.5)
        controller.stop()
        engine.stop()
        store.close()
    assert live.flow_key == ELEPHANT and (live.dpid, live.in_port) == (1, 1)
    offset_live = live.created_at - start
    assert offset_live == pytest.approx(offset_backtest, abs=EXPORT_INTERVAL), \
        (offset_live, offset_backtest)


# -- the project's own recording: demon-lab's over-cap scenario (demon/data/) -------------

LAB = REPO / "demon" / "data" / "lab-over-cap.pcap"
LIVE = json.loads((FIXTURES / "lab-over-cap.live.json").read_text())


def test_the_lab_recording_is_tapped_when_the_live_lab_tapped_it() -> None:
    """Three 200 Mbit/s elephants on s1 under the lab policy's cap of 2: the two the
    live daemon tapped on its threshold events are tapped at the same capture time,
    within one export interval."""
    result = backtest(REPO / "policies" / "lab", LAB)  # the fabric is found beside it
    by_flow = {}
    for tap in sorted(result.taps.values(), key=lambda t: t.created_at):
        by_flow.setdefault(tap.flow_key, tap)
    for live in LIVE["taps"]:
        if not live["cause"].startswith("event"):
            continue
        tap = by_flow[live["flow_key"]]
        assert (tap.dpid, tap.in_port) == (live["dpid"], live["in_port"])
        assert tap.created_at == pytest.approx(live["created_at"], abs=EXPORT_INTERVAL)
    assert sum(1 for t in LIVE["taps"] if t["cause"].startswith("event")) == 2
    # The third waits for a free slot. Live, the switch's idle timeout (2 s after the
    # flows stopped) freed it; a recording holds no switch, so here it is the policy's
    # own release (3 s after the rates fell below the threshold).
    third = next(t for t in LIVE["taps"] if not t["cause"].startswith("event"))
    assert by_flow[third["flow_key"]].created_at > max(
        t.ended_at for t in result.taps.values() if t.flow_key != third["flow_key"]) - 0.01
    assert [e.kind for e in result.timeline].count("waiting") >= 1


def test_the_lab_recording_with_a_threshold_above_the_elephants_taps_nothing(
        tmp_path: Path) -> None:
    result = backtest(policies(tmp_path, "150Mbps"), LAB)  # they peaked at ~145 Mbit/s
    assert result.taps == {} and result.events == 0 and result.datagrams == 731


def test_record_sflow_is_for_the_embedded_engine_only(tmp_path: Path) -> None:
    err = io.StringIO()
    assert cli.main(["--policies", str(policies(tmp_path)), "--replay", str(LAB),
                     "--record-sflow", str(tmp_path / "rec")], stdout=io.StringIO(),
                    stderr=err) == cli.EXIT_CONFIG
    assert "--record-sflow records the embedded engine's datagrams" in err.getvalue()


def test_the_new_kinds_on_the_lab_recording(tmp_path: Path) -> None:
    """Real sFlow: a watch list taps h5->h2 on its first sampled packet (before the
    elephant policy's threshold would); a fan-in sees 10.0.0.2 receive from h1 and
    h5; a /24 fan-in sees the subnet; a scheduled policy needs no sFlow at all."""
    d = tmp_path / "kinds"
    d.mkdir()
    (d / "w.yaml").write_text(
        "name: port5203\nkind: watch_list\nkeys: ipsource,ipdestination,tcpsourceport,"
        "tcpdestinationport\nfilter: tcpdestinationport=5203\ninterval: 1s\nduration: 3s\n")
    (d / "f.yaml").write_text("name: h2\nkind: fan_in\nthreshold: 100Mbps\nmin_sources: 2\n"
                              "interval: 1s\nduration: 3s\n")
    (d / "p.yaml").write_text("name: subnet\nkind: fan_in\ntarget: mask:ipdestination:24\n"
                              "threshold: 200Mbps\nmin_sources: 3\ninterval: 1s\nduration: 3s\n")
    items = datagrams(LAB)
    start = datetime.fromtimestamp(items[0][0] + 5, timezone.utc).isoformat()
    (d / "s.yaml").write_text(f"name: sched\nkind: scheduled\nkeys: ipsource\nflow: 10.0.0.9\n"
                              f"at: 2/4\nstart: '{start}'\nduration: 2s\nmax_duration: 2s\n")
    result = backtest(d, LAB)
    taps = {t.policy: t for t in result.taps.values()}
    watch, elephant = taps["port5203"], backtest(REPO / "policies" / "lab", LAB)
    assert watch.flow_key == "10.0.0.5,10.0.0.2,51794,5203" and "first sighting" in watch.trigger
    first_elephant = min(t.created_at for t in elephant.taps.values()
                         if t.flow_key == watch.flow_key)
    assert watch.created_at < first_elephant - 0.3
    assert (taps["h2"].flow_key, taps["h2"].match) == ("10.0.0.2", {"ipv4_dst": "10.0.0.2"})
    assert "fan-in to 10.0.0.2: 2 sources" in taps["h2"].trigger
    assert taps["subnet"].match == {"ipv4_dst": "10.0.0.0/24"}
    sched = taps["sched"]
    assert sched.created_at == pytest.approx(items[0][0] + 5, abs=1.0)
    assert (sched.dpid, sched.in_port, sched.limit) == (2, 4, "window")
