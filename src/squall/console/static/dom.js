// Small DOM helpers. Every piece of data goes in as text (textContent), never as HTML: a
// function name, a log line or an error message cannot inject markup into the console.

export function h(tag, attrs, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className += (el.className ? " " : "") + v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) { el.replaceChildren(); return el; }

export function table(columns, rows, { empty = "Nothing here yet.", onRow } = {}) {
  const body = h("tbody");
  const frag = document.createDocumentFragment();
  for (const row of rows) {
    const tr = h("tr", { class: onRow ? "clickable" : "" },
      columns.map((c) => h("td", { class: c.cls || "" }, c.cell(row))));
    if (onRow) tr.addEventListener("click", () => onRow(row, tr));
    frag.append(tr);
  }
  body.append(frag);
  return h("div.table-wrap", {},
    h("table", {}, h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.cls || "" },
      c.title)))), body),
    rows.length ? null : h("p.empty", {}, empty));
}

export function badge(text, kind = "") { return h("span.badge", { class: kind }, text); }

export function statusBadge(status) {
  const kind = { succeeded: "ok", running: "info", queued: "info" }[status] || "bad";
  return badge(status, kind);
}

export function errorBox(e) {
  const code = e && e.code ? ` [${e.code}]` : "";
  return h("div.alert", { role: "alert" }, (e && e.message) || String(e), h("code", {}, code));
}

let toastTimer = 0;
export function toast(message, kind = "ok") {
  let el = document.getElementById("toast");
  if (!el) { el = h("div", { id: "toast", role: "status" }); document.body.append(el); }
  el.className = "toast " + kind;
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
}

// --- formatting ------------------------------------------------------------------------------

export function ms(v) {
  if (v === null || v === undefined) return "–";
  if (v < 1) return v.toFixed(2) + " ms";
  if (v < 1000) return (v < 10 ? v.toFixed(1) : Math.round(v)) + " ms";
  return (v / 1000).toFixed(2) + " s";
}

export function num(v) {
  if (v === null || v === undefined) return "–";
  return Number(v).toLocaleString("en-US");
}

export function money(v) {
  if (!v) return "$0";
  if (v < 0.01) return "$" + v.toPrecision(3);
  return "$" + v.toFixed(2);
}

export function bytes(v) {
  if (!v) return "–";
  const mb = v / (1024 * 1024);
  return mb >= 1024 ? (mb / 1024).toFixed(1) + " GiB" : mb.toFixed(0) + " MiB";
}

export function time(ts) {
  if (!ts) return "–";
  const d = new Date(ts * 1000);
  const today = d.toDateString() === new Date().toDateString();
  const clock = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return today ? clock : d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + clock;
}

// A request id in a table: its first group, the whole id on hover.
export function shortId(id) {
  return h("code.rid", { title: id }, String(id).split("-")[0]);
}

export function ago(ts, now = Date.now() / 1000) {
  if (!ts) return "never";
  const s = Math.max(0, now - ts);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

export function pct(part, whole) {
  return whole ? ((100 * part) / whole).toFixed(part && part < whole / 100 ? 2 : 1) + "%" : "–";
}
