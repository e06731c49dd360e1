"""The web studio in a real browser against a real darkroom on loopback (demo models): edit from an upload,
inpaint with a painted mask, compare two models, cancel, history across a reload with delete, the API key
prompt, and copy-as-curl run for real."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
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


def _paint_mask(page: Any, reach: float) -> None:
    """Open the mask painter and paint one stroke from the top-left corner to `reach` of the way across."""
    page.click("#mask-toggle")
    page.wait_for_selector("#mask-canvas", state="visible")
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + 4, box["y"] + 4)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * reach, box["y"] + box["height"] * reach, steps=8)
    page.mouse.up()


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
    _paint_mask(page, 1 / 2)
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
    asked: list[str] = []
    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    page.click(f"{item} button:has-text('Delete')")  # dismissed: nothing happens
    assert asked and "cannot be brought back" in asked[0]
    assert page.is_visible(item) and httpx.get(f"{server.base_url}/api/v1/tasks/{task_id}").status_code == 200
    page.once("dialog", lambda d: d.accept())
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


@pytest.mark.parametrize("lang", ["curl", "python", "js"])
def test_copy_as_code_uploads_the_local_files_and_runs(page: Any, server: ServerProcess, tmp_path: Path,
                                                       lang: str) -> None:
    """The copied code names the picked files (multipart uploads read from disk), never base64 data, and run beside
    them it makes the same request."""
    _open(page, server)
    _compose(page, tmp_path, prompt="copied from the studio")
    page.fill("#seed", "4242")
    page.check("#seed-lock")
    page.select_option("#code-lang", lang)
    page.click("#copy-code")
    text = page.inner_text("#code")
    assert "data:image" not in text and "base64" not in text and "celery" not in text and "src.png" in text
    script = {"curl": ["bash", "-c", text], "python": [sys.executable, "-c", text],
              "js": ["node", "--input-type=module", "-e", text]}[lang]
    if lang == "js" and shutil.which("node") is None:
        pytest.skip("Node.js is not installed")
    run = subprocess.run(script, capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-500:] + run.stderr[-1000:]
    answer = json.loads(run.stdout.strip().splitlines()[-1] if lang == "curl" else _last_json(run.stdout))
    assert answer["status"] == "completed" and answer["prompt"] == "copied from the studio"
    assert answer["seed"] == 4242 and answer["darkroom"]["task"] == "edit"


def _last_json(out: str) -> str:
    """The printed answer: Python prints a dict's repr, Node an object; both are turned back into JSON."""
    import ast

    text = out.strip()
    try:
        return json.dumps(ast.literal_eval(text))
    except (ValueError, SyntaxError):
        return text


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


def test_compare_says_what_it_adjusted_times_apart_and_varies_the_cards_model(page: Any, server: ServerProcess,
                                                                               tmp_path: Path) -> None:
    _open(page, server)
    _compose(page, tmp_path, prompt="make it autumn")  # 512, which nano-banana does not make
    page.click("#tab-compare")
    assert page.evaluate("document.querySelector('#compare-models').compareDocumentPosition("
                         "document.querySelector('#compare-run')) & Node.DOCUMENT_POSITION_FOLLOWING")  # list first
    for model in ("flux-kontext-pro", "nano-banana"):
        page.check(f"#compare-list input[value='{model}']")
    page.click("#compare-run")
    card = "#compare-results [data-model='nano-banana']"
    _wait_result(page, card)
    assert "quality 512 → 1K" in page.inner_text(f"{card} .adjusted")
    assert not page.query_selector("#compare-results [data-model='flux-kontext-pro'] .adjusted")
    assert re.search(r"ran \d+\.\d s · queued \d+\.\d s", page.inner_text(f"{card} .meta"))
    page.click(f"{card} button:has-text('Use as source')")  # the card's own model, in Create
    assert page.is_visible("#view-create") and page.input_value("#model") == "edit:nano-banana"
    page.click("#tab-compare")
    page.click(f"{card} button:has-text('Vary')")
    assert page.is_visible("#view-create") and page.input_value("#model") == "edit:nano-banana"
    page.wait_for_function("() => { const c = document.querySelector('#results [data-task-id]'); return c && "
                           "c.textContent.includes('nano-banana'); }", timeout=120_000)


