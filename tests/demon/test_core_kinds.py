"""The fan-in, watch-list and scheduled kinds through the pure core (injected clock):
what triggers them, what the tap matches, caps, the capture budget, hold-down."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from demon.model import FlowSighting, TopFlows
from demon.policy import GlobalLimits
from tests.demon.core_harness import AGENT, T0, Harness, installs, policy

TARGET = "10.0.0.2"


def fan_in(**fields):
    return policy(**{"name": "ddos", "kind": "fan_in", "keys": None, "threshold": "40Mbps",
                     "min_sources": 5, "duration": "10s", "holddown": "60s", **fields})


def rows(target: str, sources: int, mbps_each: float, port: int = 1, dpid: int = 1,
         first: int = 1) -> list[FlowSighting]:
    """One ``/activeflows`` row per source of the fan-in (keys target,source; bytes/s)."""
    return [FlowSighting(f"{target},10.1.0.{n}", mbps_each * 1e6 / 8, AGENT,
                         str(100 * dpid + port)) for n in range(first, first + sources)]


# -- fan-in -----------------------------------------------------------------------------


def test_fan_in_taps_the_destination_not_each_source():
    h = Harness([fan_in()])
    # 6 sources x 10 Mbit/s = 60 Mbit/s > 40 Mbit/s: most of it enters at s1 port 3
    h.feed(TopFlows("ddos", rows(TARGET, 4, 10, port=3) + rows(TARGET, 2, 10, port=4, first=9)))
    tap = h.only_tap()
    assert tap.state == "active" and tap.flow_key == TARGET
    assert tap.match == {"ipv4_dst": TARGET}  # no in_port: the sources enter by many ports
    assert (tap.dpid, tap.in_port) == (1, 3)
    assert tap.rate_bps == pytest.approx(60e6)  # the capture budget counts the whole fan-in
    assert "fan-in to 10.0.0.2: 6 sources" in tap.trigger
    assert installs(h.commands)[0].params()["match"] == {"ipv4_dst": TARGET}


@pytest.mark.parametrize("sources, mbps_each", [(4, 20.0), (8, 4.0)])
def test_fan_in_needs_both_enough_sources_and_enough_rate(sources, mbps_each):
    h = Harness([fan_in()])  # 4 x 20 = 80 Mbit/s from too few; 8 x 4 = 32 Mbit/s too little
    h.feed(TopFlows("ddos", rows(TARGET, sources, mbps_each)))
    assert h.state.taps == {} and h.state.watch == {}


def test_fan_in_is_extended_while_it_lasts_then_released_and_held_down():
    h = Harness([fan_in()])
    for second in range(0, 20, 2):
        h.at(second).feed(TopFlows("ddos", rows(TARGET, 6, 10)))
        h.tick()
    tap = h.only_tap()
    assert tap.state == "active" and tap.last_trigger_at == T0 + 18
    h.feed(TopFlows("ddos", rows(TARGET, 3, 10)))  # the attack thins out: not a sighting
    h.tick(27.9)
    assert h.only_tap().state == "active"
    h.tick(28.0)  # 10 s after the last sighting
    tap = h.only_tap()
    assert tap.state == "removed" and "condition cleared" in tap.reason and tap.limit == "duration"
    h.at(40).feed(TopFlows("ddos", rows(TARGET, 6, 10)))  # back inside the 60 s hold-down
    assert len(h.state.taps) == 1


def test_fan_in_with_a_prefix_target_matches_the_prefix():
    h = Harness([fan_in(target="mask:ipdestination:24")])
    h.feed(TopFlows("ddos", rows("10.0.0.0", 6, 10)))
    assert h.only_tap().match == {"ipv4_dst": "10.0.0.0/24"}


def test_fan_in_caps_and_capture_budget():
    limits = GlobalLimits(capture_capacity="100Mbps")
    h = Harness([fan_in(max_taps=2)], limits=limits)
    h.feed(TopFlows("ddos", rows("10.0.0.2", 6, 10)))               # 60 Mbit/s: tapped
    h.feed(TopFlows("ddos", rows("10.0.0.3", 6, 10)))               # 60 more: over budget
    h.feed(TopFlows("ddos", rows("10.0.0.4", 30, 10, port=2)))      # 300 Mbit/s: never fits
    assert [t.flow_key for t in h.live()] == ["10.0.0.2"]
    waiting = h.state.watch[("ddos", "10.0.0.3")]
    assert waiting.waiting.startswith("capture budget: 60Mbps of 100Mbps in use")
    refused = h.records("refused")
    assert len(refused) == 1 and "exceeds the whole capture capacity" in refused[0].detail["cause"]


def test_fan_in_validation():
    from demon.policy import parse_policy

    base = {"name": "d", "kind": "fan_in", "threshold": "1Mbps"}
    _, errors = parse_policy({**base, "target": "ipsource"}, "f.yaml")
    assert errors == ["f.yaml: policy 'd': field 'target': 'ipsource': one of ipdestination, "
                      "ip6destination or mask:<one of them>:<bits>"]
    _, errors = parse_policy({**base, "source": "ip6source"}, "f.yaml")
    assert errors == ["f.yaml: policy 'd': field 'source': 'ip6source' and target "
                      "'ipdestination' mix IPv4 and IPv6"]
    _, errors = parse_policy({**base, "min_sources": 1}, "f.yaml")
    assert errors and "field 'min_sources'" in errors[0]
    _, errors = parse_policy({**base, "keys": "ipsource"}, "f.yaml")
    assert errors and "field 'keys': unknown field" in errors[0]
    pol, errors = parse_policy({**base, "filter": "ipprotocol=17"}, "f.yaml")
    assert pol.flow_spec() == {"keys": "ipdestination,ipsource", "value": "bytes", "t": 2.0,
                               "fs": ",", "filter": "ipprotocol=17"}
    assert pol.threshold_spec() is None and pol.max_flows == 1000


# -- watch list ---------------------------------------------------------------------------


def watch(**fields):
    return policy(**{"name": "telnet", "kind": "watch_list", "threshold": None,
                     "keys": "ipsource,ipdestination,tcpsourceport,tcpdestinationport",
                     "filter": "tcpdestinationport=23", "duration": "30s", "holddown": "60s",
                     **fields})


def test_watch_list_taps_the_first_sighting_however_small():
    h = Harness([watch()])
    h.event("10.0.0.3,10.0.0.4,40001,23", policy="telnet", mbps=0.0001)  # 12.5 bytes/s
    tap = h.only_tap()
    assert tap.state == "active" and "first sighting in demon_telnet" in tap.trigger
    assert tap.match == {"ipv4_src": "10.0.0.3", "ipv4_dst": "10.0.0.4", "ip_proto": 6,
                         "tcp_src": 40001, "tcp_dst": 23, "in_port": 1}
    spec = watch().threshold_spec()
    assert spec["byFlow"] and 0 < spec["value"] < 1  # any sample fires it


def test_watch_list_rate_limit_on_new_taps():
    h = Harness([watch(max_new_taps=2, new_taps_window="60s", max_taps=10)])
    keys = [f"10.0.0.3,10.0.0.4,{40000 + n},23" for n in range(3)]
    for key in keys:
        h.event(key, policy="telnet", mbps=0.01)
    assert sorted(t.flow_key for t in h.live()) == keys[:2]
    assert h.state.watch[("telnet", keys[2])].waiting == "rate limit: 2 new taps per 60s reached"
    # still seen (the poll keeps it fresh) when the window has passed: tapped then
    for second in range(5, 65, 5):
        h.at(second).feed(TopFlows("telnet", [FlowSighting(k, 1.0, AGENT, "101") for k in keys]))
        h.tick()
    assert sorted(t.flow_key for t in h.live()) == keys
    assert h.state.taps["telnet.3"].created_at == pytest.approx(T0 + 60, abs=1)


def test_watch_list_rate_limit_survives_released_taps():
    """Taps that ended still count within the window (the state keeps them that long)."""
    h = Harness([watch(max_new_taps=1, new_taps_window="1h", duration="5s", holddown="0s")],
                limits=GlobalLimits(retain=10))
    h.event("10.0.0.3,10.0.0.4,40000,23", policy="telnet")
    h.tick(6)
    h.tick(30)  # well past retain: the ended tap is still held for the window
    assert h.only_tap().state == "removed"
    h.at(31).event("10.0.0.3,10.0.0.4,40001,23", policy="telnet")
    assert not h.live()
    assert "rate limit" in h.state.watch[("telnet", "10.0.0.3,10.0.0.4,40001,23")].waiting


def test_watch_list_needs_a_filter_and_hold_down_applies():
    from demon.policy import parse_policy

    _, errors = parse_policy({"name": "w", "kind": "watch_list", "keys": "ipsource"}, "w.yaml")
    assert errors == ["w.yaml: policy 'w': field 'filter': required"]
    h = Harness([watch(duration="5s")])
    h.event("10.0.0.3,10.0.0.4,40001,23", policy="telnet")
    h.tick(6)
    assert h.only_tap().state == "removed"
    h.at(30).event("10.0.0.3,10.0.0.4,40001,23", policy="telnet")
    assert len(h.state.taps) == 1  # held down 60 s


# -- scheduled ------------------------------------------------------------------------------

# T0 = 2023-11-14 22:13:20 UTC; windows at every 10th minute
AT_2220 = datetime(2023, 11, 14, 22, 20, tzinfo=timezone.utc).timestamp() - T0


def nightly(**fields):
    return policy(**{"name": "nightly", "kind": "scheduled", "threshold": None,
                     "keys": "mask:ipsource:24", "flow": "10.0.0.0", "at": "1/2",
                     "cron": "*/10 * * * *", "duration": "2m", "max_duration": "5m", **fields})


def test_scheduled_taps_during_each_window_only():
    h = Harness([nightly()])
    h.tick(AT_2220 - 1)
    assert h.state.taps == {}
    h.tick(AT_2220)
    tap = h.only_tap()
    assert tap.state == "active" and (tap.dpid, tap.in_port) == (1, 2)
    assert tap.match == {"ipv4_src": "10.0.0.0/24", "in_port": 2}
    assert tap.expires_at == T0 + AT_2220 + 120
    assert "schedule cron '*/10 * * * *' UTC: window 2023-11-14 22:20:00–22:22:00" in tap.trigger
    h.tick(AT_2220 + 119)
    assert h.only_tap().state == "active"  # no trigger needed to stay
    h.tick(AT_2220 + 120)
    tap = h.only_tap()
    assert tap.state == "removed" and tap.limit == "window"
    assert tap.reason.startswith("schedule window over")
    h.tick(AT_2220 + 600)  # the next window
    assert len(h.live()) == 1 and h.live()[0].tap_id == "nightly.2"


def test_scheduled_started_mid_window_serves_the_rest():
    h = Harness([nightly()])
    h.tick(AT_2220 + 90)
    assert h.only_tap().expires_at == T0 + AT_2220 + 120


def test_scheduled_tap_ended_early_is_not_taken_again_in_its_window():
    h = Harness([nightly(max_packets=100)])
    h.tick(AT_2220)
    from demon.model import MirrorCounters
    h.at(AT_2220 + 10).feed(MirrorCounters([("nightly.1", 150, 150_000)]))
    assert h.only_tap().state == "removed" and h.only_tap().limit == "max_packets"
    h.tick(AT_2220 + 11)
    h.tick(AT_2220 + 60)
    assert len(h.state.taps) == 1
    h.tick(AT_2220 + 600)
    assert len(h.live()) == 1


def test_scheduled_waits_for_room_within_its_window():
    h = Harness([nightly(), policy(max_taps=1)], limits=GlobalLimits(max_taps=1))
    h.at(AT_2220 - 1).event("10.1.0.1,10.0.0.2,40000,5201")  # the elephant takes the only slot
    h.tick(AT_2220)
    assert [t.policy for t in h.live()] == ["big"]
    assert h.state.watch[("nightly", "10.0.0.0")].waiting == "global cap reached (1 taps)"
    from demon.model import OperatorRelease
    h.at(AT_2220 + 30).feed(OperatorRelease("big.1", "ops"))
    h.tick(AT_2220 + 31)
    tap = next(t for t in h.live() if t.policy == "nightly")
    assert tap.expires_at == T0 + AT_2220 + 120  # still the window's end


def test_scheduled_whole_switch_and_start_time():
    start = datetime.fromtimestamp(T0 + 100, timezone.utc).isoformat()
    h = Harness([nightly(at=2, cron=None, start=start, duration="30s")])
    h.tick(99)
    assert h.state.taps == {}
    h.tick(100)
    tap = h.only_tap()
    assert tap.match == {"ipv4_src": "10.0.0.0/24"} and (tap.dpid, tap.in_port) == (2, 0)
    h.tick(130)
    assert h.only_tap().state == "removed"
    h.tick(700)
    assert len(h.state.taps) == 1  # a start time is one window


@pytest.mark.parametrize("fields, error", [
    ({"cron": None}, "field 'cron': give either cron"),
    ({"start": "2025-06-01T02:00:00Z"}, "field 'cron': give either cron"),
    ({"cron": "61 * * * *"}, "field 'cron': cron '61 * * * *': Error validating expression"),
    ({"cron": "0 2 * *"}, "field 'cron': cron '0 2 * *': 5 fields"),
    ({"cron": "0 2 * * 8"}, "field 'cron': day of week 8 is outside 0..7"),
    ({"flow": "10.0.0.0,10.0.0.1"}, "field 'flow': flow key '10.0.0.0,10.0.0.1' has 2 values"),
    ({"at": "s1/2"}, "field 'at': 's1/2' is not DPID/PORT"),
    ({"timezone": "Mars/Olympus"}, "field 'timezone': unknown time zone"),
    ({"keys": "inputifindex"}, "field 'keys': a scheduled tap names its port with 'at'"),
    ({"threshold": "1Mbps"}, "field 'threshold': unknown field"),
])
def test_scheduled_validation(fields, error):
    from demon.policy import parse_policy

    data = {"name": "n", "kind": "scheduled", "keys": "mask:ipsource:24", "flow": "10.0.0.0",
            "at": "1/2", "cron": "0 2 * * *", **fields}
    data = {k: v for k, v in data.items() if v is not None}
    _, errors = parse_policy(data, "s.yaml")
    assert len(errors) == 1 and errors[0].startswith("s.yaml: policy 'n': " + error), errors


def test_scheduled_cron_reads_days_the_crontab_way():
    pol = nightly(cron="0 2 * * 0", duration="10m", max_duration="10m")  # Sundays, as crontab means it
    sunday = datetime(2023, 11, 19, 2, 5, tzinfo=timezone.utc).timestamp()
    monday = datetime(2023, 11, 20, 2, 5, tzinfo=timezone.utc).timestamp()
    assert pol.window_at(sunday) is not None and pol.window_at(monday) is None
