// A policy's top flows over the last minutes as an SVG line chart, with the
// policy's threshold drawn as a dashed line. Written here (no chart library).

import { s, h, rate, shortRate, colourOf, clock } from "./dom.js";

const W = 640, H = 220;
const PAD = { left: 56, right: 12, top: 12, bottom: 26 };

function niceStep(range, ticks) {
  const raw = range / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

// data: the /api/v1/policies/{name}/flows answer; now: epoch seconds (the page's clock
// corrected to the daemon's).
export function chart(data, now) {
  const t1 = now, t0 = now - data.window_s;
  const threshold = data.threshold_bps;
  let top = threshold ? threshold * 1.25 : 0;
  for (const f of data.flows) top = Math.max(top, f.peak_bps * 1.1);
  if (top <= 0) top = 1e6;
  const step = niceStep(top, 4);
  top = Math.ceil(top / step) * step;
  const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
  const gap = Math.max(3, 2.5 * (data.interval_s || 1));

  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `top flows of ${data.policy}`, dataset: { policy: data.policy, top: String(top) } });
  for (let v = 0; v <= top + 1e-9; v += step) {
    svg.append(s("line", { class: "gridline", x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }),
      s("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end", text: shortRate(v) }));
  }
  const minutes = data.window_s >= 180 ? 60 : 15;
  for (let t = Math.ceil(t0 / minutes) * minutes; t <= t1; t += minutes) {
    svg.append(s("line", { class: "gridline", x1: x(t), x2: x(t), y1: PAD.top, y2: H - PAD.bottom }));
    if (x(t) < W - PAD.right - 26) {
      svg.append(s("text", { x: x(t), y: H - 8, "text-anchor": "middle", text: clock(t).slice(0, 8) }));
    }
  }
  svg.append(s("line", { class: "axis", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }),
    s("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }));

  // Tapped flows last, so they are drawn on top.
  const flows = [...data.flows].sort((a, b) => (a.tap_id ? 1 : 0) - (b.tap_id ? 1 : 0));
  for (const f of flows) {
    const colour = colourOf(f.flow_key);
    // A flow absent from some polls (below the policy's minimum, or not among the
    // fastest then) is drawn as separate runs, not joined across the gap.
    let run = [];
    const runs = [run];
    let prev = null;
    for (const [t, v] of f.points) {
      if (t < t0) continue;
      if (prev !== null && t - prev > gap) runs.push((run = []));
      run.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
      prev = t;
    }
    for (const r of runs) {
      if (!r.length) continue;
      if (r.length === 1) r.push(r[0]);
      const line = s("polyline", { class: `series${f.tap_id ? " tapped" : ""}`, points: r.join(" "), dataset: { flowKey: f.flow_key, tapId: f.tap_id || "", peakBps: String(f.peak_bps) } });
      line.style.stroke = colour;
      svg.append(line);
    }
  }
  if (threshold) {
    svg.append(s("line", { class: "threshold", x1: PAD.left, x2: W - PAD.right, y1: y(threshold), y2: y(threshold),
      dataset: { bps: String(threshold) } }),
    s("text", { class: "threshold-label", x: W - PAD.right - 4, y: y(threshold) - 4, "text-anchor": "end",
      text: `threshold ${rate(threshold)}` }));
  }
  if (!data.flows.length) {
    svg.append(s("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle",
      text: data.polled_at.length ? "no flow above the policy's minimum" : "no poll yet" }));
  }
  return svg;
}

export function legend(data) {
  const rows = data.flows.map((f) => {
    const sw = h("span", { class: "swatch" });
    sw.style.background = colourOf(f.flow_key);
    return h("tr", { dataset: { flowKey: f.flow_key } },
      h("td", {}, sw), h("td", { class: "key", text: f.flow_key }),
      h("td", { text: f.last_bps === null ? "now: not in the last poll" : `now ${rate(f.last_bps)}` }), h("td", { text: `peak ${rate(f.peak_bps)}` }),
      h("td", { class: "tapbadge", text: f.tap_id ? `${f.tap_id} (${f.tap_state})` : "" }));
  });
  return h("table", { class: "legend" }, h("tbody", {}, rows));
}
