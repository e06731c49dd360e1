"""Typed server settings: environment (DARKROOM_*), .env, or CLI flags — one field each, grouped in sections.

`Settings` holds six sections (server, auth, store, files, engine, cluster); every field keeps its flat name, so
the environment variable (DARKROOM_<FIELD>) and the `darkroom serve --flag` are what they always were. Settings
are built once in the CLI (or a test) and passed explicitly, whole or by section, to what needs them; nothing
reads them from a global.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

import configs


def _split_csv(v: object) -> object:
    if isinstance(v, str):
        return [part.strip() for part in v.split(",") if part.strip()]
    return v


class _Section(BaseSettings):
    """A group of settings read from DARKROOM_<FIELD> (and .env), like the flat settings of earlier releases."""

    model_config = SettingsConfigDict(env_prefix="DARKROOM_", env_file=".env", extra="ignore", frozen=True)


class ServerSettings(_Section):
    """Where the server listens and how it treats HTTP requests (bodies, CORS, synchronous waits, webhooks
    delivery), how it stops and restarts, and what it logs."""

    host: str = Field("127.0.0.1", description="Address to bind. Anything but loopback requires an API key.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = pick a free one).")
    public_base_url: str | None = Field(
        None, description="Base URL put in image links (e.g. https://gpu1.studio.lan); default: from the Host header."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins browsers may call from (CORS); empty = CORS off. Comma-separated.")
    sync_timeout_s: float = Field(
        600.0, gt=0, description="How long a celery=false request waits before answering 202 with its task id."
    )
    max_body_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest request body (JSON or multipart); past it 413 payload_too_large.")
    max_json_depth: int = Field(32, ge=2, le=256, description="Deepest nesting of objects/arrays in a JSON body.")
    max_multipart_parts: int = Field(64, ge=1, description="Most parts (files and fields) in one multipart body.")
    max_multipart_field_bytes: int = Field(
        256 * 1024, gt=0, description="Largest non-file multipart field (files are capped by max_image_bytes).")
    drain_timeout_s: float = Field(
        30.0, ge=0.0, description="On SIGTERM: how long running jobs may finish before they are re-queued on disk.")
    supervise: bool = Field(
        True, description="Run the server under a supervisor that restarts it after a GPU fault, a hung worker or "
        "a crash (jobs resume from the database).")
    restart_on_fault: bool = Field(
        False, description="After a GPU fault or a hung worker, drain and exit with code 75 so a supervisor starts "
        "a fresh process (set for its child by `--supervise`; set it under systemd/Kubernetes restart policies).")
    metrics_public: bool = Field(
        False, description="Serve /metrics without an API key (for a Prometheus on a trusted network); otherwise "
        "give Prometheus a key of its own (bearer_token in its scrape config).")
    webhook_attempts: int = Field(6, ge=1, le=20, description="Deliveries tried per webhook event.")
    webhook_backoff_s: float = Field(1.0, gt=0.0, le=600.0, description="First retry delay; doubles each time.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Server log level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text: a line per record; json: one JSON object per line with request_id and job_id.")

    @field_validator('cors_origins', mode="before")
    @classmethod
    def _csv(cls, v: object) -> object:
        return _split_csv(v)

    def binds_loopback_only(self) -> bool:
        """True when `host` is a loopback address or `localhost`."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

