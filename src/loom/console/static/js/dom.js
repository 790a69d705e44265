// Building DOM without HTML strings (nothing the server sends is ever parsed as markup), and formatting.

export function h(tag, attrs, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.classList.add(...String(v).split(" ").filter(Boolean));
    else if (k === "text") el.textContent = v;
    else if (k === "value") el.value = v;
    else if (k === "checked" || k === "selected" || k === "disabled" || k === "multiple" || k === "open") el[k] = Boolean(v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function fmtTime(ts) {
  if (!ts) return "—";
  const d = new Date(ts * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function timeEl(ts) {
  return ts ? h("time", { datetime: new Date(ts * 1000).toISOString(), text: fmtTime(ts) }) : "—";
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || seconds < 0) return "—";
  if (seconds < 60) return `${seconds}s`;
  const m = Math.floor(seconds / 60);
  return m < 60 ? `${m}m ${seconds % 60}s` : `${Math.floor(m / 60)}h ${m % 60}m`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

export function badge(status) {
  return h("span.badge", { class: `s-${String(status || "none").replace(/[^a-z_]/g, "")}`, text: status || "—" });
}

export function errorBox(err) {
  const message = err && err.message ? err.message : String(err);
  return h("div.error", { role: "alert" }, message);
}

export function pretty(value) {
  if (typeof value === "string") {
    try {
      return JSON.stringify(JSON.parse(value), null, 2);
    } catch {
      return value;
    }
  }
  return JSON.stringify(value, null, 2);
}

export function copyable(id) {
  return h("code.id", { title: "Click to copy", onclick: () => navigator.clipboard && navigator.clipboard.writeText(id) }, id);
}

export function link(href, ...children) {
  return h("a", { href }, ...children);
}

export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  return h("div.field", {}, h("label", { for: id, text: label }), control, hint ? h("small.muted", {}, hint) : null);
}

// A table that scrolls sideways on a narrow screen instead of breaking the layout.
export function table(headings, rows, attrs = {}) {
  return h(
    "div.table-wrap",
    {},
    h("table", attrs, h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col", text: t })))), h("tbody", {}, rows)),
  );
}
