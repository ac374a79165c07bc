// Export: pick an iteration, a format and a flavor; follow the export; download the zip and see
// whether the exported model was verified against the trained one.

import * as api from "./api.js";
import { busy, fill, h, notify } from "./ui.js";

const POLL_MS = 2000;
// The exporters' verification statuses (exporters/verify.py), in words.
const VERIFICATION = { ok: "verified", failed: "verification failed", unverified: "unverified" };

/** The exporter registry as [{name, flavors: [..], defaultFlavor, description}], whatever the list's wrapping. */
export function exporterList(answer) {
  const raw = Array.isArray(answer) ? answer : (answer && (answer.exporters || answer.formats)) || [];
  return raw.map((e) => ({
    name: e.name || e.format || e.platform,
    description: e.description || "",
    flavors: (e.flavors || []).map((f) => (typeof f === "string" ? f : f.name || f.flavor)),
    defaultFlavor: e.defaultFlavor || e.default_flavor || null,
    tasks: e.tasks || null,
  })).filter((e) => e.name);
}

export async function exportPage(page, ctx) {
  const { project } = ctx;
  const [iterations, registry] = await Promise.all([
    api.get(`/projects/${project.id}/iterations`),
    api.get("/edgevision/exporters").catch((error) => ({ error })),
  ]);
  if (!ctx.current()) return;
  const done = iterations.filter((i) => i.status === "Completed").sort((a, b) => String(b.created).localeCompare(String(a.created)));
  if (!done.length) {
    fill(page, h("div", { class: "empty" }, h("p", {}, "Train an iteration first, then export it here. "),
      h("a", { href: `#/projects/${project.id}/train`, class: "button primary" }, "Go to training")));
    return;
  }
  const formats = registry.error ? [] : exporterList(registry).filter((e) => !e.tasks || e.tasks.includes(ctx.kind));
  const iteration = h("select", { id: "export-iteration" }, done.map((i) => h("option", { value: i.id }, i.name)));
  const format = h("select", { id: "export-format" }, formats.map((f) => h("option", { value: f.name }, f.name)));
  const flavor = h("select", { id: "export-flavor" });
  const about = h("p", { class: "muted small", id: "export-about" });
  const start = h("button", { type: "submit", class: "primary", id: "export-start" }, "Export");
  const table = h("div", { id: "export-list", "aria-live": "polite" });
  const refreshFlavors = () => {
    const chosen = formats.find((f) => f.name === format.value);
    fill(flavor, (chosen ? chosen.flavors : []).map((name) => h("option", { value: name, selected: chosen.defaultFlavor === name }, name)));
    fill(about, chosen ? chosen.description : "");
  };
  format.addEventListener("change", refreshFlavors);
  refreshFlavors();
  const form = h("form", { class: "panel", "aria-label": "Export" },
    h("div", { class: "toolbar" },
      h("label", { for: "export-iteration" }, "Iteration"), iteration,
      h("label", { for: "export-format" }, "Format"), format,
      h("label", { for: "export-flavor" }, "Flavor"), flavor, start),
    registry.error ? h("p", { class: "warn" }, `Could not list the export formats: ${registry.error.message}`) : about);
  fill(page, form, h("h2", {}, "Exports of this iteration"), table);

  let timer = null;
  ctx.onLeave(() => clearTimeout(timer));
  const base = () => `/projects/${project.id}/iterations/${iteration.value}/export`;
  const refresh = async () => {
    clearTimeout(timer);
    const wanted = iteration.value;
    const exports = await api.get(base());
    if (!ctx.current() || wanted !== iteration.value) return;
    showExports(exports, table);
    if (exports.some((e) => e.status === "Exporting")) {
      timer = setTimeout(() => refresh().catch((error) => fill(table, h("p", { class: "warn" }, error.message))), POLL_MS);
    }
  };
  iteration.addEventListener("change", () => refresh().catch((error) => fill(table, h("p", { class: "warn" }, error.message))));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(start, async () => {
      await api.post(base(), { platform: format.value, flavor: flavor.value || undefined });
      notify(`Exporting ${format.value}${flavor.value ? ` (${flavor.value})` : ""}…`);
      await refresh();
    });
  });
  await refresh();
}

function showExports(exports, table) {
  if (!exports.length) {
    fill(table, h("p", { class: "muted" }, "No exports yet."));
    return;
  }
  fill(table, h("table", { class: "exports" },
    h("thead", {}, h("tr", {}, ["Format", "Flavor", "Status", "Verification", "Download"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, exports.map((e) => {
      const check = e.edgevisionVerification || {};
      const format = e.edgevisionFormat || e.platform;
      const flavor = e.edgevisionFlavor || e.flavor || "";
      const hosted = e.edgevisionFormat && e.platform && e.platform.toLowerCase() !== format.toLowerCase()
        ? h("span", { class: "muted small" }, ` (${e.platform}${e.flavor ? ` ${e.flavor}` : ""})`) : null;
      const checked = check.status && !["none", "pending"].includes(String(check.status).toLowerCase());
      return h("tr", { dataset: { platform: format, flavor }, class: "export-row" },
        h("td", {}, format, hosted),
        h("td", {}, flavor || "–"),
        h("td", {}, h("span", { class: `status status-${String(e.status).toLowerCase()} export-status` }, e.status),
          e.edgevisionError ? h("span", { class: "warn small" }, ` ${e.edgevisionError}`) : null),
        h("td", { class: "verification" }, checked
          ? [h("span", { class: `status verify-${String(check.status).toLowerCase()}`, dataset: { status: check.status } }, VERIFICATION[String(check.status).toLowerCase()] || check.status),
            check.detail ? h("details", { class: "small" }, h("summary", {}, "details"), h("p", { class: "muted" }, check.detail)) : null]
          : h("span", { class: "muted" }, e.status === "Exporting" ? "pending" : "–")),
        h("td", {}, e.status === "Done" && e.downloadUri
          ? h("a", { href: e.downloadUri, class: "button download", download: "" }, "Download zip")
          : h("span", { class: "muted" }, e.status === "Exporting" ? "…" : "–")));
    }))));
}
