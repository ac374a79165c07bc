// One image of a project: its tags (classification) or its boxes (detection, drawn with BoxEditor).

import * as api from "./api.js";
import { BoxEditor } from "./boxes.js";
import { busy, confirmDialog, fill, fitStage, h, notify, showError, when } from "./ui.js";

export async function imagePage(page, ctx, imageId) {
  const { project } = ctx;
  const found = await api.get(`/projects/${project.id}/images/id`, { imageIds: imageId });
  if (!ctx.current()) return;
  const image = Array.isArray(found) ? found[0] : null;
  if (!image) {
    fill(page, h("p", {}, "This image is not in the project any more. ", h("a", { href: `#/projects/${project.id}` }, "Back to the images")));
    return;
  }
  const side = h("aside", { class: "panel editor-side", "aria-label": "Image details" });
  const holder = h("div", { class: "editor-main" });
  fill(page, navRow(ctx, image), h("div", { class: "editor" }, holder, side));
  if (ctx.kind === "detection") detectionEditor(ctx, image, holder, side);
  else classificationEditor(ctx, image, holder, side);
}

function navRow(ctx, image) {
  const { project } = ctx;
  let ids = [];
  try {
    const grid = JSON.parse(sessionStorage.getItem("edgevision-grid") || "{}");
    if (grid.project === project.id) ids = grid.ids || [];
  } catch { /* no grid remembered */ }
  const at = ids.indexOf(image.id);
  const link = (offset, label, rel) => (at >= 0 && ids[at + offset]
    ? h("a", { href: `#/projects/${project.id}/images/${ids[at + offset]}`, class: "button", rel }, label)
    : h("span", { class: "button disabled", "aria-disabled": "true" }, label));
  const remove = h("button", { type: "button", class: "danger" }, "Delete image");
  remove.addEventListener("click", () => busy(remove, async () => {
    if (!(await confirmDialog("Delete this image from the project?"))) return;
    await api.del(`/projects/${project.id}/images`, { imageIds: [image.id] });
    notify("Deleted the image.");
    ctx.navigate(ids[at + 1] ? `#/projects/${project.id}/images/${ids[at + 1]}` : `#/projects/${project.id}`);
  }));
  return h("div", { class: "toolbar" },
    h("a", { href: `#/projects/${project.id}`, class: "button" }, "← All images"),
    link(-1, "‹ Previous", "prev"), link(1, "Next ›", "next"),
    h("span", { class: "muted small grow" }, `${image.width}×${image.height} px · added ${when(image.created)}`),
    remove);
}

