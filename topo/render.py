# PYTHON_ARGCOMPLETE_OK
"""A fabric as a picture (baseline B14), with the mirrors that are active drawn in
red: from the tapped host port, up the copy uplink, through the aggregation
switch to the capture host.

Any fabric description (``docs/fabric.md``) draws; the seed topology's is the
default and, its cabling being known, also gets host names and both ends' port
numbers. Mirrors come from ``--mirror DPID:IN_PORT:COPY_PORT``, the daemon's API
(``--api URL``), its state file (``--state FILE``) or a tap table (``--taps
FILE``). The DOT source is built with the ``graphviz`` package, which quotes
and escapes every label, so a title or tap id can hold any character::

    python -m topo.render out.svg --fabric /etc/pytapdemon/fabric.json --api http://127.0.0.1:8734
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import graphviz

from demon.controller.fabric import Fabric, FabricError, SwitchRole, load_fabric, parse_fabric
from sflow import cliopts
from topo.seed import CAPTURE_HOST, PortLink, host_ip, seed_links

HOT = {"color": "red", "penwidth": "2.5"}
FORMATS = ("png", "svg", "pdf")
ACTIVE_STATES = ("active", "expiring")


class RenderError(Exception):
    """The picture cannot be made (the message says why, in one line)."""


@dataclass(frozen=True)
class DrawnMirror:
    dpid: int
    in_port: int | None
    copy_port: int
    label: str = ""


@dataclass
class Cabling:
    """What a fabric description does not say: which node is on each switch port."""

    far: dict[tuple[str, int], tuple[str, int | None]] = field(default_factory=dict)
    host_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, links: Iterable[PortLink], host_labels: Mapping[str, str] | None = None,
           switches: Iterable[str] = ()) -> "Cabling":
        names = set(switches)
        cabling = cls(host_labels=dict(host_labels or {}))
        for link in links:
            a_port = link.a_port if link.a in names else None
            b_port = link.b_port if link.b in names else None
            if link.a in names:
                cabling.far[(link.a, link.a_port)] = (link.b, b_port)
            if link.b in names:
                cabling.far[(link.b, link.b_port)] = (link.a, a_port)
        return cabling


def seed_cabling() -> Cabling:
    labels = {f"h{n}": f"h{n}\n{host_ip(n)}" for n in range(1, 12)}
    labels[CAPTURE_HOST] += "\ncapture"
    return Cabling.of(seed_links(), labels, switches=("s1", "s2", "s3"))


def seed_fabric_model() -> Fabric:
    from topo.fabricgen import seed_fabric

    return parse_fabric(seed_fabric(), "seed fabric")


def _text(value: object) -> str:
    """A label part taken literally (backslashes and <...> lose their DOT meaning)."""
    return graphviz.escape(str(value))


def _label(*lines: object) -> str:
    return "\\n".join(_text(line) for line in lines)


class _Drawing:
    """Builds the graph: nodes once, edges keyed by their two ends so a mirror can
    turn an edge red instead of adding a second one."""

    def __init__(self, fabric: Fabric, cabling: Cabling | None, title: str) -> None:
        self.fabric = fabric
        self.cabling = cabling or Cabling()
        self.graph = graphviz.Graph("fabric", graph_attr={
            "rankdir": "TB", "fontname": "Helvetica", "labelloc": "t", "label": _text(title)},
            node_attr={"fontname": "Helvetica", "fontsize": "10"},
            edge_attr={"fontname": "Helvetica", "fontsize": "8", "color": "gray40"})
        self.nodes: dict[str, dict[str, str]] = {}
        self.edges: dict[frozenset[tuple[str, int | None]], dict[str, str]] = {}
        self.ends: dict[frozenset[tuple[str, int | None]], tuple[str, str]] = {}

    # -- structure ----------------------------------------------------------------------
    def switch_id(self, sw: SwitchRole) -> str:
        # DOT reads "a:b" in an edge as node a, port b: node ids carry no colon
        return (sw.name or f"dpid{sw.dpid}").replace(":", "_")

    def node(self, node_id: str, **attrs: str) -> None:
        self.nodes.setdefault(node_id, attrs)

    def edge(self, a: tuple[str, int | None], b: tuple[str, int | None]) -> frozenset[Any]:
        key = frozenset({a, b})
        if key not in self.edges:
            attrs: dict[str, str] = {}
            if a[1] is not None:
                attrs["taillabel"] = str(a[1])
            if b[1] is not None:
                attrs["headlabel"] = str(b[1])
            self.edges[key] = attrs
            self.ends[key] = (a[0], b[0])
        return key

    def port_peer(self, sw: SwitchRole, port: int, kind: str) -> tuple[str, int | None]:
        """The node on ``port`` of ``sw``: from the cabling, or a stand-in for it."""
        sid = self.switch_id(sw)
        known = self.cabling.far.get((sid, port))
        if known is not None:
            name, _ = known
            if name not in self.nodes:
                label = self.cabling.host_labels.get(name, name)
                self.node(name, shape="ellipse", label=_label(*label.split("\n")))
            return known
        if kind == "host":
            node_id = f"{sid} port {port}"
            self.node(node_id, shape="ellipse", label=_label(f"{sid} port {port}"),
                      style="dashed")
            return node_id, None
        if kind == "capture":
            self.node("capture", shape="ellipse", label=_label("capture host"))
            return "capture", None
        return self.aggregation_side(), None

    def aggregation_side(self) -> str:
        """Where uplinks of unknown cabling end: the aggregation switch if there is one."""
        aggs = [sw for sw in self.fabric.switches.values() if sw.role == "aggregation"]
        if len(aggs) == 1:
            return self.switch_id(aggs[0])
        self.node("aggregation layer", shape="point", width="0.15")
        return "aggregation layer"

    def build(self) -> None:
        for sw in sorted(self.fabric.switches.values(), key=lambda s: s.dpid):
            sid = self.switch_id(sw)
            self.node(sid, shape="box", style="rounded",
                      label=_label(sid, f"{sw.role} (dpid {sw.dpid})"))
        aggs = [sw for sw in self.fabric.switches.values() if sw.role == "aggregation"]
        if len(aggs) > 1:
            self.aggregation_side()
            for agg in aggs:
                self.edge(("aggregation layer", None), (self.switch_id(agg), None))
        for sw in sorted(self.fabric.switches.values(), key=lambda s: s.dpid):
            sid = self.switch_id(sw)
            for port in sw.host_ports:
                self.edge(self.port_peer(sw, port, "host"), (sid, port))
            if sw.role != "aggregation":  # an uplink is drawn once, from its filter end
                for port in sw.uplinks:
                    self.edge((sid, port), self.port_peer(sw, port, "uplink"))
            if sw.capture_port is not None:
                self.edge((sid, sw.capture_port), self.port_peer(sw, sw.capture_port, "capture"))

    # -- mirrors ------------------------------------------------------------------------
    def mirror(self, m: DrawnMirror) -> None:
        sw = self.fabric.switches.get(m.dpid)
        if sw is None:
            raise RenderError(f"mirror {m.label or m.dpid}: dpid {m.dpid} is not in the fabric")
        sid = self.switch_id(sw)
        hot_nodes = {sid}
        if m.in_port is not None:
            peer = self.port_peer(sw, m.in_port, "host")
            self.hot(self.edge(peer, (sid, m.in_port)), m.label)
            hot_nodes.add(peer[0])
        peer = self.port_peer(sw, m.copy_port, "uplink")
        self.hot(self.edge((sid, m.copy_port), peer), m.label)
        hot_nodes.add(peer[0])
        aggs = [a for a in self.fabric.switches.values() if a.role == "aggregation"]
        targets = [a for a in aggs if self.switch_id(a) == peer[0]] or aggs
        for agg in targets:
            aid = self.switch_id(agg)
            hot_nodes.add(aid)
            if peer[0] == "aggregation layer":
                self.hot(self.edge(("aggregation layer", None), (aid, None)), "")
            if agg.capture_port is not None:
                cap = self.port_peer(agg, agg.capture_port, "capture")
                self.hot(self.edge((aid, agg.capture_port), cap), "copies")
                hot_nodes.add(cap[0])
        for node_id in hot_nodes:
            if node_id in self.nodes:
                self.nodes[node_id].update({"color": "red", "penwidth": "2"})

    def hot(self, key: frozenset[Any], label: str) -> None:
        attrs = self.edges[key]
        attrs.update(HOT)
        if label:
            old = attrs.get("label")
            attrs["label"] = _text(label) if not old else f"{old}\\n{_text(label)}"
            attrs["fontcolor"] = "red"

    def finish(self) -> graphviz.Graph:
        filters = [self.switch_id(s) for s in self.fabric.switches.values() if s.role == "filter"]
        for node_id, attrs in self.nodes.items():
            self.graph.node(node_id, **attrs)
        if len(filters) > 1:
            with self.graph.subgraph() as same:
                same.attr(rank="same")
                for f in filters:
                    same.node(f)
        for key, attrs in self.edges.items():
            a, b = self.ends[key]
            self.graph.edge(a, b, **attrs)
        return self.graph


def fabric_graph(fabric: Fabric | None = None, mirrors: Iterable[DrawnMirror] = (),
                 title: str = "", cabling: Cabling | None = None) -> graphviz.Graph:
    """The picture of ``fabric`` (default: the seed's, with its cabling) and ``mirrors``."""
    if fabric is None:
        fabric, cabling = seed_fabric_model(), cabling or seed_cabling()
    drawing = _Drawing(fabric, cabling, title)
    drawing.build()
    for m in mirrors:
        drawing.mirror(m)
    return drawing.finish()


def seed_dot(mirrors: Iterable[DrawnMirror] = (), title: str = "") -> str:
    """Graphviz source of the seed topology with ``mirrors`` highlighted."""
    return fabric_graph(None, mirrors, title).source


def render(path: Path, mirrors: Iterable[DrawnMirror] = (), title: str = "",
           fabric: Fabric | None = None, cabling: Cabling | None = None) -> Path:
    """Write the picture; the format follows the suffix (png, svg, pdf; .dot writes the source)."""
    path = Path(path)
    graph = fabric_graph(fabric, mirrors, title, cabling)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".dot":
        path.write_text(graph.source)
        return path
    fmt = path.suffix.lstrip(".") or "png"
    if fmt not in FORMATS:
        raise RenderError(f"{path}: unknown picture format {fmt!r} (use .png, .svg, .pdf or .dot)")
    try:
        path.write_bytes(graph.pipe(format=fmt))
    except graphviz.ExecutableNotFound:
        raise RenderError("Graphviz's dot program is not installed (Debian: apt-get install "
                          "graphviz); a .dot file needs none") from None
    except graphviz.CalledProcessError as exc:
        raise RenderError(f"dot failed: {exc.stderr.decode(errors='replace').strip()}") from None
    return path


# -- where the active mirrors come from ------------------------------------------------


def mirrors_of(taps: Iterable[Mapping[str, Any]]) -> list[DrawnMirror]:
    """Mirrors of the taps in place (active or expiring) that were placed."""
    out = []
    for tap in taps:
        if tap.get("state", "active") not in ACTIVE_STATES:
            continue
        dpid, copy = tap.get("dpid"), tap.get("copy_port")
        if isinstance(dpid, int) and isinstance(copy, int):
            in_port = tap.get("in_port")
            out.append(DrawnMirror(dpid, in_port if isinstance(in_port, int) else None, copy,
                                   str(tap.get("tap_id") or "")))
    return out


def taps_from_api(url: str, token: str | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The daemon's taps from its HTTP API (``GET /api/v1/taps``, docs/api.md)."""
    import requests

    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        reply = requests.get(f"{base}/api/v1/taps", params={"state": ",".join(ACTIVE_STATES)}, headers=headers,
                             timeout=timeout)
    except requests.RequestException as exc:
        raise RenderError(f"--api {url}: {type(exc).__name__}: {exc}") from None
    if reply.status_code != 200:
        try:
            why = reply.json().get("error", reply.text)
        except ValueError:
            why = reply.text
        raise RenderError(f"--api {url}: HTTP {reply.status_code}: {' '.join(str(why).split())}")
    try:
        body = reply.json()
    except ValueError:
        raise RenderError(f"--api {url}: the answer is not JSON") from None
    taps = body.get("taps") if isinstance(body, dict) else body
    if not isinstance(taps, list):
        raise RenderError(f"--api {url}: expected a list of taps or {{\"taps\": [...]}}")
    return [t for t in taps if isinstance(t, dict)]


def taps_from_state(path: Path) -> list[dict[str, Any]]:
    """The taps of the daemon's state file, opened read-only (never created)."""
    from demon.model import tap_to_dict
    from demon.store import Store, StoreError

    if not Path(path).is_file():
        raise RenderError(f"--state {path}: no such file")
    try:
        store = Store(path, readonly=True)
        try:
            return [tap_to_dict(t) for t in store.taps()]
        finally:
            store.close()
    except StoreError as exc:
        raise RenderError(f"--state {path}: {exc}") from None


def taps_from_table(path: Path) -> list[dict[str, Any]]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise RenderError(f"--taps {path}: {exc}") from None
    taps = doc.get("taps") if isinstance(doc, dict) else doc
    if not isinstance(taps, list):
        raise RenderError(f"--taps {path}: expected a list of taps or {{\"taps\": [...]}}")
    return [t for t in taps if isinstance(t, dict)]


# -- command line ----------------------------------------------------------------------


def _mirror(text: str) -> DrawnMirror:
    try:
        dpid, in_port, copy_port = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mirror: expected DPID:IN_PORT:COPY_PORT, got {text!r}") from None
    return DrawnMirror(dpid, in_port, copy_port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m topo.render",
                                description="Draw a fabric (default: the seed topology) with its "
                                            "active mirrors.")
    p.add_argument("output", type=Path, help="picture to write (.png, .svg, .pdf or .dot)")
    p.add_argument("--fabric", type=Path, metavar="FILE",
                   help="fabric description JSON (docs/fabric.md; default: the seed topology)")
    p.add_argument("--mirror", type=_mirror, action="append", default=[],
                   metavar="DPID:IN_PORT:COPY_PORT", help="draw this mirror (repeatable)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--api", metavar="URL", help="the daemon's API (e.g. http://127.0.0.1:8734): "
                                                 "draw its active taps")
    src.add_argument("--state", type=Path, metavar="FILE",
                     help="the daemon's state file, read-only: draw its active taps")
    src.add_argument("--taps", type=Path, metavar="FILE", help="a tap table JSON (lab-out/taps.json)")
    p.add_argument("--token-file", type=Path, metavar="FILE",
                   help="with --api: a token file (needed when the API is not on loopback)")
    p.add_argument("--title", default=None, help="title (default: normal / mirrored)")
    return cliopts.add_common(p, exits={0: "the picture was written",
                                        2: "usage error, bad fabric, unreachable API or state file, "
                                           "or Graphviz missing"}, config=False)


def _token(path: Path | None) -> str | None:
    """The secret of the first token in an API token file (docs/api.md: ``name:secret``,
    ``name:secret:ro`` or a bare secret; ``#`` starts a comment)."""
    if path is None:
        return None
    try:
        lines = [ln.split("#", 1)[0].strip() for ln in Path(path).read_text().splitlines()]
    except OSError as exc:
        raise RenderError(f"--token-file {path}: {exc.strerror or exc}") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise RenderError(f"--token-file {path}: holds no token")
    parts = lines[0].split(":")
    return parts[0] if len(parts) == 1 else parts[1]


def main(argv: Sequence[str] | None = None) -> int:
    args = cliopts.parse_args(build_parser(), argv)
    try:
        fabric = load_fabric(args.fabric) if args.fabric else None
        mirrors = list(args.mirror)
        if args.api:
            mirrors += mirrors_of(taps_from_api(args.api, _token(args.token_file)))
        elif args.state:
            mirrors += mirrors_of(taps_from_state(args.state))
        elif args.taps:
            mirrors += mirrors_of(taps_from_table(args.taps))
        title = args.title if args.title is not None else ("mirrored" if mirrors else "normal")
        path = render(args.output, mirrors, title, fabric)
    except (FabricError, RenderError) as exc:
        print(f"topo.render: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: {len(mirrors)} mirror(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
