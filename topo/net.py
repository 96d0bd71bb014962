"""Shared Mininet helpers for the lab: userspace OVS, a sane RemoteController,
host preparation (TX offload off, IPv6 off), and teardown that always happens.

Why each piece exists is in ``../shared/reference/lab-notes.md``: there is no
kernel datapath here, TCP hangs with TX checksum offload on veths, the switch
side of each veth sends IPv6 router solicitations into the capture host, and
Mininet's own ``checkListening`` decodes binary OpenFlow as text.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:  # mininet is imported where a network is built: describing one needs none
    from mininet.net import Mininet
    from mininet.node import Host, OVSSwitch
    from mininet.topo import Topo

log = logging.getLogger(__name__)

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
OF_PROTOCOLS = {10: "OpenFlow10", 13: "OpenFlow13"}


def mininet_missing(prog: str) -> str | None:
    """One line saying that ``prog`` needs Mininet, or None when Mininet imports."""
    try:
        import mininet.net  # noqa: F401
    except ImportError as exc:
        return (f"{prog}: needs Mininet, which this Python cannot import ({exc}); on Debian "
                "run bash scripts/setup (a venv with --system-site-packages sees Debian's "
                "mininet)")
    return None


class LabError(RuntimeError):
    """The lab could not be set up (OVS missing, bad parameter, …)."""


def run(cmd: list[str], check: bool = True, timeout: float = 30) -> str:
    """Run a command in the root namespace and return its stdout."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def ovs_running() -> bool:
    try:
        subprocess.run(["ovs-vsctl", "--timeout=3", "show"], check=True,
                       capture_output=True, timeout=10)
        return True
    except (subprocess.SubprocessError, OSError):
        return False


def ensure_ovs() -> None:
    """Start Open vSwitch if it is not answering (PID 1 is not systemd here)."""
    if ovs_running():
        return
    if not Path(OVS_CTL).exists():
        raise LabError("Open vSwitch is not installed (run: bash scripts/setup)")
    subprocess.run([OVS_CTL, "start", "--system-id=random", "--no-monitor"],
                   capture_output=True, timeout=60)
    if not ovs_running():
        raise LabError("Open vSwitch did not start (see /var/log/openvswitch/)")


def tcp_listening(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def loopback_controller() -> type:
    """Mininet's RemoteController whose liveness check is a plain TCP connect.

    Mininet 2.3.0 sends text to the controller port and decodes the binary
    OpenFlow HELLO as UTF-8, which randomly raises UnicodeDecodeError.
    """
    from mininet.node import RemoteController

    class LoopbackController(RemoteController):
        def checkListening(self) -> None:  # noqa: N802 (Mininet's name)
            if self.port is None:
                raise LabError("controller port must be given (POX 6633 and os-ken 6653 differ)")
            if not tcp_listening(self.ip, self.port):
                log.info("no controller listening yet on %s:%d; switches will retry", self.ip,
                         self.port)

        def isListening(self, ip: str, port: int) -> bool:  # noqa: N802
            return tcp_listening(ip, port)

    return LoopbackController


def lab_switch(of_version: int = 13) -> Callable[..., OVSSwitch]:
    """Switch class: userspace datapath, controller-only (``secure``), one OF version.

    ``secure`` matters: the seed topology's parallel uplinks loop, and a switch
    in ``standalone`` mode would flood production traffic around them.
    """
    from mininet.node import OVSSwitch

    if of_version not in OF_PROTOCOLS:
        raise LabError(f"of_version: must be 10 or 13, not {of_version!r}")
    return partial(OVSSwitch, datapath="user", failMode="secure",
                   protocols=OF_PROTOCOLS[of_version], batch=False)


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as handle:
            handle.write(value)
    except OSError:
        pass  # interface already gone or IPv6 compiled out: nothing to silence


def silence_ipv6_on_switch_ports(switches: Iterable[Any]) -> None:
    """Disable IPv6 on the switch side of every veth (root namespace).

    Otherwise each one sends router solicitations and MLD reports that end up
    in captures.
    """
    for sw in switches:
        for intf in sw.intfList():
            name = str(intf)
            if name == "lo":
                continue
            _write_sysctl(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "1")


def prepare_host(host: Host, ipv6: str | None = None) -> None:
    """TX checksum offload off (TCP hangs otherwise), IPv6 off unless an address is given."""
    for intf in host.intfList():
        if str(intf) != "lo":
            host.cmd(f"ethtool -K {intf} tx off >/dev/null 2>&1")
    if ipv6:
        intf = host.defaultIntf()
        host.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0"
                 f" net.ipv6.conf.{intf}.disable_ipv6=0"
                 f" net.ipv6.conf.{intf}.accept_ra=0 net.ipv6.conf.{intf}.dad_transmits=0")
        host.cmd(f"ip -6 addr add {ipv6} dev {intf} nodad")
    else:
        host.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")


