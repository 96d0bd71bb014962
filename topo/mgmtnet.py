"""A management network for the lab: the hosts of a real network that share
nothing but the network.

In a real deployment the daemon, the capture host and the operators' machines
are different hosts that reach each other over a management network. In the
lab the daemon runs in the root namespace, the capture agent in h11's network
namespace (which otherwise only sees the capture port) and an operator in a
namespace of its own; this module joins them with a Linux bridge in the root
namespace (the daemon's address, ``192.168.231.1/24``) and one veth pair per
member. Production traffic never crosses it: h11's capture interface stays the
only link it has to the switches.

Names are fixed (one lab at a time, under the lab lock); :meth:`remove`
takes away exactly what :meth:`create` made, and :func:`clean_leftovers`
what a crashed run left.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

BRIDGE = "dmn-mgmt"
SUBNET = "192.168.231"
DAEMON_ADDR = f"{SUBNET}.1"
PREFIX = 24


def _ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = (["ip", "netns", "exec", netns] if netns else []) + ["ip", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class ManagementNet:
    """The bridge and its members; ``members`` maps a name to its address."""

    members: dict[str, str] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    _links: list[str] = field(default_factory=list)

    @property
    def daemon_addr(self) -> str:
        return DAEMON_ADDR

    def create(self) -> "ManagementNet":
        clean_leftovers()
        _ip("link", "add", BRIDGE, "type", "bridge")
        self._links.append(BRIDGE)
        _ip("addr", "add", f"{DAEMON_ADDR}/{PREFIX}", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        return self

    def _veth(self, name: str, pid_or_netns: str, addr: str) -> None:
        inside, outside = f"{name}-m", f"{name}-mb"
        _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
        self._links.append(outside)  # removing one end removes the pair
        _ip("link", "set", inside, "netns", pid_or_netns)
        _ip("link", "set", outside, "master", BRIDGE)
        _ip("link", "set", outside, "up")
        self.members[name] = addr

    def attach_host(self, host: object, number: int) -> str:
        """Give a Mininet host a management interface; returns its address."""
        name = str(getattr(host, "name"))
        addr = f"{SUBNET}.{number}"
        self._veth(name, str(getattr(host, "pid")), addr)
        cmd = getattr(host, "cmd")
        cmd(f"ip addr add {addr}/{PREFIX} dev {name}-m")
        cmd(f"ip link set {name}-m up")
        return addr

    def add_namespace(self, name: str, number: int) -> str:
        """A network namespace of its own (an operator's machine); returns its address."""
        _ip("netns", "add", name)
        self.namespaces.append(name)
        addr = f"{SUBNET}.{number}"
        self._veth(name[:10], name, addr)
        _ip("addr", "add", f"{addr}/{PREFIX}", "dev", f"{name[:10]}-m", netns=name)
        _ip("link", "set", f"{name[:10]}-m", "up", netns=name)
        _ip("link", "set", "lo", "up", netns=name)
        return addr

    def remove(self) -> None:
        for link in reversed(self._links):
            _ip("link", "del", link, check=False)
        self._links.clear()
        for ns in self.namespaces:
            _ip("netns", "del", ns, check=False)
        self.namespaces.clear()


def clean_leftovers() -> None:
    """What a crashed run left: the bridge, its veths, the namespaces it made."""
    _ip("link", "del", BRIDGE, check=False)
    for line in _ip("-o", "link", "show", check=False).splitlines():
        parts = line.split(":")
        if len(parts) > 1 and parts[1].strip().split("@")[0].endswith("-mb"):
            _ip("link", "del", parts[1].strip().split("@")[0], check=False)
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith("dmn-"):
            _ip("netns", "del", name, check=False)
