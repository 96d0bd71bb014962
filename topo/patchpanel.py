"""The prototype's "programmable patch panel" (baseline B13, PyPath): two
switches, ``size`` hosts on each, ``size`` back-to-back links between them.

    s1: h1..hN on ports 1..N, links on ports N+1..2N -> s2 ports N+1..2N
    s2: h(N+1)..h(2N) on ports 1..N

:func:`patch` connects host port ``a`` of s1 to host port ``b`` of s2 through
link ``k`` with four port-to-port flows; nothing else forwards (secure mode).
``python -m topo.patchpanel --size 32`` opens the Mininet CLI.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from topo.net import Lab, mininet_missing, start_lab

MAX_SIZE = 120  # host addresses 10.0.0.1..10.0.0.240 and one-byte MAC suffixes


def _patchpanel_topo_class() -> type:
    """The Mininet Topo (imports mininet; importing this module needs none)."""
    from mininet.topo import Topo

    class PatchPanelTopo(Topo):
        def build(self, size: int = 32) -> None:  # type: ignore[override]
            if not 1 <= size <= MAX_SIZE:
                raise ValueError(f"size: must be 1..{MAX_SIZE}, got {size}")
            self.addSwitch("s1", dpid="%016x" % 1)
            self.addSwitch("s2", dpid="%016x" % 2)
            for n in range(1, 2 * size + 1):
                self.addHost(f"h{n}", ip=f"10.0.0.{n}/8", mac="00:00:00:00:00:%02x" % n)
            for k in range(1, size + 1):
                self.addLink(f"h{k}", "s1", port1=0, port2=k)
            for k in range(1, size + 1):
                self.addLink(f"h{size + k}", "s2", port1=0, port2=k)
            for k in range(1, size + 1):
                self.addLink("s1", "s2", port1=size + k, port2=size + k)

    return PatchPanelTopo


def __getattr__(name: str) -> Any:
    if name == "PatchPanelTopo":
        cls = _patchpanel_topo_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_patchpanel(size: int = 32, controller_port: int | None = None, of_version: int = 13) -> Lab:
    lab = start_lab(__getattr__("PatchPanelTopo")(size=size), controller_port=controller_port,
                    of_version=of_version)
    lab.info.update(topology="patchpanel", size=size)
    return lab


def patch(lab: Lab, a: int, b: int, link: int, cookie: int = 0xB13) -> None:
    """Connect s1 host port ``a`` to s2 host port ``b`` over back-to-back link ``link`` (1-based)."""
    size = lab.info["size"]
    for name, value in (("a", a), ("b", b), ("link", link)):
        if not 1 <= value <= size:
            raise ValueError(f"{name}: must be 1..{size}, got {value}")
    trunk = size + link
    flows = {"s1": [(a, trunk), (trunk, a)], "s2": [(b, trunk), (trunk, b)]}
    for sw, pairs in flows.items():
        for src, dst in pairs:
            lab.ofctl("add-flow", sw, f"cookie={cookie:#x},priority=100,in_port={src},actions=output:{dst}")


def unpatch(lab: Lab, cookie: int = 0xB13) -> None:
    for sw in ("s1", "s2"):
        lab.ofctl("del-flows", sw, f"cookie={cookie:#x}/-1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m topo.patchpanel", description="the B13 patch panel")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--controller-port", type=int)
    p.add_argument("--of", type=int, choices=(10, 13), default=13)
    p.add_argument("--patch", action="append", default=[], metavar="A:B:LINK",
                   help="patch s1 port A to s2 port B over link LINK (repeatable)")
    args = p.parse_args(argv)
    missing = mininet_missing("python -m topo.patchpanel")
    if missing:
        print(missing, file=sys.stderr)
        return 2
    from mininet.cli import CLI
    from mininet.log import setLogLevel

    setLogLevel("info")
    lab = build_patchpanel(args.size, args.controller_port, args.of)
    try:
        for spec in args.patch:
            a, b, link = (int(x) for x in spec.split(":"))
            patch(lab, a, b, link)
        CLI(lab.net)
    finally:
        lab.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
