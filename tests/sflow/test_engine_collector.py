"""The UDP collector: kernel drop counts, IPv6, bad datagrams, a failing ingest."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import pytest
import requests

from sflow.collector import Collector, kernel_drops, open_udp_socket, pcap_payloads, send_payloads
from sflow.embedded import EmbeddedEngine
from sflow.engine import Engine
from sflow.flowdef import parse_flow


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_kernel_drops_reads_this_sockets_line(tmp_path: Path) -> None:
    sock = open_udp_socket("127.0.0.1", 0)
    try:
        inode = os.fstat(sock.fileno()).st_ino
        (tmp_path / "udp").write_text(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
            "timeout inode ref pointer drops\n"
            " 610: 0100007F:809B 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
            "        0 1 2 000000004a39ef7a 99\n"
            f" 611: 0100007F:18CB 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
            f"        0 {inode} 2 000000004a39ef7a 17\n")
        assert kernel_drops(sock, tmp_path) == 17
        assert kernel_drops(sock, tmp_path / "absent") is None
        assert kernel_drops(sock) == 0  # the real /proc/net/udp knows this socket
    finally:
        sock.close()


def test_receive_buffer_is_enlarged() -> None:
    sock = open_udp_socket("127.0.0.1", 0, rcvbuf=4 << 20)
    try:
        default = int(Path("/proc/sys/net/core/rmem_default").read_text())
        granted = sock.getsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF)
        assert granted > default
    finally:
        sock.close()


def test_ipv6_end_to_end(captures_dir: Path) -> None:
    service = EmbeddedEngine(("::1", 0), ("::1", 0)).start()
    try:
        assert service.url.startswith("http://[::1]:")
        payloads = [p for _, p in pcap_payloads(captures_dir / "ovs-seed-elephant.pcap")]
        send_payloads(payloads, service.sflow_address)
        assert wait_for(lambda: service.engine.datagrams == len(payloads))
        agents = requests.get(service.url + "/agents/json", timeout=5).json()
        assert agents["127.0.0.1"]["sFlowDatagramSource"] == ["::1"]
    finally:
        service.stop()


def test_a_failing_ingest_is_counted_and_collection_goes_on(captures_dir: Path) -> None:
    calls = {"n": 0}

    def flaky_keys(agent: str, sample: object) -> dict:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        from sflow.keys import sample_keys
        return sample_keys(agent, sample)  # type: ignore[arg-type]

    from sflow.keys import datasource_of
    engine = Engine(keys_fn=flaky_keys, datasource_fn=datasource_of)
    engine.set_flow(parse_flow("f", {"keys": "ipsource"}))
    collector = Collector(engine, "127.0.0.1", 0).start()
    try:
        payloads = [p for _, p in pcap_payloads(captures_dir / "ovs-seed-elephant.pcap")]
        with_flows = [p for p in payloads if len(p) > 500][:20]
        send_payloads([b"\x00\x00\x00\x05\x00\x00\x00\x09"] + with_flows, collector.address)
        assert wait_for(lambda: engine.datagrams == 21)
        dropped = engine.analyzer()["sFlowDatagramsDroppedReasons"]
        assert dropped == {"bad-address-type": 1, "ingest-error": 1}
        assert engine.flow_count("f") > 0  # the datagrams after the failure were ingested
    finally:
        collector.stop()


def test_port_in_use_is_an_error() -> None:
    first = EmbeddedEngine(("127.0.0.1", 0), ("127.0.0.1", 0)).start()
    try:
        with pytest.raises(OSError):
            EmbeddedEngine(first.sflow_address, ("127.0.0.1", 0)).start()
    finally:
        first.stop()
