// A function's invocation history (filter by status and age, page with the cursor) and one
// invocation opened: its timeline (queued -> init -> run) and its log lines.

import { get, fnPath } from "./api.js";
import { h, clear, errorBox, table, badge, statusBadge, ms, time, shortId } from "./dom.js";

const STATUSES = [["", "All"], ["failed", "Failed (any)"], ["succeeded", "Succeeded"],
                  ["timeout", "Timed out"], ["oom", "Out of memory"], ["crashed", "Crashed"]];
const SINCE = [["1h", "Last hour"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["", "All"]];

export function render(root, ctx, name) {
  const status = h("select", { id: "inv-status", "aria-label": "Status" },
    STATUSES.map(([v, t]) => h("option", { value: v }, t)));
  const since = h("select", { id: "inv-since", "aria-label": "Since" },
    SINCE.map(([v, t]) => h("option", { value: v }, t)));
  since.value = "24h";
  const list = h("div.card.flush");
  const more = h("button.ghost", { type: "button", hidden: true }, "Older invocations");
  const detail = h("div.detail", { id: "invocation-detail", hidden: true });
  root.append(
    h("div.section-head", {}, h("h2", {}, "Invocations"), h("div.grow"),
      h("label.inline", {}, "Status ", status), h("label.inline", {}, "Since ", since),
      h("button.ghost", { type: "button", onclick: () => load() }, "Refresh")),
    h("div.split", {}, h("div.split-main", {}, list, more), detail));
  let rows = [];
  let next = null;
  let controller = null;

  async function load(before) {
    if (controller) controller.abort();
    controller = new AbortController();
    try {
      const page = await get(fnPath(name, "/invocations/history"), {
        status: status.value, since: since.value, limit: 50, before }, { signal: controller.signal });
      rows = before ? rows.concat(page.invocations) : page.invocations;
      next = page.next;
      ctx.state.invocations = rows;
      draw();
    } catch (e) {
      if (e.name !== "AbortError") clear(list).append(errorBox(e));
    }
  }

  function draw() {
    clear(list).append(table([
      { title: "Started", cls: "nowrap", cell: (r) => time(r.start) },
      { title: "Request", cell: (r) => shortId(r.request_id) },
      { title: "Status", cell: (r) => h("span", {}, statusBadge(r.status),
                                         r.error_type ? h("span.muted.small", {}, " " + r.error_type) : null) },
      { title: "Trigger", cell: (r) => r.trigger },
      { title: "Version", cls: "num", cell: (r) => "v" + r.version },
      { title: "Start", cell: (r) => (r.cold ? badge("cold", "zygote") : badge("warm", "muted")) },
      { title: "Run", cls: "num", cell: (r) => ms(r.run_ms) },
      { title: "Billed", cls: "num", cell: (r) => r.billed_ms + " ms" },
    ], rows, { empty: "No invocations match.", onRow: (r, tr) => open(r, tr) }));
    more.hidden = !next;
  }

  async function open(inv, tr) {
    for (const el of list.querySelectorAll("tr.selected")) el.classList.remove("selected");
    tr.classList.add("selected");
    detail.hidden = false;
    ctx.state.opened = { invocation: inv, logs: null };
    const logBox = h("pre.logs", { id: "invocation-logs" }, "Loading logs…");
    clear(detail).append(
      h("div.detail-head", {}, h("h3", {}, "Invocation"),
        h("button.ghost.small", { type: "button", "aria-label": "Close",
                                  onclick: () => { detail.hidden = true; } }, "✕")),
      h("code.rid", {}, inv.request_id),
      h("div.detail-badges", {}, statusBadge(inv.status), " ",
        inv.cold ? badge("cold start", "zygote") : badge("warm", "muted"), " ",
        badge(inv.trigger, "muted"), " ", badge("v" + inv.version, "muted")),
      timeline(inv),
      h("dl.kv.compact", {},
        kv("Started", time(inv.start)), kv("Error", inv.error_type || "–"),
        kv("Billed", inv.billed_ms + " ms"), kv("Memory", `${inv.max_memory_mb ?
          Math.round(inv.max_memory_mb) : "?"} of ${inv.memory_mb} MB`)),
      h("h4", {}, "Logs"), logBox);
    try {
      const data = await get(fnPath(name, "/logs"), { request_id: inv.request_id, tail: false,
                                                       limit: 2000 });
      ctx.state.opened.logs = data.lines.map((l) => l.line);
      logBox.textContent = data.lines.length ? data.lines.map((l) => l.line).join("\n")
                                             : "No log lines (they may have been pruned).";
    } catch (e) {
      logBox.replaceChildren(errorBox(e));
    }
  }

  status.addEventListener("change", () => load());
  since.addEventListener("change", () => load());
  more.addEventListener("click", () => load(next));
  load();
  return () => { if (controller) controller.abort(); };
}

function kv(k, v) { return [h("dt", {}, k), h("dd", {}, v)]; }

// Queued (async events only), init (cold starts only) and run, drawn to scale.
function timeline(inv) {
  const parts = [["queued", inv.queued_ms || 0], ["init", inv.init_ms || 0], ["run", inv.run_ms || 0]];
  const total = parts.reduce((a, [, v]) => a + v, 0) || 1;
  return h("div.timeline", { id: "timeline" },
    h("div.timeline-bar", {}, parts.filter(([, v]) => v > 0).map(([k, v]) => {
      const seg = h("span", { class: "seg " + k, title: `${k} ${ms(v)}` });
      seg.style.width = Math.max(2, (100 * v) / total) + "%"; // CSSOM: the CSP allows no inline style
      return seg;
    })),
    h("div.timeline-legend", {}, parts.map(([k, v]) =>
      h("span", {}, h("i", { class: "dot " + k }), `${k} `, h("strong", {}, ms(v))))));
}
