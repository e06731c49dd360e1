"""The web studio in a real browser against a real darkroom on loopback (demo models): edit from an upload,
inpaint with a painted mask, compare two models, cancel, history across a reload with delete, the API key
prompt, and copy-as-curl run for real."""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from server.engine.sizing import exact_image_size
from tests.browser.conftest import artifact
from tests.conftest import API_KEY
from tests.support import ServerProcess

pytestmark = pytest.mark.browser


def _png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, colour).save(path, "PNG")
    return path


def _open(page: Any, server: ServerProcess) -> None:
    page.goto(server.base_url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")


def _compose(page: Any, tmp_path: Path, model: str = "edit:flux-kontext-pro", prompt: str = "add a red hat",
             steps: int = 2, quality: str = "512") -> None:
    page.select_option("#model", model)
    page.set_input_files("#file", str(_png(tmp_path / "src.png", (96, 64), (30, 120, 200))))
    page.wait_for_selector("#sources img")
    page.fill("#prompt", prompt)
    page.select_option("#quality", quality)
    page.fill("#steps", str(steps))


def _wait_result(page: Any, container: str = "#results") -> dict[str, int]:
    page.wait_for_function("c => [...document.querySelectorAll(c + ' img')].some(i => i.complete && i.naturalWidth)",
                           arg=container, timeout=120_000)
    return page.evaluate("c => { const i = document.querySelector(c + ' img'); "
                         "return {w: i.naturalWidth, h: i.naturalHeight}; }", container)


def _task_id(page: Any, container: str = "#results") -> str:
    return page.get_attribute(f"{container} [data-task-id]", "data-task-id")


def test_upload_edit_shows_the_result_at_its_size(page: Any, server: ServerProcess, tmp_path: Path) -> None:
    _open(page, server)
    assert "demo weights" in page.inner_text("#model-info")  # the badge says what runs
    _compose(page, tmp_path)
    assert page.inner_text("#prompt-count") == str(len("add a red hat"))
    page.click("#run")
    size = _wait_result(page)
    assert (size["w"], size["h"]) == exact_image_size(512, (96, 64))  # the 3:2 source's shape at 512 px
    assert "Done" in page.inner_text("#progress-text")
    shot = artifact("studio-edit.png")
    page.screenshot(path=str(shot), full_page=True)
    print(f"studio screenshot: {shot}")
    task = httpx.get(f"{server.base_url}/api/v1/tasks/{_task_id(page)}").json()
    assert task["status"] == "completed" and task["darkroom"]["task"] == "edit"


def test_a_painted_mask_runs_an_inpaint(page: Any, server: ServerProcess, tmp_path: Path) -> None:
    _open(page, server)
    _compose(page, tmp_path, prompt="replace the sky")
    page.click("#mask-toggle")
    page.wait_for_selector("#mask-canvas", state="visible")
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + 5, box["y"] + 5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    page.click("#run")
    _wait_result(page)
    task = httpx.get(f"{server.base_url}/api/v1/tasks/{_task_id(page)}").json()
    assert task["darkroom"]["task"] == "inpaint"
    assert [i["role"] for i in task["darkroom"]["inputs"]] == ["source", "mask"]
    mask = Image.open(io.BytesIO(httpx.get(task["darkroom"]["inputs"][1]["url"]).content)).convert("L")
    assert mask.getextrema() == (0, 255)  # painted white on black


def test_compare_two_models_side_by_side(page: Any, server: ServerProcess, tmp_path: Path) -> None:
    _open(page, server)
    _compose(page, tmp_path, prompt="make it autumn")
    page.click("#tab-compare")
    for model in ("flux-kontext-pro", "seedream-4.0"):
        page.check(f"#compare-list input[value='{model}']")
    page.click("#compare-run")
    for model in ("flux-kontext-pro", "seedream-4.0"):
        column = f"#compare-results [data-model='{model}']"
        _wait_result(page, column)
        assert page.inner_text(f"{column} h3") == model
        assert re.search(r"\d+\.\d s", page.inner_text(f"{column} .meta"))


def test_the_forming_image_replaces_the_progress_bar(page: Any, server: ServerProcess, tmp_path: Path) -> None:
    """The studio asks for live previews: while the render runs the preview image shows (the meter hidden), and the
    result replaces it."""
    _open(page, server)
    _compose(page, tmp_path, steps=60, quality="1K")
    page.click("#run")
    page.wait_for_function("() => { const i = document.querySelector('#preview'); return !i.hidden && "
                           "i.src.startsWith('data:image/jpeg') && i.complete && i.naturalWidth > 0; }",
                           timeout=120_000)
    assert not page.is_visible("#progress .meter") and "step" in page.get_attribute("#preview", "alt")
    shot = artifact("studio-preview.png")
    page.screenshot(path=str(shot), full_page=True)
    _wait_result(page)
    page.wait_for_function("document.querySelector('#preview').hidden", timeout=60_000)
    assert page.is_visible("#progress .meter")


def test_cancel_a_running_job(page: Any, server: ServerProcess, tmp_path: Path) -> None:
    _open(page, server)
    _compose(page, tmp_path, steps=200, quality="1K")
    page.click("#run")
    page.wait_for_function("document.querySelector('#progress-text').textContent.startsWith('Step')",
                           timeout=120_000)
    assert page.is_enabled("#cancel")
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#progress-text').textContent === 'Cancelled'", timeout=60_000)
    tasks = httpx.get(f"{server.base_url}/api/v1/tasks", params={"limit": 5, "status": "cancelled"}).json()
    assert any(t["prompt"] == "add a red hat" and t["progress"]["total"] and t["progress"]["step"] < 200
               for t in tasks["tasks"])


def test_history_survives_a_reload_and_delete_removes_the_files(page: Any, server: ServerProcess,
                                                                  tmp_path: Path) -> None:
    _open(page, server)
    _compose(page, tmp_path, prompt="history check")
    page.click("#run")
    _wait_result(page)
    task_id = _task_id(page)
    file_url = httpx.get(f"{server.base_url}/api/v1/tasks/{task_id}").json()["images"][0]["url"]
    page.reload()
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.click("#tab-history")
    item = f"#history li[data-task-id='{task_id}']"
    page.wait_for_selector(item)
    assert "history check" in page.inner_text(item)
    page.click(f"{item} button:has-text('Delete')")
    page.wait_for_selector(item, state="detached")
    assert httpx.get(file_url).status_code == 404
    assert httpx.get(f"{server.base_url}/api/v1/tasks/{task_id}").status_code == 404


def test_the_page_asks_for_the_key_and_says_when_it_is_wrong(page: Any, keyed_server: ServerProcess) -> None:
    page.goto(keyed_server.base_url + "/")
    page.wait_for_selector("#key-dialog[open]")
    assert "needs an API key" in page.inner_text("#key-message")
    page.fill("#key-input", "not-the-key-0000000")
    page.click("#key-save")
    page.wait_for_function("document.querySelector('#key-message').textContent.includes('401')")
    assert "401" in page.inner_text("#notice")
    page.fill("#key-input", API_KEY)
    page.click("#key-save")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    assert page.evaluate("sessionStorage.getItem('darkroom.key')") == API_KEY


def test_copy_as_curl_runs_and_gets_a_200(page: Any, server: ServerProcess, tmp_path: Path) -> None:
    _open(page, server)
    _compose(page, tmp_path, prompt="copied from the studio")
    page.select_option("#code-lang", "curl")
    page.click("#copy-code")
    text = page.inner_text("#code")
    assert text.startswith("curl ") and "data:image/png;base64," in text and '"celery"' not in text
    run = subprocess.run(["bash", "-c", text.replace("curl -sS ", "curl -sS -w '\\n%{http_code}' ", 1)],
                         capture_output=True, text=True, timeout=300, check=False)
    body, _, status = run.stdout.rpartition("\n")
    assert status == "200", run.stdout[-500:] + run.stderr[-500:]
    answer = json.loads(body)
    assert answer["status"] == "completed" and answer["prompt"] == "copied from the studio"


def test_loras_upload_pick_scale_and_rerun(page: Any, server: ServerProcess, demo_dir: Path, tmp_path: Path) -> None:
    """Upload a LoRA from the page, set its strength, run; the task records it, and History's Re-run keeps it."""
    from pipelines.registry import family_class
    from weights.demo_loras import make_adapter

    made = make_adapter(family_class("flux-kontext"), demo_dir / "flux1-kontext-dev", tmp_path / "lora", seed=31)
    adapter = tmp_path / "fox-style.safetensors"
    adapter.write_bytes(made.read_bytes())
    _open(page, server)
    _compose(page, tmp_path, prompt="lora check")
    assert page.is_visible("#lora-settings")
    page.set_input_files("#lora-file", str(adapter))
    page.wait_for_selector("#lora-list li")
    assert "fox-style" in page.inner_text("#lora-list")
    page.fill("#lora-list input[type=range]", "0.65")
    page.click("#run")
    _wait_result(page)
    task = httpx.get(f"{server.base_url}/api/v1/tasks/{_task_id(page)}").json()
    (used,) = task["darkroom"]["asked"]["loras"]
    assert used["name"] == "fox-style" and used["scale"] == 0.65 and used["source"] == "upload"
    page.click("#tab-history")
    item = f"#history li[data-task-id='{task['task_id']}']"
    page.wait_for_selector(item)
    page.click(f"{item} button:has-text('Re-run')")
    page.wait_for_function(f"document.querySelector('#results [data-task-id]') && "
                           f"document.querySelector('#results [data-task-id]').dataset.taskId !== '{task['task_id']}'")
    _wait_result(page)
    again = httpx.get(f"{server.base_url}/api/v1/tasks/{_task_id(page)}").json()
    assert again["darkroom"]["asked"]["loras"] == task["darkroom"]["asked"]["loras"]
    assert page.inner_text("#lora-list").count("fox-style") == 1
    page.select_option("#model", "video:sora-2")
    assert page.is_visible("#lora-settings") and not page.query_selector("#lora-list li")  # another family
