// Train (quick / advanced with a budget) with live progress; iterations with per-tag precision,
// recall and AP at a chosen probability (and overlap) threshold; publish / unpublish / delete.

import * as api from "./api.js";
import { busy, confirmDialog, fill, h, notify, pct, when } from "./ui.js";

const POLL_MS = 1000;

export async function trainPage(page, ctx, selectedId) {
  const { project } = ctx;
  const iterations = await api.get(`/projects/${project.id}/iterations`);
  if (!ctx.current()) return;
  iterations.sort((a, b) => String(b.created).localeCompare(String(a.created)));
  const chosen = iterations.find((i) => i.id === selectedId) || iterations.find((i) => i.status === "Completed") || iterations[0];

  const progress = h("div", { class: "train-progress", id: "train-progress", "aria-live": "polite" });
  const list = h("ul", { class: "iteration-list", id: "iteration-list", "aria-label": "Iterations" });
  const detail = h("div", { class: "grow iteration-detail", id: "iteration-detail" });
  fill(page, trainPanel(ctx, progress), h("div", { class: "with-sidebar" }, h("aside", { class: "sidebar" }, h("h2", {}, "Iterations"), list), detail));

  if (!iterations.length) {
    fill(list, h("li", { class: "muted small" }, "None yet."));
    fill(detail, h("div", { class: "empty" }, h("p", {}, "Train to make the first iteration: quick training takes a minute or so on a laptop.")));
  } else {
    fill(list, iterations.map((it) => h("li", {},
      h("a", { href: `#/projects/${project.id}/train/${it.id}`, class: it === chosen ? "filter active" : "filter", "aria-current": it === chosen ? "true" : null, dataset: { iterationId: it.id } },
        h("span", {}, it.name), h("span", { class: `status status-${String(it.status).toLowerCase()}` }, it.status),
        it.publishName ? h("span", { class: "badge published" }, "published") : null))));
  }
  for (const it of iterations.filter((i) => i.status === "Training")) watch(ctx, it, progress);
  if (chosen) await showIteration(ctx, chosen, detail);
}

function trainPanel(ctx, progress) {
  const { project } = ctx;
  const quick = h("button", { type: "button", class: "primary", id: "train-quick" }, "Quick training");
  const budget = h("input", { type: "number", id: "budget", min: 1, max: 96, step: 1, value: 1 });
  const advanced = h("button", { type: "button", id: "train-advanced" }, "Advanced training");
  const force = h("input", { type: "checkbox", id: "force-train" });
  // Classifiers: a quick iteration whose int8 TFLite export agrees with it (edgevision train --int8-ready).
  const int8 = ctx.kind === "detection" ? null : h("input", { type: "checkbox", id: "int8-ready" });
  const start = (button, query) => busy(button, async () => {
    const iteration = await api.post(`/projects/${project.id}/train`, { ...query, forceTrain: force.checked ? "true" : undefined });
    notify(`Training ${iteration.name}…`);
    ctx.navigate(`#/projects/${project.id}/train/${iteration.id}`);
  });
  quick.addEventListener("click", () => start(quick, { trainingType: "Regular", edgevisionInt8Ready: int8 && int8.checked ? "true" : undefined }));
  advanced.addEventListener("click", () => start(advanced, { trainingType: "Advanced", reservedBudgetInHours: budget.value }));
  return h("section", { class: "panel train", "aria-label": "Train" },
    h("div", { class: "toolbar" },
      quick,
      int8 ? h("label", { class: "check", title: "Weights on the int8 grid and a head fitted on int8 features: for int8 TFLite exports. About 40 s more." }, int8, " int8-ready") : null,
      h("span", { class: "muted" }, "or"),
      h("label", { for: "budget" }, "Advanced, with a budget of"), budget, h("span", {}, "hours"), advanced,
      h("label", { class: "check" }, force, " Train even if the images did not change")),
    progress);
}