def test_rerun_reproduces_the_mask_steps_and_guidance(page: Any, server: ServerProcess, tmp_path: Path) -> None:
    _open(page, server)
    _compose(page, tmp_path, prompt="rerun exactly", steps=3)
    page.fill("#guidance", "3.5")
    _paint_mask(page, 1 / 3)
    page.click("#run")
    _wait_result(page)
    first = httpx.get(f"{server.base_url}/api/v1/tasks/{_task_id(page)}").json()
    page.reload()
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.click("#tab-history")
    item = f"#history li[data-task-id='{first['task_id']}']"
    page.wait_for_selector(item)
    page.click(f"{item} button:has-text('Re-run')")
    page.wait_for_function(f"document.querySelector('#results [data-task-id]') && "
                           f"document.querySelector('#results [data-task-id]').dataset.taskId !== '{first['task_id']}'",
                           timeout=120_000)
    again = httpx.get(f"{server.base_url}/api/v1/tasks/{_task_id(page)}").json()
    for key in ("task", "num_inference_steps", "guidance_scale", "strength", "rendered"):
        assert again["darkroom"][key] == first["darkroom"][key], key
    assert again["seed"] == first["seed"] and [i["role"] for i in again["darkroom"]["inputs"]] == ["source", "mask"]
    masks = [Image.open(io.BytesIO(httpx.get(t["darkroom"]["inputs"][1]["url"]).content)).convert("L")
             for t in (first, again)]
    assert masks[0].tobytes() == masks[1].tobytes()  # the same mask, not a new one


def test_small_things_a_user_trips_over(page: Any, keyed_server: ServerProcess, tmp_path: Path) -> None:
    """The favicon exists; the key dialog can be cancelled; a damaged PNG is refused when added, not shown broken;
    no two labels of one control say the same; Animate preselects what this (CPU) server renders by default."""
    assert httpx.get(f"{keyed_server.base_url}/favicon.ico").status_code == 200
    page.goto(keyed_server.base_url + "/")
    page.wait_for_selector("#key-dialog[open]")
    page.click("#key-cancel")
    page.wait_for_selector("#key-dialog", state="hidden")
    page.click("#key-button")
    page.fill("#key-input", API_KEY)
    page.click("#key-save")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    bad = tmp_path / "damaged.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    page.set_input_files("#file", str(bad))
    page.wait_for_function("document.querySelector('#notice').textContent.includes('could not be read')")
    assert not page.query_selector("#sources img")
    legends = page.eval_on_selector_all("fieldset", "fs => fs.map(f => [f.querySelector('legend')?.textContent, "
                                        "[...f.querySelectorAll('label')].map(l => l.textContent.trim())])")
    assert all(legend not in labels for legend, labels in legends), legends
    page.select_option("#model", "video:sora-2")
    assert page.input_value("#resolution") == "240p"  # the draft tier a CPU server renders by default


def test_accessibility_and_screenshots_at_desktop_and_phone_sizes(browser: Any, server: ServerProcess,
                                                                  js_sdks: Any) -> None:
    """axe-core (from the npm registry, vendored into the test run, never from a CDN) finds no serious or critical
    violation at 1440x900 and 390x844; a screenshot of each is kept."""
    axe = js_sdks.here() / "node_modules" / "axe-core" / "axe.min.js"
    for name, size in (("desktop", {"width": 1440, "height": 900}), ("phone", {"width": 390, "height": 844})):
        context = browser.new_context(viewport=size)
        page = context.new_page()
        try:
            _open(page, server)
            page.screenshot(path=str(artifact(f"studio-{name}.png")), full_page=False)
            in_view = "id => { const r = document.getElementById(id).getBoundingClientRect(); " \
                      "return r.top >= 0 && r.bottom <= innerHeight; }"
            assert page.evaluate(in_view, "run") and page.evaluate(in_view, "cancel")  # the run bar, at load
            page.mouse.wheel(0, 2000)
            assert page.evaluate(in_view, "run")  # and after scrolling the form
            page.add_script_tag(path=str(axe))
            found = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
                                  ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.length}))")
            serious = [v for v in found if v["impact"] in ("serious", "critical")]
            assert not serious, (name, serious)
        finally:
            context.close()


