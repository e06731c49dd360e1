"""The status an ASGI app answered with, seen from a middleware around it (the metrics and the access log both
need it, also when the app raised before answering)."""

from __future__ import annotations

from starlette.types import Message, Send


class SentStatus:
    """Wraps `send`: passes every message on and remembers the response's status (0 until one starts)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0

    async def send(self, message: Message) -> None:
        """The `send` to hand the wrapped app."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)
