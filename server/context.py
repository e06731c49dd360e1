"""Everything the routes need, built once by create_app and reached through `request.app.state.ctx`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.acceleration_config import Acceleration
from server.api.links import Links
from server.catalog import Catalog
from server.config import DarkroomConfig
from server.dialects import ModelNames
from server.jobs.store import JobStore
from server.keys import KeyRing
from server.lifecycle import Lifecycle
from server.loras import LoraLibrary
from server.media.signing import UrlSigner
from server.media.storage import OutputStore
from server.media.uploads import UploadStore
from server.metrics import Metrics
from server.service import GenerationService
from server.settings import Settings
from server.webhooks import Webhooks
from weights.locate import LocatedWeights

if TYPE_CHECKING:
    from server.app import Serving
    from server.engine.loop import Engine


@dataclass
class AppContext:
    """The running server's parts, passed explicitly (no module globals)."""

    settings: Settings
    serving: Serving
    """The configuration and where each weights entry runs (real or demo)."""
    store: JobStore
    engine: Engine
    service: GenerationService
    outputs: OutputStore
    webhooks: Webhooks
    lifecycle: Lifecycle
    uploads: UploadStore
    metrics: Metrics
    keys: KeyRing
    signer: UrlSigner | None
    """Signs output URLs (None: files need an API key)."""
    loras: LoraLibrary
    """The LoRA adapters keys uploaded, the mounted folder's and those fetched from URLs."""

    @property
    def config(self) -> DarkroomConfig:
        """The configuration (with the demo weights' step-cache presets)."""
        return self.serving.config

    @property
    def catalog(self) -> Catalog:
        """The served ids."""
        return self.serving.config.catalog

    @property
    def names(self) -> ModelNames:
        """The providers' model names."""
        return self.serving.config.names

    @property
    def acceleration(self) -> Acceleration:
        """The acceleration profiles of the served ids."""
        return self.serving.config.acceleration

    @property
    def located(self) -> dict[str, LocatedWeights]:
        """Where each served weights entry is (real or demo)."""
        return self.serving.located

    @property
    def draining(self) -> bool:
        """True once the server stopped taking work (SIGTERM, or a restart after a fault)."""
        return self.lifecycle.draining

    def public_base(self, request_base_url: str) -> str:
        """Base of URLs handed to clients: the configured public URL, else what the client called."""
        return (self.settings.server.public_base_url or request_base_url).rstrip("/")

    def links(self, request_base_url: str) -> Links:
        """How a response to a request on `request_base_url` writes file URLs."""
        return Links(self.public_base(request_base_url), self.signer, self.settings.files.retention_s)

    def any_demo(self) -> bool:
        """True when at least one model runs on demo weights."""
        return any(w.demo for w in self.located.values())