/** Poll a training iteration until it completes or fails, showing its progress; then reload the page. */
function watch(ctx, iteration, progress) {
  const { project } = ctx;
  const bar = h("progress", { "aria-label": `Training progress of ${iteration.name}` });
  const text = h("span", { class: "progress-stage" }, "Starting…");
  const row = h("div", { class: "progress-row", dataset: { iterationId: iteration.id } }, h("strong", {}, iteration.name), " ", bar, " ", text);
  progress.append(row);
  let timer = null;
  const show = (it) => {
    const p = it.edgevisionProgress;
    if (p && p.total) {
      bar.max = p.total;
      bar.value = p.done || 0;
      text.textContent = `${p.stage || "training"} · ${p.done || 0} / ${p.total}`;
    } else {
      bar.removeAttribute("value");
      text.textContent = p && p.stage ? p.stage : "Training…";
    }
  };
  show(iteration);
  const poll = async () => {
    try {
      const it = await api.get(`/projects/${project.id}/iterations/${iteration.id}`);
      if (!ctx.current()) return;
      if (it.status === "Training") {
        show(it);
        timer = setTimeout(poll, POLL_MS);
        return;
      }
      if (it.status === "Completed") notify(`${it.name} is trained.`);
      else notify(`${it.name} failed: ${it.trainingErrorDetails || it.status}`, "error");
      ctx.navigate(`#/projects/${project.id}/train/${it.id}`);
    } catch (error) {
      text.textContent = `Lost track of the training: ${error.message}`;
      timer = setTimeout(poll, POLL_MS * 3);
    }
  };
  timer = setTimeout(poll, POLL_MS);
  ctx.onLeave(() => clearTimeout(timer));
}

async function showIteration(ctx, iteration, detail) {
  const { project } = ctx;
  const detection = ctx.kind === "detection";
  const head = h("div", { class: "title-row" },
    h("h2", {}, iteration.name),
    h("span", { class: `status status-${String(iteration.status).toLowerCase()}` }, iteration.status),
    iteration.publishName ? h("span", { class: "badge published", id: "published-as" }, `Published as ${iteration.publishName}`) : null);
  const facts = h("p", { class: "muted small" },
    [`${iteration.trainingType === "Advanced" ? `Advanced (${iteration.reservedBudgetInHours} h budget)` : "Quick"}${iteration.edgevisionInt8Ready ? " int8-ready" : ""} training`,
      iteration.trainedAt ? `trained ${when(iteration.trainedAt)}` : `started ${when(iteration.created)}`,
      iteration.trainingTimeInMinutes ? `${iteration.trainingTimeInMinutes} min` : null].filter(Boolean).join(" · "));
  fill(detail, head, facts);
  if (iteration.status === "Failed") {
    detail.append(h("p", { class: "warn" }, iteration.trainingErrorDetails || "The training failed."), actions(ctx, iteration));
    return;
  }
  if (iteration.status !== "Completed") {
    detail.append(h("p", { class: "muted" }, "Still training: the figures appear when it is done."));
    return;
  }
  const threshold = h("input", { type: "range", id: "threshold", min: 0, max: 1, step: 0.01, value: 0.5 });
  const thresholdOut = h("output", { for: "threshold", id: "threshold-value" }, "50%");
  const overlap = detection ? h("input", { type: "range", id: "overlap", min: 0.05, max: 0.95, step: 0.05, value: 0.3 }) : null;
  const overlapOut = detection ? h("output", { for: "overlap", id: "overlap-value" }, "30%") : null;
  const summary = h("div", { class: "metrics", id: "metrics", "aria-live": "polite" });
  const table = h("table", { class: "perf", id: "perf-table" });
  detail.append(
    h("div", { class: "sliders" },
      h("label", { for: "threshold" }, "Probability threshold"), threshold, thresholdOut,
      detection ? [h("label", { for: "overlap" }, "Overlap threshold (IoU)"), overlap, overlapOut] : null),
    summary, table, actions(ctx, iteration));

  let sequence = 0;
  let timer = null;
  const load = async () => {
    const mine = ++sequence;
    thresholdOut.textContent = pct(Number(threshold.value)).replace(".0%", "%");
    if (overlap) overlapOut.textContent = pct(Number(overlap.value)).replace(".0%", "%");
    detail.classList.add("loading");
    try {
      const perf = await api.get(`/projects/${project.id}/iterations/${iteration.id}/performance`, {
        threshold: threshold.value, overlapThreshold: overlap ? overlap.value : undefined,
      });
      if (mine !== sequence || !ctx.current()) return;
      showPerformance(perf, summary, table, detection);
    } catch (error) {
      if (mine === sequence) fill(summary, h("p", { class: "warn" }, error.message));
    } finally {
      if (mine === sequence) detail.classList.remove("loading");
    }
  };
  const soon = () => { clearTimeout(timer); timer = setTimeout(load, 120); };
  threshold.addEventListener("input", soon);
  if (overlap) overlap.addEventListener("input", soon);
  ctx.onLeave(() => clearTimeout(timer));
  await load();
}