class AuthSettings(_Section):
    """Who may call: API keys (one, or a keys file with per-key limits) and the webhook signing secret."""

    api_key: SecretStr | None = Field(None, description="Key clients send (Bearer/Key/Token, X-API-Key, x-key or "
                                          "x-goog-api-key); unset = no auth.")
    api_keys_file: Path | None = Field(
        None, description="TOML file of named keys ([keys.NAME] key=..., rate_per_minute, jobs_per_day); "
        "used with or instead of api_key.")
    rate_per_minute: int = Field(
        0, ge=0, description="Default requests per minute per key (0: unlimited); a keys-file entry may override.")
    jobs_per_day: int = Field(
        0, ge=0, description="Default accepted jobs per key per rolling 24 h (0: unlimited); per key in the keys file.")
    webhook_secret: SecretStr | None = Field(
        None, min_length=16, description="Signs webhooks (X-Darkroom-Signature); default: derived from the API key "
        "a request used, else a random secret kept in the data dir.")

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (requests need one)."""
        return self.api_key is not None or self.api_keys_file is not None

class StoreSettings(_Section):
    """The job store: SQLite in the data dir or a shared PostgreSQL, its leases, deadlines and queue bound."""

    database_url: SecretStr | None = Field(
        None, description="A postgresql:// URL: jobs live in PostgreSQL, shared by every front end using it (default: "
        "SQLite in the data dir).")
    sqlite_synchronous: Literal["full", "normal"] = Field(
        "full", description="SQLite sync for the jobs database: full survives a power cut, normal only a crash "
        "(and is a little faster per submit).")
    lease_s: float = Field(30.0, ge=2.0, le=3600.0, description="How long a claim on a running job lasts without "
                           "renewal; a job whose holder stops renewing goes back to the queue after it.")
    store_deadline_s: float = Field(
        5.0, gt=0.0, le=120.0, description="How long a request waits for the job store (locked or slow) before it "
        "answers 503 store_busy with Retry-After; a submission is then not accepted.")
    max_queue: int = Field(
        1000, ge=1, description="Most accepted jobs not yet finished; past it requests get 429 with Retry-After.")
    queue_retry_after_s: int = Field(10, ge=1, le=3600, description="Retry-After seconds sent with a 429.")

class FilesSettings(_Section):
    """Where files live (the data dir, a bucket), how long outputs are kept, and the limits on images taken in."""

    data_dir: Path = Field(Path("./darkroom-data"), description="Jobs database, inputs, outputs and weights live here.")
    weights_dir: Path | None = Field(None, description="Where real weights are pulled to (default: <data_dir>/weights).")
    demo_weights_path: Path | None = Field(
        None, description="Where demo weights are built (default: <data_dir>/demo-weights)."
    )
    compile_cache_dir: Path | None = Field(
        None, description="Where torch.compile keeps compiled graphs across restarts (default: "
        "<data_dir>/compile-cache).")
    s3_bucket: str | None = Field(
        None, description="Keep outputs, job inputs and uploads in this S3-compatible bucket, shared by every front "
        "end (default: the data dir). Credentials from the usual AWS_* variables.")
    s3_endpoint_url: str | None = Field(None, description="The bucket's S3 API endpoint (MinIO, Ceph...; default: AWS).")
    s3_prefix: str = Field("", max_length=200, description="Key prefix inside the bucket.")
    s3_region: str | None = Field(None, description="The bucket's region (default: us-east-1).")
    shared_data_dir: bool = Field(
        False, description="The data dir is on storage every front end reads and writes (NFS, a cluster file "
        "system). Required with a PostgreSQL job store and no bucket: each front end must read the inputs and "
        "outputs the others stored.")
    files_require_key: bool = Field(
        False, description="Output URLs need an API key like every other route. Default: they are signed "
        "capability URLs (HMAC over path and expiry, valid until the files expire) that work without a key, like "
        "the hosted providers' (an <img src>, a CDN, an SDK's download).")
    retention_hours: float = Field(
        24.0, ge=0.0, description="Hours a finished task's outputs and inputs, and uploaded files, are kept (hosted "
        "providers' signed URLs last 24 h); then their URLs answer 410 expired. 0 keeps them until deleted.")
    max_files_gb: float | None = Field(
        None, gt=0.0, description="Cap on the files kept on disk (outputs plus stored inputs), in GB: past "
        "it the oldest finished tasks' files are removed first (default: no cap).")
    sweep_interval_s: float = Field(60.0, gt=0.0, description="How often expired files are removed.")
    png_compress_level: int = Field(1, ge=0, le=9, description="zlib level for PNG outputs (lossless at every level).")
    min_free_mb: float = Field(
        100.0, ge=0.0, description="Submissions are refused with 507 storage_full while the data dir has less free "
        "space than this (MB), so accepted jobs can still store their outputs.")
    url_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts or CIDRs whose private addresses image URLs may use (comma-separated).",
    )
    max_image_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest source image, fetched or uploaded.")
    max_image_pixels: int = Field(4096 * 4096, gt=0, description="Largest source image in pixels (checked before decode).")
    max_image_side: int = Field(8192, gt=0, description="Longest side of a source image in pixels (checked before "
                                "decode; stops 1x20000 strips).")
    lora_dir: Path | None = Field(
        None, description="A folder of LoRA adapters (*.safetensors) the operator mounts: read-only, visible to every "
        "key, named in requests by file name without the suffix.")
    max_lora_mb: float = Field(
        1024.0, gt=0, description="Largest LoRA file taken in (upload or URL), in MB: larger ones get 413.")
    fetch_connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout for image URLs.")
    fetch_total_timeout_s: float = Field(30.0, gt=0, description="Whole-download timeout for one image URL.")
    fetch_max_redirects: int = Field(3, ge=0, le=10, description="Redirect hops followed (same host only).")

    @field_validator('url_allowlist', mode="before")
    @classmethod
    def _csv(cls, v: object) -> object:
        return _split_csv(v)

    @property
    def retention_s(self) -> float | None:
        """Seconds finished tasks' files are kept (None: until deleted)."""
        return self.retention_hours * 3600 or None

    @property
    def resolved_weights_dir(self) -> Path:
        """Directory of pulled real weights."""
        return self.weights_dir or self.data_dir / "weights"

    @property
    def demo_weights_dir(self) -> Path:
        """Directory of the tiny demo weights built by `darkroom weights demo`."""
        return self.demo_weights_path or self.data_dir / "demo-weights"

