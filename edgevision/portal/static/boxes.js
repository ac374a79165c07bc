// A box editor over an image: draw (drag on empty space), move (drag a box), resize (drag its corner),
// retag and delete boxes; also keyboard: Tab to a box, arrows move it (Shift: faster), Delete removes it.
//
// Boxes use the API's normalised coordinates ({left, top, width, height} in 0..1). The editor keeps
// its own list and asks its owner to persist each change through async callbacks, so the same editor
// serves project images (regions API) and stored predictions (kept in memory until added).

import { fill, fitStage, h } from "./ui.js";

const MIN_SIZE = 0.01;
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

export class BoxEditor {
  /**
   * options: imageUrl, alt, boxes [{id?, tagId, tagName, left, top, width, height, probability?}],
   * tagFor() → {id, name} for a new box (or null: drawing refused with a message), readOnly,
   * create(box) → saved box, update(old, changed) → saved box, remove(box), onChange(boxes), onError(e).
   */
  constructor(options) {
    this.o = options;
    this.boxes = (options.boxes || []).map((b) => ({ ...b }));
    this.selected = null;
    this.drag = null;
    this.image = h("img", { src: options.imageUrl, alt: options.alt || "Image", draggable: "false" });
    this.layer = h("div", { class: "box-layer", "aria-label": options.readOnly ? "Boxes" : "Boxes: drag on the image to draw one" });
    this.element = h("div", { class: options.readOnly ? "stage read-only" : "stage", dataset: { boxCount: "0" } }, this.image, this.layer);
    fitStage(this.element, this.image, options.maxHeight);
    if (!options.readOnly) {
      this.layer.addEventListener("pointerdown", (e) => this.down(e));
      this.layer.addEventListener("pointermove", (e) => this.move(e));
      this.layer.addEventListener("pointerup", (e) => this.up(e));
      this.layer.addEventListener("pointercancel", () => this.cancel());
    }
    this.render();
  }

  point(event) {
    const r = this.layer.getBoundingClientRect();
    return { x: clamp((event.clientX - r.left) / r.width, 0, 1), y: clamp((event.clientY - r.top) / r.height, 0, 1) };
  }

  down(event) {
    if (event.button !== 0) return;
    const p = this.point(event);
    const target = event.target.closest("[data-index]");
    const index = target ? Number(target.dataset.index) : -1;
    if (index >= 0) {
      this.select(index);
      const box = this.boxes[index];
      this.drag = { kind: event.target.classList.contains("handle") ? "resize" : "move", index, start: p, original: { ...box } };
    } else {
      const tag = this.o.tagFor ? this.o.tagFor() : null;
      if (!tag) return;
      this.select(null);
      this.drag = { kind: "draw", start: p, tag, draft: { left: p.x, top: p.y, width: 0, height: 0 } };
    }
    this.layer.setPointerCapture(event.pointerId);
    event.preventDefault();
  }

  move(event) {
    if (!this.drag) return;
    const p = this.point(event);
    const d = this.drag;
    if (d.kind === "draw") {
      d.draft = { left: Math.min(p.x, d.start.x), top: Math.min(p.y, d.start.y),
        width: Math.abs(p.x - d.start.x), height: Math.abs(p.y - d.start.y) };
    } else if (d.kind === "move") {
      const o = d.original;
      this.boxes[d.index] = { ...this.boxes[d.index],
        left: clamp(o.left + p.x - d.start.x, 0, 1 - o.width), top: clamp(o.top + p.y - d.start.y, 0, 1 - o.height) };
    } else {
      const o = d.original;
      this.boxes[d.index] = { ...this.boxes[d.index],
        width: clamp(o.width + p.x - d.start.x, MIN_SIZE, 1 - o.left), height: clamp(o.height + p.y - d.start.y, MIN_SIZE, 1 - o.top) };
    }
    this.render();
  }

  async up(event) {
    const d = this.drag;
    if (!d) return;
    this.drag = null;
    try { this.layer.releasePointerCapture(event.pointerId); } catch { /* already released */ }
    if (d.kind === "draw") {
      this.render();
      if (d.draft.width < MIN_SIZE || d.draft.height < MIN_SIZE) return;
      await this.add({ ...d.draft, tagId: d.tag.id, tagName: d.tag.name });
    } else {
      const now = this.boxes[d.index];
      const o = d.original;
      if (["left", "top", "width", "height"].every((k) => Math.abs(now[k] - o[k]) < 1e-4)) return;
      await this.change(d.index, o, now);
    }
  }

  cancel() {
    const d = this.drag;
    this.drag = null;
    if (d && d.kind !== "draw") this.boxes[d.index] = d.original;
    this.render();
  }

