"""Rates, durations and percentages as written in policy files."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from demon.units import UnitError, format_rate, parse_duration, parse_percent, parse_rate


@pytest.mark.parametrize("text, bps", [
    ("100Mbps", 100e6), ("100 Mbit/s", 100e6), ("100Mb/s", 100e6), ("1.5Gbit/s", 1.5e9),
    ("1.5Gbps", 1.5e9), ("800kbps", 800e3), ("800Kbps", 800e3), ("12.5MB/s", 100e6),
    ("12.5MBps", 100e6), ("1MiB/s", 8 * 1024 ** 2), ("2Gibps", 2 * 1024 ** 3),
    ("125000", 1e6), (125000, 1e6), (0.5, 4.0), ("1e6", 8e6), ("64bps", 64), ("64B/s", 512),
    ("10 bytes/s", 80), ("1Tbps", 1e12),
])
def test_rates(text, bps):
    assert parse_rate(text) == pytest.approx(bps)


@pytest.mark.parametrize("text, fragment", [
    ("-5Mbps", "negative"), (-1, "negative"), ("fast", "not a rate"), ("100M", "bits or bytes"),
    ("100 Mbps/s", "not a rate"), (True, "not a rate"), ("nan", "not a rate"), ([1], "not a rate"),
    (float("inf"), "finite"),
])
def test_bad_rates(text, fragment):
    with pytest.raises(UnitError, match=fragment):
        parse_rate(text)


@pytest.mark.parametrize("text, seconds", [
    ("500ms", 0.5), ("5s", 5), ("2m", 120), ("2min", 120), ("1h", 3600), ("1d", 86400),
    (30, 30), ("30", 30), ("1.5s", 1.5), (" 7 s ", 7),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["-1s", "5 sec", "soon", "", None])
def test_bad_durations(text):
    with pytest.raises(UnitError):
        parse_duration(text)


def test_percentages():
    assert parse_percent("10%") == pytest.approx(0.1)
    assert parse_percent("12.5 %") == pytest.approx(0.125)
    assert parse_percent("100Mbps") is None and parse_percent(5) is None
    for bad in ("0%", "150%", "x%"):
        with pytest.raises(UnitError):
            parse_percent(bad)


def test_format_rate():
    assert format_rate(1.5e8) == "150Mbps" and format_rate(2e9) == "2Gbps"
    assert format_rate(999) == "999bps"


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False))
def test_bits_and_bytes_agree(value):
    assert parse_rate(f"{value!r}MB/s") == pytest.approx(parse_rate(f"{value!r}Mbps") * 8)
