"""The seed topology as a picture (baseline B14): normal state, or with the
mirrors that were active drawn in red from the tapped host's port, up the copy
uplink, through the aggregation switch to the capture host.

``python -m topo.render out.png [--mirror DPID:IN_PORT:COPY_PORT ...]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from topo.seed import CAPTURE_HOST, CAPTURE_PORT, seed_links


@dataclass(frozen=True)
class DrawnMirror:
    dpid: int
    in_port: int | None
    copy_port: int
    label: str = ""


def _switch_of_port() -> dict[tuple[str, int], str]:
    """(switch, port) -> the node on the far end ('h3' or 's3:6')."""
    far: dict[tuple[str, int], str] = {}
    for link in seed_links():
        if link.a.startswith("s"):
            far[(link.a, link.a_port)] = link.b if link.b.startswith("h") else f"{link.b}:{link.b_port}"
        if link.b.startswith("s"):
            far[(link.b, link.b_port)] = link.a if link.a.startswith("h") else f"{link.a}:{link.a_port}"
    return far


def seed_dot(mirrors: Iterable[DrawnMirror] = (), title: str = "") -> str:
    """Graphviz source of the seed topology with ``mirrors`` highlighted."""
    mirrors = list(mirrors)
    far = _switch_of_port()
    hot_edges: dict[frozenset[str], str] = {}
    hot_nodes: set[str] = set()
    for m in mirrors:
        sw = f"s{m.dpid}"
        if m.in_port is not None and (sw, m.in_port) in far:
            hot_edges[frozenset({f"{sw}:{m.in_port}", far[(sw, m.in_port)]})] = m.label
            hot_nodes.add(far[(sw, m.in_port)])
        peer = far.get((sw, m.copy_port), "")
        hot_edges[frozenset({f"{sw}:{m.copy_port}", peer})] = m.label
        hot_edges[frozenset({f"s3:{CAPTURE_PORT}", CAPTURE_HOST})] = "copies"
        hot_nodes.update({sw, "s3", CAPTURE_HOST})
    lines = ["graph seed {", '  graph [rankdir=TB, fontname="Helvetica", labelloc=t, label="%s"];' % title,
             '  node [fontname="Helvetica", fontsize=10]; edge [fontname="Helvetica", fontsize=8];']
    roles = {"s1": "filter", "s2": "filter", "s3": "aggregation"}
    for sw, role in roles.items():
        color = ', color=red, penwidth=2' if sw in hot_nodes else ''
        lines.append(f'  {sw} [shape=box, style=rounded, label="{sw}\\n{role} (dpid {sw[1]})"{color}];')
    for n in range(1, 12):
        host = f"h{n}"
        label = f"{host}\\n10.0.0.{n}" + ("\\ncapture" if host == CAPTURE_HOST else "")
        color = ', color=red, penwidth=2' if host in hot_nodes else ''
        lines.append(f'  {host} [shape=ellipse, label="{label}"{color}];')
    lines.append("  { rank=same; s1; s2; }")
    for link in seed_links():
        if link.a == CAPTURE_HOST:  # drawn below the aggregation switch
            link = type(link)(link.b, link.b_port, link.a, link.a_port)
        a = f"{link.a}:{link.a_port}" if link.a.startswith("s") else link.a
        b = f"{link.b}:{link.b_port}" if link.b.startswith("s") else link.b
        label = hot_edges.get(frozenset({a, b}))
        ports = []
        if link.a.startswith("s"):
            ports.append(f'taillabel="{link.a_port}"')
        if link.b.startswith("s"):
            ports.append(f'headlabel="{link.b_port}"')
        style = ["color=red", "penwidth=2.5"] if label is not None else ["color=gray40"]
        if label:
            style.append(f'label="{label}", fontcolor=red')
        lines.append(f"  {link.a} -- {link.b} [{', '.join(ports + style)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(path: Path, mirrors: Iterable[DrawnMirror] = (), title: str = "") -> Path:
    """Write the picture; the format follows the suffix (png, svg, pdf; .dot writes the source)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = seed_dot(mirrors, title)
    if path.suffix == ".dot":
        path.write_text(source)
        return path
    if shutil.which("dot") is None:
        raise RuntimeError("graphviz 'dot' is not installed (run: bash scripts/setup)")
    fmt = path.suffix.lstrip(".") or "png"
    subprocess.run(["dot", f"-T{fmt}", "-o", str(path)], input=source, text=True, check=True, timeout=60)
    return path


def _mirror(text: str) -> DrawnMirror:
    try:
        dpid, in_port, copy_port = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mirror: expected DPID:IN_PORT:COPY_PORT, got {text!r}") from None
    return DrawnMirror(dpid, in_port, copy_port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m topo.render", description="draw the seed topology")
    p.add_argument("output", type=Path, help="picture to write (.png, .svg, .pdf or .dot)")
    p.add_argument("--mirror", type=_mirror, action="append", default=[], help="DPID:IN_PORT:COPY_PORT")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    render(args.output, args.mirror, args.title or ("mirrored" if args.mirror else "normal"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
