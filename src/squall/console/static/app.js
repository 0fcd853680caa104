// The console's shell: sign in and out, the tenant switch of an admin key, the hash router.
// Each view is a module with render(root, ctx) that returns a function stopping its timers.

import { session, get, onUnauthorized } from "./api.js";
import { h, clear, errorBox } from "./dom.js";
import * as functions from "./functions.js";
import * as fnPage from "./function.js";
import * as usage from "./usage.js";
import * as dlq from "./dlq.js";
import * as deploy from "./deploy.js";

// What the page knows, for the browser's devtools and the end-to-end test to read: the signed-in
// key (never the secret), the current view, the data behind the charts.
export const state = { me: null, view: "", charts: null, functions: null };
window.squallConsole = state;

const main = document.getElementById("main");
let stopView = null;

function showSignIn(message) {
  stopCurrent();
  state.me = null;
  state.view = "signin";
  document.getElementById("topbar").hidden = true;
  const input = h("input", { type: "password", id: "api-key", name: "api-key",
                             autocomplete: "off", spellcheck: "false", required: true,
                             placeholder: "sq_…" });
  const problem = h("div");
  const form = h("form.signin-card", { id: "signin" },
    h("div.signin-brand", {}, h("img", { src: "/console/static/favicon.svg", alt: "" }), "Squall"),
    h("h1", {}, "Sign in to the console"),
    h("p.muted", {}, "Paste an API key. It stays in this tab only and is forgotten when the tab ",
      "closes. After ", h("code", {}, "make run"), " the admin key is in ",
      h("code", {}, ".squall/admin-key"), "."),
    h("label", { for: "api-key" }, "API key"), input, problem,
    h("button.primary", { type: "submit" }, "Sign in"));
  if (message) problem.append(errorBox({ message }));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clear(problem);
    const key = input.value.trim();
    try {
      const me = await get("/api/v1/whoami", {}, { key });
      session.key = key;
      session.tenant = "";
      start(me);
    } catch (e) {
      problem.append(errorBox(e.status === 401
        ? { message: "This key is not valid (unknown, revoked or expired).", code: e.code } : e));
    }
  });
  clear(main).append(h("div.signin", {}, form));
  input.focus();
}

function signOut() {
  session.clear();
  history.replaceState(null, "", "#/");
  showSignIn();
}

function start(me) {
  state.me = me;
  document.getElementById("topbar").hidden = false;
  document.getElementById("key-id").textContent =
    `${me.key_id} · ${me.admin ? "admin" : me.scopes.join(", ")}`;
  const pick = document.getElementById("tenant-pick");
  const select = document.getElementById("tenant-select");
  pick.hidden = !me.admin;
  if (me.admin) {
    select.replaceChildren(...me.tenants.map((t) => h("option", { value: t }, t)));
    select.value = session.tenant || me.tenant;
  }
  if (!location.hash || location.hash === "#/") location.hash = "#/functions";
  else route();
}

function stopCurrent() {
  if (stopView) { try { stopView(); } catch (e) { console.error(e); } }
  stopView = null;
}

function route() {
  if (!state.me) return;
  stopCurrent();
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const [section, name, tab] = parts;
  state.view = section || "functions";
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === state.view);
  }
  const ctx = { state };
  const root = clear(main);
  if (section === "functions" && name) stopView = fnPage.render(root, ctx, name, tab || "overview");
  else if (section === "usage") stopView = usage.render(root, ctx);
  else if (section === "dlq") stopView = dlq.render(root, ctx);
  else if (section === "deploy") stopView = deploy.render(root, ctx);
  else { state.view = "functions"; stopView = functions.render(root, ctx); }
}

async function boot() {
  document.getElementById("sign-out").addEventListener("click", signOut);
  document.getElementById("tenant-select").addEventListener("change", (ev) => {
    session.tenant = ev.target.value === state.me.tenant ? "" : ev.target.value;
    if (location.hash === "#/functions") route();
    else location.hash = "#/functions";
  });
  window.addEventListener("hashchange", route);
  onUnauthorized(() => { session.clear(); showSignIn("The key was refused: sign in again."); });
  if (!session.key) return showSignIn();
  try {
    start(await get("/api/v1/whoami"));
  } catch (e) {
    if (e.status !== 401) clear(main).append(errorBox(e));
  }
}

boot();
