"""Topology, address groups, value maps, the AS table and token files (pure parts)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sflow.auth import MIN_SECRET, TokenFileError, load_tokens
from sflow.groups import AddressGroup, AsnTable, GroupError, ValueMap
from sflow.topology import Topology, TopologyError

from ..conftest import shared_path

CORPUS_JSON = shared_path() / "corpus" / "sflowrt-json"

#: What sFlow-RT's Mininet helper (extras/sflow.py) PUTs for a 2-switch Mininet:
#: nodes from net.switches, ports from /sys/devices/virtual/net/<sw>-<port>/ifindex
#: (strings), links named '<s1>-<s2>' from s1.connectionsTo(s2); no dpid, no ofport.
MININET_HELPER_BODY = {
    "nodes": {"s1": {"agent": "10.0.2.15", "ports": {"s1-eth1": {"ifindex": "417"},
                                                   "s1-eth2": {"ifindex": "419"}}},
              "s2": {"agent": "10.0.2.15", "ports": {"s2-eth1": {"ifindex": "421"},
                                                   "s2-eth2": {"ifindex": "423"}}}},
    "links": {"s1-s2": {"node1": "s1", "port1": "s1-eth2", "node2": "s2", "port2": "s2-eth1"}},
}


def test_mininet_helper_topology_resolves_ports_and_links() -> None:
    topo = Topology.parse(MININET_HELPER_BODY)
    index = topo.index()
    assert index.link("10.0.2.15", "419") == "s1-s2" and index.link("10.0.2.15", "421") == "s1-s2"
    assert index.link("10.0.2.15", "417") is None  # an edge port: no link
    assert index.node("10.0.2.15", "417") == "s1" and index.node("10.0.2.15", "423") == "s2"
    assert index.is_core("10.0.2.15", "419") and not index.is_core("10.0.2.15", "417")
    assert index.agents == {"10.0.2.15"}


def test_links_only_topology_resolves_through_learned_port_names() -> None:
    """fabric-view's demo topology names links only; agents report their port names."""
    body = json.loads((CORPUS_JSON / "fabric-view_demo_topology.json").read_text()) \
        if CORPUS_JSON.is_dir() else {"links": {"L1": {"node1": "leaf1", "node2": "spine1",
                                                        "port1": "swp1s0", "port2": "swp49"}}}
    topo = Topology.parse(body)
    learned = [("10.0.0.1", 5, "swp1s0"), ("10.0.0.9", 49, "swp49"),
               ("10.0.0.2", 5, "swp1s0")]
    # every port name of the demo is used by two nodes: nothing is guessed by name alone
    assert topo.index(learned).ports == {}
    with_nodes = Topology.parse({**body, "nodes": {"leaf1": {"agent": "10.0.0.1"},
                                                   "spine1": {"agent": "10.0.0.9"}}})
    index = with_nodes.index(learned)
    assert index.link("10.0.0.1", "5") == "L1" and index.link("10.0.0.9", "49") == "L1"
    assert ("10.0.0.2", "5") not in index.ports  # leaf2's agent is unknown
    unique = Topology.parse({"links": {"up": {"node1": "a", "port1": "a-eth1",
                                              "node2": "b", "port2": "b-eth1"}}})
    assert unique.index([("127.0.0.1", 7, "a-eth1")]).link("127.0.0.1", "7") == "up"


@pytest.mark.parametrize("body, field", [
    ([], "body"),
    ({"nodes": []}, "nodes"),
    ({"nodes": {"s1": {"ports": {"p": {"ifindex": "x1"}}}}}, "nodes.s1.ports.p.ifindex"),
    ({"links": {"l": {"node1": "a", "port1": "b", "node2": "c"}}}, "links.l.port2"),
    ({"links": {"l": {"node1": 5, "port1": "b", "node2": "c", "port2": "d"}}}, "links.l.node1"),
    ({"nodez": {}}, "nodez"),
])
def test_bad_topologies_name_the_field(body: object, field: str) -> None:
    with pytest.raises(TopologyError) as err:
        Topology.parse(body)
    assert str(err.value).startswith(field + ":")


