// The function list: two calls (the list, and the live state with the last hour's traffic)
// every few seconds, whatever the number of functions; rows are kept by name and only the
// cells whose text changed are touched, so 500 functions refresh without rebuilding the table.

import { get } from "./api.js";
import { h, clear, errorBox, ms, num, pct, ago, badge } from "./dom.js";

const REFRESH_MS = 5000;

const COLUMNS = [
  { key: "name", title: "Function" },
  { key: "version", title: "Version", cls: "num" },
  { key: "state", title: "Live state" },
  { key: "invocations", title: "Invocations (1 h)", cls: "num" },
  { key: "errors", title: "Errors", cls: "num" },
  { key: "avg", title: "Avg run", cls: "num" },
  { key: "memory", title: "Memory", cls: "num" },
  { key: "last", title: "Last invoked", cls: "num" },
];

function cells(f, live, now) {
  const l = live || {};
  const errs = l.errors || 0;
  return {
    name: f.name,
    version: "v" + f.version,
    state: [l.busy || 0, l.idle || 0, !!l.zygote],
    invocations: num(l.invocations || 0),
    errors: errs ? `${num(errs)} (${pct(errs, l.invocations)})` : "0",
    avg: ms(l.avg_ms),
    memory: f.config.memory_mb + " MB",
    last: ago(l.last_invoked, now),
  };
}

function stateCell(td, [busy, idle, zygote]) {
  td.replaceChildren(...[
    busy ? badge(`${busy} busy`, "info") : null,
    idle ? badge(`${idle} idle`, "ok") : null,
    !busy && !idle ? badge("scaled to zero", "muted") : null,
    zygote ? badge("zygote", "zygote") : null].filter(Boolean));
}

export function render(root, ctx) {
  const filter = h("input.search", { type: "search", placeholder: "Filter functions…",
                                     "aria-label": "Filter functions" });
  const count = h("span.muted");
  const problem = h("div");
  const tbody = h("tbody");
  const empty = h("div.empty-state", { hidden: true },
    h("h2", {}, "No functions yet"),
    h("p", {}, "Deploy one from a zip on the ", h("a", { href: "#/deploy" }, "Deploy"),
      " page, or with ", h("code", {}, "squall deploy ./myfn"), "."));
  root.append(
    h("div.page-head", {}, h("h1", {}, "Functions"), count, h("div.grow"), filter),
    problem,
    h("div.card.flush", {}, h("div.table-wrap", {}, h("table.functions", { id: "functions" },
      h("thead", {}, h("tr", {}, COLUMNS.map((c) => h("th", { class: c.cls || "" }, c.title)))),
      tbody))),
    empty);

  const rows = new Map(); // name -> { tr, tds, text }
  let timer = 0;
  let stopped = false;

  function applyFilter() {
    const q = filter.value.trim().toLowerCase();
    let shown = 0;
    for (const [name, row] of rows) {
      row.tr.hidden = q !== "" && !name.includes(q);
      if (!row.tr.hidden) shown++;
    }
    count.textContent = q ? `${shown} of ${rows.size}` : `${rows.size} function${rows.size === 1 ? "" : "s"}`;
  }
  filter.addEventListener("input", applyFilter);

  function makeRow(name) {
    const tds = {};
    const tr = h("tr.clickable", { dataset: { name } });
    for (const c of COLUMNS) {
      tds[c.key] = h("td", { class: c.cls || "" });
      tr.append(tds[c.key]);
    }
    tds.name.append(h("a.fn-link", { href: "#/functions/" + encodeURIComponent(name) }, name));
    tr.addEventListener("click", (ev) => {
      if (ev.target.tagName !== "A") location.hash = "#/functions/" + encodeURIComponent(name);
    });
    return { tr, tds, text: {} };
  }

  function update(list, overview) {
    const live = new Map(overview.functions.map((f) => [f.name, f]));
    const names = list.functions.map((f) => f.name).sort();
    const now = overview.now;
    let order = names.length !== rows.size;
    for (const f of list.functions) {
      let row = rows.get(f.name);
      if (!row) { row = makeRow(f.name); rows.set(f.name, row); order = true; }
      const values = cells(f, live.get(f.name), now);
      for (const [key, value] of Object.entries(values)) {
        if (key === "name") continue;
        const text = JSON.stringify(value);
        if (row.text[key] === text) continue; // unchanged: leave the DOM alone
        row.text[key] = text;
        if (key === "state") stateCell(row.tds.state, value);
        else row.tds[key].textContent = value;
      }
    }
    const present = new Set(names);
    for (const [name, row] of [...rows]) {
      if (!present.has(name)) { row.tr.remove(); rows.delete(name); order = true; }
    }
    if (order) {
      const frag = document.createDocumentFragment();
      for (const name of names) frag.append(rows.get(name).tr);
      tbody.append(frag); // moves the rows into sorted order in one reflow
    }
    empty.hidden = rows.size > 0;
    ctx.state.functions = { count: rows.size, names };
    applyFilter();
  }

  async function refresh() {
    try {
      const [list, overview] = await Promise.all([
        get("/api/v1/functions"), get("/api/v1/console/overview", { since: "1h" })]);
      if (stopped) return;
      clear(problem);
      update(list, overview);
    } catch (e) {
      if (!stopped) clear(problem).append(errorBox(e));
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }
  refresh();
  filter.focus();
  return () => { stopped = true; clearTimeout(timer); };
}
