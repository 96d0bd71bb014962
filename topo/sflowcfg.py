"""Enable sFlow on the lab's bridges.

Open vSwitch sends sFlow from a *connected* UDP socket: if nothing listens on
the collector port, the ICMP port-unreachable makes the next send fail and every
other datagram is lost. So :func:`enable_sflow` refuses to point the bridges at
a port nobody has bound, unless told otherwise.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Iterable


class SflowConfigError(ValueError):
    """Bad sFlow setting (the message names the field) or OVS refused it."""


@dataclass(frozen=True)
class SflowSettings:
    """What every bridge exports: 1-in-``sampling`` packets, counters every ``polling`` s."""

    collector: str = "127.0.0.1:6343"
    sampling: int = 100
    polling: int = 2
    header: int = 128
    agent: str = "lo"

    def __post_init__(self) -> None:
        host, sep, port = self.collector.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SflowConfigError(f"collector: expected HOST:PORT, got {self.collector!r}")
        if self.sampling < 1:
            raise SflowConfigError(f"sampling: must be >= 1, got {self.sampling}")
        if self.polling < 0:
            raise SflowConfigError(f"polling: must be >= 0, got {self.polling}")
        if not 14 <= self.header <= 512:
            raise SflowConfigError(f"header: must be 14..512 bytes, got {self.header}")

    @property
    def collector_host(self) -> str:
        return self.collector.rpartition(":")[0]

    @property
    def collector_port(self) -> int:
        return int(self.collector.rpartition(":")[2])


def udp_port_bound(port: int) -> bool:
    """True if some socket on this host (root namespace) is bound to UDP ``port``."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as handle:
                next(handle)
                for line in handle:
                    local = line.split()[1]
                    if int(local.rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            continue
    return False


def _vsctl(*args: str) -> str:
    proc = subprocess.run(["ovs-vsctl", "--timeout=10", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SflowConfigError(f"ovs-vsctl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def enable_sflow(bridges: Iterable[str], settings: SflowSettings,
                 require_listener: bool = True) -> str:
    """Point every bridge at one shared sFlow record; returns the record's UUID."""
    names = list(bridges)
    if not names:
        raise SflowConfigError("bridges: no bridge to enable sFlow on")
    if require_listener and not udp_port_bound(settings.collector_port):
        raise SflowConfigError(
            f"collector: nothing listens on UDP {settings.collector}; start the collector first "
            "(OVS's connected socket would lose every other datagram)")
    args = ["--", "--id=@s", "create", "sflow", f"agent={settings.agent}",
            f"target={json.dumps(settings.collector)}", f"sampling={settings.sampling}",
            f"polling={settings.polling}", f"header={settings.header}"]
    for name in names:
        args += ["--", "set", "bridge", name, "sflow=@s"]
    return _vsctl(*args)


def disable_sflow(bridges: Iterable[str]) -> None:
    """Detach sFlow from the bridges (OVS garbage-collects the unreferenced record)."""
    args: list[str] = []
    for name in bridges:
        args += ["--", "--if-exists", "clear", "bridge", name, "sflow"]
    if args:
        _vsctl(*args)


def sflow_of(bridge: str) -> dict[str, str]:
    """The bridge's sFlow settings as OVS reports them ({} when off)."""
    uuid = _vsctl("get", "bridge", bridge, "sflow").strip("[]")
    if not uuid:
        return {}
    out = {}
    for col in ("agent", "target", "sampling", "polling", "header"):
        out[col] = _vsctl("get", "sflow", uuid, col).strip('"[]')
    return out
