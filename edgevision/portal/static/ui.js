// Small DOM helpers shared by the pages: an element builder, notices, dialogs, drop zones.

/**
 * h("button", {class: "primary", onclick: fn}, "Save") → an element. Attributes starting with "on"
 * become listeners; `dataset` an object; boolean true/false set or leave out the attribute.
 */
export function h(tag, attrs, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "value" && !svg) el.value = value;
    else if (name === "checked" || name === "selected" || name === "disabled") el[name] = Boolean(value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// ------------------------------------------------------------------ notices
let noticeTimer = null;

/** Show a message in the notice bar (errors stay until dismissed; others fade after a few seconds). */
export function notify(message, kind = "info") {
  const bar = document.getElementById("notice");
  if (!bar) return;
  clearTimeout(noticeTimer);
  bar.className = `notice ${kind}`;
  bar.setAttribute("role", kind === "error" ? "alert" : "status");
  fill(bar, h("span", { class: "notice-text" }, message),
    h("button", { type: "button", class: "link", "aria-label": "Dismiss", onclick: () => { bar.hidden = true; } }, "×"));
  bar.hidden = false;
  if (kind !== "error") noticeTimer = setTimeout(() => { bar.hidden = true; }, 5000);
}

/** Show an API failure (its `message`) or any other error. */
export function showError(error) {
  console.error(error);
  notify(error && error.message ? error.message : String(error), "error");
}

/** Run an async action for a button: disable it meanwhile, report errors; returns the result or undefined. */
export async function busy(button, action) {
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (error) {
    showError(error);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

// ------------------------------------------------------------------ dialogs
/** Ask for the training key in a modal dialog; resolves to the key or null (cancelled). */
export function askKey(reason) {
  return new Promise((resolve) => {
    const input = h("input", { id: "key-input", type: "password", autocomplete: "off", required: true });
    const dialog = h("dialog", { class: "key-dialog", "aria-labelledby": "key-title" },
      h("form", { method: "dialog" },
        h("h2", { id: "key-title" }, "Training key needed"),
        h("p", {}, reason || "This server needs its training key."),
        h("label", { for: "key-input" }, "Training key"),
        input,
        h("div", { class: "actions" },
          h("button", { type: "submit", value: "ok", class: "primary" }, "Use this key"),
          h("button", { type: "submit", value: "cancel", formnovalidate: true }, "Cancel"))));
    dialog.addEventListener("close", () => {
      const value = dialog.returnValue === "ok" ? input.value.trim() : "";
      dialog.remove();
      resolve(value ? value : null);
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
}

/** A yes/no question in a modal dialog. */
export function confirmDialog(question, yes = "Delete") {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "confirm-dialog", "aria-label": "Confirm" },
      h("form", { method: "dialog" },
        h("p", {}, question),
        h("div", { class: "actions" },
          h("button", { type: "submit", value: "yes", class: "danger" }, yes),
          h("button", { type: "submit", value: "no", autofocus: true }, "Cancel"))));
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "yes");
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

// ------------------------------------------------------------------ formatting
export const pct = (value) => (typeof value === "number" && Number.isFinite(value) ? `${(value * 100).toFixed(1)}%` : "–");

export function when(text) {
  if (!text) return "";
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? text : date.toLocaleString();
}

// ------------------------------------------------------------------ images
/**
 * Size a `.stage` so its image fills the room it has (small images are scaled up, so boxes are easy
 * to draw), at most `maxHeight` px (default: 72 % of the window) tall, keeping the aspect ratio.
 */
export function fitStage(stage, img, maxHeight) {
  const fit = () => {
    if (!img.naturalWidth || !stage.parentElement) return;
    const room = stage.parentElement.clientWidth || img.naturalWidth;
    const tallest = maxHeight || Math.max(240, window.innerHeight * 0.72);
    const width = Math.min(room, tallest * (img.naturalWidth / img.naturalHeight));
    stage.style.width = `${Math.round(width)}px`; // CSSOM: allowed by the portal's CSP
    img.classList.add("fitted");
  };
  if (img.complete) requestAnimationFrame(fit);
  img.addEventListener("load", fit);
  window.addEventListener("resize", fit);
}

// ------------------------------------------------------------------ files
/** Image files from a drop's DataTransfer, walking dropped folders (their folder name comes along). */
export async function droppedFiles(dataTransfer) {
  const entries = [];
  for (const item of dataTransfer.items || []) {
    const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
    if (entry) entries.push(entry);
  }
  if (!entries.length || entries.every((e) => e.isFile)) {
    return [...(dataTransfer.files || [])].map((file) => ({ file, folder: "" }));
  }
  const out = [];
  async function walk(entry, folder) {
    if (entry.isFile) {
      const file = await new Promise((ok, fail) => entry.file(ok, fail));
      out.push({ file, folder });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
        if (!batch.length) break;
        for (const child of batch) await walk(child, entry.name);
      }
    }
  }
  for (const entry of entries) await walk(entry, "");
  return out;
}

export const isImage = (file) => /^image\//.test(file.type) || /\.(jpe?g|png|bmp|gif|webp|tiff?)$/i.test(file.name);

/** Make `el` a drop zone calling `onFiles([{file, folder}])`; it gets class "dragging" while hovered. */
export function dropZone(el, onFiles) {
  el.addEventListener("dragover", (event) => {
    event.preventDefault();
    el.classList.add("dragging");
  });
  el.addEventListener("dragleave", () => el.classList.remove("dragging"));
  el.addEventListener("drop", async (event) => {
    event.preventDefault();
    el.classList.remove("dragging");
    const files = (await droppedFiles(event.dataTransfer)).filter((f) => isImage(f.file));
    if (files.length) onFiles(files);
  });
}

/** The folder a picked file came from (`<input webkitdirectory>` gives "top/sub/file.png"). */
export function folderOf(file) {
  const parts = (file.webkitRelativePath || "").split("/");
  return parts.length > 1 ? parts[parts.length - 2] : "";
}
