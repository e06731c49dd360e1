"""The providers' JavaScript SDKs against darkroom, unchanged but for their base URL: the `replicate` package (a
local file uploaded through the files API with its metadata part, a FileOutput read without the key through its
signed URL) and `@fal-ai/client` (the queue's request id, read from the x-fal-request-id header)."""

from __future__ import annotations

import base64
from typing import Any

from tests.conftest import API_KEY
from tests.support import ServerProcess, png_bytes

REPLICATE = """
import Replicate from "replicate";
import replicateStreams from "replicate/lib/stream.js";
const replicate = new Replicate({ auth: process.env.KEY, baseUrl: process.env.BASE + "/v1" });
const png = Buffer.from(process.env.PNG, "base64");
const file = await replicate.files.create(new Blob([png], { type: "image/png" }), { purpose: "darkroom-test" });
const output = await replicate.run("black-forest-labs/flux-kontext-pro", {
  input: { prompt: "make it teal", input_image: png, seed: 7, output_format: "png" } });
const first = Array.isArray(output) ? output[0] : output;
// The SDK wraps https:// outputs in its FileOutput; over this test's plain http it hands back the URL string, which
// gets the very FileOutput the SDK would make.
const fileOutput = typeof first === "string" ? replicateStreams.createFileOutput({ url: first, fetch }) : first;
const blob = await fileOutput.blob();  // a plain fetch of the output URL: no key goes with it
console.log(JSON.stringify({ file: { id: file.id, metadata: file.metadata, size: file.size,
                                     type: file.content_type },
                             url: fileOutput.url().toString(), bytes: blob.size, type: blob.type }));
"""

FAL = """
import { createFalClient } from "@fal-ai/client";
const base = process.env.BASE;
// fal's clients call https://queue.fal.run/...; point them at darkroom by rewriting the origin.
const fal = createFalClient({ credentials: process.env.KEY,
  requestMiddleware: async (req) => ({ ...req, url: req.url.replace(/^https:\\/\\/(queue\\.)?fal\\.run/, base) }) });
const result = await fal.subscribe("fal-ai/flux-pro/kontext", {
  input: { prompt: "make it teal", image_url: "data:image/png;base64," + process.env.PNG, seed: 3 },
  pollInterval: 200 });
console.log(JSON.stringify({ requestId: result.requestId, images: result.data.images.length,
                             url: result.data.images[0].url }));
"""

FAL_STREAMING = """
import { createFalClient } from "@fal-ai/client";
const base = process.env.BASE;
const fal = createFalClient({ credentials: process.env.KEY,
  requestMiddleware: async (req) => ({ ...req, url: req.url.replace(/^https:\\/\\/(queue\\.)?fal\\.run/, base) }) });
const updates = [];
const result = await fal.subscribe("fal-ai/flux-pro/kontext", {
  input: { prompt: "make it teal", image_url: "data:image/png;base64," + process.env.PNG, seed: 3,
           num_inference_steps: 16, previews: true },
  mode: "streaming", logs: true, startTimeout: 600,
  onQueueUpdate: (u) => updates.push({ status: u.status, logs: (u.logs || []).length,
                                       preview: u.darkroom && u.darkroom.preview ? u.darkroom.preview.image.slice(0, 23)
                                                                                  : null }) });
console.log(JSON.stringify({ images: result.data.images.length, updates }));
"""


def _env(srv: ServerProcess) -> dict[str, str]:
    return {"BASE": srv.base_url, "KEY": API_KEY, "PNG": base64.b64encode(png_bytes((64, 48))).decode()}


def test_replicate_js_uploads_a_file_and_reads_its_output_without_the_key(keyed_server: ServerProcess,
                                                                           js_sdks: Any) -> None:
    out = js_sdks.run(REPLICATE, _env(keyed_server))
    assert out["file"]["metadata"] == {"purpose": "darkroom-test"} and out["file"]["type"] == "image/png"
    assert out["file"]["size"] > 0 and len(out["file"]["id"]) == 26
    assert out["url"].startswith(keyed_server.base_url + "/files/") and "sig=" in out["url"]
    assert out["bytes"] > 1000 and out["type"] == "image/png"  # a whole PNG came back over the signed URL


def test_fal_js_client_streams_status_with_previews(keyed_server: ServerProcess, js_sdks: Any) -> None:
    """subscribe(mode "streaming", startTimeout) reads GET .../status/stream: progress logs and (asked for) live
    previews arrive before COMPLETED."""
    out = js_sdks.run(FAL_STREAMING, _env(keyed_server))
    assert out["images"] == 1, out
    statuses = [u["status"] for u in out["updates"]]
    assert "IN_PROGRESS" in statuses and statuses[-1] == "COMPLETED", out
    assert any(u["preview"] == "data:image/jpeg;base64," for u in out["updates"]), out
    assert any(u["logs"] for u in out["updates"]), out


def test_fal_js_client_reads_the_request_id(keyed_server: ServerProcess, js_sdks: Any) -> None:
    out = js_sdks.run(FAL, _env(keyed_server))
    assert out["requestId"].startswith("task_") and out["images"] == 1, out
    assert "sig=" in out["url"]
