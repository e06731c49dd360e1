// darkroom studio: compose a request from what the server lists, run it with live progress, compare models,
// keep a history. Everything the page knows about models comes from /api/v1/images/models and
// /api/v1/videos/models; nothing about them is written here.

import { ApiError, blobUrl, call, events, getKey, setKey } from "./api.js";
import { asCode, fileNames } from "./code.js";
import { LoraPicker } from "./loras.js";
import { MaskPainter } from "./mask.js";

const $ = (id) => document.getElementById(id);
const state = {
  images: [], videos: [], mode: "edit", spec: null, sources: [], references: [],
  running: null, view: "create", historyCursor: null,
};
const mask = new MaskPainter($("mask-canvas"), $("mask-source"));
const loras = new LoraPicker($("lora-settings"), (e) => notice(e.message));
const PROMPT_MAX = 4000;

// ---- notices and the key -------------------------------------------------------------------------------------

function notice(text, kind = "error") {
  const box = $("notice");
  box.textContent = text;
  box.className = kind === "info" ? "info" : "";
  box.hidden = !text;
}

function askForKey(message) {
  $("key-message").textContent = message;
  $("key-input").value = "";
  if (!$("key-dialog").open) $("key-dialog").showModal();
  $("key-input").focus();
}

async function guarded(work) {
  try {
    return await work();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      askForKey(getKey()
        ? "The server refused this API key (401 unauthorized). Check it and enter it again."
        : "This server needs an API key. Enter it to continue.");
      notice("401 unauthorized: the API key is missing or wrong.");
    } else {
      notice(e.message || String(e));
    }
    throw e;
  }
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setKey($("key-input").value.trim());
  $("key-dialog").close();
  notice("");
  loadModels().catch(() => {});
});
$("key-button").addEventListener("click", () => askForKey("Enter the API key this server was started with."));
$("key-cancel").addEventListener("click", () => $("key-dialog").close());

// ---- models --------------------------------------------------------------------------------------------------

async function loadModels() {
  const [images, videos] = await guarded(() => Promise.all([call("GET", "/api/v1/images/models"),
                                                            call("GET", "/api/v1/videos/models")]));
  state.images = images.models;
  state.videos = videos.models;
  const select = $("model");
  select.innerHTML = "";
  const groups = [
    ["Edit an image", "edit", state.images.filter((m) => m.maxSourceImages > 0)],
    ["Generate from text", "generate", state.images.filter((m) => m.capabilities.includes("text-to-image"))],
    ["Animate an image (video)", "video", state.videos],
  ];
  for (const [label, mode, models] of groups) {
    const group = document.createElement("optgroup");
    group.label = label;
    for (const m of models) {
      const option = new Option(`${m.name} (${m.id})`, `${mode}:${m.id}`);
      group.append(option);
    }
    select.append(group);
  }
  const compare = $("compare-list");
  compare.innerHTML = "";
  for (const m of state.images) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = m.id;
    box.name = "compare";
    label.append(box, ` ${m.name}`);
    compare.append(label);
  }
  const historyModel = $("history-model");
  historyModel.length = 1;
  for (const m of [...state.images, ...state.videos]) historyModel.append(new Option(m.id, m.id));
  selectModel(select.value);
}