class EngineSettings(_Section):
    """What is served (config dir, ids, licence policy) and how the workers run it: devices, memory, batching,
    residency and the fault policy."""

    config_dir: Path = Field(default_factory=configs.packaged_dir, description="Folder of the configuration "
                             "files (models, provider names, acceleration, costs, memory, prices, GPU cards, the weights "
                             "manifest); point it at a copy to change ids, presets or costs.")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Serve only these model ids (comma-separated; default: every id in "
        "configs/models.toml). Weights of the others are not located or loaded.")
    license_policy: Literal["any", "commercial"] = Field(
        "any", description="'commercial' serves every id with a stand-in whose weights allow commercial use."
    )
    device: str = Field("auto", description="'auto' (every CUDA GPU, else CPU), 'cpu', or a list like 'cuda:0,cuda:1'.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Serving dtype: auto = bfloat16 on GPU, float32 on CPU."
    )
    demo: Literal["auto", "always", "never"] = Field(
        "auto", description="Demo (tiny random) weights: auto = when real weights are missing."
    )
    memory_limit_gb: float | None = Field(
        None, gt=0.0, description="Most device memory darkroom may use per worker, in GB (default: the GPU's total "
        "less the reserve; unmanaged on CPU). Set it to share a GPU with other processes.")
    vram_reserve_gb: float = Field(
        2.0, ge=0.0, description="GPU memory kept free for the CUDA context, cuBLAS workspaces and fragmentation."
    )
    max_batch: int = Field(
        4, ge=1, le=64, description="Most queued requests of one model and batch key run as one batch (the memory "
        "estimate may cap it lower).")
    batch_max_wait_s: float = Field(
        0.0, ge=0.0, le=60.0, description="How long a batch smaller than max_batch may wait for more requests "
        "like it before it runs (0: run at once).")
    priority_s: float = Field(
        30.0, ge=0.0, description="Seconds of queue waiting one point of request priority is worth.")
    residency_policy: Literal["cost_aware", "lru", "smallest_first"] = Field(
        "cost_aware", description="Which model leaves the GPU first when another needs the room "
        "(cost_aware was chosen by benchmarks/scheduler_sim.py).")
    offload_ram_gb: float = Field(
        64.0, ge=0.0, description="Host RAM per GPU for models parked off the GPU (reloaded over PCIe instead of "
        "from disk); 0 turns the RAM tier off.")
    lora_cache_gb: float = Field(
        4.0, ge=0.0, description="Host RAM per worker for converted LoRA adapters, kept by content hash (least "
        "recently used dropped first); an adapter is converted again only after it was dropped.")
    save_threads: int = Field(2, ge=1, le=64, description=(
        "Threads that encode and store finished outputs, off the device's thread (the next render starts while "
        "the last one's PNGs are written)."))
    preview_every_steps: int = Field(2, ge=1, le=100, description="Live previews (for jobs that ask): at most one "
                                     "every this many denoising steps.")
    preview_min_interval_s: float = Field(0.25, ge=0.0, le=60.0, description="...and at most one per this many "
                                          "seconds.")
    preview_max_side: int = Field(256, ge=32, le=1024, description="Longest side of a live preview in pixels.")
    gangs: str = Field(
        "auto", description="Gang sizes: one job spread over this many GPUs of the node when GPUs are idle "
        "(sequence and CFG parallel). 'auto' = 2, 4 and 8 up to the number of CUDA devices (none on a CPU), 'off', "
        "or a list like '2,4'. Gangs are aligned groups of the devices (cuda:0-1, cuda:2-3, ...).")
    gang_max_gpus: int = Field(8, ge=1, le=8, description="Most GPUs any one job may take.")
    gang_max_gpus_per_id: dict[str, int] = Field(
        default_factory=dict, description="Most GPUs per model id, as JSON ({\"sora-2-pro\": 4}); 1 keeps an id on "
        "one GPU.")
    gang_min_efficiency: float = Field(
        0.35, gt=0.0, le=1.0, description="A job is spread over k GPUs only if it runs at least this share of k "
        "times faster (configs/parallel.toml's speed-ups).")
    gang_min_job_s: float = Field(
        3.0, ge=0.0, description="Jobs predicted shorter than this on one GPU are never spread.")
    step_timeout_s: float = Field(
        600.0, gt=0.0, description="Watchdog: a worker with no denoising step (or load) for this long is hung; its "
        "jobs are re-queued and the server restarts its workers.")
    job_max_attempts: int = Field(
        3, ge=1, le=50, description="Failures around a job's render (an input that cannot be read, outputs that "
        "cannot be stored) before it fails with the fault's code; the ones before are retried with backoff.")
    job_retry_backoff_s: float = Field(
        2.0, gt=0.0, le=600.0, description="Delay before a job is tried again after such a failure; it doubles "
        "each time (up to 60 s).")
    no_worker_grace_s: float = Field(
        60.0, gt=0.0, description="How long the engine may run no worker thread (/ready says 503 'no worker "
        "running') before it asks for a process restart (taken when supervised).")

    @field_validator('models', mode="before")
    @classmethod
    def _csv(cls, v: object) -> object:
        return _split_csv(v)

