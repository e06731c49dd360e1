// Talking to darkroom from the page: the API key (asked once, kept in sessionStorage, sent on every call),
// JSON calls with darkroom's error shape, files as blob URLs (an <img> cannot send the key) and the task's
// Server-Sent Events read through fetch (EventSource cannot send it either).

const KEY = "darkroom.key";

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "http_error";
    this.field = err.field || null;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = getKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

export async function call(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  let data = null;
  try { data = await r.json(); } catch { data = null; }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

// A multipart upload (the browser sets the boundary); darkroom's error shape as for `call`.
export async function upload(path, form) {
  const r = await fetch(path, { method: "POST", headers: headers(), body: form });
  let data = null;
  try { data = await r.json(); } catch { data = null; }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

const blobs = new Map();

// A same-origin file URL as an object URL the page can show (fetched once with the key).
export async function blobUrl(url) {
  const path = new URL(url, location.href);
  const key = path.pathname + path.search;
  if (blobs.has(key)) return blobs.get(key);
  const r = await fetch(key, { headers: headers() });
  if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
  const made = URL.createObjectURL(await r.blob());
  blobs.set(key, made);
  return made;
}

// Read a task's event stream; `onEvent(name, data)` for each event until a final one. Returns a stop function.
export function events(taskId, onEvent) {
  const controller = new AbortController();
  (async () => {
    const r = await fetch(`/api/v1/tasks/${encodeURIComponent(taskId)}/events`,
      { headers: headers({ Accept: "text/event-stream" }), signal: controller.signal });
    if (!r.ok) { onEvent("error", { status: r.status }); return; }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message";
        let data = "";
        for (const line of chunk.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (data) onEvent(name, JSON.parse(data));
      }
    }
  })().catch((e) => { if (e.name !== "AbortError") onEvent("error", { message: String(e) }); });
  return () => controller.abort();
}
