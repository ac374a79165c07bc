// Predictions review: images a prediction server stored, most unsure first; tag them (or confirm and
// adjust their boxes) and add them to the training set, or delete them.

import * as api from "./api.js";
import { BoxEditor } from "./boxes.js";
import { busy, fill, fitStage, h, notify, pct, when } from "./ui.js";
import { predictionList } from "./quicktest.js";

const PAGE = 24;

export async function predictionsPage(page, ctx) {
  const { project } = ctx;
  const iterations = await api.get(`/projects/${project.id}/iterations`);
  if (!ctx.current()) return;
  const iteration = h("select", { id: "review-iteration" }, h("option", { value: "" }, "All iterations"),
    iterations.filter((i) => i.status === "Completed").map((i) => h("option", { value: i.id }, i.name)));
  const order = h("select", { id: "review-order" },
    h("option", { value: "Suggested" }, "Most unsure first"),
    h("option", { value: "Newest" }, "Newest first"),
    h("option", { value: "Oldest" }, "Oldest first"));
  const threshold = h("input", { type: "range", id: "review-threshold", min: 0, max: 1, step: 0.05, value: 0.5 });
  const thresholdOut = h("output", { for: "review-threshold" }, "50%");
  const list = h("ul", { class: "review-list", id: "review-list", "aria-label": "Stored predictions" });
  const more = h("button", { type: "button", class: "quiet", hidden: true }, "Show more");
  fill(page,
    h("section", { class: "panel", "aria-label": "Review options" },
      h("div", { class: "toolbar" },
        h("label", { for: "review-iteration" }, "Iteration"), iteration,
        h("label", { for: "review-order" }, "Order"), order,
        h("label", { for: "review-threshold" }, "Pre-select predictions from"), threshold, thresholdOut),
      h("p", { class: "muted small" }, "Images sent to a prediction route of this server (or quick-tested with “save”) land here. ",
        "Check their tags or boxes, then add them to the training set to improve the next iteration.")),
    list, h("div", { class: "center" }, more));

  let token = null;
  const load = async (reset) => {
    if (reset) {
      token = null;
      fill(list);
    }
    const query = token ? { ...token, maxCount: PAGE } : {
      orderBy: order.value, maxCount: PAGE, iterationId: iteration.value || undefined,
    };
    const answer = await api.post(`/projects/${project.id}/predictions/query`, {}, query);
    if (!ctx.current()) return;
    const results = (answer && answer.results) || [];
    token = answer && answer.token && answer.token.continuation ? answer.token : null;
    more.hidden = !token;
    list.append(...results.map((stored) => reviewItem(ctx, stored, Number(threshold.value), () => {
      if (!list.querySelector(".review-item")) fill(list, h("li", { class: "empty" }, "Nothing left to review."));
    })));
    if (!list.children.length) fill(list, h("li", { class: "empty" }, "No stored predictions. Publish an iteration and send images to its prediction URL, or use the quick test with “save”."));
  };
  const reload = () => load(true).catch((error) => fill(list, h("li", { class: "warn" }, error.message)));
  iteration.addEventListener("change", reload);
  order.addEventListener("change", reload);
  threshold.addEventListener("change", reload);
  threshold.addEventListener("input", () => { thresholdOut.textContent = pct(Number(threshold.value)).replace(".0%", "%"); });
  more.addEventListener("click", () => busy(more, () => load(false)));
  await load(true);
}