def test_groups_longest_prefix_wins_across_labels() -> None:
    group = AddressGroup.parse({"external": ["0.0.0.0/0", "::/0"],
                                "private": ["10.0.0.0/8", "192.168.0.0/16", "fc00::/7"],
                                "rack1": ["10.4.1.0/25"]})
    assert group.label("10.4.1.7") == "rack1"
    assert group.label("10.9.9.9") == "private"
    assert group.label("8.8.8.8") == "external"
    assert group.label("fd00::1") == "private" and group.label("2001:db8::1") == "external"
    assert group.label("not-an-address") is None
    assert AddressGroup.parse({"a": ["10.0.0.0/8"]}).label("11.0.0.1") is None


def test_fabric_view_demo_groups_parse() -> None:
    if not CORPUS_JSON.is_dir():
        pytest.skip("shared corpus not found")
    group = AddressGroup.parse(json.loads((CORPUS_JSON / "fabric-view_demo_groups.json").read_text()))
    assert group.label("10.4.2.100") == "rack2" and group.label("224.0.0.251") == "multicast"


@pytest.mark.parametrize("body, start", [
    ([], "body"), ({"a": "10.0.0.0/8"}, "a"), ({"a": ["10.0.0.0/33"]}, "a"),
    ({"a": [None]}, "a"), ({"": ["10.0.0.0/8"]}, "''"),
])
def test_bad_groups_name_the_label(body: object, start: str) -> None:
    with pytest.raises(GroupError) as err:
        AddressGroup.parse(body)
    assert str(err.value).startswith(start)


def test_value_maps() -> None:
    web = ValueMap.parse({"web": ["80", "443", 8080], "mail": ["25"]})
    assert web.label("443") == "web" and web.label("8080") == "web" and web.label("22") is None


def test_asn_table_reads_ip2asn_tsv(tmp_path: Path) -> None:
    path = tmp_path / "ip2asn.tsv"
    path.write_text("1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET\n"
                    "10.0.0.0\t10.255.255.255\t0\tNone\tNot routed\n"
                    "2001:db8::\t2001:db8::ffff\t64500\tDE\tEXAMPLE-AS\n")
    table = AsnTable.load(path)
    assert len(table) == 3
    assert table.asn("1.0.0.1") == "13335" and table.asn("1.0.0.1", "name") == "CLOUDFLARENET"
    assert table.country("1.0.0.1") == "US" and table.country("2001:db8::5") == "DE"
    assert table.asn("10.1.1.1") is None and table.country("10.1.1.1") is None
    assert table.asn("1.0.1.0") is None
    (tmp_path / "bad.tsv").write_text("1.0.0.0\tnot-an-ip\t1\tUS\tx\n")
    with pytest.raises(GroupError, match=r"bad.tsv:1"):
        AsnTable.load(tmp_path / "bad.tsv")


def test_token_files(tmp_path: Path) -> None:
    good = tmp_path / "tokens"
    secret = "s" * MIN_SECRET
    good.write_text(f"# comment\nalice:{secret}\n{'b' * 20}\n")
    good.chmod(0o600)
    tokens = load_tokens(good)
    assert tokens.who(f"Bearer {secret}") == "alice"
    assert tokens.who(f"bearer {'b' * 20}") == "operator"
    assert tokens.who("Bearer nope") is None and tokens.who(None) is None
    assert tokens.who(secret) is None  # no scheme
    good.chmod(0o644)
    with pytest.raises(TokenFileError, match="chmod 600"):
        load_tokens(good)
    short = tmp_path / "short"
    short.write_text("weak\n")
    os.chmod(short, 0o600)
    with pytest.raises(TokenFileError, match="shorter"):
        load_tokens(short)
    with pytest.raises(TokenFileError, match="does not exist"):
        load_tokens(tmp_path / "missing")