function selectModel(value) {
  const [mode, ...rest] = value.split(":");
  const id = rest.join(":");
  state.mode = mode;
  state.spec = (mode === "video" ? state.videos : state.images).find((m) => m.id === id) || null;
  const spec = state.spec;
  if (!spec) return;
  const local = spec.local || {};
  const badge = local.weights_kind === "demo" ? '<span class="badge demo">demo weights</span>'
                                              : '<span class="badge real">real weights</span>';
  $("model-info").innerHTML = "";
  $("model-info").append(spec.description || "");
  $("model-info").insertAdjacentHTML("beforeend", ` ${badge}`);
  $("model-info").append(document.createElement("br"), `Licence: ${local.license || "unknown"}`);
  const video = mode === "video";
  $("image-settings").hidden = video;
  $("video-settings").hidden = !video;
  $("inputs").hidden = mode === "generate";
  $("references-box").hidden = video || !spec.maxReferenceImages;
  const before = { quality: $("quality").value, aspect: $("aspect").value };
  fillSelect($("quality"), video ? [] : spec.quality, before.quality || spec.defaultQuality, spec.defaultQuality);
  fillSelect($("aspect"), video ? [] : spec.imageSize, before.aspect || "auto", "auto");
  // A setting this model cannot take changes: say so rather than change it silently.
  const clamped = [];
  if (!video && before.quality && $("quality").value !== before.quality) {
    clamped.push(`quality ${before.quality} → ${$("quality").value} (${spec.id} makes ${spec.quality.join(", ")})`);
  }
  if (!video && before.aspect && $("aspect").value !== before.aspect) {
    clamped.push(`aspect ratio ${before.aspect} → ${$("aspect").value}`);
  }
  if (clamped.length) notice(`Adjusted for ${spec.id}: ${clamped.join("; ")}`, "info");
  if (!video) {
    $("num-images").max = spec.maxNumImages;
    $("num-images").value = Math.min(Number($("num-images").value) || 1, spec.maxNumImages);
  } else {
    fillSelect($("duration"), spec.durations.map(String), String(spec.defaults.duration));
    // What the server renders by default on its device (the draft tier on a CPU), not the model's GPU default.
    fillSelect($("resolution"), spec.resolutions, spec.deviceDefaults?.resolution || spec.defaults.resolution);
    fillSelect($("video-aspect"), spec.aspectRatios, "auto");
    fillSelect($("fps"), spec.fps.map(String), String(spec.defaults.fps));
    $("audio-label").hidden = !spec.supportsAudio;
    $("audio").checked = !!spec.defaults.generate_audio && spec.supportsAudio;
  }
  const controls = video ? ["num_inference_steps", "guidance_scale", "negative_prompt"] : spec.editControls;
  for (const el of document.querySelectorAll("[data-control]")) {
    el.hidden = !controls.includes(el.dataset.control) || (mode === "generate" && el.dataset.control === "strength");
  }
  $("steps").placeholder = spec.defaults.num_inference_steps;
  $("guidance").placeholder = spec.defaults.guidance_scale;
  $("strength").placeholder = spec.defaults.strength ?? "";
  $("mask-box").hidden = video || !controls.includes("mask_url") || mode === "generate";
  trimInputs();
  renderThumbs();
  loras.show(spec);
}

function fillSelect(select, values, preferred, fallback = undefined) {
  select.innerHTML = "";
  for (const v of values) select.append(new Option(v, v));
  if (values.includes(preferred)) select.value = preferred;
  else if (values.includes(fallback)) select.value = fallback;
}

function limits() {
  const spec = state.spec;
  if (!spec) return { sources: 0, references: 0 };
  if (state.mode === "video") return { sources: spec.supportsLastFrame ? 2 : 1, references: 0 };
  if (state.mode === "generate") return { sources: 0, references: 0 };
  return { sources: spec.maxSourceImages, references: spec.maxReferenceImages };
}

$("model").addEventListener("change", (e) => selectModel(e.target.value));

// ---- inputs: drop, pick, paste, reorder, remove ---------------------------------------------------------------

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve({ dataUrl: reader.result, name: file.name || "pasted image" });
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// Whether the browser can decode it: a corrupt file is refused here, not shown as a broken thumbnail.
function decodes(dataUrl) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve(img.naturalWidth > 0);
    img.onerror = () => resolve(false);
    img.src = dataUrl;
  });
}

async function addFiles(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) { notice(`${file.name} is not an image`); continue; }
    const item = await readFile(file);
    if (!(await decodes(item.dataUrl))) { notice(`${file.name} could not be read as an image (is it damaged?)`); continue; }
    addInput(item);
  }
}

function addInput(item) {
  const lim = limits();
  if (state.sources.length < lim.sources) state.sources.push(item);
  else if (state.references.length < lim.references) state.references.push(item);
  else {
    notice(`${state.spec.id} takes at most ${lim.sources} source and ${lim.references} reference image(s)`);
    return;
  }
  notice("");
  renderThumbs();
}

function trimInputs() {
  const lim = limits();
  state.references = [...state.sources.slice(lim.sources), ...state.references].slice(0, lim.references);
  state.sources = state.sources.slice(0, lim.sources);
}

function renderThumbs() {
  const lim = limits();
  $("sources-limit").textContent = `(${state.sources.length}/${lim.sources})`;
  $("references-limit").textContent = `(${state.references.length}/${lim.references})`;
  for (const [list, items] of [["sources", state.sources], ["references", state.references]]) {
    const ul = $(list);
    ul.innerHTML = "";
    items.forEach((item, i) => {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.src = item.dataUrl;
      img.alt = `${list === "sources" ? "Source" : "Reference"} ${i + 1}: ${item.name}`;
      const tools = document.createElement("div");
      tools.className = "tools";
      tools.append(
        button("←", `Move ${img.alt} earlier`, () => move(items, i, -1), i === 0),
        button("×", `Remove ${img.alt}`, () => { items.splice(i, 1); renderThumbs(); }),
        button("→", `Move ${img.alt} later`, () => move(items, i, 1), i === items.length - 1),
      );
      li.append(img, tools);
      ul.append(li);
    });
  }
  // A new first source starts a new mask; adding references or reordering others keeps the painted one.
  if (!$("mask-stage").hidden && state.sources.length && $("mask-source").src !== state.sources[0].dataUrl) {
    mask.reset(state.sources[0].dataUrl);
  }
}

