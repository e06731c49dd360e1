// "Copy as code": the request the form would send, as curl, Python (requests) or JavaScript (fetch) against this
// server. The key is referenced through an environment variable, never pasted into the text.

function route(kind) {
  return kind === "video" ? "/api/v1/videos/generate" : "/api/v1/images/generate";
}

export function asCode(lang, kind, body, needsKey) {
  const base = location.origin;
  const url = base + route(kind);
  // The page runs requests asynchronously; pasted code waits for the images (celery=false, the API's default).
  const { celery, ...request } = body;
  const json = JSON.stringify(request, null, 2);
  if (lang === "curl") {
    const auth = needsKey ? ` \\\n  -H "Authorization: Bearer $DARKROOM_API_KEY"` : "";
    // The body goes through stdin: data URLs of source images are longer than a command-line argument may be.
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
    `console.log(await r.json());\n`;
}
