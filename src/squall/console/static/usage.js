// Usage and cost per tenant and per function (GET /api/v1/usage). An admin key that names no
// tenant sees every tenant; any other key its own.

import { get } from "./api.js";
import { h, clear, errorBox, table, ms, num, money, pct } from "./dom.js";

const RANGES = [["24h", "24 hours"], ["7d", "7 days"], ["30d", "30 days"], ["", "All time"]];

export function render(root, ctx) {
  const since = h("select", { id: "usage-since", "aria-label": "Period" },
    RANGES.map(([v, t]) => h("option", { value: v }, t)));
  since.value = "30d";
  const body = h("div");
  root.append(h("div.page-head", {}, h("h1", {}, "Usage & cost"), h("div.grow"),
    h("label.inline", {}, "Period ", since)), body);
  let stopped = false;

  async function load() {
    try {
      const u = await get("/api/v1/usage", { since: since.value });
      if (stopped) return;
      ctx.state.usage = u;
      draw(u);
    } catch (e) {
      if (!stopped) clear(body).append(errorBox(e));
    }
  }

  function draw(u) {
    const fns = [...u.functions].sort((a, b) => b.cost - a.cost || b.invocations - a.invocations);
    const total = u.tenants.reduce((a, t) => ({ cost: a.cost + t.cost,
      invocations: a.invocations + t.invocations, gb: a.gb + t.gb_seconds }),
      { cost: 0, invocations: 0, gb: 0 });
    const manyTenants = u.tenants.length > 1;
    clear(body).append(
      h("div.summary", {},
        card("Cost", money(total.cost)), card("Invocations", num(total.invocations)),
        card("GB-seconds", total.gb.toFixed(3)),
        card("Tenants", num(u.tenants.length))),
      h("p.muted.small", {}, `Priced at $${u.prices.per_million_requests} per million requests ` +
        `and $${u.prices.per_gb_second} per GB-second (billed per millisecond).`),
      h("h2", {}, "By tenant"),
      h("div.card.flush", {}, table([
        { title: "Tenant", cell: (t) => h("strong", {}, t.tenant) },
        { title: "Functions", cls: "num", cell: (t) => num(t.functions) },
        { title: "Invocations", cls: "num", cell: (t) => num(t.invocations) },
        { title: "Errors", cls: "num", cell: (t) => `${num(t.errors)} (${pct(t.errors, t.invocations)})` },
        { title: "Billed", cls: "num", cell: (t) => ms(t.billed_ms) },
        { title: "GB-seconds", cls: "num", cell: (t) => t.gb_seconds.toFixed(4) },
        { title: "Cost", cls: "num", cell: (t) => h("strong", {}, money(t.cost)) },
      ], u.tenants, { empty: "No invocations in this period." })),
      h("h2", {}, "By function"),
      h("div.card.flush", {}, table([
        { title: "Function", cell: (f) => manyTenants ? `${f.namespace} / ${f.name}`
          : h("a", { href: "#/functions/" + encodeURIComponent(f.name) }, f.name) },
        { title: "Invocations", cls: "num", cell: (f) => num(f.invocations) },
        { title: "Errors", cls: "num", cell: (f) => num(f.errors) },
        { title: "Cold starts", cls: "num", cell: (f) => num(f.cold_starts) },
        { title: "p50", cls: "num", cell: (f) => ms(f.p50_ms) },
        { title: "p99", cls: "num", cell: (f) => ms(f.p99_ms) },
        { title: "GB-seconds", cls: "num", cell: (f) => f.gb_seconds.toFixed(4) },
        { title: "Cost", cls: "num", cell: (f) => h("strong", {}, money(f.cost)) },
      ], fns, { empty: "No invocations in this period." })));
  }

  since.addEventListener("change", load);
  load();
  return () => { stopped = true; };
}

function card(label, value) {
  return h("div.stat", {}, h("div.stat-label", {}, label), h("div.stat-value", {}, value));
}