class ClusterSettings(_Section):
    """Workers as Ray actors across machines."""

    backend: Literal["local", "ray"] = Field(
        "local", description="local: one worker per GPU of this machine; ray: one worker actor per GPU of a Ray "
        "cluster (see docs/deployment.md).")
    ray_address: str = Field("auto", description="The Ray cluster's head (host:port), for --backend ray.")
    ray_namespace: str = Field("darkroom", min_length=1, max_length=100,
                               description="Ray namespace of darkroom's worker actors.")
    ray_wait_s: float = Field(0.0, ge=0.0, description="No longer used: a front end listens and queues work at "
                              "once, and adds Ray workers as they appear (kept so existing configurations start).")


_SECTIONS = {"server": ServerSettings, "auth": AuthSettings, "store": StoreSettings, "files": FilesSettings,
             "engine": EngineSettings, "cluster": ClusterSettings}


class Settings(BaseModel):
    """Everything an operator can set, by section. Built from flat keyword arguments too
    (`Settings(host=..., data_dir=...)`: each goes to its section), so flags and tests name fields as before."""

    model_config = ConfigDict(frozen=True)

    server: ServerSettings = Field(default_factory=ServerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    files: FilesSettings = Field(default_factory=FilesSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @model_validator(mode="before")
    @classmethod
    def _flat_to_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(k in section_of_field() for k in data):
            return data
        grouped: dict[str, dict[str, Any]] = {}
        rest = {}
        for key, value in data.items():
            section = section_of_field().get(key)
            if section is None:
                rest[key] = value
            else:
                grouped.setdefault(section, {})[key] = value
        return {**rest, **{section: _SECTIONS[section](**values) for section, values in grouped.items()}}

    @staticmethod
    def fields() -> dict[str, Any]:
        """Every setting by its flat name (the CLI makes a flag of each)."""
        return {name: info for section in _SECTIONS.values() for name, info in section.model_fields.items()}

    def check_file_sharing(self) -> None:
        """Refuse a job store shared by several front ends over files each keeps to itself: a job accepted by one
        front end would be run by an engine that cannot read its inputs."""
        if self.store.database_url is not None and not self.files.s3_bucket and not self.files.shared_data_dir:
            raise ValueError(
                "a PostgreSQL job store is shared by every front end using it, so they must share files too: set "
                "DARKROOM_S3_BUCKET (an S3-compatible bucket), or put the data dir on storage they all mount and "
                "set DARKROOM_SHARED_DATA_DIR=true (also the setting for a single front end on PostgreSQL)")

    def check_bind_safety(self) -> None:
        """Refuse to expose an unauthenticated server beyond this machine."""
        if not self.server.binds_loopback_only() and not self.auth.enabled:
            raise ValueError(
                f"refusing to bind to {self.server.host} without an API key: set DARKROOM_API_KEY (or --api-key) or "
                "DARKROOM_API_KEYS_FILE, or bind to 127.0.0.1"
            )


def section_of_field() -> dict[str, str]:
    """Which section each flat setting belongs to."""
    return {name: section for section, model in _SECTIONS.items() for name in model.model_fields}
