// Deploy from an uploaded bundle: the file is the body of POST /api/v1/functions, as the CLI
// sends it. The function's name comes from squall.toml, else the field, else the file's name.

import { call } from "./api.js";
import { h, clear, errorBox, badge, toast } from "./dom.js";

export function render(root, ctx) {
  const file = h("input", { type: "file", id: "deploy-file", accept: ".zip,.tar.gz,.tgz",
                            required: true });
  const name = h("input", { type: "text", id: "deploy-name", placeholder: "from squall.toml or the file name",
                            pattern: "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", autocomplete: "off" });
  const submit = h("button.primary", { type: "submit" }, "Deploy");
  const result = h("div", { id: "deploy-result" });
  const drop = h("label.drop", { for: "deploy-file" },
    h("strong", {}, "Choose a bundle"), h("span.muted", {}, " or drop it here"),
    h("div.muted.small", {}, "A .zip or .tar.gz of a function folder: handler.py, optional ",
      "squall.toml and requirements.txt."));
  const chosen = h("div.chosen.muted.small");
  const form = h("form.card.deploy", {},
    drop, file, chosen,
    h("label", { for: "deploy-name" }, "Function name (optional)"), name,
    h("div.actions", {}, submit));
  root.append(h("div.page-head", {}, h("h1", {}, "Deploy")), form, result);

  file.addEventListener("change", () => {
    const f = file.files[0];
    chosen.textContent = f ? `${f.name} · ${(f.size / 1024).toFixed(1)} KiB` : "";
  });
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files.length) {
      file.files = ev.dataTransfer.files;
      file.dispatchEvent(new Event("change"));
    }
  });

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = file.files[0];
    if (!f) return;
    submit.disabled = true;
    submit.textContent = "Deploying…";
    clear(result);
    try {
      const stem = f.name.replace(/\.(zip|tar\.gz|tgz)$/i, "").toLowerCase();
      const out = await call("POST", "/api/v1/functions", {
        params: { name: name.value.trim(), default_name: stem },
        body: f, contentType: "application/octet-stream" });
      ctx.state.deployed = out;
      const link = "#/functions/" + encodeURIComponent(out.name);
      result.append(h("div.card.success", {},
        h("h3", {}, out.created ? "Deployed " : "Already deployed ", h("a", { href: link }, out.name),
          " ", badge("v" + out.version, "ok")),
        h("p.muted", {}, out.created ? "A new version; new invocations run it."
          : "The same bundle and configuration as the latest version: nothing changed."),
        h("code.hash", {}, out.sha256)));
      toast(`${out.name} v${out.version} deployed`);
    } catch (e) {
      result.append(errorBox(e));
    } finally {
      submit.disabled = false;
      submit.textContent = "Deploy";
    }
  });
  return () => {};
}
