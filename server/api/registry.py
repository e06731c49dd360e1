"""Every dialect darkroom speaks, in the order their paths are claimed for error shapes (most specific first)."""

from __future__ import annotations

from server.api import bfl, fal, gemini, openai_api, qolaba, replicate, tasks, videos
from server.api.dialect import Dialect

NATIVE = Dialect("darkroom", (qolaba.router, videos.router, tasks.router), prefixes=("/api/",),
                 webhook=lambda record, base, _event, ctx: tasks.task_view(record, ctx.links(base)),
                 tag="darkroom", doc_order=0,
                 tag_description="darkroom's own API (the hosted platform's, Qolaba-compatible): images, videos, "
                                 "and tasks with their status, events, inputs and history.")
"""The hosted platform's own API (Qolaba-compatible): darkroom's error shape and task object."""

DIALECTS: tuple[Dialect, ...] = (gemini.DIALECT, fal.DIALECT, replicate.DIALECT, bfl.DIALECT, openai_api.DIALECT,
                                 NATIVE)
