// A project's images: tag filters, the grid, uploads (drop, files, folder) and tagging several at once.

import * as api from "./api.js";
import { busy, confirmDialog, dropZone, fill, folderOf, h, isImage, notify, showError } from "./ui.js";

const PAGE = 96;
const UPLOAD_BATCH = 32;

export async function imagesPage(page, ctx) {
  const { project } = ctx;
  const filter = ctx.query.tag || "all"; // "all", "untagged" or a tag id
  const state = { images: [], selected: new Set(), sources: [], source: 0, skip: 0, done: false };

  const sidebar = h("aside", { class: "sidebar", "aria-label": "Tag filters" });
  const grid = h("ul", { class: "grid", id: "image-grid", "aria-label": "Images" });
  const more = h("button", { type: "button", class: "quiet", hidden: true }, "Show more images");
  const toolbar = h("div", { class: "toolbar selection-bar", id: "selection-bar", role: "region", "aria-label": "Selected images" });
  const uploader = uploadPanel(ctx, () => reload());
  fill(page, h("div", { class: "with-sidebar" }, sidebar,
    h("div", { class: "grow" }, uploader, toolbar, grid, h("div", { class: "center" }, more))));

  async function reload() {
    await ctx.refreshTags();
    if (!ctx.current()) return;
    await renderSidebar();
    state.images = [];
    state.selected.clear();
    state.source = 0;
    state.skip = 0;
    state.done = false;
    const untagged = { path: `/projects/${project.id}/images/untagged`, query: { orderBy: "Newest" } };
    const tagged = { path: `/projects/${project.id}/images/tagged`, query: { orderBy: "Newest" } };
    if (filter === "untagged") state.sources = [untagged];
    else if (filter === "all") state.sources = [tagged, untagged];
    else state.sources = [{ ...tagged, query: { orderBy: "Newest", tagIds: filter } }];
    fill(grid);
    await loadMore();
  }

  async function loadMore() {
    let got = 0;
    while (!state.done && got < PAGE) {
      const source = state.sources[state.source];
      const take = PAGE - got;
      const batch = await api.get(source.path, { ...source.query, take, skip: state.skip });
      if (!ctx.current()) return;
      state.images.push(...batch);
      grid.append(...batch.map(tile));
      got += batch.length;
      if (batch.length < take) {
        state.source += 1;
        state.skip = 0;
        state.done = state.source >= state.sources.length;
      } else {
        state.skip += batch.length;
      }
    }
    more.hidden = state.done;
    if (!state.images.length) {
      fill(grid, h("li", { class: "empty wide" }, filter === "untagged" ? "No untagged images."
        : "No images here yet: drop some on the box above, or choose files or a folder."));
    }
    try {
      sessionStorage.setItem("edgevision-grid", JSON.stringify({ project: project.id, ids: state.images.map((i) => i.id) }));
    } catch { /* prev/next links are a nicety */ }
    renderToolbar();
  }
  more.addEventListener("click", () => busy(more, loadMore));

  async function renderSidebar() {
    let counts = { tagged: null, untagged: null };
    try {
      const [tagged, untagged] = await Promise.all([
        api.get(`/projects/${project.id}/images/tagged/count`),
        api.get(`/projects/${project.id}/images/untagged/count`),
      ]);
      counts = { tagged, untagged };
    } catch {
      /* counts are a nicety */
    }
    const link = (value, label, count) => h("a", {
      href: `#/projects/${project.id}${value === "all" ? "" : `?tag=${encodeURIComponent(value)}`}`,
      class: filter === value ? "filter active" : "filter",
      "aria-current": filter === value ? "true" : null,
      dataset: { filter: value },
    }, h("span", {}, label), count === null || count === undefined ? null : h("span", { class: "count" }, String(count)));
    const total = counts.tagged === null ? null : counts.tagged + counts.untagged;
    const newTag = h("input", { id: "new-tag", placeholder: "New tag name", autocomplete: "off", required: true, maxlength: 256 });
    const addTag = h("button", { type: "submit" }, "Add");
    const tagForm = h("form", { class: "inline", "aria-label": "Add a tag" },
      h("label", { for: "new-tag", class: "sr-only" }, "New tag name"), newTag, addTag);
    tagForm.addEventListener("submit", (event) => {
      event.preventDefault();
      busy(addTag, async () => {
        await api.post(`/projects/${project.id}/tags`, { name: newTag.value.trim() });
        notify(`Added the tag ${newTag.value.trim()}.`);
        newTag.value = "";
        await ctx.refreshTags();
        await renderSidebar();
        renderToolbar();
        uploader.refresh();
      });
    });
    fill(sidebar,
      h("h2", {}, "Filter"),
      h("nav", { class: "filters", "aria-label": "Image filters" },
        link("all", "All images", total),
        link("untagged", "Untagged", counts.untagged),
        ctx.tags.map((tag) => h("div", { class: "filter-row" },
          link(tag.id, tag.name, tag.imageCount),
          h("button", {
            type: "button", class: "quiet icon", title: `Delete the tag ${tag.name}`, "aria-label": `Delete the tag ${tag.name}`,
            onclick: async (event) => {
              if (!(await confirmDialog(`Delete the tag “${tag.name}”? Images keep their other tags.`))) return;
              await busy(event.target, async () => {
                await api.del(`/projects/${project.id}/tags/${tag.id}`);
                if (filter === tag.id) ctx.navigate(`#/projects/${project.id}`);
                else await reload();
              });
            },
          }, "×")))),
      h("h2", {}, "Tags"), tagForm);
  }

  function tile(image) {
    const names = ctx.kind === "detection"
      ? [...new Set((image.regions || []).map((r) => r.tagName))]
      : (image.tags || []).map((t) => t.tagName);
    const label = `Select image ${image.id.slice(0, 8)}`;
    const box = h("input", { type: "checkbox", class: "pick", "aria-label": label, dataset: { imageId: image.id } });
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(image.id);
      else state.selected.delete(image.id);
      item.classList.toggle("selected", box.checked);
      renderToolbar();
    });
    const item = h("li", { class: "tile", dataset: { imageId: image.id } },
      box,
      h("a", { href: `#/projects/${project.id}/images/${image.id}`, class: "thumb", title: "Open this image" },
        h("img", { src: image.thumbnailUri, alt: names.length ? `Image tagged ${names.join(", ")}` : "Untagged image", loading: "lazy" })),
      h("div", { class: "chips" }, names.length ? names.map((n) => h("span", { class: "chip" }, n))
        : h("span", { class: "chip muted" }, "untagged"),
      ctx.kind === "detection" && image.regions && image.regions.length ? h("span", { class: "chip count" }, `${image.regions.length} box${image.regions.length > 1 ? "es" : ""}`) : null));
    return item;
  }

  function renderToolbar() {
    const count = state.selected.size;
    const selectAll = h("button", { type: "button", class: "quiet" }, count === state.images.length && count ? "Clear selection" : "Select all");
    selectAll.addEventListener("click", () => {
      const all = !(count === state.images.length && count);
      state.selected = new Set(all ? state.images.map((i) => i.id) : []);
      for (const box of grid.querySelectorAll("input.pick")) {
        box.checked = all;
        box.closest(".tile").classList.toggle("selected", all);
      }
      renderToolbar();
    });
    const parts = [h("span", { class: "count", id: "selected-count" }, `${count} selected`), selectAll];
    if (count) {
      const tagSelect = h("select", { id: "bulk-tag", "aria-label": "Tag for the selected images" },
        ctx.tags.map((t) => h("option", { value: t.id }, t.name)));
      const add = h("button", { type: "button", class: "primary", id: "bulk-add" }, "Add tag");
      const remove = h("button", { type: "button", id: "bulk-remove" }, "Remove tag");
      const remove_images = h("button", { type: "button", class: "danger", id: "bulk-delete" }, "Delete images");
      add.addEventListener("click", () => busy(add, async () => {
        if (!tagSelect.value) throw new Error("Add a tag first (left, under Tags).");
        const ids = [...state.selected];
        for (const part of api.chunks(ids, 64)) {
          await api.post(`/projects/${project.id}/images/tags`, {}, { tags: part.map((imageId) => ({ imageId, tagId: tagSelect.value })) });
        }
        notify(`Tagged ${ids.length} image${ids.length > 1 ? "s" : ""} ${tagName(tagSelect.value)}.`);
        await reload();
      }));
      remove.addEventListener("click", () => busy(remove, async () => {
        const ids = [...state.selected];
        for (const part of api.chunks(ids, 64)) {
          await api.del(`/projects/${project.id}/images/tags`, { imageIds: part, tagIds: [tagSelect.value] });
        }
        notify(`Removed ${tagName(tagSelect.value)} from ${ids.length} image${ids.length > 1 ? "s" : ""}.`);
        await reload();
      }));
      remove_images.addEventListener("click", () => busy(remove_images, async () => {
        if (!(await confirmDialog(`Delete ${count} image${count > 1 ? "s" : ""} from the project?`))) return;
        for (const part of api.chunks([...state.selected], 256)) {
          await api.del(`/projects/${project.id}/images`, { imageIds: part });
        }
        notify(`Deleted ${count} image${count > 1 ? "s" : ""}.`);
        await reload();
      }));
      if (ctx.kind === "detection") {
        parts.push(h("span", { class: "muted small" }, "Open an image to draw boxes."), remove_images);
      } else {
        parts.push(h("label", { for: "bulk-tag" }, "Tag"), tagSelect, add, remove, remove_images);
      }
    }
    fill(toolbar, parts);
  }

  const tagName = (id) => (ctx.tags.find((t) => t.id === id) || {}).name || "the tag";

  await reload();
}