function detectionEditor(ctx, image, holder, side) {
  const { project } = ctx;
  const tagSelect = h("select", { id: "box-tag" });
  const newTag = h("input", { id: "box-new-tag", placeholder: "New tag", autocomplete: "off", maxlength: 256 });
  const addTag = h("button", { type: "submit" }, "Add");
  const list = h("ol", { class: "box-list", id: "box-list", "aria-label": "Boxes on this image" });

  const fillTags = (selected) => {
    fill(tagSelect, ctx.tags.map((t) => h("option", { value: t.id, selected: t.id === selected }, t.name)));
  };
  fillTags();

  const createRegion = async (box) => {
    const summary = await api.post(`/projects/${project.id}/images/regions`, {}, {
      regions: [{ imageId: image.id, tagId: box.tagId, left: box.left, top: box.top, width: box.width, height: box.height }],
    });
    const created = summary && summary.created && summary.created[0];
    if (!created) {
      const why = summary && summary.exceeded && summary.exceeded.length ? "this image has too many boxes"
        : summary && summary.duplicated && summary.duplicated.length ? "the same box is already there" : "the API created no region";
      throw new Error(`Could not add the box: ${why}.`);
    }
    return { ...created, id: created.regionId };
  };
  const deleteRegion = (box) => api.del(`/projects/${project.id}/images/regions`, { regionIds: [box.regionId || box.id] });

  const editor = new BoxEditor({
    imageUrl: image.resizedImageUri || image.originalImageUri,
    alt: "The image: drag on it to draw a box",
    boxes: (image.regions || []).map((r) => ({ ...r, id: r.regionId })),
    tagFor: () => {
      const tag = ctx.tags.find((t) => t.id === tagSelect.value);
      if (!tag) notify("Add a tag first (on the right), then draw boxes with it.", "error");
      return tag || null;
    },
    create: createRegion,
    // A region cannot be edited in place: a move, resize or retag is a delete and a create.
    update: async (old, box) => {
      await deleteRegion(old);
      try {
        return await createRegion(box);
      } catch (error) {
        await createRegion(old).catch(() => {});
        throw error;
      }
    },
    remove: deleteRegion,
    onChange: () => renderList(),
    onError: showError,
  });
  holder.append(editor.element);

  function renderList() {
    if (!editor.boxes.length) {
      fill(list, h("li", { class: "muted small" }, "No boxes yet: drag on the image to draw one."));
      return;
    }
    fill(list, editor.boxes.map((box, index) => {
      const select = h("select", { "aria-label": `Tag of box ${index + 1}` },
        ctx.tags.map((t) => h("option", { value: t.id, selected: t.id === box.tagId }, t.name)));
      select.addEventListener("change", () => editor.retag(index, ctx.tags.find((t) => t.id === select.value)));
      return h("li", { class: index === editor.selected ? "selected" : "" },
        select,
        h("button", { type: "button", class: "quiet", "aria-label": `Select box ${index + 1}`, onclick: () => editor.select(index) }, "Select"),
        h("button", { type: "button", class: "quiet danger-text", "aria-label": `Delete box ${index + 1}`, onclick: () => editor.delete(index) }, "Delete"));
    }));
  }
  renderList();

  const tagForm = h("form", { class: "inline" }, h("label", { for: "box-new-tag", class: "sr-only" }, "New tag"), newTag, addTag);
  tagForm.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(addTag, async () => {
      const tag = await api.post(`/projects/${project.id}/tags`, { name: newTag.value.trim() });
      newTag.value = "";
      await ctx.refreshTags();
      fillTags(tag.id);
      renderList();
    });
  });
  fill(side,
    h("h2", {}, "Boxes"),
    h("label", { for: "box-tag" }, "Tag for new boxes"), tagSelect, tagForm,
    h("p", { class: "muted small" }, "Drag on the image to draw a box; drag a box to move it, its corner to resize it. ",
      "Tab to a box, then arrows move it and Delete removes it."),
    list);
}

function classificationEditor(ctx, image, holder, side) {
  const { project } = ctx;
  const current = new Set((image.tags || []).map((t) => t.tagId));
  const img = h("img", { src: image.resizedImageUri || image.originalImageUri, alt: "The image" });
  const stage = h("div", { class: "stage" }, img);
  holder.append(stage);
  fitStage(stage, img);
  const boxes = h("fieldset", { class: "image-tags", id: "image-tags" }, h("legend", {}, "Tags of this image"));
  for (const tag of ctx.tags) {
    const box = h("input", { type: ctx.kind === "multiclass" ? "checkbox" : "checkbox", value: tag.id, checked: current.has(tag.id) });
    box.addEventListener("change", () => busy(box, async () => {
      try {
        if (box.checked) {
          if (ctx.kind === "multiclass") {
            // One tag per image: take the others off first.
            const others = [...current].filter((id) => id !== tag.id);
            if (others.length) await api.del(`/projects/${project.id}/images/tags`, { imageIds: [image.id], tagIds: others });
            others.forEach((id) => current.delete(id));
            for (const other of boxes.querySelectorAll("input")) if (other !== box) other.checked = false;
          }
          await api.post(`/projects/${project.id}/images/tags`, {}, { tags: [{ imageId: image.id, tagId: tag.id }] });
          current.add(tag.id);
        } else {
          await api.del(`/projects/${project.id}/images/tags`, { imageIds: [image.id], tagIds: [tag.id] });
          current.delete(tag.id);
        }
      } catch (error) {
        box.checked = current.has(tag.id);
        throw error;
      }
    }));
    boxes.append(h("label", { class: "check" }, box, ` ${tag.name}`));
  }
  if (!ctx.tags.length) boxes.append(h("p", { class: "muted small" }, "No tags yet: add them on the images page."));
  fill(side, h("h2", {}, "Tags"), boxes,
    ctx.kind === "multiclass" ? h("p", { class: "muted small" }, "Multiclass: an image has one tag.") : null);
}
