"""Robustness: whatever the bytes, the decoder returns a Datagram or raises DecodeError,
and whatever it returns, flow keys and the JSON view can be computed."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sflow.decode import REASONS, DecodeError, decode_datagram
from sflow.jsonview import datagram_to_json
from sflow.keys import datasource_of, sample_keys
from sflow.model import Datagram

from .conftest import CORPUS, corpus_cases


def _valid_payloads() -> list[bytes]:
    """Corpus datagrams sflowtool accepts, plus a few OVS ones (empty if no corpus)."""
    payloads = []
    for case in corpus_cases():
        if case.reference.suffix != ".jsonl":
            continue
        for p in case.payloads()[:3]:
            if p[:4] == b"\x00\x00\x00\x05":
                payloads.append(p)
    ovs = CORPUS.parent / "captures" / "ovs-seed-elephant.pcap"
    if ovs.exists():
        from sflow.pcap import read_udp
        payloads += [u.payload for u in list(read_udp(ovs))[:40:8]]
    return payloads


VALID = _valid_payloads()


def _decode_or_error(data: bytes) -> Datagram | DecodeError:
    """Decode; whatever decodes must also yield flow keys and a JSON view without error."""
    try:
        dg = decode_datagram(data)
    except DecodeError as exc:
        assert exc.reason in REASONS
        return exc
    for sample in dg.flow_samples:
        keys = sample_keys(dg.agent, sample)
        assert keys["agent"] == dg.agent and isinstance(datasource_of(sample), str)
    json.dumps(datagram_to_json(dg))
    return dg


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    _decode_or_error(data)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([1, 2, 0, 7]), st.integers(0, 40), st.binary(max_size=800))
def test_random_bodies_behind_a_valid_header(addr_type: int, nsamples: int, body: bytes) -> None:
    """A v5 header with random samples behind it exercises the sample/record paths."""
    addr = {1: b"\x7f\x00\x00\x01", 2: bytes(16), 0: b""}.get(addr_type, b"\x01\x02\x03\x04")
    data = struct.pack(">II", 5, addr_type) + addr + struct.pack(">IIII", 0, 1, 2, nsamples) + body
    result = _decode_or_error(data)
    if addr_type == 7:
        assert isinstance(result, DecodeError) and result.reason == "bad-address-type"


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 40), st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1), st.binary(max_size=300))
def test_random_records_inside_a_valid_sample(fmt: int, rec_fmt: int, rec_len: int, body: bytes) -> None:
    """One sample of a known type holding one record with random format, length and body."""
    rec = struct.pack(">II", rec_fmt % 2200 if rec_fmt % 3 else rec_fmt, rec_len % 400) + body
    sample_fmt = fmt % 6
    head = {1: struct.pack(">8I", 1, 3, 100, 100, 0, 1, 2, 1),
            3: struct.pack(">11I", 1, 0, 3, 100, 100, 0, 0, 1, 0, 2, 1),
            5: struct.pack(">8I", 1, 0, 3, 0, 1, 2, 258, 1),
            2: struct.pack(">3I", 1, 3, 1), 4: struct.pack(">4I", 1, 0, 3, 1)}.get(sample_fmt, b"")
    sample = head + rec
    data = (struct.pack(">II4sIIII", 5, 1, b"\x0a\x00\x00\x01", 0, 1, 2, 1)
            + struct.pack(">II", sample_fmt, len(sample)) + sample)
    _decode_or_error(data)


@pytest.mark.replay
@pytest.mark.skipif(not VALID, reason="sFlow corpus not found")
def test_every_truncation_is_rejected_or_identical() -> None:
    for payload in VALID:
        full = decode_datagram(payload)
        for cut in range(len(payload)):
            result = _decode_or_error(payload[:cut])
            if isinstance(result, Datagram):
                # only bytes past the declared samples were cut (akvorado's edited
                # captures declare 1 sample and carry 5)
                assert result == full, (len(payload), cut)
                continue
            if result.partial is not None:
                n = len(result.partial.samples)
                assert result.partial.samples == full.samples[:n]
                assert (result.partial.agent, result.partial.sequence) == (full.agent, full.sequence)


@pytest.mark.replay
@pytest.mark.skipif(not VALID, reason="sFlow corpus not found")
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_bit_flips_only_raise_decode_error(data: st.DataObject) -> None:
    payload = bytearray(data.draw(st.sampled_from(VALID)))
    for _ in range(data.draw(st.integers(1, 8))):
        bit = data.draw(st.integers(0, len(payload) * 8 - 1))
        payload[bit // 8] ^= 1 << (bit % 8)
    _decode_or_error(bytes(payload))