def test_two_runs_queue_and_are_watched_at_once_and_results_say_how_they_ran(page: Any, server: ServerProcess,
                                                                            tmp_path: Path) -> None:
    """Run stays available: two runs show their own rows until each ends, and both results land, newest first;
    each edit result has a before/after slider over its source and says what it ran with, warnings included."""
    _open(page, server)
    assert page.is_visible("#empty")  # the empty state says what to do
    _compose(page, tmp_path, prompt="first of two", steps=30, quality="1K")
    page.click("#run")
    page.wait_for_selector("#runs li")
    page.fill("#prompt", "second of two")
    page.fill("#steps", "2")
    page.select_option("#quality", "512")
    assert page.is_enabled("#run")
    page.click("#run")
    page.wait_for_function("document.querySelectorAll('#runs li').length === 2")
    page.wait_for_function("document.querySelectorAll('#results [data-task-id]').length === 2", timeout=180_000)
    page.wait_for_selector("#runs", state="hidden")
    prompts = [httpx.get(f"{server.base_url}/api/v1/tasks/{t}").json()["prompt"] for t in
               page.eval_on_selector_all("#results [data-task-id]", "cs => cs.map(c => c.dataset.taskId)")]
    assert sorted(prompts) == ["first of two", "second of two"]
    card = "#results [data-task-id]"
    assert "steps" in page.inner_text(f"{card} .settings") and page.query_selector(f"{card} .note")
    slider = f"{card} .ba input[type=range]"
    assert page.eval_on_selector(f"{card} img.before", "i => i.style.clipPath") == "inset(0px 100% 0px 0px)"
    page.fill(slider, "100")
    assert page.eval_on_selector(f"{card} img.before", "i => i.style.clipPath") in ("inset(0px 0% 0px 0px)",
                                                                                   "inset(0px)")
    page.click(f"{card} button:has-text('View')")
    page.wait_for_selector("#viewer[open]")
    page.click("#viewer-image")  # zoom to 100 % and back
    assert "actual" in page.get_attribute("#viewer-image", "class")
    page.click("#viewer-image")
    assert "actual" not in (page.get_attribute("#viewer-image", "class") or "")


def test_mask_undo_redo_feather_and_overlay(page: Any, server: ServerProcess, tmp_path: Path) -> None:
    _open(page, server)
    _compose(page, tmp_path, prompt="mask tools")
    page.click("#mask-toggle")
    page.wait_for_selector("#mask-canvas", state="visible")
    page.fill("#brush-size", "120")
    page.dispatch_event("#brush-size", "input")
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.up()
    white = "() => { const c = document.querySelector('#mask-canvas'); const d = c.getContext('2d')" \
            ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4) " \
            "n += d[i] > 127; return n; }"
    painted = page.evaluate(white)
    assert painted > 0
    page.click("#mask-undo")
    assert page.evaluate(white) == 0
    page.click("#mask-redo")
    assert page.evaluate(white) == painted
    page.fill("#mask-feather", "8")
    page.dispatch_event("#mask-feather", "input")
    greys = page.evaluate("() => new Promise(r => { const i = new Image(); i.onload = () => { const c = "
                          "document.createElement('canvas'); c.width = i.width; c.height = i.height; const x = "
                          "c.getContext('2d'); x.drawImage(i, 0, 0); const d = x.getImageData(0, 0, c.width, "
                          "c.height).data; let n = 0; for (let k = 0; k < d.length; k += 4) n += d[k] > 10 && "
                          "d[k] < 245; r(n); }; i.src = document.querySelector('#mask-canvas').toDataURL(); })")
    page.click("#mask-overlay")
    assert page.get_attribute("#mask-overlay", "aria-pressed") == "false"
    assert page.eval_on_selector("#mask-canvas", "c => getComputedStyle(c).opacity") == "1"
    page.click("#run")
    _wait_result(page)
    task = httpx.get(f"{server.base_url}/api/v1/tasks/{_task_id(page)}").json()
    sent = Image.open(io.BytesIO(httpx.get(task["darkroom"]["inputs"][1]["url"]).content)).convert("L")
    # The canvas has only its anti-aliased rim in grey; what reached the server is feathered well past it.
    assert sum(10 < v < 245 for v in sent.getdata()) > 3 * greys
