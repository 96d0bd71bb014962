"""The decoder against sflowtool's reference decodes of every corpus capture.

Field by field: datagram header, every sample's type / source / rate / pool /
drops / interfaces, every record's tag and decoded fields, and the flow keys
parsed from sampled headers (MACs, VLANs, addresses, ports, flags).
"""

from __future__ import annotations

import json

import pytest

from sflow.decode import DecodeError, decode_datagram
from sflow.jsonview import datagram_to_json
from sflow.pcap import read_udp

from .conftest import CORPUS, HEADER_NOT_KEYS, NOT_MODELLED, Case, check_datagram, corpus_cases

CASES = corpus_cases()
ACCEPTED = [c for c in CASES if c.reference.suffix == ".jsonl"]
REJECTED = [c for c in CASES if c.reference.suffix == ".txt"]

pytestmark = pytest.mark.replay


def _ids(cases: list[Case]) -> list[str]:
    return [c.name for c in cases]


@pytest.fixture(autouse=True)
def _needs_corpus(corpus_dir: object) -> None:
    """Skip (via the shared fixture) when ../shared/corpus is absent."""


def test_corpus_has_cases() -> None:
    # guards the parametrisation below against silently finding nothing
    assert len(ACCEPTED) >= 30 and len(REJECTED) == 4


@pytest.mark.parametrize("case", ACCEPTED, ids=_ids(ACCEPTED))
def test_decode_matches_sflowtool(case: Case) -> None:
    payloads = case.payloads()
    refs = case.references()
    if ".first20." in case.reference.name:
        payloads = payloads[:20]  # the reference covers only the first 20 datagrams
    assert len(payloads) == len(refs)
    for payload, ref in zip(payloads, refs):
        if ref.get("datagramVersion") != "5":
            # not sFlow (another protocol sharing UDP 6343): sflowtool prints only the version
            with pytest.raises(DecodeError) as info:
                decode_datagram(payload)
            assert info.value.reason == "not-sflow-v5"
            continue
        check_datagram(decode_datagram(payload), ref, payload)


@pytest.mark.parametrize("case", ACCEPTED, ids=_ids(ACCEPTED))
def test_json_view_matches_sflowtool(case: Case) -> None:
    """Every sflowtool field the view emits has sflowtool's exact text."""
    unsupported = NOT_MODELLED | HEADER_NOT_KEYS | {"discarded_flowBlock_tag"}
    if case.source.suffix == ".bin":
        stamped = [(p, None) for p in case.payloads()]
    else:
        stamped = [(u.payload, u.timestamp) for u in read_udp(case.source)]
    for (payload, ts), ref in zip(stamped, case.references()):
        if ref.get("datagramVersion") != "5":
            continue
        view = json.loads(json.dumps(datagram_to_json(decode_datagram(payload), size=len(payload),
                                                      timestamp=ts)))
        keys = ["agent", "agentSubId", "packetSequenceNo", "sysUpTime", "samplesInPacket",
                "datagramSize", "datagramVersion"]
        if ts is not None:
            keys += ["pcapTimestamp", "pcapTimestamp_uS"]
        for key in keys:
            assert view[key] == ref[key], key
        for mine, theirs in zip(view["samples"], ref["samples"]):
            for key, value in theirs.items():
                if key == "elements":
                    continue
                assert mine.get(key) == value, (key, mine.get(key), value)
            for el_mine, el_ref in zip(mine["elements"], theirs["elements"]):
                for key, value in el_ref.items():
                    base = key.removeprefix("discarded_").split(".")[0]
                    if base in unsupported and base != "flowBlock_tag":
                        continue
                    assert el_mine.get(key) == value, (key, el_mine.get(key), value)


@pytest.mark.parametrize("case", REJECTED, ids=_ids(REJECTED))
def test_datagrams_sflowtool_rejects_are_rejected(case: Case) -> None:
    """sflowtool aborts these (length mismatch / fuzzed): we raise DecodeError, nothing else.

    Documented choice: over-long content in a sample or record makes the datagram
    malformed (``bad-length``), as in sflowtool; the samples before it stay in
    ``partial``.
    """
    payloads = case.payloads()
    assert payloads
    for payload in payloads:
        with pytest.raises(DecodeError) as info:
            decode_datagram(payload)
        assert info.value.reason in {"bad-length", "truncated-sample", "truncated-header"}
        if info.value.partial is not None:
            assert info.value.partial.version == 5


def test_gopacket_length_mismatch_reasons(corpus_dir: object) -> None:
    """5/8: flow sample declares 52 bytes but holds 56/68; 11: counter sample 76 vs 116."""
    reasons = {}
    for n in (5, 8, 11):
        (udp,) = read_udp(CORPUS / f"pcap/gopacket/gopacket_SFlowTestPacket{n}.pcap")
        with pytest.raises(DecodeError) as info:
            decode_datagram(udp.payload)
        reasons[n] = info.value.reason
        assert info.value.partial is not None
        assert info.value.partial.agent in {"192.168.1.18", "127.0.0.1"}
        assert info.value.partial.samples == []  # the only sample is the bad one
    assert reasons[5] == reasons[8] == "bad-length"
    assert reasons[11] in {"bad-length", "truncated-sample"}


def test_fuzzed_tcpdump_datagram_never_crashes(corpus_dir: object) -> None:
    """sflow_print-segv: its UDP length field is fuzzed, so try both framings."""
    from sflow.pcap import iter_frames

    (frame,) = [f for _, _, f in iter_frames(CORPUS / "pcap/tcpdump/sflow_print-segv.pcap")]
    (udp,) = read_udp(CORPUS / "pcap/tcpdump/sflow_print-segv.pcap")
    whole = frame[14 + 20 + 8:]  # what sflowtool decodes: the frame past the UDP header
    for payload in (udp.payload, whole):
        with pytest.raises(DecodeError):
            decode_datagram(payload)


def test_non_sflow_payloads_are_counted_not_sflow(corpus_dir: object) -> None:
    reasons = []
    for udp in read_udp(CORPUS / "pcap/tcpdump/sflow_multiple_counter_30_pdus.pcap"):
        try:
            decode_datagram(udp.payload)
            reasons.append("ok")
        except DecodeError as exc:
            reasons.append(exc.reason)
    assert reasons.count("ok") == 25 and reasons.count("not-sflow-v5") == 5
