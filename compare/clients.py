"""One client per hosted dialect: turn a payload into that API's request, wait for it the way that API's own
clients do (polling its status where it has one), and bring the outputs home.

Each `run` returns the output bytes and when the side first reported progress (None for dialects that answer in
one response). Failures raise `RequestFailed` with the side's HTTP status and error code, as the report counts
them. An API key is sent only to the side's own host, never to a storage host its output URLs point at.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from compare.payloads import Payload


class RequestFailed(Exception):
    """The side refused or failed the request (or it timed out); `code` is the side's own error code."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message[:500]


@dataclass(frozen=True)
class Output:
    """One image or clip a side delivered."""

    data: bytes
    content_type: str


@dataclass
class Reply:
    """What a side answered for one request."""

    outputs: list[Output]
    task_id: str | None = None
    first_progress_s: float | None = None
    video_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class ImageSource:
    """Payload images as each dialect wants them: bytes, data URLs, or the URL given (read once, kept)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self._cache: dict[str, tuple[bytes, str]] = {}

    async def read(self, ref: str) -> tuple[bytes, str]:
        """(bytes, content type) of a path, data URL or http(s) URL."""
        if ref not in self._cache:
            if ref.startswith("data:"):
                head, _, data = ref.partition(",")
                self._cache[ref] = (base64.b64decode(data), head[5:].split(";")[0] or "image/png")
            elif ref.startswith(("http://", "https://")):
                r = await self.http.get(ref, follow_redirects=True)
                r.raise_for_status()
                self._cache[ref] = (r.content, r.headers.get("content-type", "image/png").split(";")[0])
            else:
                path = Path(ref)
                self._cache[ref] = (path.read_bytes(), mimetypes.guess_type(path.name)[0] or "image/png")
        return self._cache[ref]

    async def url(self, ref: str) -> str:
        """A URL the side can read: the one given, or a data URL of a local file."""
        if ref.startswith(("http://", "https://", "data:")):
            return ref
        data, mime = await self.read(ref)
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"

    async def base64(self, ref: str) -> str:
        """Plain base64 of the bytes (Black Forest Labs' and Gemini's inline images)."""
        data, _ = await self.read(ref)
        return base64.b64encode(data).decode()


class DialectClient(ABC):
    """Talks one hosted dialect to one base URL."""

    name: ClassVar[str]
    done_states: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, base_url: str, key: str | None, http: httpx.AsyncClient, images: ImageSource,
                 poll_s: float = 0.5) -> None:
        self.base = base_url.rstrip("/")
        self.key = key
        self.http = http
        self.images = images
        self.poll_s = poll_s
        self._host = urlsplit(self.base).netloc

    def auth_headers(self) -> dict[str, str]:
        """The header this provider's clients send the key in (a bearer token unless the provider says otherwise)."""
        return {"Authorization": f"Bearer {self.key}"}

    @abstractmethod
    async def run(self, payload: Payload, started: float) -> Reply:
        """Send the payload, wait for its outputs, download them."""

    def _headers_for(self, url: str) -> dict[str, str]:
        return self.auth_headers() if self.key and urlsplit(url).netloc == self._host else {}

    def _url(self, path_or_url: str) -> str:
        return path_or_url if path_or_url.startswith(("http://", "https://")) else f"{self.base}{path_or_url}"

    async def _post(self, path: str, **kwargs: Any) -> dict[str, Any]:
        url = self._url(path)
        r = await self.http.post(url, headers={**self._headers_for(url), **kwargs.pop("headers", {})}, **kwargs)
        return _json_or_fail(r)

    async def get_json(self, path_or_url: str) -> tuple[int, dict[str, Any]]:
        """GET a status or task object (with the key when it is the side's own host)."""
        url = self._url(path_or_url)
        r = await self.http.get(url, headers=self._headers_for(url))
        if r.status_code >= 500 or r.status_code in (401, 403, 404):
            raise _failure(r)
        try:
            body = r.json()
        except ValueError:
            raise RequestFailed(r.status_code, "bad_response", f"status answer is not JSON: {r.text[:200]}") from None
        return r.status_code, body if isinstance(body, dict) else {"value": body}

    async def _download(self, url: str) -> Output:
        if url.startswith("data:"):
            head, _, data = url.partition(",")
            return Output(base64.b64decode(data), head[5:].split(";")[0])
        r = await self.http.get(self._url(url), headers=self._headers_for(self._url(url)), follow_redirects=True)
        if r.status_code != 200:
            raise _failure(r)
        return Output(r.content, r.headers.get("content-type", "application/octet-stream").split(";")[0])

    async def _poll(self, url: str, started: float, reply: Reply, state_of: Any) -> dict[str, Any]:
        """GET `url` until `state_of(body)` says done; note the first answer that shows the work running."""
        while True:
            _status, body = await self.get_json(url)
            state, running = state_of(body)
            if running and reply.first_progress_s is None:
                reply.first_progress_s = time.perf_counter() - started
            if state in self.done_states:
                return body
            await asyncio.sleep(self.poll_s)


