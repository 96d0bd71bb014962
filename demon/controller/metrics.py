"""The controller component's Prometheus metrics, served at ``GET /metrics`` (``--metrics-listen``).

Nothing is counted on a hot path for them: a custom collector reads, at scrape
time, what the service, its mirror book and the RPC server already keep. Each
component owns its :class:`prometheus_client.CollectorRegistry`.

Imported only when metrics are on: it needs ``prometheus_client`` and uvicorn
(through :mod:`sflow.webserve`), which the POX component may not have; it then
runs without metrics and says so once.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import demon
from demon.controller.service import TapService
from demon.rpc.server import RpcServer
from sflow.webserve import BackgroundServer, parse_listen

DEFAULT_LISTEN = "127.0.0.1:8735"
DEFAULT_PORT = 8735


class ControllerCollector:
    """``pytapdemon_controller_*`` from the service's and the RPC server's own counters."""

    def __init__(self, service: TapService, server: RpcServer) -> None:
        self.service = service
        self.server = server

    def describe(self) -> list[Any]:
        return []  # the families are known only at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        book = self.service.book
        switches = [sw for sw in list(book.switches.values()) if sw.connected]
        info = GaugeMetricFamily("pytapdemon_controller_info", "The component, its OpenFlow version and release",
                                 labels=["component", "openflow", "version"])
        info.add_metric([self.service.component, book.openflow, demon.__version__], 1)
        yield info
        yield GaugeMetricFamily("pytapdemon_controller_switches_connected", "Switches connected now",
                                value=len(switches))
        yield GaugeMetricFamily("pytapdemon_controller_mirrors_installed",
                                "Taps whose mirror the component holds on a switch", value=len(book.taps))
        yield GaugeMetricFamily("pytapdemon_controller_mirror_entries",
                                "Mirror flow entries on the connected switches (merged ones count once)",
                                value=sum(len(sw.installed) for sw in switches))
        mods = CounterMetricFamily("pytapdemon_controller_flow_mods", "FlowMods sent and confirmed, by command",
                                   labels=["command"])
        for command in ("add", "delete_strict"):
            mods.add_metric([command], self.service.flow_mods_total.get(command, 0))
        yield mods
        removed = CounterMetricFamily("pytapdemon_controller_flow_removed",
                                      "FlowRemoved messages received, by reason", labels=["reason"])
        totals = dict(book.flow_removed_total)
        for reason in sorted({"idle_timeout", "hard_timeout", "delete"} | set(totals)):
            removed.add_metric([reason], totals.get(reason, 0))
        yield removed
        requests = CounterMetricFamily("pytapdemon_controller_rpc_requests", "RPC requests answered, by method "
                                       "(unknown methods as other, unparsable lines as (bad line))",
                                       labels=["method"])
        for method, n in sorted(dict(self.server.requests_total).items()):
            requests.add_metric([method], n)
        yield requests
        errors = CounterMetricFamily("pytapdemon_controller_rpc_errors", "RPC error replies, by method and code",
                                     labels=["method", "code"])
        for (method, code), n in sorted(dict(self.server.errors_total).items()):
            errors.add_metric([method, str(code)], n)
        yield errors
        yield GaugeMetricFamily("pytapdemon_controller_rpc_connections", "RPC connections open",
                                value=self.server.connections)


def registry_for(service: TapService, server: RpcServer) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControllerCollector(service, server))  # type: ignore[arg-type]
    return registry


def metrics_app(registry: CollectorRegistry) -> Any:
    """An ASGI app answering ``GET /metrics`` (404 elsewhere)."""
    inner = make_asgi_app(registry)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") != "/metrics":
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"not found: the metrics are at /metrics\n"})
            return
        await inner(scope, receive, send)
    return app


def serve(service: TapService, server: RpcServer, listen: str) -> BackgroundServer:
    """Serve the metrics on ``listen`` (``HOST:PORT``); raises OSError/ValueError for a bad or busy address."""
    host, port = parse_listen(listen, default_port=DEFAULT_PORT)
    return BackgroundServer(metrics_app(registry_for(service, server)), host, port,
                            name="controller metrics").start()
