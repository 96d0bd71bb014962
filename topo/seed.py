"""The PyTapDEMON prototype's topology (baseline B1), port for port.

    s1 (filter, dpid 1):  h1..h5 on ports 1..5, uplinks 6..10 -> s3 ports 1..5
    s2 (filter, dpid 2):  h6..h10 on ports 1..5, uplinks 6..10 -> s3 ports 6..10
    s3 (aggregation, 3):  h11 (the capture host) on port 11

Hosts are 10.0.0.N/8 with MAC 00:00:00:00:00:NN (hex). Switches run in
``secure`` fail mode on the userspace datapath: the five parallel uplinks loop,
so only a controller (or explicit flows) may decide what crosses them.

Run on its own: ``python -m topo.seed --controller-port 6653`` opens the
Mininet CLI; ``build_seed(...)`` returns a started :class:`topo.net.Lab`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from typing import Any

from topo.net import Lab, mininet_missing, start_lab
from topo.sflowcfg import SflowSettings, enable_sflow

FILTER_HOSTS = 5
UPLINKS = 5
CAPTURE_HOST = "h11"
CAPTURE_PORT = 11


def host_ip(n: int) -> str:
    return f"10.0.0.{n}"


def host_ipv6(n: int) -> str:
    return f"fc00::{n:x}"


def host_mac(n: int) -> str:
    return "00:00:00:00:00:%02x" % n


@dataclass(frozen=True)
class PortLink:
    """One cable: ``a`` port ``a_port`` to ``b`` port ``b_port`` (hosts use port 0)."""

    a: str
    a_port: int
    b: str
    b_port: int


def seed_links() -> list[PortLink]:
    """Every cable of the prototype, in the prototype's creation order."""
    links: list[PortLink] = []
    for n in range(1, FILTER_HOSTS + 1):
        links.append(PortLink(f"h{n}", 0, "s1", n))
    for n in range(1, FILTER_HOSTS + 1):
        links.append(PortLink(f"h{n + FILTER_HOSTS}", 0, "s2", n))
    for k in range(UPLINKS):
        links.append(PortLink("s1", FILTER_HOSTS + 1 + k, "s3", 1 + k))
    for k in range(UPLINKS):
        links.append(PortLink("s2", FILTER_HOSTS + 1 + k, "s3", UPLINKS + 1 + k))
    links.append(PortLink(CAPTURE_HOST, 0, "s3", CAPTURE_PORT))
    return links


def _seed_topo_class() -> type:
    """B1 as a Mininet Topo (imports mininet: the description above needs none)."""
    from mininet.topo import Topo

    class SeedTopo(Topo):
        """Explicit port numbers so ofports never depend on order."""

        def build(self, ipv6: bool = False) -> None:  # type: ignore[override]
            for dpid in (1, 2, 3):
                self.addSwitch(f"s{dpid}", dpid="%016x" % dpid)
            for n in range(1, 2 * FILTER_HOSTS + 2):
                self.addHost(f"h{n}", ip=f"{host_ip(n)}/8", mac=host_mac(n))
            for link in seed_links():
                port_a = link.a_port if link.a.startswith("s") else 0
                port_b = link.b_port if link.b.startswith("s") else 0
                self.addLink(link.a, link.b, port1=port_a, port2=port_b)

    return SeedTopo


def __getattr__(name: str) -> Any:
    """``SeedTopo`` is built on first use, so that importing this module needs no mininet."""
    if name == "SeedTopo":
        cls = _seed_topo_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def seed_switches() -> dict[str, int]:
    """switch name -> dpid."""
    return {f"s{dpid}": dpid for dpid in (1, 2, 3)}


def ipv6_addresses(hosts: int = 2 * FILTER_HOSTS) -> dict[str, str]:
    """fc00::N/64 for the production hosts; the capture host stays IPv6-free."""
    return {f"h{n}": f"{host_ipv6(n)}/64" for n in range(1, hosts + 1)}


def build_seed(controller_port: int | None = None, of_version: int = 13,
               sflow: SflowSettings | None = None, *, ipv6: bool = False,
               controller_ip: str = "127.0.0.1", sflow_require_listener: bool = True) -> Lab:
    """Start the seed network; ``.stop()`` on the result (also runs at exit/SIGTERM).

    ``controller_port=None`` starts the switches with no controller (secure
    mode: nothing forwards until flows are added by hand). ``sflow`` enables
    sFlow on all three bridges once they exist; start its collector first.
    """
    lab = start_lab(__getattr__("SeedTopo")(), controller_port=controller_port, of_version=of_version,
                    controller_ip=controller_ip,
                    ipv6_hosts=ipv6_addresses() if ipv6 else None)
    lab.info.update(topology="seed", capture_host=CAPTURE_HOST, capture_port=CAPTURE_PORT)
    if sflow is not None:
        try:
            enable_sflow(lab.switch_names, sflow, require_listener=sflow_require_listener)
        except BaseException:
            lab.stop()
            raise
        lab.info["sflow"] = sflow
    return lab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m topo.seed", description=__doc__.split("\n")[0])
    parser.add_argument("--controller-port", type=int, default=None,
                        help="OpenFlow controller port on 127.0.0.1 (none: switches without controller)")
    parser.add_argument("--controller-ip", default="127.0.0.1")
    parser.add_argument("--of", type=int, choices=(10, 13), default=13, help="OpenFlow version")
    parser.add_argument("--sflow", metavar="HOST:PORT", help="enable sFlow toward this collector")
    parser.add_argument("--sampling", type=int, default=100)
    parser.add_argument("--polling", type=int, default=2)
    parser.add_argument("--ipv6", action="store_true", help="give h1..h10 fc00::N/64")
    args = parser.parse_args(argv)
    missing = mininet_missing("python -m topo.seed")
    if missing:
        print(missing, file=sys.stderr)
        return 2
    from mininet.cli import CLI
    from mininet.log import setLogLevel

    setLogLevel("info")
    logging.basicConfig(level=logging.INFO)
    sflow = SflowSettings(args.sflow, args.sampling, args.polling) if args.sflow else None
    lab = build_seed(args.controller_port, args.of, sflow, ipv6=args.ipv6,
                     controller_ip=args.controller_ip, sflow_require_listener=False)
    try:
        CLI(lab.net)
    finally:
        lab.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