/** The upload box: drop zone, file and folder pickers, the tags to give the new images. */
function uploadPanel(ctx, uploaded) {
  const { project } = ctx;
  const detection = ctx.kind === "detection";
  const files = h("input", { type: "file", id: "file-input", multiple: true, accept: "image/*", class: "sr-only" });
  const folder = h("input", { type: "file", id: "folder-input", multiple: true, webkitdirectory: true, class: "sr-only" });
  const tagChoice = h("fieldset", { class: "upload-tags", id: "upload-tags" });
  const newTags = h("input", { id: "upload-new-tags", placeholder: "e.g. cat, outdoor", autocomplete: "off" });
  const byFolder = h("input", { type: "checkbox", id: "tag-by-folder" });
  const progress = h("div", { class: "upload-progress", id: "upload-progress", "aria-live": "polite" });
  const zone = h("div", { class: "dropzone", id: "dropzone", tabindex: "0", role: "button",
    "aria-label": "Drop images or folders here, or press Enter to choose images" },
  h("strong", {}, "Drop images or folders here"),
  h("span", { class: "muted" }, " or "),
  h("label", { for: "file-input", class: "button" }, "Choose images…"),
  h("label", { for: "folder-input", class: "button" }, "Choose a folder…"));
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      files.click();
    }
  });
  const panel = h("section", { class: "panel upload", "aria-label": "Upload images" },
    zone, files, folder,
    detection ? h("p", { class: "muted small" }, "Detection images are tagged by the boxes you draw on them: open an image after uploading.")
      : h("details", { open: true }, h("summary", {}, "Tags for the uploaded images"),
        tagChoice,
        h("label", { for: "upload-new-tags" }, "New tags (comma separated)"), newTags,
        h("label", { class: "check" }, byFolder, " Also tag each image with its folder's name")),
    progress);

  panel.refresh = () => {
    if (detection) return;
    fill(tagChoice, h("legend", {}, "Existing tags"),
      ctx.tags.length ? ctx.tags.map((t) => h("label", { class: "check" },
        h("input", { type: "checkbox", name: "upload-tag", value: t.id }), ` ${t.name}`))
        : h("span", { class: "muted small" }, "No tags yet."));
  };
  panel.refresh();

  async function tagIdsByName(names) {
    const ids = [];
    for (const name of names) {
      let tag = ctx.tags.find((t) => t.name.toLowerCase() === name.toLowerCase());
      if (!tag) {
        tag = await api.post(`/projects/${project.id}/tags`, { name });
        ctx.tags.push(tag);
      }
      ids.push(tag.id);
    }
    return ids;
  }

  async function send(entries) {
    const chosen = detection ? [] : [...tagChoice.querySelectorAll("input[name=upload-tag]:checked")].map((b) => b.value);
    const typed = detection ? [] : newTags.value.split(",").map((s) => s.trim()).filter(Boolean);
    const base = [...chosen, ...(await tagIdsByName(typed))];
    const groups = new Map();
    for (const { file, folder } of entries) {
      const key = !detection && byFolder.checked ? folder : "";
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(file);
    }
    let done = 0;
    let failed = [];
    const bar = h("progress", { max: entries.length, value: 0, "aria-label": "Upload progress" });
    const text = h("span", {}, `Uploading ${entries.length} image${entries.length > 1 ? "s" : ""}…`);
    fill(progress, bar, " ", text);
    for (const [folderName, group] of groups) {
      const tagIds = folderName ? [...new Set([...base, ...(await tagIdsByName([folderName]))])] : base;
      for (const part of api.chunks(group, UPLOAD_BATCH)) {
        const summary = await api.upload(`/projects/${project.id}/images`, part, { tagIds });
        for (const [i, result] of ((summary && summary.images) || []).entries()) {
          if (result.status && !/^OK/i.test(result.status)) failed.push(`${part[i]?.name || result.sourceUrl || "an image"}: ${result.edgevisionMessage || result.status}`);
        }
        done += part.length;
        bar.value = done;
        text.textContent = `Uploaded ${done} of ${entries.length}…`;
      }
    }
    fill(progress, failed.length
      ? h("span", { class: "warn" }, `Uploaded ${done - failed.length} of ${done}; refused: ${failed.slice(0, 5).join("; ")}${failed.length > 5 ? "…" : ""}`)
      : h("span", { class: "ok" }, `Uploaded ${done} image${done > 1 ? "s" : ""}.`));
    newTags.value = "";
    notify(`Uploaded ${done - failed.length} image${done - failed.length === 1 ? "" : "s"}.`);
    await uploaded();
    panel.refresh();
  }

  const start = (entries) => {
    if (!entries.length) {
      notify("No image files there (JPEG, PNG, BMP, GIF, WebP or TIFF).", "error");
      return;
    }
    send(entries).catch((error) => {
      fill(progress, h("span", { class: "warn" }, error.message));
      showError(error);
    });
  };
  dropZone(zone, start);
  files.addEventListener("change", () => {
    start([...files.files].filter(isImage).map((file) => ({ file, folder: "" })));
    files.value = "";
  });
  folder.addEventListener("change", () => {
    start([...folder.files].filter(isImage).map((file) => ({ file, folder: folderOf(file) })));
    folder.value = "";
  });
  return panel;
}
