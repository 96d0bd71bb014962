"""One running lab: every part started in order, observed while it runs, and
stopped in reverse order — whatever happens.

Start order matters: the controller first (the switches connect to it and
``demon-watch`` refuses to start without it), then the network, the capture
agent on h11, ``demon-watch`` (its embedded engine binds the sFlow port), and
only then sFlow on the bridges (OVS's connected socket loses datagrams sent
before a collector listens).

While it runs, :meth:`LabSession.poll` mirrors the daemon's tap store into the
capture agent's tap table and turns what it sees into a timeline.

With ``split_hosts`` the parts share nothing but the network (the deployment of
docs/api.md): a management network (``topo.mgmtnet``) joins the daemon (root
namespace, ``192.168.231.1``), the capture host h11 and an operator namespace; the
daemon's API and its engine's sFlow collector listen on the management address
(the switches export there); the capture agent learns taps from the API's
transition stream (``--daemon``) with its own read-only token, and the session
itself observes through the API as an operator would, never the state file.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from demon.capture.taptable import placed, tap_table_entry, write_tap_table
from topo.components import (ControllerSettings, Proc, WatchSettings, engine_port_map, free_port,
                             start_controller, start_watch, wait_for_switches)
from topo.fabricgen import seed_fabric, write_fabric
from topo.hostproc import HostProc, start_capture_agent
from topo.net import Lab, ensure_ovs
from topo.seed import CAPTURE_HOST, build_seed
from topo.sflowcfg import SflowSettings, enable_sflow

OPS_NAMESPACE = "dmn-ops"

REPO = Path(__file__).resolve().parent.parent
LAB_POLICIES = REPO / "policies" / "lab"
SEED_DPIDS = {1, 2, 3}
SEED_PORTS = {1: range(1, 11), 2: range(1, 11), 3: range(1, 12)}


@dataclass(frozen=True)
class SessionOptions:
    out: Path = Path("lab-out")
    controller: str = "os-ken"
    policies: Path = LAB_POLICIES
    sflow_rt: str | None = None
    sflow_collector: str = "127.0.0.1:6343"  # where a real sFlow-RT (--sflow-rt) listens for sFlow
    sampling: int = 100
    polling: int = 2
    static: bool = False  # add the prototype's static mode to the fabric
    capture_grace: float = 2.0
    watch: bool = True  # False: no demon-watch and no sFlow (static mode, controller-only checks)
    split_hosts: bool = False  # daemon, capture host and operator share only a management network
    watch_args: tuple[str, ...] = ()  # more demon-watch options (e.g. notifications)


@dataclass
class TimelineEntry:
    at: float
    what: str
    tap_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class LabSession:
    """Start with :meth:`start`, observe with :meth:`poll`, end with :meth:`stop` (idempotent)."""

    def __init__(self, options: SessionOptions, progress: Callable[[TimelineEntry], None] | None = None) -> None:
        self.options = options
        self.out = Path(options.out).resolve()
        self.progress = progress
        self.started_at = time.time()
        self.timeline: list[TimelineEntry] = []
        self.lab: Lab | None = None
        self.controller: Proc | None = None
        self.watch: Proc | None = None
        self.agent: HostProc | None = None
        self.rpc: Any = None
        self.subscription: Any = None
        self.mirror_events: list[dict[str, Any]] = []
        self.taps: dict[str, dict[str, Any]] = {}
        self.mirrors_seen: dict[str, dict[str, Any]] = {}  # tap_id -> mirror as the switch held it
        self._history_seen = 0
        self._first_packets: set[str] = set()
        self._store: Any = None
        self._lock = threading.Lock()
        self._stopped = False
        self.paths = {
            "fabric": self.out / "fabric.json",
            "token": self.out / "rpc.token",
            "api_token": self.out / "api.token",
            "state": self.out / "state.sqlite",
            "taps": self.out / "taps.json",
            "captures": self.out / "captures",
            "logs": self.out / "logs",
        }
        self.ports: dict[str, int] = {}
        self.mgmt: Any = None
        self.addrs: dict[str, str] = {}
        self.tokens: dict[str, str] = {}  # name -> secret of the API tokens the lab made
        self._api: Any = None
        self._api_cursor = 0

    # -- timeline -------------------------------------------------------------------
    def note(self, what: str, tap_id: str | None = None, at: float | None = None, **detail: Any) -> None:
        entry = TimelineEntry(at if at is not None else time.time(), what, tap_id, detail)
        with self._lock:
            self.timeline.append(entry)
        if self.progress:
            self.progress(entry)

    # -- start ------------------------------------------------------------------------
    def start(self) -> "LabSession":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from demon.rpc.client import RpcClient
        from demon.rpc.token import ensure_token

        opts = self.options
        ensure_ovs()
        self.out.mkdir(parents=True, exist_ok=True)
        for key in ("state", "taps"):
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.paths[key]) + suffix).unlink(missing_ok=True)
        self.paths["logs"].mkdir(parents=True, exist_ok=True)
        write_fabric(self.paths["fabric"], seed_fabric(static=opts.static))
        token = ensure_token(self.paths["token"])
        write_tap_table(self.paths["taps"], [])
        self.ports = {"openflow": free_port(), "rpc": free_port(), "controller_metrics": free_port()}
        ctl = ControllerSettings(opts.controller, self.ports["openflow"], self.ports["rpc"],
                                 self.paths["token"], self.paths["fabric"],
                                 metrics_port=self.ports["controller_metrics"])
        self.controller = start_controller(ctl, self.paths["logs"] / "controller.log")
        self.note("controller up", component=opts.controller, openflow=self.ports["openflow"],
                  rpc=ctl.rpc_address)
        self.rpc = RpcClient(ctl.rpc_address, token=token, timeout=10)
        self.subscription = self.rpc.subscribe(self._on_event)
        self.lab = build_seed(controller_port=self.ports["openflow"], of_version=ctl.of_version)
        switches = wait_for_switches(self.rpc, SEED_DPIDS)
        self.note("network up", switches=sorted(s["dpid"] for s in switches))
        if opts.split_hosts:
            self._management()
            self.start_watch()
            self.agent = start_capture_agent(
                self.lab.host(CAPTURE_HOST), self.paths["captures"], None,
                grace=opts.capture_grace, daemon=self.api_url,
                token_file=self.paths["capture_token"], log=self.paths["logs"] / "capture.log")
            self.lab.on_stop(self._stop_agent)
            self.note("capture agent up", host=CAPTURE_HOST, out=str(self.paths["captures"]),
                      daemon=self.api_url)
        else:
            self.agent = start_capture_agent(self.lab.host(CAPTURE_HOST), self.paths["captures"],
                                             self.paths["taps"], grace=opts.capture_grace,
                                             log=self.paths["logs"] / "capture.log")
            self.lab.on_stop(self._stop_agent)
            self.note("capture agent up", host=CAPTURE_HOST, out=str(self.paths["captures"]))
            if not opts.watch:
                return
            self.start_watch()
        daemon_host = self.addrs.get("daemon", "127.0.0.1")
        collector = opts.sflow_collector if opts.sflow_rt else f"{daemon_host}:{self.ports['sflow']}"
        sflow = SflowSettings(collector, opts.sampling, opts.polling)
        enable_sflow(self.lab.switch_names, sflow)
        self.note("sFlow on", collector=sflow.collector, sampling=opts.sampling, polling=opts.polling)
        if not opts.sflow_rt:  # a real sFlow-RT has no /demon/portmap: the daemon reads its topology
            self.await_port_map()

    def _management(self) -> None:
        """The management network and the API tokens of its members (each its own file)."""
        import secrets

        from topo.mgmtnet import ManagementNet

        assert self.lab is not None
        self.mgmt = ManagementNet().create()
        self.addrs["daemon"] = self.mgmt.daemon_addr
        self.addrs["capture"] = self.mgmt.attach_host(self.lab.host(CAPTURE_HOST), 11)
        self.addrs["ops"] = self.mgmt.add_namespace(OPS_NAMESPACE, 21)
        self.tokens = {name: secrets.token_hex(24) for name in ("lab", "ops", "capture")}
        lines = [f"lab:{self.tokens['lab']}", f"ops:{self.tokens['ops']}",
                 f"capture:{self.tokens['capture']}:ro"]
        files = {"api_token": lines, "capture_token": [f"capture:{self.tokens['capture']}"],
                 "ops_token": [f"ops:{self.tokens['ops']}"]}
        self.paths["capture_token"] = self.out / "capture-host" / "api.token"
        self.paths["ops_token"] = self.out / "ops" / "api.token"
        for key, content in files.items():
            path = self.paths[key]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write("\n".join(content) + "\n")
        self.note("management network up", **self.addrs)

    def ops(self, argv: list[str], timeout: float = 60, **kw: Any) -> Any:
        """Run a command on the operator's machine (its own namespace)."""
        import subprocess

        return subprocess.run(["ip", "netns", "exec", OPS_NAMESPACE, *argv], capture_output=True,
                               text=True, timeout=timeout, **kw)

    def await_port_map(self, timeout: float = 20) -> None:
        """Wait until the daemon can place taps: its engine has seen every switch port
        (counter records 1004/1005).

        The daemon need not have read that map yet: an event from a port it does not
        know waits (``placement_wait``) while it re-reads the map (``core.awaiting_placement``).
        """
        want = {(dpid, port) for dpid, ports in SEED_PORTS.items() for port in ports}
        deadline = time.monotonic() + timeout
        while True:
            have = {(e.get("dpid"), e.get("ofPort")) for e in engine_port_map(self.ports["engine_http"])}
            if want <= have:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the engine's port map lacks {sorted(want - have)[:5]}... after {timeout:g}s")
            time.sleep(0.2)
        self.note("port map complete", ports=len(want))

    def start_watch(self) -> Proc:
        """Start (or restart) ``demon-watch`` against the same state file."""
        opts = self.options
        if "sflow" not in self.ports:
            self.ports["sflow"] = free_port(kind=2)  # SOCK_DGRAM
        self.ports["engine_http"] = free_port()
        if "api" not in self.ports:
            self.ports["api"] = free_port()  # the same across restarts: clients keep their URL
        host = self.addrs.get("daemon", "127.0.0.1")
        settings = WatchSettings(opts.policies, f"tcp:127.0.0.1:{self.ports['rpc']}", self.paths["token"],
                                 self.paths["state"], self.ports["sflow"], opts.sflow_rt,
                                 self.ports["engine_http"], api_port=self.ports["api"],
                                 api_token_file=self.paths["api_token"], sflow_host=host,
                                 api_host=host, extra=tuple(opts.watch_args))
        self.watch = start_watch(settings, self.paths["logs"] / "demon-watch.log")
        # Its engine is bound: the runtime (and its topology refresh timer) starts right after.
        self.note("demon-watch up", pid=self.watch.pid, policies=str(opts.policies), api=self.api_url)
        return self.watch

    @property
    def api_url(self) -> str | None:
        """The daemon's API (``demon-tap --url``, the capture host), once started."""
        if "api" not in self.ports:
            return None
        return f"http://{self.addrs.get('daemon', '127.0.0.1')}:{self.ports['api']}"

    def metrics_urls(self) -> dict[str, str]:
        """Where each part serves its Prometheus metrics. The capture agent's listener
        is in h11's network namespace (reach it from there, e.g. the Mininet CLI)."""
        urls = {}
        if self.api_url:
            urls["daemon"] = f"{self.api_url}/metrics"  # the embedded engine's follow on the same page
        if "engine_http" in self.ports and not self.options.sflow_rt:
            urls["engine"] = f"http://127.0.0.1:{self.ports['engine_http']}/metrics"
        if "controller_metrics" in self.ports:
            urls["controller"] = f"http://127.0.0.1:{self.ports['controller_metrics']}/metrics"
        capture = self.agent_status().get("metrics")
        if capture:
            urls["capture"] = f"{capture}/metrics"
        return urls

    def _on_event(self, event: Any) -> None:
        if event.event == "mirror_removed":
            with self._lock:
                self.mirror_events.append({"at": time.time(), **event.params})

    # -- observe ----------------------------------------------------------------------
    def _open_store(self) -> Any:
        from demon.store import Store, StoreError

        if self._store is None and self.paths["state"].exists():
            try:
                self._store = Store(self.paths["state"], readonly=True)
            except StoreError:
                return None
        return self._store

    def poll(self) -> None:
        """Copy the daemon's taps into the agent's tap table; extend the timeline."""
        from demon.model import tap_to_dict

        if self.options.split_hosts:
            self._poll_api()
            self._poll_agent()
            self._poll_mirrors()
            return
        store = self._open_store()
        if store is not None:
            try:
                taps = store.taps()
                history = store.history()
            except Exception:  # noqa: BLE001 — the writer may be mid-migration at start
                taps, history = [], []
            changed = False
            for tap in taps:
                doc = tap_to_dict(tap)
                if self.taps.get(tap.tap_id) != doc:
                    self.taps[tap.tap_id] = doc
                    changed = True
            if changed:
                write_tap_table(self.paths["taps"], [tap_table_entry(d) for d in self.taps.values() if placed(d)])
            # The history is append-only and read in order: only the new tail is news.
            for entry in history[self._history_seen:]:
                self.note(f"tap {entry.kind}" if entry.tap_id else entry.kind, entry.tap_id,
                          at=entry.at, **dict(entry.detail))
            self._history_seen = max(self._history_seen, len(history))
        self._poll_agent()
        self._poll_mirrors()

    def _poll_api(self) -> None:
        """Split hosts: the daemon's taps and transitions through its API (never the
        state file), as an operator sees them."""
        from demon.api.client import ApiClient, ApiClientError

        if self.api_url is None:
            return
        if self._api is None:
            self._api = ApiClient(self.api_url, self.tokens.get("lab"), timeout=5)
        try:
            taps = self._api.get("/api/v1/taps", limit=100000)["taps"]
            records = list(self._api.transitions(self._api_cursor))
        except ApiClientError:
            return  # the daemon is down (restarting): nothing new to see
        for tap in taps:
            tap.pop("live", None)
            self.taps[tap["tap_id"]] = tap
        for record in records:
            self.note(f"tap {record['kind']}" if record["tap_id"] else record["kind"],
                      record["tap_id"], at=record["at"], cause=record["cause"],
                      **record["detail"])
            self._api_cursor = max(self._api_cursor, int(record["id"]))

    def agent_status(self) -> dict[str, Any]:
        path = self.paths["captures"] / "agent.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def _poll_agent(self) -> None:
        for name, info in self.agent_status().get("taps", {}).items():
            if name != "unmatched" and name not in self._first_packets and info.get("first_packet_at"):
                self._first_packets.add(name)
                self.note("first packet captured", name, at=info["first_packet_at"])

    def _poll_mirrors(self) -> None:
        if self.rpc is None:
            return
        try:
            mirrors = self.rpc.list_mirrors()
        except Exception:  # noqa: BLE001 — the picture is best effort
            return
        for m in mirrors:
            self.mirrors_seen.setdefault(m["tap_id"], m)

    # -- queries tests and the report use --------------------------------------------------
    def live_taps(self) -> list[dict[str, Any]]:
        return [t for t in self.taps.values() if t.get("state") in ("pending", "active", "expiring")]

    def capture_files(self, tap_id: str) -> list[Path]:
        return sorted(p for p in (self.paths["captures"] / tap_id).glob(f"{tap_id}-*")
                      if p.suffix in (".pcap", ".pcapng"))

    def manifests(self, tap_id: str) -> list[dict[str, Any]]:
        """The tap's file manifests, then its summary (``tap.json``) last."""
        d = self.paths["captures"] / tap_id
        return [json.loads(p.read_text()) for p in sorted(d.glob(f"{tap_id}-*.json")) + [d / "tap.json"]
                if p.exists()]

    def wait(self, predicate: Callable[["LabSession"], bool], timeout: float, every: float = 0.2) -> bool:
        """Poll until ``predicate(self)`` holds; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if predicate(self):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(every)

    def timeline_dicts(self) -> list[dict[str, Any]]:
        with self._lock:
            entries = sorted(self.timeline, key=lambda e: e.at)
        return [{**asdict(e), "t": round(e.at - self.started_at, 3)} for e in entries]

    # -- stop -------------------------------------------------------------------------
    def _stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.stop()

    def stop_watch(self) -> None:
        if self.watch is not None:
            self.watch.stop()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.watch is not None:
            self.watch.stop()
        try:
            self.poll()  # the last transitions (e.g. the release) before the agent closes
        except Exception:  # noqa: BLE001
            pass
        if self.subscription is not None:
            try:
                self.subscription.close()
            except Exception:  # noqa: BLE001
                pass
        if self.lab is not None:
            self.lab.stop()  # stops the capture agent first (on_stop hook)
        elif self.agent is not None:
            self.agent.stop()
        if self.controller is not None:
            self.controller.stop()
        if self.rpc is not None:
            self.rpc.close()
        if self._store is not None:
            self._store.close()
        if self._api is not None:
            self._api.close()
        if self.mgmt is not None:
            self.mgmt.remove()

    def __enter__(self) -> "LabSession":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
