// Quick test: drop an image, see the chosen iteration's tags with probabilities, or its boxes.

import * as api from "./api.js";
import { BoxEditor } from "./boxes.js";
import { dropZone, fill, fitStage, h, isImage, pct, showError } from "./ui.js";

export async function quickTestPage(page, ctx) {
  const { project } = ctx;
  const iterations = (await api.get(`/projects/${project.id}/iterations`)).filter((i) => i.status === "Completed");
  if (!ctx.current()) return;
  if (!iterations.length) {
    fill(page, h("div", { class: "empty" }, h("p", {}, "Train an iteration first: the quick test runs one. "),
      h("a", { href: `#/projects/${project.id}/train`, class: "button primary" }, "Go to training")));
    return;
  }
  iterations.sort((a, b) => String(b.created).localeCompare(String(a.created)));
  const iteration = h("select", { id: "test-iteration" }, iterations.map((i) => h("option", { value: i.id }, `${i.name}${i.publishName ? ` (${i.publishName})` : ""}`)));
  const store = h("input", { type: "checkbox", id: "test-store" });
  const threshold = h("input", { type: "range", id: "test-threshold", min: 0, max: 1, step: 0.01, value: ctx.kind === "detection" ? 0.3 : 0 });
  const thresholdOut = h("output", { for: "test-threshold" });
  const file = h("input", { type: "file", id: "test-file", accept: "image/*", class: "sr-only" });
  const zone = h("div", { class: "dropzone", id: "test-dropzone", tabindex: "0", role: "button", "aria-label": "Drop an image to test, or press Enter to choose one" },
    h("strong", {}, "Drop an image to test"), h("span", { class: "muted" }, " or "),
    h("label", { for: "test-file", class: "button" }, "Choose an image…"));
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); file.click(); } });
  const result = h("div", { class: "test-result", id: "test-result", "aria-live": "polite" });
  fill(page,
    h("section", { class: "panel", "aria-label": "Quick test" },
      h("div", { class: "toolbar" },
        h("label", { for: "test-iteration" }, "Iteration"), iteration,
        h("label", { class: "check" }, store, " Save the image to the predictions for review"),
        h("label", { for: "test-threshold" }, "Show from"), threshold, thresholdOut),
      zone, file),
    result);

  let last = null;
  const show = () => {
    thresholdOut.textContent = pct(Number(threshold.value)).replace(".0%", "%");
    if (last) render(ctx, last, result, Number(threshold.value));
  };
  threshold.addEventListener("input", show);
  show();

  const run = async (picked) => {
    fill(result, h("p", { class: "muted" }, `Testing ${picked.name}…`));
    try {
      const prediction = await api.upload(`/projects/${project.id}/quicktest/image`, [picked], {
        iterationId: iteration.value, store: store.checked ? "true" : "false",
      });
      if (last && last.url) URL.revokeObjectURL(last.url);
      last = { prediction, url: URL.createObjectURL(picked), name: picked.name };
      show();
    } catch (error) {
      fill(result, h("p", { class: "warn" }, error.message));
      showError(error);
    }
  };
  dropZone(zone, (files) => run(files[0].file));
  file.addEventListener("change", () => {
    const picked = [...file.files].find(isImage);
    file.value = "";
    if (picked) run(picked);
  });
}

function render(ctx, { prediction, url, name }, result, threshold) {
  const predictions = [...(prediction.predictions || [])].sort((a, b) => b.probability - a.probability);
  if (ctx.kind === "detection") {
    const shown = predictions.filter((p) => p.boundingBox && p.probability >= threshold);
    const editor = new BoxEditor({
      imageUrl: url, alt: `Tested image ${name}`, readOnly: true, maxHeight: 480,
      boxes: shown.map((p) => ({ ...p.boundingBox, tagName: p.tagName, tagId: p.tagId, probability: p.probability })),
    });
    fill(result, h("div", { class: "editor" }, h("div", { class: "editor-main" }, editor.element),
      h("aside", { class: "panel editor-side" }, h("h2", {}, "Objects"), predictionList(shown),
        h("p", { class: "muted small" }, `${shown.length} of ${predictions.length} boxes at or above ${pct(threshold)}.`))));
    return;
  }
  const shown = predictions.filter((p) => p.probability >= threshold);
  const img = h("img", { src: url, alt: `Tested image ${name}` });
  const stage = h("div", { class: "stage" }, img);
  fill(result, h("div", { class: "editor" },
    h("div", { class: "editor-main" }, stage),
    h("aside", { class: "panel editor-side" }, h("h2", {}, "Tags"), predictionList(shown))));
  fitStage(stage, img, 480);
}

export function predictionList(predictions) {
  if (!predictions.length) return h("p", { class: "muted small" }, "Nothing above the threshold.");
  return h("ul", { class: "predictions" }, predictions.map((p) => h("li", { dataset: { tag: p.tagName } },
    h("span", { class: "tag-name" }, p.tagName),
    h("meter", { min: 0, max: 1, value: p.probability, "aria-label": `${p.tagName} probability` }),
    h("span", { class: "probability" }, pct(p.probability)))));
}