# Every started lab, so that atexit and signals can stop what is still up.
_LIVE: list["Lab"] = []
_LIVE_LOCK = threading.Lock()
_HANDLERS_INSTALLED = False


def _stop_all() -> None:
    with _LIVE_LOCK:
        labs = list(_LIVE)
    for lab in labs:
        lab.stop()


def _on_signal(signum: int, _frame: Any) -> None:
    _stop_all()
    # Re-raise as the usual exit so callers' finally blocks run and the exit code says why.
    raise SystemExit(128 + signum)


def install_teardown_handlers() -> None:
    """Stop every live lab at exit and on SIGTERM/SIGHUP (SIGINT raises KeyboardInterrupt).

    Only signals whose handler is still the default are taken, so a host
    program (pytest, a daemon) keeps its own.
    """
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, _on_signal)


@dataclass
class Lab:
    """A started Mininet network; ``stop()`` is idempotent and runs at exit too."""

    net: Mininet
    of_version: int
    controller_port: int | None
    info: dict[str, Any] = field(default_factory=dict)
    _stopped: bool = False
    _on_stop: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        with _LIVE_LOCK:
            _LIVE.append(self)
        install_teardown_handlers()

    def host(self, name: str) -> Host:
        return self.net.get(name)

    def switch(self, name: str) -> OVSSwitch:
        return self.net.get(name)

    @property
    def switch_names(self) -> list[str]:
        return [s.name for s in self.net.switches]

    def ofctl(self, *args: str, check: bool = True) -> str:
        """``ovs-ofctl -O <version> <args>`` (the bridges accept only one version)."""
        return run(["ovs-ofctl", "-O", OF_PROTOCOLS[self.of_version], *args], check=check)

    def on_stop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` before the network is torn down (e.g. stop a process in a host)."""
        self._on_stop.append(fn)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        for fn in reversed(self._on_stop):
            try:
                fn()
            except Exception:  # noqa: BLE001 — teardown must go on
                log.exception("lab teardown hook failed")
        try:
            self.net.stop()
        except Exception:  # noqa: BLE001
            log.exception("net.stop() failed; removing bridges by hand")
            for sw in self.net.switches:
                run(["ovs-vsctl", "--if-exists", "del-br", sw.name], check=False)
        with _LIVE_LOCK:
            if self in _LIVE:
                _LIVE.remove(self)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def remove_leftovers(switch_names: Iterable[str]) -> None:
    """Remove bridges and veths a crashed run left under these names (a targeted ``mn -c``).

    Processes are left alone: a crashed run's host shells die with their namespaces' parent.
    """
    for name in switch_names:
        run(["ovs-vsctl", "--if-exists", "del-br", name], check=False)
        run(["ip", "link", "del", name], check=False)
        for line in run(["ip", "-o", "link", "show"], check=False).splitlines():
            parts = line.split(":")
            if len(parts) > 1:
                intf = parts[1].strip().split("@")[0]
                if intf.startswith(f"{name}-eth"):
                    run(["ip", "link", "del", intf], check=False)


@contextlib.contextmanager
def large_port_buffers(size: int = 4 << 20) -> Iterator[None]:
    """Give the AF_PACKET sockets OVS opens for new ports ``size`` bytes of receive buffer.

    The userspace datapath reads each port from such a socket; with the default
    208 KiB a burst of mirror copies overflows it while ovs-vswitchd is busy and the
    copies vanish without any counter (seen here: 562 of 664 reached h11).
    """
    path = Path("/proc/sys/net/core/rmem_default")
    old = path.read_text().strip()
    if int(old) >= size:
        yield
        return
    path.write_text(str(size))
    try:
        yield
    finally:
        path.write_text(old)


def start_lab(topo: Topo, *, controller_port: int | None, of_version: int = 13,
              controller_ip: str = "127.0.0.1", ipv6_hosts: dict[str, str] | None = None,
              before_start: Callable[[Mininet], None] | None = None) -> Lab:
    """Build and start ``topo`` on userspace OVS; clean up whatever was built if it fails."""
    from mininet.net import Mininet

    ensure_ovs()
    remove_leftovers(topo.switches())
    net = Mininet(topo=topo, switch=lab_switch(of_version), controller=None,
                  build=False, autoSetMacs=False, waitConnected=False)
    try:
        if controller_port is not None:
            net.addController("c0", controller=loopback_controller(),
                              ip=controller_ip, port=controller_port)
        net.build()
        silence_ipv6_on_switch_ports(net.switches)
        if before_start is not None:
            before_start(net)
        with large_port_buffers():  # OVS opens the ports' sockets in start()
            net.start()
        ipv6_hosts = ipv6_hosts or {}
        for host in net.hosts:
            prepare_host(host, ipv6_hosts.get(host.name))
    except BaseException:
        try:
            net.stop()
        finally:
            remove_leftovers(topo.switches())
        raise
    return Lab(net=net, of_version=of_version, controller_port=controller_port)
