"""The comparison's report: `report.json` (the numbers) and `report.html`, one self-contained file (images inline as
data URLs, plots as inline SVG, no script, nothing fetched) that opens anywhere and can be mailed."""

from __future__ import annotations

import base64
import html
import io
import json
import platform
import time
from pathlib import Path
from typing import Any

from PIL import Image

from compare.payloads import Payload
from compare.prices import GpuCost, PriceTable
from compare.runner import RunConfig
from compare.stats import side_summary

_THUMB_PX = 384


def build_summary(cfg: RunConfig, records: list[dict[str, Any]], envs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Everything the report shows, as JSON."""
    from server.version import __version__

    dialect_of = {p.id: p.dialect or cfg.dialect for p in cfg.payloads}
    sides = {}
    for side in cfg.sides:
        mine = [r for r in records if r["side"] == side.label]
        sides[side.label] = {"name": side.name, "url": side.url, "environment": envs[side.label],
                             "summary": side_summary(mine, side.cost, dialect_of, cfg.prices, cfg.gpu),
                             "ran_on": _ran_on(mine)}
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tool": {"darkroom_compare": __version__, "python": platform.python_version(), "host": platform.node(),
                 "platform": platform.platform()},
        "settings": {"dialect": cfg.dialect, "concurrency": cfg.concurrency, "repeats": cfg.repeats,
                     "timeout_s": cfg.timeout_s, "payloads": len(cfg.payloads),
                     "price_table": str(cfg.prices.path) if cfg.prices.path else None, "gpu": cfg.gpu.describe()},
        "sides": sides,
        "payloads": [p.model_dump(mode="json") | {"dialect": dialect_of[p.id]} for p in cfg.payloads],
        "attempts": records,
    }


def _ran_on(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    by_model: dict[str, set[str]] = {}
    for r in records:
        if r["ran_on"]:
            by_model.setdefault(r["model"], set()).add(r["ran_on"])
    return {m: sorted(v) for m, v in sorted(by_model.items())}


def write(cfg: RunConfig, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write report.json and report.html into the run's folder; their paths."""
    json_path = cfg.out / "report.json"
    json_path.write_text(json.dumps(summary, indent=2))
    html_path = cfg.out / "report.html"
    html_path.write_text(render_html(cfg, summary))
    return json_path, html_path


def render_html(cfg: RunConfig, summary: dict[str, Any]) -> str:
    """The self-contained HTML page."""
    names = {label: s["name"] for label, s in summary["sides"].items()}
    body = [f"<h1>darkroom compare: {_e(names['a'])} vs {_e(names['b'])}</h1>",
            f"<p class=meta>{_e(summary['generated_at'])} · {summary['settings']['payloads']} payloads × "
            f"{cfg.repeats} repeat(s) · concurrency {cfg.concurrency} per side · dialect {_e(cfg.dialect)} "
            "(unless a payload names its own)</p>",
            _summary_table(summary), _cost_table(summary, cfg.prices, cfg.gpu), _plots(summary, names),
            _grid(cfg, summary, names), _failures(summary, names), _environment(summary)]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>darkroom compare</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{_CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}{unit}"


def _summary_table(summary: dict[str, Any]) -> str:
    rows = [("Requests", lambda s: str(s["requests"])), ("Succeeded", lambda s: str(s["ok"])),
            ("Failure rate", lambda s: "—" if s["failure_rate"] is None else f"{s['failure_rate'] * 100:.1f} %"),
            ("Latency p50", lambda s: _num(s["latency_s"]["p50"], " s")),
            ("Latency p95", lambda s: _num(s["latency_s"]["p95"], " s")),
            ("Latency max", lambda s: _num(s["latency_s"]["max"], " s")),
            ("First progress p50", lambda s: _num(s["first_progress_s"]["p50"], " s")),
            ("Outputs", lambda s: str(s["images"])),
            ("Throughput", lambda s: _num(s["images_per_minute"], " /min")),
            ("Busy time", lambda s: _num(s["busy_s"], " s"))]
    sides = summary["sides"]
    head = "".join(f"<th>{_e(s['name'])}</th>" for s in sides.values())
    body = "".join(f"<tr><th scope=row>{label}</th>" + "".join(f"<td>{fn(s['summary'])}</td>"
                                                             for s in sides.values()) + "</tr>" for label, fn in rows)
    return f"<h2>Latency, failures, throughput</h2><table><tr><th></th>{head}</tr>{body}</table>" + (
        "<p class=note>Latency: submit to outputs in hand (downloads included). First progress: the first status "
        "answer that showed the work running (dialects that answer in one response have none).</p>")


def _cost_table(summary: dict[str, Any], prices: PriceTable, gpu: GpuCost) -> str:
    rows = []
    for s in summary["sides"].values():
        cost = s["summary"]["cost"]
        if cost["basis"] == "price table":
            detail = "<br>".join(f"{_e(r['model'])} [{_e(r['tier'])}]: ${r['usd']:g}/{_e(r['per'])} "
                                 f"(as of {_e(r['as_of'])}; {_e(r['source'])})" for r in cost["rows"]) or "–"
            if cost["unpriced"]:
                detail += "<br><strong>No price for:</strong> " + _e(", ".join(cost["unpriced"]))
        else:
            detail = (f"{_e(cost['basis'])} × {cost['busy_s']:.1f} s busy; "
                      f"{_num(cost['gpu_seconds_per_image'], ' GPU-s', 2)} per output")
        rows.append(f"<tr><th scope=row>{_e(s['name'])}</th><td>{_e(cost['basis'])}</td>"
                    f"<td>{_num(cost['total_usd'], '', 4)}</td>"
                    f"<td>{_num(cost['usd_per_image'], '', 4)}</td><td class=small>{detail}</td></tr>")
    return ("<h2>Cost per output</h2><table><tr><th>Side</th><th>Basis</th><th>Total (USD)</th>"
            f"<th>USD per output</th><th>From</th></tr>{''.join(rows)}</table>"
            "<p class=note>Local cost is the machine's price over the seconds the side was busy (at least one request "
            "in flight), so it reflects the concurrency this run used; hosted cost is the list price of what was "
            "delivered.</p>")


def _plots(summary: dict[str, Any], names: dict[str, str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attempts = summary["attempts"]
    lat = {label: sorted(r["latency_s"] for r in attempts if r["side"] == label and r["ok"]) for label in names}
    if not any(lat.values()):
        return "<h2>Latency distribution</h2><p>No request succeeded.</p>"
    fig, (ecdf, per_payload) = plt.subplots(1, 2, figsize=(11, 3.8))
    for label, values in lat.items():
        if values:
            ecdf.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post", label=names[label])
    ecdf.set_xlabel("latency (s)")
    ecdf.set_ylabel("share of requests")
    ecdf.set_title("Latency, cumulative")
    ecdf.grid(alpha=0.3)
    ecdf.legend()
    payload_ids = list(dict.fromkeys(r["payload"] for r in attempts))
    width = 0.4
    for k, label in enumerate(names):
        medians = []
        for pid in payload_ids:
            vals = sorted(r["latency_s"] for r in attempts if r["side"] == label and r["payload"] == pid and r["ok"])
            medians.append(vals[len(vals) // 2] if vals else 0.0)
        per_payload.bar([i + (k - 0.5) * width for i in range(len(payload_ids))], medians, width, label=names[label])
    per_payload.set_xticks(range(len(payload_ids)), payload_ids, rotation=45, ha="right", fontsize=8)
    per_payload.set_ylabel("median latency (s)")
    per_payload.set_title("Median latency per payload (failures left out)")
    per_payload.legend()
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    return f"<h2>Latency distribution</h2><figure>{svg}</figure>"


def _thumb(data: bytes, content_type: str) -> str | None:
    """A JPEG data URL of an image, or of a clip's first frame."""
    try:
        if content_type.startswith("video/"):
            import av

            with av.open(io.BytesIO(data)) as container:
                image = next(container.decode(video=0)).to_image()
        else:
            image = Image.open(io.BytesIO(data))
        image = image.convert("RGB")
        image.thumbnail((_THUMB_PX, _THUMB_PX))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=85)
    except Exception:  # noqa: BLE001 - an undecodable output is shown as such, not a crash of the report
        return None
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}"


def _grid(cfg: RunConfig, summary: dict[str, Any], names: dict[str, str]) -> str:
    attempts = summary["attempts"]
    rows = []
    for payload in cfg.payloads:
        cells = [_payload_cell(payload)]
        for label in names:
            mine = [r for r in attempts if r["payload"] == payload.id and r["side"] == label]
            cells.append("<td>" + "".join(_attempt_figure(cfg.out, r) for r in mine) + "</td>")
        rows.append(f"<tr id='payload-{_e(payload.id)}'>{''.join(cells)}</tr>")
    head = "".join(f"<th>{_e(n)}</th>" for n in names.values())
    return (f"<h2>Outputs side by side</h2><table class=grid><tr><th>Payload</th>{head}</tr>{''.join(rows)}</table>"
            "<p class=note>Thumbnails; full-size outputs are in this folder's outputs/.</p>")


def _payload_cell(payload: Payload) -> str:
    sources = []
    for ref in payload.images:
        if ref.startswith("data:"):
            data = base64.b64decode(ref.partition(",")[2])
        elif ref.startswith(("http://", "https://")):
            sources.append(f"<p class=small>{_e(ref[:80])}</p>")
            continue
        else:
            data = Path(ref).read_bytes()
        thumb = _thumb(data, "image/png")
        if thumb:
            sources.append(f"<img class=source src='{thumb}' alt='source image of {_e(payload.id)}'>")
    return (f"<td><strong>{_e(payload.id)}</strong><br><code>{_e(payload.model)}</code>"
            f"<p>{_e(payload.prompt)}</p>{''.join(sources)}</td>")


def _attempt_figure(out: Path, record: dict[str, Any]) -> str:
    caption = f"#{record['repeat']} · {record['latency_s']:.2f} s"
    if not record["ok"]:
        return (f"<figure class=failed><div class=fail>failed<br>{_e(record['status_code'] or '–')} "
                f"{_e(record['error_code'])}</div><figcaption>{_e(caption)}<br>{_e(record['error_message'][:160])}"
                "</figcaption></figure>")
    imgs = []
    for o in record["outputs"]:
        try:
            thumb = _thumb((out / o["file"]).read_bytes(), o["content_type"])
        except OSError:
            thumb = None
        size = f"{o['width']}×{o['height']}" if o["width"] else o["content_type"]
        imgs.append(f"<img src='{thumb}' alt='{_e(record['side'])} output of {_e(record['payload'])}' "
                    f"title='{_e(size)}'>" if thumb else f"<div class=fail>{_e(size)} (no preview)</div>")
    ran = f"<br><span class=small>{_e(record['ran_on'])}</span>" if record["ran_on"] else ""
    return f"<figure>{''.join(imgs)}<figcaption>{_e(caption)}{ran}</figcaption></figure>"


def _failures(summary: dict[str, Any], names: dict[str, str]) -> str:
    rows = [f"<tr><td>{_e(names[r['side']])}</td><td>{_e(r['payload'])}#{r['repeat']}</td>"
            f"<td>{_e(r['status_code'] or '—')}</td><td><code>{_e(r['error_code'])}</code></td>"
            f"<td>{_e(r['error_message'][:300])}</td></tr>" for r in summary["attempts"] if not r["ok"]]
    if not rows:
        return "<h2>Failures</h2><p>None.</p>"
    return ("<h2>Failures</h2><table><tr><th>Side</th><th>Payload</th><th>HTTP</th><th>Code</th><th>Message</th></tr>"
            f"{''.join(rows)}</table>")


def _environment(summary: dict[str, Any]) -> str:
    items = []
    for s in summary["sides"].values():
        env = s["environment"]
        ran = "".join(f"<li><code>{_e(m)}</code> → {_e('; '.join(v))}</li>" for m, v in s["ran_on"].items())
        weights = ", ".join(f"{k}: {v}" for k, v in sorted(env.get("weights", {}).items()))
        items.append(f"<h3>{_e(s['name'])}</h3><p>{_e(env['url'])} — {_e(env['description'])}</p>"
                     + (f"<p class=stopped><strong>{_e(env['stopped'])}</strong></p>" if env.get("stopped") else "")
                     + (f"<p class=small>Weights: {_e(weights)}</p>" if weights else "")
                     + (f"<p>Model ids → what ran them:</p><ul>{ran}</ul>" if ran else ""))
    tool = summary["tool"]
    return (f"<h2>Environment</h2>{''.join(items)}<p class=small>Report by darkroom {_e(tool['darkroom_compare'])}, "
            f"Python {_e(tool['python'])} on {_e(tool['platform'])} ({_e(tool['host'])}).</p>")


_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#1b1b1f}
h1{font-size:1.5rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.35rem .6rem;text-align:left;vertical-align:top}
.grid td{width:33%}figure{margin:.3rem 0;display:inline-block}figure img,img.source{max-width:100%;
max-height:260px;display:block;border:1px solid #ccc}figcaption,.small,.meta,.note{font-size:.82rem;color:#555}
.fail{background:#fde8e8;color:#8a1c1c;padding:1.2rem;text-align:center;font-weight:600}
svg{max-width:100%;height:auto}code{font-size:.85rem}
"""