function reviewItem(ctx, stored, threshold, emptied) {
  const { project } = ctx;
  const predictions = [...(stored.predictions || [])].sort((a, b) => b.probability - a.probability);
  const detection = ctx.kind === "detection";
  const imageUrl = stored.resizedImageUri || stored.originalImageUri || stored.thumbnailUri;
  const add = h("button", { type: "button", class: "primary add-to-training" }, "Add to training set");
  const remove = h("button", { type: "button", class: "danger delete-prediction" }, "Delete");
  const controls = h("div", { class: detection ? "review-controls" : "review-controls two" });
  let picture;
  let gather;

  if (detection) {
    let tagSelect;
    const editor = new BoxEditor({
      imageUrl, alt: "Stored prediction image: drag to draw a box", maxHeight: 320,
      boxes: predictions.filter((p) => p.boundingBox && p.probability >= threshold)
        .map((p) => ({ ...p.boundingBox, tagId: p.tagId, tagName: p.tagName, probability: p.probability })),
      tagFor: () => ctx.tags.find((t) => t.id === tagSelect.value) || null,
      onChange: () => fill(count, `${editor.boxes.length} box${editor.boxes.length === 1 ? "" : "es"} will be added`),
    });
    tagSelect = h("select", { "aria-label": "Tag for new boxes" }, ctx.tags.map((t) => h("option", { value: t.id }, t.name)));
    const count = h("span", { class: "muted small" }, `${editor.boxes.length} box${editor.boxes.length === 1 ? "" : "es"} will be added`);
    picture = editor.element;
    controls.append(h("label", {}, "Tag for new boxes ", tagSelect), count,
      h("p", { class: "muted small" }, "Drag to draw a missing box, drag a box to move it, select one and press Delete to drop it."));
    gather = () => ({ regions: editor.boxes.map((b) => ({ tagId: b.tagId, left: b.left, top: b.top, width: b.width, height: b.height })) });
  } else {
    const top = predictions[0];
    const chosen = new Set(ctx.kind === "multiclass" ? (top && top.probability >= threshold ? [top.tagId] : [])
      : predictions.filter((p) => p.probability >= threshold).map((p) => p.tagId));
    const boxes = h("fieldset", { class: "image-tags" }, h("legend", {}, "Tags to add"),
      ctx.tags.map((t) => h("label", { class: "check" },
        h("input", { type: ctx.kind === "multiclass" ? "radio" : "checkbox", name: `tags-${stored.id}`, value: t.id, checked: chosen.has(t.id) }), ` ${t.name}`)));
    const img = h("img", { src: imageUrl, alt: "Stored prediction image" });
    picture = h("div", { class: "stage" }, img);
    fitStage(picture, img, 320);
    controls.append(h("div", {}, h("h3", {}, "Predicted"), predictionList(predictions.slice(0, 5))), boxes);
    gather = () => ({ tagIds: [...boxes.querySelectorAll("input:checked")].map((b) => b.value) });
  }

  const item = h("li", { class: "review-item", dataset: { predictionId: stored.id } },
    h("div", { class: "review-image" }, picture),
    h("div", { class: "review-side" },
      h("p", { class: "muted small" }, [when(stored.created), typeof stored.edgevisionUncertainty === "number" ? `uncertainty ${pct(stored.edgevisionUncertainty)}` : null]
        .filter(Boolean).join(" · ")),
      controls,
      h("div", { class: "toolbar" }, add, remove)));

  const gone = (message) => {
    item.remove();
    notify(message);
    emptied();
  };
  add.addEventListener("click", () => busy(add, async () => {
    const entry = { id: stored.id, ...gather() };
    if (!detection && !entry.tagIds.length) throw new Error("Choose at least one tag for this image first.");
    if (detection && !entry.regions.length) throw new Error("Keep or draw at least one box first.");
    const summary = await api.post(`/projects/${project.id}/images/predictions`, {}, { images: [entry] });
    const result = summary && summary.images && summary.images[0];
    const status = result ? String(result.status || "") : "OK";
    if (!/^OK/i.test(status)) throw new Error(`Not added: ${(result && result.edgevisionMessage) || status}`);
    // The hosted portal moves a reviewed image out of the predictions: drop the stored copy too.
    await api.del(`/projects/${project.id}/predictions`, { ids: [stored.id] }).catch(() => {});
    gone(/duplicate/i.test(status) ? "That image was already in the training set; removed it from the predictions."
      : "Added the image to the training set.");
  }));
  remove.addEventListener("click", () => busy(remove, async () => {
    await api.del(`/projects/${project.id}/predictions`, { ids: [stored.id] });
    gone("Deleted the stored prediction.");
  }));
  return item;
}