def _failure(r: httpx.Response) -> RequestFailed:
    """The side's error as (status, code, message), whichever shape its dialect uses."""
    try:
        body = r.json()
    except ValueError:
        return RequestFailed(r.status_code, f"http_{r.status_code}", r.text[:300] or r.reason_phrase)
    code, message = f"http_{r.status_code}", str(body)[:300]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = str(err.get("code") or err.get("type") or err.get("status") or code)
            message = str(err.get("message") or message)
        elif isinstance(err, str):
            message = err
        elif "detail" in body:
            detail = body["detail"]
            message = detail if isinstance(detail, str) else str(detail)[:300]
            code = str(body.get("code") or body.get("title") or code)
        elif isinstance(body.get("status"), str):
            code = body["status"]
    return RequestFailed(r.status_code, code, message)


def _json_or_fail(r: httpx.Response) -> dict[str, Any]:
    if r.status_code >= 400:
        raise _failure(r)
    try:
        body = r.json()
    except ValueError:
        raise RequestFailed(r.status_code, "bad_response", f"answer is not JSON: {r.text[:200]}") from None
    if not isinstance(body, dict):
        raise RequestFailed(r.status_code, "bad_response", "answer is not a JSON object")
    return body


class QolabaClient(DialectClient):
    """The hosted platform's API (and darkroom's native one): submit with celery, poll the task."""

    name = "qolaba"
    done_states = frozenset({"completed", "failed", "cancelled"})

    async def run(self, payload: Payload, started: float) -> Reply:
        body: dict[str, Any] = {"model": payload.model, "prompt": payload.prompt}
        if payload.images:
            body["image_urls"] = [await self.images.url(ref) for ref in payload.images]
        body |= payload.params
        body["celery"] = True
        path = "/api/v1/videos/generate" if payload.kind == "video" else "/api/v1/images/generate"
        answer = await self._post(path, json=body)
        reply = Reply([], task_id=answer.get("task_id"))
        view = answer
        if answer.get("status") not in self.done_states:
            if not reply.task_id:
                raise RequestFailed(None, "bad_response", "the submit answer has no task_id")
            view = await self._poll(f"/api/v1/tasks/{reply.task_id}", started, reply, lambda b: (
                b.get("status"), b.get("status") == "processing" or ((b.get("progress") or {}).get("step") or 0) > 0))
        if view.get("status") != "completed":
            err = view.get("error") or {}
            raise RequestFailed(None, str(err.get("code") or view.get("status")), str(err.get("message") or ""))
        for video in view.get("videos", []):
            reply.outputs.append(await self._download(video["url"]))
            reply.video_seconds += float(video.get("duration") or 0)
        for image in view.get("images", []):
            reply.outputs.append(await self._download(image["url"]))
        return reply


class OpenAIClient(DialectClient):
    """OpenAI Images: edits (multipart, with the images) or generations (JSON); one response, no progress."""

    name = "openai"

    async def run(self, payload: Payload, started: float) -> Reply:
        if payload.kind == "video":
            raise RequestFailed(None, "unsupported", "compare sends OpenAI video payloads through the qolaba dialect")
        fields = {"model": payload.model, "prompt": payload.prompt, **payload.params}
        if payload.images:
            files = []
            for n, ref in enumerate(payload.images):
                data, mime = await self.images.read(ref)
                files.append(("image[]", (f"image-{n}{mimetypes.guess_extension(mime) or '.png'}", data, mime)))
            answer = await self._post("/v1/images/edits", data={k: str(v) for k, v in fields.items()}, files=files)
        else:
            answer = await self._post("/v1/images/generations", json=fields)
        reply = Reply([], task_id=(answer.get("darkroom") or {}).get("task_id"))
        fmt = str(payload.params.get("output_format", "png"))
        for item in answer.get("data", []):
            if item.get("b64_json"):
                reply.outputs.append(Output(base64.b64decode(item["b64_json"]), f"image/{fmt}"))
            elif item.get("url"):
                reply.outputs.append(await self._download(item["url"]))
        return reply


