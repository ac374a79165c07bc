// The projects page: the list, and the form that creates one (name, type, domain).

import * as api from "./api.js";
import { busy, confirmDialog, fill, h, notify, when } from "./ui.js";

const TYPES = [
  ["multiclass", "Classification: one tag per image (multiclass)"],
  ["multilabel", "Classification: several tags per image (multilabel)"],
  ["detection", "Object detection: boxes around objects"],
];

export async function projectsPage(page, ctx) {
  const list = h("div", { class: "cards", id: "project-list", "aria-live": "polite" }, h("p", { class: "muted" }, "Loading projects…"));
  const form = await createForm(ctx);
  fill(page,
    h("div", { class: "page-head" }, h("h1", {}, "Projects")),
    h("div", { class: "split" }, h("div", { class: "grow" }, list), form));
  await showList(list, ctx);
}

async function showList(list, ctx) {
  const [projects, domains] = await Promise.all([api.get("/projects"), api.domains().catch(() => [])]);
  if (!ctx.current()) return;
  if (!projects.length) {
    fill(list, h("div", { class: "empty" }, h("p", {}, "No projects yet. Create one to start adding images.")));
    return;
  }
  const byId = Object.fromEntries(domains.map((d) => [d.id, d]));
  fill(list, projects.map((project) => {
    const settings = project.settings || {};
    const domain = byId[settings.domainId];
    const kind = domain && domain.type === "ObjectDetection" ? "Object detection"
      : settings.classificationType === "Multilabel" ? "Multilabel" : "Multiclass";
    const remove = h("button", { type: "button", class: "quiet danger-text", "aria-label": `Delete project ${project.name}` }, "Delete");
    remove.addEventListener("click", () => busy(remove, async () => {
      if (!(await confirmDialog(`Delete the project “${project.name}” with all its images and iterations?`))) return;
      await api.del(`/projects/${project.id}`);
      notify(`Deleted ${project.name}.`);
      await showList(list, ctx);
    }));
    return h("article", { class: "card project-card", dataset: { projectId: project.id } },
      h("h2", {}, h("a", { href: `#/projects/${project.id}` }, project.name)),
      h("p", { class: "muted" }, `${kind} · ${domain ? domain.name : "unknown domain"}`),
      project.description ? h("p", {}, project.description) : null,
      h("div", { class: "card-foot" }, h("span", { class: "muted small" }, `Created ${when(project.created)}`), remove));
  }));
}

async function createForm(ctx) {
  const name = h("input", { id: "new-name", name: "name", required: true, maxlength: 200, autocomplete: "off" });
  const description = h("input", { id: "new-description", name: "description", autocomplete: "off" });
  const domain = h("select", { id: "new-domain", name: "domain" });
  const typeRadios = TYPES.map(([value, label], i) => h("label", { class: "radio" },
    h("input", { type: "radio", name: "type", value, checked: i === 0 }), " ", label));
  const submit = h("button", { type: "submit", class: "primary" }, "Create project");
  const form = h("form", { class: "panel create-project", "aria-labelledby": "create-title" },
    h("h2", { id: "create-title" }, "New project"),
    h("label", { for: "new-name" }, "Name"), name,
    h("label", { for: "new-description" }, "Description (optional)"), description,
    h("fieldset", {}, h("legend", {}, "Project type"), typeRadios),
    h("label", { for: "new-domain" }, "Domain"), domain,
    h("p", { class: "muted small", id: "domain-help" }),
    submit);
  let allDomains = [];
  const selectedType = () => form.querySelector("input[name=type]:checked").value;
  const refreshDomains = () => {
    const wanted = selectedType() === "detection" ? "ObjectDetection" : "Classification";
    const options = allDomains.filter((d) => d.type === wanted && d.enabled !== false);
    fill(domain, options.map((d) => h("option", { value: d.id }, d.name)));
    describe();
  };
  const describe = () => {
    const d = allDomains.find((x) => x.id === domain.value);
    fill(form.querySelector("#domain-help"), d && d.modelInformation ? d.modelInformation.description || "" : "");
  };
  domain.addEventListener("change", describe);
  form.addEventListener("change", (event) => { if (event.target.name === "type") refreshDomains(); });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(submit, async () => {
      const type = selectedType();
      const project = await api.post("/projects", {
        name: name.value.trim(),
        description: description.value.trim(),
        domainId: domain.value,
        classificationType: type === "multilabel" ? "Multilabel" : type === "multiclass" ? "Multiclass" : undefined,
      });
      notify(`Created ${project.name}.`);
      ctx.navigate(`#/projects/${project.id}`);
    });
  });
  try {
    allDomains = await api.domains();
    refreshDomains();
  } catch (error) {
    fill(form.querySelector("#domain-help"), `Could not list the domains: ${error.message}`);
  }
  return form;
}
