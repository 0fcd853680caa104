// One function: its live state, and tabs for charts, invocations, the live log tail, versions
// and aliases, triggers, configuration.

import { get, fnPath } from "./api.js";
import { h, clear, errorBox, table, badge, ms, num, pct, time, bytes } from "./dom.js";
import { chartGrid } from "./charts.js";
import * as invocations from "./invocations.js";
import * as logs from "./logs.js";

const TABS = [
  ["overview", "Overview"], ["invocations", "Invocations"], ["logs", "Live logs"],
  ["versions", "Versions & aliases"], ["triggers", "Triggers"], ["config", "Configuration"],
];
const RANGES = [["15m", "15 min"], ["1h", "1 hour"], ["6h", "6 hours"], ["24h", "24 hours"],
                ["7d", "7 days"]];

export function render(root, ctx, name, tab) {
  const head = h("div.page-head", {},
    h("div", {}, h("a.crumb", { href: "#/functions" }, "Functions"), h("h1", {}, name)));
  const live = h("div.live-state");
  const problem = h("div");
  const body = h("div.tab-body");
  const tabs = h("nav.tabs", {}, TABS.map(([id, title]) => h("a", {
    href: `#/functions/${encodeURIComponent(name)}/${id}`, class: id === tab ? "active" : "",
    dataset: { tab: id } }, title)));
  root.append(head, live, problem, tabs, body);
  const stops = [];
  let timer = 0;
  let stopped = false;

  async function refreshLive() {
    try {
      const [fn, inst] = await Promise.all([get(fnPath(name)), get(fnPath(name, "/instances"))]);
      if (stopped) return;
      ctx.fn = fn;
      renderLive(live, fn, inst);
      if (tab === "config" && !body.childElementCount) renderConfig(body, fn);
    } catch (e) {
      if (!stopped) clear(problem).append(errorBox(e));
    }
    if (!stopped) timer = setTimeout(refreshLive, 5000);
  }
  refreshLive();

  if (tab === "overview") stops.push(overview(body, ctx, name));
  else if (tab === "invocations") stops.push(invocations.render(body, ctx, name));
  else if (tab === "logs") stops.push(logs.render(body, ctx, name));
  else if (tab === "versions") versions(body, name);
  else if (tab === "triggers") triggers(body, name);
  return () => { stopped = true; clearTimeout(timer); stops.forEach((s) => s && s()); };
}

function renderLive(root, fn, inst) {
  const busy = inst.instances.filter((i) => i.state === "busy").length;
  const idle = inst.instances.length - busy;
  const z = inst.zygotes[0];
  root.replaceChildren(
    stat("Version", "v" + fn.version),
    stat("Instances", h("span", {}, badge(`${busy} busy`, busy ? "info" : "muted"), " ",
                        badge(`${idle} idle`, idle ? "ok" : "muted"))),
    stat("Zygote", z ? badge(`ready · ${bytes(z.rss_bytes)}`, "zygote") : badge("none", "muted")),
    stat("Started in total", num(inst.created_total)),
    stat("Memory", fn.config.memory_mb + " MB"),
    stat("URL", h("code", {}, fn.url)),
  );
}

function stat(label, value) {
  return h("div.stat", {}, h("div.stat-label", {}, label), h("div.stat-value", {}, value));
}

function overview(root, ctx, name) {
  let range = "1h";
  const summary = h("div.summary");
  const buttons = h("div.seg", {}, RANGES.map(([id, title]) => h("button", {
    type: "button", class: id === range ? "active" : "", dataset: { range: id },
    onclick: (ev) => {
      range = id;
      for (const b of buttons.children) b.classList.toggle("active", b === ev.currentTarget);
      load();
    } }, title)));
  const grid = h("div.charts");
  const note = h("p.muted.small");
  root.append(h("div.section-head", {}, h("h2", {}, "Activity"), buttons), summary, grid, note);
  const charts = chartGrid(grid);
  let timer = 0;
  let stopped = false;

  async function load() {
    clearTimeout(timer);
    try {
      const data = await get(fnPath(name, "/stats"), { since: range });
      if (stopped) return;
      ctx.state.charts = data;
      charts.update(data);
      renderSummary(summary, data);
      note.textContent = `${data.step} s buckets` +
        (data.truncated ? " · the newest invocations only: the window holds more" : "");
    } catch (e) {
      if (!stopped) clear(summary).append(errorBox(e));
    }
    if (!stopped) timer = setTimeout(load, 10000);
  }
  load();
  return () => { stopped = true; clearTimeout(timer); charts.destroy(); };
}