function showPerformance(perf, summary, table, detection) {
  const metric = (label, value, id) => h("div", { class: "metric", id }, h("span", { class: "metric-value" }, pct(value)), h("span", { class: "metric-label" }, label));
  fill(summary,
    metric("Precision", perf.precision, "metric-precision"),
    metric("Recall", perf.recall, "metric-recall"),
    metric(detection ? "mAP" : "AP", perf.averagePrecision, "metric-ap"));
  const rows = perf.perTagPerformance || [];
  fill(table,
    h("caption", {}, "Per tag"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Tag"), h("th", { scope: "col" }, "Precision"), h("th", { scope: "col" }, "Recall"), h("th", { scope: "col" }, detection ? "AP" : "A.P."))),
    h("tbody", {}, rows.map((t) => h("tr", { dataset: { tag: t.name } },
      h("th", { scope: "row" }, t.name),
      h("td", { class: "precision" }, pct(t.precision)),
      h("td", { class: "recall" }, pct(t.recall)),
      h("td", { class: "ap" }, pct(t.averagePrecision))))));
}

function actions(ctx, iteration) {
  const { project } = ctx;
  const name = h("input", { id: "publish-name", value: iteration.publishName || iteration.name.replace(/\s+/g, ""), maxlength: 100, autocomplete: "off" });
  const publish = h("button", { type: "submit", class: "primary", id: "publish" }, iteration.publishName ? "Publish again" : "Publish");
  const unpublish = h("button", { type: "button", id: "unpublish", disabled: !iteration.publishName }, "Unpublish");
  const remove = h("button", { type: "button", class: "danger", id: "delete-iteration" }, "Delete iteration");
  const form = h("form", { class: "toolbar publish" },
    h("label", { for: "publish-name" }, "Publish as"), name, publish, unpublish, remove);
  const base = `/projects/${project.id}/iterations/${iteration.id}`;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(publish, async () => {
      if (iteration.publishName) await api.del(`${base}/publish`);
      // predictionId names a prediction resource on the hosted service; this server has its own.
      await api.post(`${base}/publish`, { publishName: name.value.trim(), predictionId: "local" });
      notify(`Published ${iteration.name} as ${name.value.trim()}.`);
      ctx.navigate(`#/projects/${project.id}/train/${iteration.id}?published=${Date.now()}`);
    });
  });
  unpublish.addEventListener("click", () => busy(unpublish, async () => {
    await api.del(`${base}/publish`);
    notify(`Unpublished ${iteration.name}.`);
    ctx.navigate(`#/projects/${project.id}/train/${iteration.id}?unpublished=${Date.now()}`);
  }));
  remove.addEventListener("click", () => busy(remove, async () => {
    if (!(await confirmDialog(`Delete ${iteration.name} and its exports?`))) return;
    await api.del(base);
    notify(`Deleted ${iteration.name}.`);
    ctx.navigate(`#/projects/${project.id}/train`);
  }));
  const kind = ctx.kind === "detection" ? "detect" : "classify";
  return h("section", { class: "panel", "aria-label": "Publish" },
    h("h3", {}, "Publish"),
    form,
    iteration.publishName ? h("p", { class: "muted small", id: "prediction-url" }, "Prediction URL: ",
      h("code", {}, `${location.origin}/customvision/v3.0/Prediction/${project.id}/${kind}/iterations/${iteration.publishName}/image`)) : null);
}
