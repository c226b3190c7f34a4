// Small helpers with no knowledge of the registry: building DOM nodes, formatting, comparing tags.
//
// Everything shown is built with createElement and text nodes: a string is always text, never markup, so what a
// pusher controls (labels, annotations, history, artifact types, tag names) cannot become HTML. The page's
// Content-Security-Policy enforces Trusted Types, so assigning markup from script would throw anyway.

// h("a", {href: "#/", class: "x", onclick: fn}, "text", child, [more children]) -> Element
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (name === "href" && !isSafeHref(String(value))) {
      throw new Error("refusing a link that is not a page of this UI");
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// Links are made only to this UI's own routes; never from a value a pusher controls.
function isSafeHref(href) {
  return href.startsWith("#/");
}

export function clear(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export function formatBytes(bytes) {
  if (typeof bytes !== "number" || !Number.isFinite(bytes)) return "—";
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${UNITS[unit]}`;
}

export function exactBytes(bytes) {
  return typeof bytes === "number" ? `${bytes.toLocaleString("en")} bytes` : "";
}

export function formatTime(value) {
  if (!value) return "—";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC");
}

export function relativeTime(value, now = Date.now()) {
  const date = new Date(value);
  if (!value || Number.isNaN(date.getTime())) return "";
  const seconds = Math.round((now - date.getTime()) / 1000);
  const steps = [[60, "s"], [60, "min"], [24, "h"], [30, "d"], [12, "mo"], [Infinity, "y"]];
  let amount = Math.max(seconds, 0);
  for (const [size, unit] of steps) {
    if (amount < size) return `${amount} ${unit} ago`;
    amount = Math.floor(amount / size);
  }
  return "";
}

export function shortDigest(digest) {
  const [algorithm, hex] = String(digest || "").split(":");
  return hex ? `${algorithm}:${hex.slice(0, 12)}` : String(digest || "");
}

// Semver-aware tag order: "1.2.10" after "1.2.9", "v2" after "v1.9", a pre-release before its release;
// tags that are not versions sort by name, after the versions.
const VERSION = /^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[-.]?((?:[0-9A-Za-z-]+)(?:\.[0-9A-Za-z-]+)*))?(?:\+.*)?$/;

export function parseVersion(tag) {
  const match = VERSION.exec(tag);
  if (!match) return null;
  return {core: [match[1], match[2] || "0", match[3] || "0"].map(Number), pre: match[4] || ""};
}

function comparePre(a, b) {
  if (a === b) return 0;
  if (!a) return 1; // a release sorts after its pre-releases
  if (!b) return -1;
  const pa = a.split(".");
  const pb = b.split(".");
  for (let i = 0; i < Math.max(pa.length, pb.length); i += 1) {
    if (pa[i] === undefined) return -1;
    if (pb[i] === undefined) return 1;
    const na = /^\d+$/.test(pa[i]);
    const nb = /^\d+$/.test(pb[i]);
    if (na && nb && Number(pa[i]) !== Number(pb[i])) return Number(pa[i]) - Number(pb[i]);
    if (na !== nb) return na ? -1 : 1;
    if (pa[i] !== pb[i]) return pa[i] < pb[i] ? -1 : 1;
  }
  return 0;
}

export function compareTags(a, b) {
  const va = parseVersion(a);
  const vb = parseVersion(b);
  if (va && vb) {
    for (let i = 0; i < 3; i += 1) {
      if (va.core[i] !== vb.core[i]) return va.core[i] - vb.core[i];
    }
    const pre = comparePre(va.pre, vb.pre);
    if (pre !== 0) return pre;
  } else if (va || vb) {
    return va ? -1 : 1;
  }
  return a < b ? -1 : a > b ? 1 : 0;
}

// The URL of a route of this UI: #/path?key=value, every value encoded.
export function route(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, value);
  }
  const text = query.toString();
  return `#/${path}${text ? `?${text}` : ""}`;
}

export function platformName(platform) {
  if (!platform) return "";
  return [platform.os, platform.architecture, platform.variant].filter(Boolean).join("/");
}
