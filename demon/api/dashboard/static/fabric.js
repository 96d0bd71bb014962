// The fabric as an SVG picture: aggregation switches on top (their capture port
// up to the capture host), filter switches below (host ports at the bottom,
// uplinks at the top), and every live mirror coloured along its way: the
// flow's ingress port, the uplink its copy takes, the capture port.
//
// The fabric description says which ports of a switch are uplinks, not which
// aggregation port each one reaches: the picture pairs them in order (filter
// switches by dpid, their uplinks by number), as the lab's seed topology wires them.

import { s, MIRROR_COLOURS } from "./dom.js";

const STEP = 26, PORT = 12, BOX_H = 46, GAP = 56, MARGIN = 24;
const ROW = { host: 14, agg: 96, filter: 270 };

function ports(sw, which) {
  return [...(sw[which] || [])].sort((a, b) => a - b);
}

function layoutSwitch(sw, x, y, top, bottom) {
  const n = Math.max(top.length, bottom.length, 3);
  const w = n * STEP + 24;
  const place = (list, py) => {
    const out = new Map();
    const start = x + (w - list.length * STEP) / 2 + STEP / 2;
    list.forEach((p, i) => out.set(p, { x: start + i * STEP, y: py }));
    return out;
  };
  return { sw, x, y, w, top: place(top, y), bottom: place(bottom, y + BOX_H) };
}