class FalClient(DialectClient):
    """fal's queue: POST /<endpoint>, poll status_url (IN_QUEUE, IN_PROGRESS, COMPLETED), read response_url."""

    name = "fal"
    done_states = frozenset({"COMPLETED"})

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Key {self.key}"}

    async def run(self, payload: Payload, started: float) -> Reply:
        body: dict[str, Any] = {"prompt": payload.prompt}
        if payload.images:
            urls = [await self.images.url(ref) for ref in payload.images]
            # Kontext endpoints take one image_url; the others a list.
            if "kontext" in payload.model and len(urls) == 1:
                body["image_url"] = urls[0]
            else:
                body["image_urls"] = urls
        body |= payload.params
        answer = await self._post(f"/{payload.model.strip('/')}", json=body)
        reply = Reply([], task_id=answer.get("request_id"))
        if not answer.get("status_url") or not answer.get("response_url"):
            raise RequestFailed(None, "bad_response", "the queue answer has no status_url/response_url")
        await self._poll(answer["status_url"], started, reply,
                         lambda b: (b.get("status"), b.get("status") in ("IN_PROGRESS", "COMPLETED")))
        result = _json_or_fail(await self.http.get(answer["response_url"],
                                                   headers=self._headers_for(answer["response_url"])))
        if isinstance(result.get("video"), dict):
            reply.outputs.append(await self._download(result["video"]["url"]))
        for image in result.get("images", []):
            reply.outputs.append(await self._download(image["url"]))
        return reply


class ReplicateClient(DialectClient):
    """Replicate: create a prediction on owner/name, poll urls.get until succeeded/failed/canceled."""

    name = "replicate"
    done_states = frozenset({"succeeded", "failed", "canceled"})

    async def run(self, payload: Payload, started: float) -> Reply:
        inputs: dict[str, Any] = {"prompt": payload.prompt}
        if payload.images:
            urls = [await self.images.url(ref) for ref in payload.images]
            # FLUX Kontext's input is one input_image; Google's and ByteDance's a list.
            if "flux-kontext" in payload.model and len(urls) == 1:
                inputs["input_image"] = urls[0]
            else:
                inputs["image_input"] = urls
        inputs |= payload.params
        answer = await self._post(f"/v1/models/{payload.model.strip('/')}/predictions", json={"input": inputs})
        reply = Reply([], task_id=answer.get("id"))
        view = answer
        if answer.get("status") not in self.done_states:
            get_url = (answer.get("urls") or {}).get("get") or f"/v1/predictions/{reply.task_id}"
            view = await self._poll(get_url, started, reply, lambda b: (
                b.get("status"), b.get("status") in ("processing", "succeeded")))
        if view.get("status") != "succeeded":
            raise RequestFailed(None, str(view.get("status")), str(view.get("error") or ""))
        output = view.get("output")
        for url in [output] if isinstance(output, str) else list(output or []):
            reply.outputs.append(await self._download(url))
        return reply


class BflClient(DialectClient):
    """Black Forest Labs: POST /v1/<endpoint> -> polling_url; poll until Ready (or an error status)."""

    name = "bfl"
    done_states = frozenset({"Ready", "Error", "Failed", "Content Moderated", "Request Moderated", "Task not found"})

    def auth_headers(self) -> dict[str, str]:
        return {"x-key": str(self.key)}

    async def run(self, payload: Payload, started: float) -> Reply:
        body: dict[str, Any] = {"prompt": payload.prompt}
        for n, ref in enumerate(payload.images):
            body["input_image" if n == 0 else f"input_image_{n + 1}"] = (
                ref if ref.startswith(("http://", "https://")) else await self.images.base64(ref))
        body |= payload.params
        answer = await self._post(f"/v1/{payload.model.strip('/')}", json=body)
        reply = Reply([], task_id=answer.get("id"))
        poll = answer.get("polling_url") or f"/v1/get_result?id={reply.task_id}"
        view = await self._poll(poll, started, reply, lambda b: (
            b.get("status"), (b.get("progress") or 0) > 0 or b.get("status") == "Ready"))
        if view.get("status") != "Ready":
            raise RequestFailed(None, str(view.get("status")).lower().replace(" ", "_"), str(view.get("details") or ""))
        reply.outputs.append(await self._download(view["result"]["sample"]))
        return reply


class GeminiClient(DialectClient):
    """Gemini generateContent: the prompt and images as parts; images come back inline in one response."""

    name = "gemini"

    def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": str(self.key)}

    async def run(self, payload: Payload, started: float) -> Reply:
        parts: list[dict[str, Any]] = [{"text": payload.prompt}]
        for ref in payload.images:
            data, mime = await self.images.read(ref)
            parts.append({"inline_data": {"mime_type": mime, "data": base64.b64encode(data).decode()}})
        body = {"contents": [{"role": "user", "parts": parts}],
                "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]}, **payload.params}
        answer = await self._post(f"/v1beta/models/{payload.model}:generateContent", json=body)
        reply = Reply([], task_id=(answer.get("darkroom") or {}).get("task_id"))
        for candidate in answer.get("candidates", []):
            for part in (candidate.get("content") or {}).get("parts", []):
                inline = part.get("inlineData") or part.get("inline_data")
                if inline:
                    reply.outputs.append(Output(base64.b64decode(inline["data"]),
                                                inline.get("mimeType") or inline.get("mime_type") or "image/png"))
        if not reply.outputs:
            reason = next((c.get("finishReason") for c in answer.get("candidates", [])), None)
            raise RequestFailed(None, str(reason or "no_image").lower(), "the answer holds no image")
        return reply


