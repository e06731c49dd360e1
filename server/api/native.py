"""darkroom's own API, the hosted platform's (Qolaba-compatible): images (qolaba.py), videos (videos.py) and tasks
(tasks.py) under /api/, with darkroom's error shape and task object."""

from __future__ import annotations

from compare.clients import QolabaClient
from server.api import loras, qolaba, tasks, videos
from server.api.dialect import Dialect

DIALECT = Dialect(
    "darkroom", (qolaba.router, videos.router, tasks.router, loras.router), prefixes=("/api/",),
    webhook=lambda record, base, _event, ctx: tasks.task_view(record, ctx.links(base)),
    tag="darkroom", doc_order=0, claim_order=9,
    tag_description="darkroom's own API (the hosted platform's, Qolaba-compatible): images, videos, and tasks with "
                    "their status, events, inputs and history.",
    key_headers=("X-API-Key",), auth_schemes=("Bearer",), request_headers=("Idempotency-Key", "X-Request-Id"),
    response_headers=("X-Request-Id", "Retry-After"), compare_client=QolabaClient)