function move(items, i, by) {
  const [item] = items.splice(i, 1);
  items.splice(i + by, 0, item);
  renderThumbs();
}

function button(text, label, onClick, disabled = false) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.disabled = disabled;
  b.addEventListener("click", onClick);
  return b;
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  addFiles([...e.dataTransfer.files]);
});
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
$("file").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
document.addEventListener("paste", (e) => {
  const files = [...(e.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
  if (files.length) { e.preventDefault(); addFiles(files); }
});

// ---- mask ----------------------------------------------------------------------------------------------------

$("mask-toggle").addEventListener("click", async () => {
  const on = $("mask-stage").hidden;
  if (on && !state.sources.length) { notice("Add a source image first: the mask is painted over it."); return; }
  $("mask-stage").hidden = !on;
  $("mask-tools").hidden = !on;
  $("mask-toggle").setAttribute("aria-pressed", String(on));
  $("mask-toggle").textContent = on ? "Don't use a mask" : "Paint a mask";
  if (on) await mask.reset(state.sources[0].dataUrl);
});
$("brush-size").addEventListener("input", (e) => { mask.size = Number(e.target.value); });
for (const [id, erasing] of [["mask-brush", false], ["mask-eraser", true]]) {
  $(id).addEventListener("click", () => {
    mask.erasing = erasing;
    $("mask-brush").setAttribute("aria-pressed", String(!erasing));
    $("mask-eraser").setAttribute("aria-pressed", String(erasing));
  });
}
$("mask-invert").addEventListener("click", () => mask.invert());
$("mask-clear").addEventListener("click", () => { mask.remember(); mask.clear(); });
$("mask-undo").addEventListener("click", () => mask.undo());
$("mask-redo").addEventListener("click", () => mask.redo());
$("mask-feather").addEventListener("input", (e) => { mask.feather = Number(e.target.value); });
// Overlay: the mask tinted over the source; off: the mask alone, black and white, as the model gets it.
$("mask-overlay").addEventListener("click", () => {
  const on = $("mask-overlay").getAttribute("aria-pressed") !== "true";
  $("mask-overlay").setAttribute("aria-pressed", String(on));
  $("mask-stage").classList.toggle("mask-only", !on);
});
document.addEventListener("keydown", (e) => {
  if ($("mask-stage").hidden || !(e.ctrlKey || e.metaKey) || e.key.toLowerCase() !== "z") return;
  if (e.target.closest?.("input, textarea, select")) return;
  e.preventDefault();
  if (e.shiftKey) mask.redo(); else mask.undo();
});

// ---- the request ---------------------------------------------------------------------------------------------

const promptBox = $("prompt");
promptBox.addEventListener("input", () => { $("prompt-count").textContent = String(promptBox.value.length); });

function numberOrNull(id) {
  const v = $(id).value;
  return v === "" || $(id).closest("[hidden]") ? null : Number(v);
}

function buildBody(model = state.spec?.id) {
  const spec = state.spec;
  const body = { model, prompt: promptBox.value };
  if ($("seed-lock").checked && $("seed").value !== "") body.seed = Number($("seed").value);
  const steps = numberOrNull("steps");
  const guidance = numberOrNull("guidance");
  if (steps !== null) body.num_inference_steps = steps;
  if (guidance !== null) body.guidance_scale = guidance;
  const negative = $("negative");
  if (!negative.hidden && negative.value.trim()) body.negative_prompt = negative.value.trim();
  const adapters = loras.field();
  if (adapters && model === state.spec?.id) body.loras = adapters;  // they fit the selected model only
  if (state.mode === "video") {
    body.image_urls = state.sources.map((s) => s.dataUrl);
    Object.assign(body, { duration: Number($("duration").value), resolution: $("resolution").value,
                          aspect_ratio: $("video-aspect").value, fps: Number($("fps").value) });
    if (spec.supportsAudio) body.generate_audio = $("audio").checked;
    return body;
  }
  Object.assign(body, { quality: $("quality").value, aspect_ratio: $("aspect").value,
                        num_images: Number($("num-images").value) || 1, celery: true });
  if (state.mode === "edit") {
    if (state.sources.length) body.image_urls = state.sources.map((s) => s.dataUrl);
    if (state.references.length) body.reference_images = state.references.map((s) => s.dataUrl);
    const strength = numberOrNull("strength");
    if (strength !== null) body.strength = strength;
    if (!$("mask-stage").hidden && !$("mask-box").hidden) body.mask_url = mask.dataUrl();
  }
  return body;
}

function check(body) {
  if (!body.prompt.trim()) return "Write a prompt first.";
  if (body.prompt.length > PROMPT_MAX) return `The prompt is longer than ${PROMPT_MAX} characters.`;
  if (state.mode === "video" && !(body.image_urls || []).length) return "Animating needs a first frame: add an image.";
  if (state.mode === "edit" && !(body.image_urls || []).length && !(body.reference_images || []).length) {
    return "Editing needs a source image: add one, or pick a model under 'Generate from text'.";
  }
  return null;
}

async function submit(body) {
  const path = state.mode === "video" ? "/api/v1/videos/generate" : "/api/v1/images/generate";
  return guarded(() => call("POST", path, body));
}

// ---- running one request -------------------------------------------------------------------------------------

function showProgress(text, fraction) {
  $("progress").hidden = false;
  $("progress-text").textContent = text;
  $("run-status").textContent = text;  // the same, in the run bar that stays in view
  $("progress-bar").style.width = `${Math.round((fraction || 0) * 100)}%`;
}

// The forming image (the server's live preview of the denoising state) takes the progress bar's place; without
// previews the bar stays.
function showPreview(preview) {
  const img = $("preview");
  if (!preview) {
    img.hidden = true;
    img.removeAttribute("src");
    $("progress").classList.remove("previewing");
    return;
  }
  img.src = preview.image;
  img.alt = `The image forming, at step ${preview.step}`;
  img.hidden = false;
  $("progress").classList.add("previewing");
}

// Follow a task to its end: SSE for steps, the task itself for the queue position and the estimate.
function follow(taskId, onUpdate) {
  return new Promise((resolve) => {
    const started = performance.now();
    let estimate = null;
    let last = { status: "pending", step: 0, total: 0 };
    const poll = setInterval(async () => {
      try {
        const task = await call("GET", `/api/v1/tasks/${taskId}`);
        estimate = task.darkroom?.estimate?.seconds_full_size ?? estimate;
        if (task.status === "pending") onUpdate({ ...last, queue: task.queue_position, estimate, started });
      } catch { /* the stream says the rest */ }
    }, 1000);
    const stop = events(taskId, (name, data) => {
      if (["completed", "failed", "cancelled"].includes(name)) {
        clearInterval(poll);
        stop();
        resolve(data);
        return;
      }
      if (name === "error") { clearInterval(poll); resolve({ status: "failed", error: { message: "lost the event stream" } }); return; }
      last = { status: data.status, step: data.step, total: data.total };
      onUpdate({ ...last, estimate, started, preview: data.preview || null });
    });
  });
}

function describeProgress(p) {
  const elapsed = (performance.now() - p.started) / 1000;
  if (p.status === "pending") {
    const where = p.queue === null || p.queue === undefined ? "" : ` (position ${p.queue + 1})`;
    return [`Queued${where} · ${elapsed.toFixed(1)} s`, 0];
  }
  if (!p.total) return [`Starting · ${elapsed.toFixed(1)} s`, 0];
  const done = p.step / p.total;
  const eta = p.step ? (elapsed / p.step) * (p.total - p.step) : p.estimate;
  const etaText = eta ? ` · about ${eta.toFixed(1)} s left` : "";
  return [`Step ${p.step} of ${p.total} · ${elapsed.toFixed(1)} s${etaText}`, done];
}

// Runs in flight, newest last: each has a row in #runs (its own progress and Cancel); the big progress area and
// the run bar follow the newest. Run stays available, so several can be queued and watched at once.
const inFlight = [];

function runRow(taskId, body) {
  const li = document.createElement("li");
  li.dataset.taskId = taskId;
  const text = document.createElement("span");
  text.textContent = `${body.model}: queued`;
  li.append(text, button("Cancel", `Cancel the run of ${body.model}`, () => cancelRun(taskId)));
  $("runs").append(li);
  $("runs").hidden = false;
  return { li, text };
}

async function cancelRun(taskId) {
  await guarded(() => call("POST", `/api/v1/tasks/${taskId}/cancel`)).catch(() => {});
}

async function run(body) {
  const problem = check(body);
  if (problem) { notice(problem); return; }
  notice("");
  let accepted;
  try {
    accepted = await submit({ ...body, previews: true });  // the studio always watches the image form
  } catch {
    return;
  }
  const id = accepted.task_id;
  inFlight.push(id);
  state.running = id;
  $("cancel").disabled = false;
  showPreview(null);
  showProgress("Queued", 0);
  const row = runRow(id, body);
  const task = await follow(id, (p) => {
    const [text, fraction] = describeProgress(p);
    row.text.textContent = `${body.model}: ${text}`;
    if (state.running !== id) return;
    showProgress(text, fraction);
    if (p.preview) showPreview(p.preview);
  });
  row.li.remove();
  $("runs").hidden = !$("runs").children.length;
  inFlight.splice(inFlight.indexOf(id), 1);
  const newest = state.running === id;
  if (newest) {
    showPreview(null);
    state.running = inFlight.at(-1) || null;
    $("cancel").disabled = !state.running;
  }
  if (task.status === "completed") {
    const seconds = task.completed_at && task.created_at ? task.completed_at - task.created_at : null;
    if (newest) showProgress(`Done${seconds ? ` in ${seconds.toFixed(1)} s` : ""}`, 1);
    if (!$("seed-lock").checked) $("seed").value = task.seed;
    await showResults($("results"), task, false);
  } else if (task.status === "cancelled") {
    if (newest) showProgress("Cancelled", 0);
  } else {
    if (newest) showProgress("Failed", 0);
    notice(task.error?.message || "the task failed");
  }
}

$("form").addEventListener("submit", (e) => { e.preventDefault(); run(buildBody()); });
$("viewer-image").addEventListener("click", (e) => e.target.classList.toggle("actual"));
$("cancel").addEventListener("click", async () => {
  if (state.running) await cancelRun(state.running);
});

// ---- results -------------------------------------------------------------------------------------------------

// A task's outputs as cards: replacing what the container shows, or (replace = false) ahead of it, newest first.
async function showResults(container, task, replace = true) {
  if (container.id === "results") $("empty")?.remove();  // Create's empty state, not Compare's columns
  const cards = [];
  const items = task.videos || task.images || [];
  for (const item of items) {
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.taskId = task.task_id;
    const src = await blobUrl(item.url);
    let media;
    if (task.videos) {
      media = document.createElement("video");
      media.controls = true;
      media.src = src;
      if (item.poster) media.poster = await blobUrl(item.poster.url);
      media.setAttribute("aria-label", `Clip from ${task.model}`);
    } else {
      media = document.createElement("img");
      media.src = src;
      media.alt = `Result from ${task.model}, seed ${item.seed}`;
    }
    const meta = document.createElement("p");
    meta.className = "meta";
    meta.textContent = `${task.model} · ${item.width}×${item.height} · seed ${item.seed}`;
    const ran = document.createElement("p");
    ran.className = "settings";
    ran.textContent = ranWith(task, item);
    const warned = (task.warnings || []).map((w) => {
      const note = document.createElement("p");
      note.className = "note";
      note.textContent = w;
      return note;
    });
    const source = (task.darkroom?.inputs || []).find((i) => i.role === "source");
    if (!task.videos && source && task.darkroom?.task !== "generate") {
      media = await beforeAfter(media, await blobUrl(source.url).catch(() => null));
    }
    const tools = document.createElement("div");
    tools.className = "tools";
    const download = document.createElement("a");
    download.className = "button";
    download.href = src;
    download.download = item.url.split("/").pop();
    download.textContent = "Download";
    tools.append(download);
    if (!task.videos) {
      tools.append(
        button("View", "View full size", () => { $("viewer-image").src = src; $("viewer").showModal(); }),
        button("Use as source", "Use this image as the source", () => useAsSource(src, task.model)),
        button("Vary", "Same settings, a new seed", () => vary(task)),
        button("Animate", "Animate this image into a clip", () => animate(src)),
      );
    }
    tools.append(button("Details", "Show the job record", () => details(task)));
    card.append(media, meta, ran, ...warned, tools);
    cards.push(card);
  }
  if (replace) container.replaceChildren(...cards);
  else container.prepend(...cards);
}

// What the result actually ran with: the rendered size when it differs, steps, guidance, strength, the weight
// variant and the LoRAs (the request may have been adjusted to what the model makes).
function ranWith(task, item) {
  const d = task.darkroom || {};
  const parts = [];
  if (d.rendered && (d.rendered.width !== item.width || d.rendered.height !== item.height)) {
    parts.push(`rendered ${d.rendered.width}×${d.rendered.height}, fitted to ${item.width}×${item.height}`);
  }
  if (d.asked?.quality) parts.push(`tier ${d.asked.quality}`);
  if (d.num_inference_steps) parts.push(`${d.num_inference_steps} steps`);
  if (d.guidance_scale !== undefined && d.guidance_scale !== null) parts.push(`guidance ${d.guidance_scale}`);
  if (d.task && d.task !== "generate" && d.strength !== undefined && d.strength !== null && d.strength !== 1) {
    parts.push(`strength ${d.strength}`);
  }
  const variant = d.runtime?.variant;
  if (variant && variant !== "bf16") parts.push(`weights ${variant}`);
  for (const l of d.asked?.loras || []) parts.push(`LoRA ${l.name || l.id} × ${l.scale}`);
  if (d.runtime?.demo_weights) parts.push("demo weights");
  return parts.length ? `Ran with ${parts.join(" · ")}` : "";
}

// An edit's result over its source, with a slider: left of it the source, right of it the result.
async function beforeAfter(media, sourceUrl) {
  if (!sourceUrl) return media;
  const wrap = document.createElement("div");
  wrap.className = "ba";
  const before = document.createElement("img");
  before.className = "before";
  before.src = sourceUrl;
  before.alt = "The source, before the edit";
  const slider = document.createElement("input");
  slider.type = "range";
  slider.min = "0";
  slider.max = "100";
  slider.value = "0";
  slider.setAttribute("aria-label", "Before and after: slide right to show more of the source");
  const clip = () => { before.style.clipPath = `inset(0 ${100 - Number(slider.value)}% 0 0)`; };
  slider.addEventListener("input", clip);
  clip();
  const stage = document.createElement("div");
  stage.className = "ba";
  stage.append(media, before);
  wrap.append(stage, slider);
  return wrap;
}

async function toDataUrl(src) {
  const blob = await (await fetch(src)).blob();
  return readFile(new File([blob], "result.png", { type: blob.type }));
}

function selectFor(model, mode) {
  const value = `${mode}:${model}`;
  if (![...$("model").options].some((o) => o.value === value)) return false;
  $("model").value = value;
  selectModel(value);
  return true;
}

// The next edit starts from this image, on the card's own model where it edits (else the first that does).
async function useAsSource(src, model) {
  setView("create");
  if (!selectFor(model, "edit") && state.mode !== "edit") {
    const first = [...$("model").options].find((o) => o.value.startsWith("edit:"));
    $("model").value = first.value;
    selectModel(first.value);
  }
  state.sources = [await toDataUrl(src)];
  renderThumbs();
  notice("The image is the source now: describe the next change.", "info");
}

// The card's own model and settings, a new seed; the result shows in Create (where runs show).
function vary(task) {
  const mode = task.darkroom?.task === "generate" ? "generate" : "edit";
  if (!selectFor(task.model, mode) && !selectFor(task.model, mode === "edit" ? "generate" : "edit")) {
    notice(`${task.model} is not served now.`);
    return;
  }
  setView("create");
  $("seed-lock").checked = false;
  const body = buildBody();
  delete body.seed;
  run(body);
}

async function animate(src) {
  setView("create");
  const first = [...$("model").options].find((o) => o.value.startsWith("video:"));
  $("model").value = first.value;
  selectModel(first.value);
  state.sources = [await toDataUrl(src)];
  renderThumbs();
  notice("The image is the first frame: describe the motion and run.", "info");
}

function details(task) {
  const record = { task_id: task.task_id, model: task.model, seed: task.seed, seeds: task.seeds,
                   size: `${task.width}x${task.height}`, seconds: task.completed_at - task.created_at,
                   timings: task.darkroom?.timings, runtime: task.darkroom?.runtime, asked: task.darkroom?.asked,
                   warnings: task.warnings };
  $("details-body").textContent = JSON.stringify(record, null, 2);
  $("details").showModal();
}

// ---- copy as code --------------------------------------------------------------------------------------------

$("copy-code").addEventListener("click", async () => {
  const body = buildBody();
  const items = [...state.sources, ...state.references];
  if (body.mask_url) {
    // The painted mask is no file on disk yet: it is saved as mask.png for the code to upload.
    items.push({ dataUrl: body.mask_url, name: "mask.png" });
    const save = document.createElement("a");
    save.href = body.mask_url;
    save.download = "mask.png";
    save.click();
  }
  const text = asCode($("code-lang").value, state.mode === "video" ? "video" : "image", body, !!getKey(),
                      fileNames(items));
  const pre = $("code");
  pre.textContent = text;
  pre.hidden = false;
  try { await navigator.clipboard.writeText(text); notice("Copied to the clipboard.", "info"); } catch {
    notice("Select the code below to copy it.", "info");
  }
});

// ---- compare -------------------------------------------------------------------------------------------------

async function compare() {
  const chosen = [...document.querySelectorAll('input[name="compare"]:checked')].map((b) => b.value);
  if (chosen.length < 2 || chosen.length > 4) { notice("Pick 2 to 4 models to compare."); return; }
  // What the models are compared on follows the images, not the Model select's group: with a source they all
  // edit it, without one they all generate.
  const base = buildBody();
  delete base.loras;  // adapters belong to one family
  if (state.sources.length || state.references.length) {
    if (state.sources.length) base.image_urls = state.sources.map((s) => s.dataUrl);
    if (state.references.length) base.reference_images = state.references.map((s) => s.dataUrl);
  } else {
    delete base.image_urls;
    delete base.reference_images;
    delete base.mask_url;
  }
  if (!base.prompt.trim()) { notice("Write a prompt first."); return; }
  notice("");
  const box = $("compare-results");
  box.innerHTML = "";
  await Promise.all(chosen.map(async (model) => {
    const column = document.createElement("section");
    column.className = "card";
    column.dataset.model = model;
    const title = document.createElement("h3");
    title.textContent = model;
    const status = document.createElement("p");
    status.className = "meta";
    status.textContent = "Queued";
    const results = document.createElement("div");
    column.append(title, status, results);
    box.append(column);
    const spec = state.images.find((m) => m.id === model);
    const body = { ...base, model };
    if (spec && body.image_urls && !spec.maxSourceImages) {
      status.textContent = `Left out: ${model} generates from text only and cannot edit the source`;
      return;
    }
    // What this model cannot take is changed, and each change is said on its card (never silently).
    const changed = [];
    if (spec && !spec.quality.includes(body.quality)) {
      changed.push(`quality ${body.quality} → ${spec.defaultQuality} (${model} has ${spec.quality.join(", ")})`);
      body.quality = spec.defaultQuality;
    }
    if (spec && !spec.imageSize.includes(body.aspect_ratio)) {
      changed.push(`aspect ratio ${body.aspect_ratio} → auto`);
      body.aspect_ratio = "auto";
    }
    if (spec && body.num_images > spec.maxNumImages) {
      changed.push(`outputs ${body.num_images} → ${spec.maxNumImages}`);
      body.num_images = spec.maxNumImages;
    }
    for (const field of ["strength", "negative_prompt", "mask_url"]) {
      if (spec && body[field] !== undefined && !spec.editControls.includes(field)) {
        changed.push(`${field.replace("_url", "")} not used (${model} has no ${field})`);
        delete body[field];
      }
    }
    if (changed.length) {
      const note = document.createElement("p");
      note.className = "note adjusted";
      note.textContent = `Adjusted for this model: ${changed.join("; ")}`;
      column.insertBefore(note, results);
    }
    let accepted;
    try { accepted = await call("POST", "/api/v1/images/generate", body); } catch (e) {
      status.textContent = `Refused: ${e.message}`;
      return;
    }
    const task = await follow(accepted.task_id, (p) => { status.textContent = describeProgress(p)[0]; });
    if (task.status !== "completed") { status.textContent = `${task.status}: ${task.error?.message || ""}`; return; }
    // Run time and queue time apart: a model that waited behind another is not slower for it.
    const ran = task.completed_at - (task.started_at ?? task.created_at);
    const waited = (task.started_at ?? task.created_at) - task.created_at;
    status.textContent = `ran ${ran.toFixed(1)} s · queued ${waited.toFixed(1)} s`;
    await showResults(results, task);
  }));
}

$("compare-run").addEventListener("click", () => compare());

// ---- history -------------------------------------------------------------------------------------------------

async function loadHistory(more = false) {
  const params = new URLSearchParams({ limit: "20" });
  if ($("history-model").value) params.set("model", $("history-model").value);
  if ($("history-status").value) params.set("status", $("history-status").value);
  if (more && state.historyCursor) params.set("cursor", state.historyCursor);
  const page = await guarded(() => call("GET", `/api/v1/tasks?${params}`));
  const list = $("history");
  if (!more) list.innerHTML = "";
  for (const task of page.tasks) list.append(await historyItem(task));
  state.historyCursor = page.next_cursor;
  $("history-more").hidden = !page.next_cursor;
}

async function historyItem(task) {
  const li = document.createElement("li");
  li.dataset.taskId = task.task_id;
  const thumb = document.createElement("img");
  const expired = task.darkroom?.files_expired;
  const first = expired ? null : (task.images || [])[0] || (task.videos || [])[0]?.poster;
  thumb.alt = expired ? "Files expired" : first ? `Result of ${task.task_id}` : "No output";
  if (first) thumb.src = await blobUrl(first.url).catch(() => "");
  const text = document.createElement("div");
  text.innerHTML = "";
  const title = document.createElement("strong");
  title.textContent = task.prompt;
  const meta = document.createElement("p");
  meta.className = "meta";
  meta.textContent = `${task.model} · ${task.status} · ${new Date(task.created_at * 1000).toLocaleString()} · ` +
    `seed ${task.seed}` + (expired ? " · files expired" : task.darkroom?.files_expire_at ?
      ` · files kept until ${new Date(task.darkroom.files_expire_at * 1000).toLocaleString()}` : "");
  text.append(title, meta);
  const tools = document.createElement("div");
  tools.className = "tools";
  tools.append(
    button("Open", `Open ${task.task_id}`, () => openTask(task)),
    button("Re-run", `Run ${task.task_id} again`, () => rerun(task)),
    button("Delete", `Delete ${task.task_id}`, async () => {
      if (!window.confirm(`Delete this task and its files? "${task.prompt.slice(0, 60)}" cannot be brought back.`)) {
        return;
      }
      await guarded(() => call("DELETE", `/api/v1/tasks/${task.task_id}`));
      li.remove();
      notice("Deleted, with its files.", "info");
    }),
  );
  li.append(thumb, text, tools);
  return li;
}

async function openTask(task) {
  setView("create");
  const full = await guarded(() => call("GET", `/api/v1/tasks/${task.task_id}`));
  if (full.darkroom?.files_expired) notice("This task's files have expired; Re-run makes it again (same seed).", "info");
  else if (full.status === "completed") await showResults($("results"), full);
  else showProgress(`${full.status}${full.error ? `: ${full.error.message}` : ""}`, 0);
}

async function rerun(task) {
  const video = state.videos.some((m) => m.id === task.model);
  const mode = video ? "video" : (task.darkroom?.task === "generate" ? "generate" : "edit");
  const value = `${mode}:${task.model}`;
  if (![...$("model").options].some((o) => o.value === value)) { notice(`${task.model} is not served now.`); return; }
  $("model").value = value;
  selectModel(value);
  promptBox.value = task.prompt;
  $("prompt-count").textContent = String(task.prompt.length);
  const asked = task.darkroom?.asked || {};
  if (asked.quality && !video) $("quality").value = asked.quality;
  if (asked.aspect_ratio) $(video ? "video-aspect" : "aspect").value = asked.aspect_ratio;
  if (video) {
    if (asked.duration) $("duration").value = String(asked.duration);
    if (asked.resolution) $("resolution").value = asked.resolution;
    if (asked.fps) $("fps").value = String(asked.fps);
  } else {
    $("num-images").value = String((task.seeds || [task.seed]).length);
  }
  $("seed").value = task.seed;
  $("seed-lock").checked = true;
  // Every recorded control, so the run is the same request (the ones the model ignores stay hidden).
  const d = task.darkroom || {};
  $("steps").value = d.num_inference_steps ?? "";
  $("guidance").value = d.guidance_scale ?? "";
  $("strength").value = d.task === "generate" || video ? "" : (d.strength ?? "");
  $("negative").value = d.negative_prompt || "";
  await loras.show(state.spec);
  loras.restore(asked.loras);
  state.sources = [];
  state.references = [];
  let maskUrl = null;
  for (const input of d.inputs || []) {
    const item = await toDataUrl(await blobUrl(input.url));
    if (input.role === "mask") maskUrl = item.dataUrl;
    else (input.role === "reference" ? state.references : state.sources).push(item);
  }
  renderThumbs();
  await restoreMask(maskUrl);
  setView("create");
  run(buildBody());
}

// A recorded mask, painted back over its source (or the mask painter closed when the task had none).
async function restoreMask(maskUrl) {
  const on = !!maskUrl && state.sources.length > 0 && !$("mask-box").hidden;
  $("mask-stage").hidden = !on;
  $("mask-tools").hidden = !on;
  $("mask-toggle").setAttribute("aria-pressed", String(on));
  $("mask-toggle").textContent = on ? "Don't use a mask" : "Paint a mask";
  if (on) await mask.restore(state.sources[0].dataUrl, maskUrl);
}

$("history-refresh").addEventListener("click", () => loadHistory());
$("history-more").addEventListener("click", () => loadHistory(true));
$("history-model").addEventListener("change", () => loadHistory());
$("history-status").addEventListener("change", () => loadHistory());

// ---- views ---------------------------------------------------------------------------------------------------

function setView(view) {
  state.view = view;
  for (const name of ["create", "compare", "history"]) {
    $(`tab-${name}`).setAttribute("aria-selected", String(name === view));
    $(`view-${name}`).hidden = name !== view;
  }
  $("compare-models").hidden = view !== "compare";
  if (view === "compare") $("inputs").hidden = false;  // comparing edits needs the images, whatever the select says
  else if (state.mode === "generate") $("inputs").hidden = true;
  $("compare-run").hidden = view !== "compare";
  $("run").hidden = view === "compare";
  if (view === "history") loadHistory().catch(() => {});
}

for (const name of ["create", "compare", "history"]) {
  $(`tab-${name}`).addEventListener("click", () => setView(name));
}

loadModels().catch(() => {});
