// Dead letters: async events that ran out of retries. Open one to see its event and error;
// redrive it (POST /api/v1/dlq/{id}/redrive) to enqueue it again as a new invocation.

import { get, post } from "./api.js";
import { h, clear, errorBox, table, badge, time, toast } from "./dom.js";

export function render(root, ctx) {
  const fn = h("input.search", { type: "search", placeholder: "Function…", id: "dlq-function",
                                 "aria-label": "Only this function" });
  const body = h("div");
  const detail = h("div.detail", { id: "dlq-detail", hidden: true });
  root.append(
    h("div.page-head", {}, h("h1", {}, "Dead letters"), h("div.grow"), fn,
      h("button.ghost", { type: "button", onclick: () => load() }, "Refresh")),
    h("p.muted", {}, "Async events that failed every attempt. Redrive sends one through again ",
      "as a new invocation, once the cause is fixed."),
    h("div.split", {}, h("div.split-main", {}, body), detail));
  let stopped = false;
  let debounce = 0;

  async function load() {
    try {
      const d = await get("/api/v1/dlq", { function: fn.value.trim(), limit: 500 });
      if (stopped) return;
      ctx.state.deadLetters = d.dead_letters;
      draw(d.dead_letters);
    } catch (e) {
      if (!stopped) clear(body).append(errorBox(e));
    }
  }

  async function redrive(dl, button) {
    button.disabled = true;
    try {
      const out = await post(`/api/v1/dlq/${encodeURIComponent(dl.id)}/redrive`);
      toast(`Redriven: ${dl.function} runs again as ${out.redrive_request_id || "a new invocation"}`);
      ctx.state.redriven = (ctx.state.redriven || []).concat([out]);
      detail.hidden = true;
      await load();
    } catch (e) {
      button.disabled = false;
      toast(`${e.message} [${e.code}]`, "bad");
    }
  }

  function draw(rows) {
    clear(body).append(h("div.card.flush", {}, table([
      { title: "Failed", cls: "nowrap", cell: (d) => time(d.created_at) },
      { title: "Function", cell: (d) => h("a", { href: "#/functions/" + encodeURIComponent(d.function) }, d.function) },
      { title: "Error", cell: (d) => h("span", {}, badge((d.error || {}).errorType || "Error", "bad"), " ",
                                        h("span.muted.small", {}, ((d.error || {}).errorMessage || "").slice(0, 120))) },
      { title: "Trigger", cell: (d) => d.trigger },
      { title: "Attempts", cls: "num", cell: (d) => d.attempts },
      { title: "", cls: "num", cell: (d) => {
        const b = h("button.primary.small", { type: "button", dataset: { redrive: d.id } }, "Redrive");
        b.addEventListener("click", (ev) => { ev.stopPropagation(); redrive(d, b); });
        return b;
      } },
    ], rows, { empty: "No dead letters. Every async event was delivered.",
               onRow: (d, tr) => open(d, tr) })));
  }

  function open(d, tr) {
    for (const el of body.querySelectorAll("tr.selected")) el.classList.remove("selected");
    tr.classList.add("selected");
    const err = d.error || {};
    detail.hidden = false;
    clear(detail).append(
      h("div.detail-head", {}, h("h3", {}, "Dead letter"),
        h("button.ghost.small", { type: "button", "aria-label": "Close",
                                  onclick: () => { detail.hidden = true; } }, "✕")),
      h("code.rid", {}, d.id),
      h("dl.kv.compact", {}, h("dt", {}, "Request id"), h("dd", {}, h("code", {}, d.request_id)),
        h("dt", {}, "Function"), h("dd", {}, d.function), h("dt", {}, "Attempts"),
        h("dd", {}, String(d.attempts))),
      h("h4", {}, "Error"),
      h("pre.logs", {}, `${err.errorType || "Error"}: ${err.errorMessage || ""}\n` +
                        (err.stackTrace || []).join("")),
      h("h4", {}, "Event"),
      h("pre.logs", {}, JSON.stringify(d.event, null, 2)));
  }

  fn.addEventListener("input", () => { clearTimeout(debounce); debounce = setTimeout(load, 250); });
  load();
  return () => { stopped = true; clearTimeout(debounce); };
}