export function fabric(data) {
  const aggs = data.switches.filter((sw) => sw.role === "aggregation");
  const lower = data.switches.filter((sw) => sw.role !== "aggregation");
  const boxes = new Map();
  let x = MARGIN;
  for (const sw of lower) {
    const listed = new Set([...sw.host_ports, ...sw.uplinks]);
    const others = sw.ports.map((p) => p.port_no).filter((p) => !listed.has(p) && p !== sw.capture_port);
    const box = layoutSwitch(sw, x, ROW.filter, ports(sw, "uplinks"),
      [...ports(sw, "host_ports"), ...others]);
    boxes.set(sw.dpid, box);
    x += box.w + GAP;
  }
  const lowerWidth = Math.max(x - GAP + MARGIN, 300);
  let aggWidth = 0;
  const aggLayouts = aggs.map((sw) => {
    const top = sw.capture_port !== null ? [sw.capture_port] : [];
    const box = layoutSwitch(sw, 0, ROW.agg, top, ports(sw, "uplinks"));
    aggWidth += box.w + GAP;
    return box;
  });
  const width = Math.max(lowerWidth, aggWidth + MARGIN);
  let ax = (width - (aggWidth - GAP)) / 2;
  for (const box of aggLayouts) {
    const shifted = layoutSwitch(box.sw, ax, ROW.agg, box.sw.capture_port !== null ? [box.sw.capture_port] : [],
      ports(box.sw, "uplinks"));
    boxes.set(box.sw.dpid, shifted);
    ax += box.w + GAP;
  }
  const height = ROW.filter + BOX_H + 44;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "the fabric and its mirrors" });

  // Uplinks: each filter switch's uplinks, in order, to the aggregation ports in order.
  const farEnd = new Map(); // "dpid/port" of a filter uplink -> {x, y, agg, port}
  const aggPorts = [];
  for (const sw of aggs) for (const [p, at] of boxes.get(sw.dpid).bottom) aggPorts.push({ sw, p, at });
  const upl = [];
  for (const sw of lower) for (const [p, at] of boxes.get(sw.dpid).top) upl.push({ sw, p, at });
  upl.forEach((u, i) => {
    const far = aggPorts.length === upl.length ? aggPorts[i] : null;
    const agg = far ? far.at : aggs.length ? { x: boxes.get(aggs[0].dpid).x + boxes.get(aggs[0].dpid).w / 2,
      y: ROW.agg + BOX_H } : null;
    if (!agg) return;
    farEnd.set(`${u.sw.dpid}/${u.p}`, { ...agg, agg: far ? far.sw : aggs[0], port: far ? far.p : null });
    svg.append(s("path", { class: "link", d: `M${u.at.x},${u.at.y} C${u.at.x},${u.at.y - 60} ${agg.x},${agg.y + 60} ${agg.x},${agg.y}` }));
  });

  // Capture hosts above the aggregation switches' capture ports.
  const captureAt = new Map();
  for (const sw of aggs) {
    const box = boxes.get(sw.dpid);
    if (sw.capture_port === null) continue;
    const p = box.top.get(sw.capture_port);
    captureAt.set(sw.dpid, { x: p.x, y: ROW.host + 28 });
    svg.append(s("line", { class: "link", x1: p.x, y1: p.y, x2: p.x, y2: ROW.host + 28 }),
      s("g", { class: "capture-host" },
        s("rect", { class: "box", x: p.x - 60, y: ROW.host, width: 120, height: 28, rx: 5, fill: "#fff", stroke: "#8b94a6" }),
        s("text", { x: p.x, y: ROW.host + 18, "text-anchor": "middle", text: "capture host" })));
  }

  // Switches and their ports.
  for (const box of boxes.values()) {
    const sw = box.sw;
    const up = new Map(sw.ports.map((p) => [p.port_no, p]));
    const g = s("g", { class: "switch", dataset: { dpid: String(sw.dpid), role: sw.role || "" } },
      s("rect", { class: "box", x: box.x, y: box.y, width: box.w, height: BOX_H, rx: 6 }),
      s("text", { class: "switch-name", x: box.x + box.w / 2, y: box.y + BOX_H / 2 + 5, "text-anchor": "middle",
        text: `${sw.name} · ${sw.role || "switch"}` }));
    for (const [edge, dy] of [["top", 10], ["bottom", -4]]) {
      for (const [p, at] of box[edge]) {
        const info = up.get(p);
        const down = info && info.up === false;
        const name = info && info.name ? info.name : `port ${p}`;
        g.append(s("rect", { class: `port${down ? " down" : ""}`, x: at.x - PORT / 2, y: at.y - PORT / 2,
          width: PORT, height: PORT, dataset: { port: String(p) } },
        s("title", { text: `${sw.name} port ${p} (${name})${down ? ": down" : ""}` })),
        s("text", { class: "port-no", x: at.x, y: at.y + (edge === "top" ? -PORT / 2 - 3 : PORT / 2 + 10),
          "text-anchor": "middle", text: String(p) }));
      }
    }
    svg.append(g);
  }

  // Mirrors: ingress port -> copy uplink -> aggregation -> capture port -> capture host.
  data.mirrors.forEach((m, i) => {
    const colour = MIRROR_COLOURS[i % MIRROR_COLOURS.length];
    const box = boxes.get(m.dpid);
    if (!box) return;
    const inAt = box.bottom.get(m.in_port);
    const copyAt = box.top.get(m.copy_port);
    const g = s("g", { class: "mirror", dataset: { tapId: m.tap_id, dpid: String(m.dpid),
      inPort: String(m.in_port), copyPort: String(m.copy_port), state: m.state } });
    const off = (i % 3) * 3;
    // Colours through the style object: a CSS rule would beat a presentation attribute.
    const paint = (el, fill) => {
      if (fill) el.style.fill = colour;
      el.style.stroke = colour;
      return el;
    };
    const d = [];
    if (inAt && copyAt) d.push(`M${inAt.x},${inAt.y} L${copyAt.x + off},${copyAt.y}`);
    const far = farEnd.get(`${m.dpid}/${m.copy_port}`);
    if (copyAt && far) {
      d.push(`M${copyAt.x + off},${copyAt.y} C${copyAt.x + off},${copyAt.y - 60} ${far.x + off},${far.y + 60} ${far.x + off},${far.y}`);
      const aggBox = boxes.get(far.agg.dpid);
      const cap = aggBox && far.agg.capture_port !== null ? aggBox.top.get(far.agg.capture_port) : null;
      const host = captureAt.get(far.agg.dpid);
      if (cap) d.push(`M${far.x + off},${far.y} L${cap.x + off},${cap.y}`);
      if (cap && host) d.push(`M${cap.x + off},${cap.y} L${host.x + off},${host.y}`);
    }
    g.append(paint(s("path", { class: "mirror-path", d: d.join(" ") },
      s("title", { text: `${m.tap_id}: ${m.flow_key} enters ${box.sw.name} port ${m.in_port}, copy via uplink ${m.copy_port}` })), false));
    for (const [at, role] of [[inAt, "ingress"], [copyAt, "uplink"]]) {
      if (at) g.append(paint(s("rect", { class: "port mirror-port", x: at.x - PORT / 2, y: at.y - PORT / 2, width: PORT,
        height: PORT, dataset: { role } }), true));
    }
    if (inAt) {
      const label = s("text", { class: "mirror-label", x: inAt.x, y: inAt.y + 24 + 12 * (i % 2), "text-anchor": "middle",
        text: `${m.tap_id} (${m.state})` });
      label.style.fill = colour;
      g.append(label);
    }
    svg.append(g);
  });
  if (!data.switches.length) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle",
      text: data.controller_reachable ? "the controller reports no switch" : "controller unreachable" }));
  }
  return svg;
}