function renderSummary(root, d) {
  const sum = (k) => d[k].reduce((a, b) => a + b, 0);
  const total = sum("invocations");
  const errors = sum("errors");
  const p99 = d.p99_ms.filter((v) => v !== null);
  root.replaceChildren(
    stat("Invocations", num(total)),
    stat("Errors", `${num(errors)} · ${pct(errors, total)}`),
    stat("Cold starts", num(sum("cold_starts"))),
    stat("Worst p99", p99.length ? ms(Math.max(...p99)) : "–"),
    stat("Peak concurrency", num(Math.max(0, ...d.concurrency))),
  );
}

async function versions(root, name) {
  try {
    const [v, a] = await Promise.all([get(fnPath(name, "/versions")),
                                      get(fnPath(name, "/aliases"))]);
    root.append(
      h("h2", {}, "Versions"),
      h("div.card.flush", {}, table([
        { title: "Version", cell: (r) => h("span", {}, "v" + r.version, " ",
                                            r.latest ? badge("latest", "ok") : null) },
        { title: "Deployed", cell: (r) => time(r.created_at) },
        { title: "Handler", cell: (r) => h("code", {}, r.handler) },
        { title: "Memory", cls: "num", cell: (r) => r.memory_mb + " MB" },
        { title: "SHA-256", cell: (r) => h("code.hash", { title: r.sha256 }, r.sha256.slice(0, 12)) },
      ], [...v.versions].reverse())),
      h("h2", {}, "Aliases"),
      h("div.card.flush", {}, table([
        { title: "Alias", cell: (r) => h("strong", {}, r.name) },
        { title: "Routes to", cell: (r) => routing(r) },
        { title: "Description", cell: (r) => r.description || "" },
        { title: "Updated", cell: (r) => time(r.updated_at || r.created_at) },
      ], a.aliases, { empty: "No aliases: set one with squall alias set NAME prod 3." })));
  } catch (e) {
    root.append(errorBox(e));
  }
}

function routing(alias) {
  // {"version": 3, "weights": {"4": 0.1}}: 10% to v4, the rest to v3.
  const base = alias.version === "$LATEST" ? "$LATEST" : "v" + alias.version;
  const extra = Object.entries(alias.weights || {});
  if (!extra.length) return base;
  const rest = 1 - extra.reduce((a, [, w]) => a + w, 0);
  return [`${base} ${Math.round(rest * 100)}%`,
          ...extra.map(([v, w]) => `v${v} ${Math.round(w * 100)}%`)].join(" · ");
}

async function triggers(root, name) {
  try {
    const t = await get(fnPath(name, "/triggers"));
    root.append(h("div.card.flush", {}, table([
      { title: "Name", cell: (r) => h("strong", {}, r.name) },
      { title: "Type", cell: (r) => badge(r.type, "muted") },
      { title: "Status", cell: (r) => triggerState(r.status) },
      { title: "Configuration", cell: (r) => h("code.config", {}, JSON.stringify(r.config)) },
      { title: "From", cell: (r) => r.origin },
      { title: "Created", cell: (r) => time(r.created_at) },
    ], t.triggers, { empty: "No triggers: the function runs on HTTP and API calls only." })));
  } catch (e) {
    root.append(errorBox(e));
  }
}

function triggerState(status) {
  const st = status || {};
  const kind = { running: "ok", connected: "ok", active: "ok", stopped: "muted" }[st.state] || "bad";
  const extra = Object.entries(st).filter(([k, v]) => k !== "state" && v !== null && v !== "")
    .map(([k, v]) => `${k}: ${typeof v === "number" && v > 1e9 ? time(v) : v}`).join(" · ");
  return h("span", {}, badge(st.state || "unknown", kind), extra ? h("span.muted.small", {}, " " + extra) : null);
}

export function renderConfig(root, fn) {
  const c = fn.config;
  const rows = [
    ["Handler", c.handler], ["Style", c.style], ["Memory", c.memory_mb + " MB"],
    ["Timeout", c.timeout_s + " s"], ["Concurrency per instance", c.concurrency],
    ["Instances", `min ${c.min_instances} · max ${c.max_instances}`],
    ["Keep-alive", c.keep_alive_s + " s"], ["Network", c.network],
    ["Ephemeral disk", c.ephemeral_mb + " MB"], ["HTTP auth", c.http_auth],
    ["Logs", `${c.log_format}${c.log_level ? " · " + c.log_level : ""}`],
    ["Async", JSON.stringify(c.async || {})], ["Version", "v" + fn.version],
    ["SHA-256", fn.sha256], ["Deployed", time(fn.created_at)],
  ];
  const env = Object.entries(c.env || {});
  clear(root).append(
    h("div.card", {}, h("dl.kv", {}, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]))),
    h("h2", {}, "Environment"),
    h("div.card.flush", {}, table([
      { title: "Name", cell: (r) => h("code", {}, r[0]) },
      { title: "Value", cell: (r) => h("code", {}, String(r[1])) },
    ], env, { empty: "No environment variables." })));
}
