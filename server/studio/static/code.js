// "Copy as code": the request the form would send, as curl, Python (requests) or JavaScript (Node's fetch) against
// this server. Source and reference images (and a painted mask) travel as files read from disk -- multipart parts
// named image, reference_images and mask, as the API takes them -- never as base64 pasted into the code. The key
// is referenced through an environment variable, never pasted into the text.

function route(kind) {
  return kind === "video" ? "/api/v1/videos/generate" : "/api/v1/images/generate";
}

const FILE_FIELDS = { image_urls: "image", reference_images: "reference_images", mask_url: "mask" };

// A file name safe to write in any of the three languages and on disk.
function safeName(name, used) {
  let base = (name || "image").replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^-+|-+$/g, "") || "image";
  if (!/\.(png|jpe?g|webp|gif)$/i.test(base)) base += ".png";
  let out = base;
  for (let i = 2; used.has(out); i++) out = base.replace(/(\.[^.]+)$/, `-${i}$1`);
  used.add(out);
  return out;
}

// The body split into plain fields and file parts; `files` names each data URL's file ({dataUrl -> name}).
export function splitBody(body, files) {
  const fields = {};
  const parts = [];
  for (const [key, value] of Object.entries(body)) {
    if (key === "celery" || key === "previews") continue;  // the page's own choices: pasted code waits for the result
    if (key in FILE_FIELDS) {
      for (const url of Array.isArray(value) ? value : [value]) {
        parts.push({ field: FILE_FIELDS[key], name: files.get(url) || "image.png" });
      }
    } else {
      fields[key] = typeof value === "object" ? JSON.stringify(value) : String(value);
    }
  }
  return { fields, parts };
}

// Names for the images the request carries: their own names where the page knows them.
export function fileNames(items) {
  const used = new Set();
  const names = new Map();
  for (const { dataUrl, name } of items) if (!names.has(dataUrl)) names.set(dataUrl, safeName(name, used));
  return names;
}

const shell = (s) => `'${s.replace(/'/g, "'\\''")}'`;
const py = (s) => JSON.stringify(s);

export function asCode(lang, kind, body, needsKey, files = new Map()) {
  const url = location.origin + route(kind);
  const { fields, parts } = splitBody(body, files);
  if (!parts.length) return jsonCode(lang, url, fields, body, needsKey);
  if (lang === "curl") {
    const auth = needsKey ? ` \\\n  -H "Authorization: Bearer $DARKROOM_API_KEY"` : "";
    const lines = Object.entries(fields).map(([k, v]) => `  --form-string ${shell(`${k}=${v}`)}`)
      .concat(parts.map((p) => `  -F ${shell(`${p.field}=@${p.name}`)}`));
    return `# run beside ${parts.map((p) => p.name).join(", ")}\ncurl -sS ${url}${auth} \\\n${lines.join(" \\\n")}\n`;
  }
  if (lang === "python") {
    const auth = needsKey ? `\n    headers={"Authorization": f"Bearer {os.environ['DARKROOM_API_KEY']}"},` : "";
    const data = Object.entries(fields).map(([k, v]) => `    ${py(k)}: ${py(v)},`).join("\n");
    const opened = parts.map((p) => `    (${py(p.field)}, open(${py(p.name)}, "rb")),`).join("\n");
    return `import os\nimport requests\n\nfields = {\n${data}\n}\nfiles = [\n${opened}\n]\n` +
      `r = requests.post("${url}", data=fields, files=files,${auth}\n    timeout=600)\nr.raise_for_status()\n` +
      `print(r.json())\n`;
  }
  const auth = needsKey ? `\n  headers: { Authorization: \`Bearer \${process.env.DARKROOM_API_KEY}\` },` : "";
  const appends = Object.entries(fields).map(([k, v]) => `form.append(${py(k)}, ${py(v)});`)
    .concat(parts.map((p) => `form.append(${py(p.field)}, new Blob([fs.readFileSync(${py(p.name)})]), ${py(p.name)});`));
  return `import fs from "node:fs";\n\nconst form = new FormData();\n${appends.join("\n")}\n\n` +
    `const r = await fetch("${url}", {\n  method: "POST",${auth}\n  body: form,\n});\nconsole.log(JSON.stringify(await r.json(), null, 2));\n`;
}

function jsonCode(lang, url, _fields, body, needsKey) {
  // The page runs requests asynchronously; pasted code waits for the images (celery=false, the API's default).
  const { celery, previews, ...request } = body;
  const json = JSON.stringify(request, null, 2);
  if (lang === "curl") {
    const auth = needsKey ? ` \\\n  -H "Authorization: Bearer $DARKROOM_API_KEY"` : "";
    return `curl -sS ${url} \\\n  -H 'Content-Type: application/json'${auth} \\\n  --data-binary @- <<'JSON'\n${json}\nJSON\n`;
  }
  if (lang === "python") {
    const auth = needsKey ? `\n    headers={"Authorization": f"Bearer {os.environ['DARKROOM_API_KEY']}"},` : "";
    return `import json, os\nimport requests\n\nbody = json.loads(r"""\n${json}\n""")\n` +
      `r = requests.post("${url}", json=body,${auth}\n    timeout=600)\nr.raise_for_status()\nprint(r.json())\n`;
  }
  const auth = needsKey ? `\n    Authorization: \`Bearer \${process.env.DARKROOM_API_KEY}\`,` : "";
  return `const body = ${json};\n\nconst r = await fetch("${url}", {\n  method: "POST",\n  headers: {\n` +
    `    "Content-Type": "application/json",${auth}\n  },\n  body: JSON.stringify(body),\n});\n` +
    `console.log(JSON.stringify(await r.json(), null, 2));\n`;
}
