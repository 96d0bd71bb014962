// Small helpers: building HTML/SVG elements and formatting figures.

const SVG_NS = "http://www.w3.org/2000/svg";

function attach(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "text") el.textContent = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// h("td", {class: "key"}, "text", otherNode)
export function h(tag, attrs, ...children) {
  return attach(document.createElement(tag), attrs, children);
}

export function s(tag, attrs, ...children) {
  return attach(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function rate(bps) {
  if (bps === null || bps === undefined || Number.isNaN(bps)) return "–";
  const units = [["Gbit/s", 1e9], ["Mbit/s", 1e6], ["kbit/s", 1e3]];
  for (const [unit, size] of units) {
    if (Math.abs(bps) >= size) return `${(bps / size).toFixed(bps / size >= 100 ? 0 : 1)} ${unit}`;
  }
  return `${Math.round(bps)} bit/s`;
}

export function shortRate(bps) {
  if (bps >= 1e9) return `${+(bps / 1e9).toFixed(1)}G`;
  if (bps >= 1e6) return `${+(bps / 1e6).toFixed(1)}M`;
  if (bps >= 1e3) return `${+(bps / 1e3).toFixed(1)}k`;
  return `${Math.round(bps)}`;
}

export function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  seconds = Math.max(0, seconds);
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m}m ${Math.floor(seconds % 60)}s`;
  const hrs = Math.floor(m / 60);
  return `${hrs}h ${m % 60}m`;
}

export function clock(epoch) {
  const d = new Date(epoch * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function count(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

// A stable colour for a key (flows keep their colour across redraws).
const PALETTE = ["#2563eb", "#16a34a", "#9333ea", "#0891b2", "#ca8a04", "#db2777", "#4b5563",
  "#65a30d", "#7c3aed", "#0d9488"];
export const MIRROR_COLOURS = ["#e8590c", "#d6336c", "#ae3ec9", "#f59f00", "#c2255c", "#e67700"];

export function colourOf(key, palette = PALETTE) {
  let hash = 0;
  for (const ch of key) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return palette[hash % palette.length];
}

export function replaceChildren(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}
