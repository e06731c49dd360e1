// The LoRA picker: the adapters this key may use that fit the selected model (GET /api/v1/loras), an upload
// (POST /api/v1/loras), and the chosen ones with a strength slider each. What it holds becomes the request's
// `loras` field; a re-run restores it from the task's record.

import { call, upload } from "./api.js";

const MAX = 4;

export class LoraPicker {
  constructor(root, onError) {
    this.root = root;
    this.onError = onError;
    this.pick = root.querySelector("#lora-pick");
    this.list = root.querySelector("#lora-list");
    this.file = root.querySelector("#lora-file");
    this.family = null;
    this.known = [];
    this.chosen = [];  // [{id, url, name, scale}]
    root.querySelector("#lora-add").addEventListener("click", () => this.add(this.pick.value));
    this.file.addEventListener("change", () => this.uploadChosen());
  }

  // Show the picker for a model (hidden when its family takes no LoRAs) and list what fits it.
  async show(spec) {
    const family = spec && spec.takesLoras ? spec.local?.family : null;
    this.root.hidden = !family;
    if (family !== this.family) {
      this.chosen = [];  // another family's adapters do not fit: gone at once, not after the list reloads
      this.family = family;
      this.render();
    }
    if (family) await this.refresh();
    this.render();
  }

  async refresh() {
    try {
      this.known = (await call("GET", "/api/v1/loras")).data;
    } catch (e) {
      this.known = [];
      this.onError(e);
    }
    this.pick.innerHTML = "";
    this.pick.append(new Option("Choose an adapter…", ""));
    for (const lora of this.known.filter((l) => l.families.includes(this.family))) {
      const where = lora.source === "folder" ? "server" : "yours";
      this.pick.append(new Option(`${lora.name} (rank ${lora.rank}, ${where})`, lora.id));
    }
  }

  add(id, scale = 1.0, url = null) {
    if (!id && !url) return;
    if (this.chosen.length >= MAX) { this.onError(new Error(`At most ${MAX} LoRAs per request.`)); return; }
    const lora = this.known.find((l) => l.id === id);
    this.chosen.push({ id: url ? null : id, url, name: lora ? lora.name : (id || url), scale });
    this.render();
  }

  async uploadChosen() {
    const file = this.file.files[0];
    this.file.value = "";
    if (!file) return;
    try {
      const form = new FormData();
      form.append("file", file);
      form.append("name", file.name.replace(/\.safetensors$/i, ""));
      const lora = await upload("/api/v1/loras", form);
      await this.refresh();
      if (!lora.families.includes(this.family)) {
        this.onError(new Error(`${lora.name} was trained for ${lora.families.join(", ") || "another model"}, ` +
                               "not for this model; it is kept in your list for the models it fits."));
        return;
      }
      this.add(lora.id);
    } catch (e) {
      this.onError(e);
    }
  }

  render() {
    this.list.innerHTML = "";
    this.chosen.forEach((lora, i) => {
      const item = document.createElement("li");
      const label = document.createElement("label");
      const slider = document.createElement("input");
      Object.assign(slider, { type: "range", min: "0", max: "2", step: "0.05", value: String(lora.scale) });
      slider.setAttribute("aria-label", `Strength of ${lora.name}`);
      const value = document.createElement("output");
      value.textContent = lora.scale.toFixed(2);
      slider.addEventListener("input", () => { lora.scale = Number(slider.value); value.textContent = lora.scale.toFixed(2); });
      label.append(`${lora.name} `, slider, value);
      const remove = document.createElement("button");
      Object.assign(remove, { type: "button", textContent: "Remove" });
      remove.setAttribute("aria-label", `Remove ${lora.name}`);
      remove.addEventListener("click", () => { this.chosen.splice(i, 1); this.render(); });
      item.append(label, remove);
      this.list.append(item);
    });
  }

  // The request's `loras` field (undefined when none is chosen or the model takes none).
  field() {
    if (this.root.hidden || !this.chosen.length) return undefined;
    return this.chosen.map((l) => (l.url ? { url: l.url, scale: l.scale } : { id: l.id, scale: l.scale }));
  }

  // Restore what a task ran with (its record: darkroom.asked.loras).
  restore(recorded) {
    this.chosen = [];
    for (const r of recorded || []) this.add(r.id, r.scale, r.id ? null : r.url);
  }
}
