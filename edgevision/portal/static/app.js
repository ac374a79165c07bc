// The portal's entry point: hash routes, the page frame and the project header with its tabs.
//
// Routes:  #/                                projects list and create
//          #/projects/{id}[?tag=ID|untagged]  image grid (tag filters, upload, tagging)
//          #/projects/{id}/images/{imageId}   one image: tags, or boxes for detection
//          #/projects/{id}/train[/{iterId}]   train, iterations, performance, publish
//          #/projects/{id}/test               quick test
//          #/projects/{id}/export             export
//          #/projects/{id}/predictions        stored predictions review

import * as api from "./api.js";
import { askKey, fill, h, showError } from "./ui.js";
import { projectsPage } from "./projects.js";
import { imagesPage } from "./images.js";
import { imagePage } from "./editor.js";
import { trainPage } from "./iterations.js";
import { quickTestPage } from "./quicktest.js";
import { exportPage } from "./export.js";
import { predictionsPage } from "./predictions.js";

const TABS = [
  ["images", "Images"],
  ["train", "Train & iterations"],
  ["test", "Quick test"],
  ["export", "Export"],
  ["predictions", "Predictions"],
];

const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
let generation = 0;
let leaving = [];

function parseHash() {
  const raw = decodeURIComponent(location.hash.replace(/^#/, "")) || "/";
  const [path, search] = raw.split("?", 2);
  const parts = path.split("/").filter(Boolean);
  const query = Object.fromEntries(new URLSearchParams(search || ""));
  return { parts, query };
}

export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function loadProject(id) {
  const [project, tags] = await Promise.all([api.get(`/projects/${id}`), api.get(`/projects/${id}/tags`)]);
  const kind = await api.projectKind(project);
  return { project, tags, kind };
}

function projectHeader(ctx, tab) {
  const { project, kind } = ctx;
  return h("div", { class: "project-head" },
    h("div", { class: "title-row" },
      h("h1", {}, project.name),
      h("span", { class: `badge kind-${kind}` }, { multiclass: "Multiclass", multilabel: "Multilabel", detection: "Object detection" }[kind])),
    project.description ? h("p", { class: "muted" }, project.description) : null,
    h("nav", { class: "tabs", "aria-label": "Project sections" },
      TABS.map(([name, label]) => h("a", {
        href: `#/projects/${project.id}${name === "images" ? "" : `/${name}`}`,
        class: name === tab ? "tab active" : "tab",
        "aria-current": name === tab ? "page" : null,
        dataset: { tab: name },
      }, label))));
}

async function route() {
  const mine = ++generation;
  for (const fn of leaving) {
    try { fn(); } catch { /* a page's cleanup must not stop the next */ }
  }
  leaving = [];
  const { parts, query } = parseHash();
  const ctx = {
    query,
    navigate,
    onLeave: (fn) => leaving.push(fn),
    current: () => mine === generation,
    refreshTags: null,
  };
  try {
    if (!parts.length) {
      fill(crumbs, h("span", {}, "Projects"));
      const page = h("section", { class: "page", "aria-label": "Projects" });
      fill(main, page);
      await projectsPage(page, ctx);
      return;
    }
    if (parts[0] !== "projects" || !parts[1]) {
      fill(main, h("p", {}, "No such page. ", h("a", { href: "#/" }, "Back to the projects")));
      return;
    }
    const loaded = await loadProject(parts[1]);
    if (!ctx.current()) return;
    Object.assign(ctx, loaded);
    ctx.refreshTags = async () => {
      ctx.tags = await api.get(`/projects/${ctx.project.id}/tags`);
      return ctx.tags;
    };
    const section = parts[2] || "images";
    const tab = section === "images" ? "images" : section;
    fill(crumbs, h("a", { href: "#/" }, "Projects"), h("span", { "aria-hidden": "true" }, " / "),
      h("a", { href: `#/projects/${ctx.project.id}` }, ctx.project.name));
    const page = h("section", { class: "page" });
    fill(main, projectHeader(ctx, tab), page);
    document.title = `${ctx.project.name} · edgevision`;
    if (section === "images" && parts[3]) await imagePage(page, ctx, parts[3]);
    else if (section === "images") await imagesPage(page, ctx);
    else if (section === "train") await trainPage(page, ctx, parts[3]);
    else if (section === "test") await quickTestPage(page, ctx);
    else if (section === "export") await exportPage(page, ctx);
    else if (section === "predictions") await predictionsPage(page, ctx);
    else fill(page, h("p", {}, "No such page."));
  } catch (error) {
    if (!ctx.current()) return;
    showError(error);
    fill(main, h("div", { class: "empty" },
      h("p", {}, error.message || String(error)),
      h("p", {}, h("a", { href: "#/" }, "Back to the projects"))));
  }
}

api.setKeyPrompt((reason) => askKey(reason));
if (api.storedKey()) api.rememberKey(api.storedKey()); // refresh the cookie for <img> URLs
document.getElementById("key-button").addEventListener("click", async () => {
  const key = await askKey("The key is sent as the Training-Key header and the edgevision-key cookie.");
  if (key !== null) {
    api.rememberKey(key);
    route();
  }
});
window.addEventListener("hashchange", route);
route();
