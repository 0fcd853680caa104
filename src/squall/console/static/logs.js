// The live log tail: the newest lines, then every second the lines after the cursor, while the
// tab is open. At most MAX_LINES stay on the page; it follows the end unless scrolled up.

import { get, fnPath } from "./api.js";
import { h, clear, errorBox } from "./dom.js";

const POLL_MS = 1000;
const MAX_LINES = 2000;

export function render(root, ctx, name) {
  const box = h("pre.logs.tail", { id: "log-tail" });
  const status = h("span.muted.small", {}, "connecting…");
  const problem = h("div");
  const grep = h("input.search", { type: "search", placeholder: "Highlight text…",
                                   "aria-label": "Highlight text" });
  let paused = false;
  const pause = h("button.ghost", { type: "button" }, "Pause");
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    status.textContent = paused ? "paused" : "live";
  });
  root.append(
    h("div.section-head", {}, h("h2", {}, "Live logs"), h("span.live-dot"), status,
      h("div.grow"), grep, pause,
      h("button.ghost", { type: "button", onclick: () => { clear(box); ctx.state.tail = []; } },
        "Clear")),
    problem, box);
  ctx.state.tail = [];
  let cursor = 0;
  let timer = 0;
  let stopped = false;

  function add(lines) {
    if (!lines.length) return;
    const follow = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
    const needle = grep.value.trim();
    const frag = document.createDocumentFragment();
    for (const l of lines) {
      const line = h("div.line", { dataset: { rid: l.request_id || "" } },
        h("span.ts", {}, new Date(l.ts * 1000).toLocaleTimeString()), " ", l.line);
      if (/error|exception|traceback/i.test(l.line)) line.classList.add("err");
      if (needle && l.line.includes(needle)) line.classList.add("hit");
      frag.append(line);
      ctx.state.tail.push(l.line);
    }
    box.append(frag);
    while (box.childElementCount > MAX_LINES) box.firstElementChild.remove();
    if (ctx.state.tail.length > MAX_LINES) ctx.state.tail.splice(0, ctx.state.tail.length - MAX_LINES);
    if (follow) box.scrollTop = box.scrollHeight;
  }

  async function poll() {
    if (!paused) {
      try {
        const params = cursor ? { after: cursor, tail: false, limit: 1000 } : { limit: 200 };
        const data = await get(fnPath(name, "/logs"), params);
        if (stopped) return;
        clear(problem);
        add(data.lines);
        cursor = data.cursor;
        status.textContent = "live";
      } catch (e) {
        if (stopped) return;
        clear(problem).append(errorBox(e));
        status.textContent = "retrying…";
      }
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }
  poll();
  return () => { stopped = true; clearTimeout(timer); };
}
