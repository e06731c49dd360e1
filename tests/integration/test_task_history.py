"""The task history API the studio reads: cursor pages newest first, filters, a finished task's deletion with
its files, and the stored inputs a re-run uses."""

from __future__ import annotations

import httpx

from tests.support import ServerProcess, data_url, png_bytes

FAST = {"model": "flux-kontext-pro", "quality": "512", "num_inference_steps": 1}


def test_pages_filters_delete_and_inputs(server: ServerProcess) -> None:
    with server.client() as c:
        made = [c.post("/api/v1/images/generate", json={**FAST, "prompt": f"history {i}",
                                                         "image_urls": [data_url(png_bytes())]}).json()
                for i in range(3)]
        ids = [m["task_id"] for m in made]
        first = c.get("/api/v1/tasks", params={"limit": 2, "model": "flux-kontext-pro"}).json()
        assert [t["task_id"] for t in first["tasks"]] == ids[::-1][:2] and first["next_cursor"]
        second = c.get("/api/v1/tasks", params={"limit": 2, "model": "flux-kontext-pro",
                                                "cursor": first["next_cursor"]}).json()
        assert second["tasks"][0]["task_id"] == ids[0]
        assert all(t["model"] == "flux-kontext-pro" for t in first["tasks"] + second["tasks"])
        done = c.get("/api/v1/tasks", params={"status": "completed", "limit": 100}).json()["tasks"]
        assert set(ids) <= {t["task_id"] for t in done} and all(t["status"] == "completed" for t in done)
        assert c.get("/api/v1/tasks", params={"cursor": "not-a-cursor"}).status_code == 422
        assert c.get("/api/v1/tasks", params={"limit": 0}).status_code == 422

        task = c.get(f"/api/v1/tasks/{ids[0]}").json()
        (source,) = task["darkroom"]["inputs"]
        assert source["role"] == "source" and c.get(source["url"]).headers["content-type"] == "image/png"
        assert task["darkroom"]["asked"] == {"quality": "512", "aspect_ratio": "auto"}
        file_url = task["images"][0]["url"]
        r = c.delete(f"/api/v1/tasks/{ids[0]}")
        assert r.status_code == 200 and r.json() == {"task_id": ids[0], "deleted": True}
        assert c.get(file_url).status_code == 404 and c.get(source["url"]).status_code == 404
        assert c.get(f"/api/v1/tasks/{ids[0]}").status_code == 404

        busy = c.post("/api/v1/images/generate", json={**FAST, "prompt": "still running", "quality": "1K",
                                                        "num_inference_steps": 200, "celery": True}).json()["task_id"]
        r = c.delete(f"/api/v1/tasks/{busy}")
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_finished"
        c.post(f"/api/v1/tasks/{busy}/cancel")
        assert httpx.get(f"{server.base_url}/api/v1/tasks/task_0_missing").status_code == 404