  /** Add a box (persisted through `create`). */
  async add(box) {
    try {
      const saved = this.o.create ? await this.o.create(box) : box;
      this.boxes.push({ ...box, ...saved });
      this.select(this.boxes.length - 1);
      this.changed();
    } catch (error) {
      this.render();
      this.report(error);
    }
  }

  /** Replace box `index` (was `old`) by `box` (moved, resized or retagged). */
  async change(index, old, box) {
    try {
      const saved = this.o.update ? await this.o.update(old, box) : box;
      this.boxes[index] = { ...box, ...saved };
      this.changed();
    } catch (error) {
      this.boxes[index] = old;
      this.render();
      this.report(error);
    }
  }

  async retag(index, tag) {
    const old = this.boxes[index];
    await this.change(index, old, { ...old, tagId: tag.id, tagName: tag.name });
  }

  async delete(index) {
    const box = this.boxes[index];
    try {
      if (this.o.remove) await this.o.remove(box);
      this.boxes.splice(index, 1);
      this.selected = null;
      this.changed();
    } catch (error) {
      this.report(error);
    }
  }

  select(index) {
    this.selected = index;
    this.render();
    if (index !== null) {
      const el = this.layer.querySelector(`[data-index="${index}"]`);
      if (el && document.activeElement !== el) el.focus({ preventScroll: true });
    }
  }

  changed() {
    this.render();
    if (this.o.onChange) this.o.onChange(this.boxes);
  }

  report(error) {
    if (this.o.onError) this.o.onError(error);
    else console.error(error);
  }

  keydown(event, index) {
    const box = this.boxes[index];
    if (event.key === "Delete" || event.key === "Backspace") {
      event.preventDefault();
      this.delete(index);
      return;
    }
    const step = event.shiftKey ? 0.05 : 0.01;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (!moves[event.key]) return;
    event.preventDefault();
    if (!this.pendingKey) this.pendingKey = { index, original: { ...box } };
    const [dx, dy] = moves[event.key];
    this.boxes[index] = { ...box, left: clamp(box.left + dx, 0, 1 - box.width), top: clamp(box.top + dy, 0, 1 - box.height) };
    this.render();
    this.layer.querySelector(`[data-index="${index}"]`).focus({ preventScroll: true });
    clearTimeout(this.keyTimer);
    this.keyTimer = setTimeout(() => {
      const pending = this.pendingKey;
      this.pendingKey = null;
      this.change(pending.index, pending.original, this.boxes[pending.index]);
    }, 600);
  }

  render() {
    const els = this.boxes.map((box, index) => {
      const label = `${box.tagName || "box"}${typeof box.probability === "number" ? ` ${(box.probability * 100).toFixed(0)}%` : ""}`;
      const el = h("div", {
        class: index === this.selected ? "box selected" : "box",
        dataset: { index: String(index), tag: box.tagName || "" },
        tabindex: this.o.readOnly ? null : "0",
        role: this.o.readOnly ? null : "button",
        "aria-label": `${label} box at ${Math.round(box.left * 100)}%, ${Math.round(box.top * 100)}%` +
          (this.o.readOnly ? "" : "; arrows move it, Delete removes it"),
      }, h("span", { class: "box-label" }, label), this.o.readOnly ? null : h("span", { class: "handle", "aria-hidden": "true" }));
      place(el, box);
      el.classList.add(`hue-${hue(box.tagName || "")}`);
      if (!this.o.readOnly) {
        el.addEventListener("focus", () => { if (this.selected !== index) { this.selected = index; this.markSelected(); } });
        el.addEventListener("keydown", (event) => this.keydown(event, index));
      }
      return el;
    });
    if (this.drag && this.drag.kind === "draw") {
      const draft = h("div", { class: "box draft" });
      place(draft, this.drag.draft);
      els.push(draft);
    }
    const focused = document.activeElement && this.layer.contains(document.activeElement) ? document.activeElement.dataset.index : null;
    fill(this.layer, els);
    this.element.dataset.boxCount = String(this.boxes.length);
    if (focused !== null && focused !== undefined && !this.drag) {
      const again = this.layer.querySelector(`[data-index="${focused}"]`);
      if (again) again.focus({ preventScroll: true });
    }
  }

  markSelected() {
    for (const el of this.layer.querySelectorAll(".box")) el.classList.toggle("selected", Number(el.dataset.index) === this.selected);
  }
}

function place(el, box) {
  // CSSOM writes are allowed by the portal's Content-Security-Policy (style attributes in markup are not).
  el.style.left = `${box.left * 100}%`;
  el.style.top = `${box.top * 100}%`;
  el.style.width = `${box.width * 100}%`;
  el.style.height = `${box.height * 100}%`;
}

/** A stable colour class (0..7) per tag name. */
export function hue(name) {
  let n = 0;
  for (const c of name) n = (n * 31 + c.charCodeAt(0)) >>> 0;
  return n % 8;
}
