"""Typed server settings: environment (DARKROOM_*), .env, or CLI flags — one field each.

Settings are built once in the CLI (or a test) and passed explicitly to
``create_app``; nothing reads them from a global.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

import configs

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(configs.__file__).resolve().parent


class Settings(BaseSettings):
    """Everything an operator can set. Each field is also a `darkroom serve --flag`."""

    model_config = SettingsConfigDict(env_prefix="DARKROOM_", env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to bind. Anything but loopback requires an API key.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = pick a free one).")
    api_key: SecretStr | None = Field(None, description="Key clients send (Bearer/Key/Token, X-API-Key, x-key or "
                                          "x-goog-api-key); unset = no auth.")
    data_dir: Path = Field(Path("./darkroom-data"), description="Jobs database, inputs, outputs and weights live here.")
    config_dir: Path = Field(CONFIG_DIR, description="Folder of models.toml, dialects.toml, costs.toml, memory.toml "
                             "and acceleration.toml (point it at a copy to change ids, presets or costs).")
    compile_cache_dir: Path | None = Field(
        None, description="Where torch.compile keeps compiled graphs across restarts (default: "
        "<data_dir>/compile-cache).")
    sqlite_synchronous: Literal["full", "normal"] = Field(
        "full", description="SQLite sync for the jobs database: full survives a power cut, normal only a crash "
        "(and is a little faster per submit).")
    lease_s: float = Field(30.0, ge=2.0, le=3600.0, description="How long a claim on a running job lasts without "
                           "renewal; a job whose holder stops renewing goes back to the queue after it.")
    database_url: SecretStr | None = Field(
        None, description="A postgresql:// URL: jobs live in PostgreSQL, shared by every front end using it (default: "
        "SQLite in the data dir).")
    shared_data_dir: bool = Field(
        False, description="The data dir is on storage every front end reads and writes (NFS, a cluster file "
        "system). Required with a PostgreSQL job store and no bucket: each front end must read the inputs and "
        "outputs the others stored.")
    s3_bucket: str | None = Field(
        None, description="Keep outputs, job inputs and uploads in this S3-compatible bucket, shared by every front "
        "end (default: the data dir). Credentials from the usual AWS_* variables.")
    s3_endpoint_url: str | None = Field(None, description="The bucket's S3 API endpoint (MinIO, Ceph...; default: AWS).")
    s3_prefix: str = Field("", max_length=200, description="Key prefix inside the bucket.")
    s3_region: str | None = Field(None, description="The bucket's region (default: us-east-1).")
    backend: Literal["local", "ray"] = Field(
        "local", description="local: one worker per GPU of this machine; ray: one worker actor per GPU of a Ray "
        "cluster (see docs/deployment.md).")
    ray_address: str = Field("auto", description="The Ray cluster's head (host:port), for --backend ray.")
    ray_namespace: str = Field("darkroom", min_length=1, max_length=100,
                               description="Ray namespace of darkroom's worker actors.")
    ray_wait_s: float = Field(0.0, ge=0.0, description="No longer used: a front end listens and queues work at "
                              "once, and adds Ray workers as they appear (kept so existing configurations start).")
    weights_dir: Path | None = Field(None, description="Where real weights are pulled to (default: <data_dir>/weights).")
    demo_weights_path: Path | None = Field(
        None, description="Where demo weights are built (default: <data_dir>/demo-weights)."
    )
    public_base_url: str | None = Field(
        None, description="Base URL put in image links (e.g. https://gpu1.studio.lan); default: from the Host header."
    )
    url_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts or CIDRs whose private addresses image URLs may use (comma-separated).",
    )
    max_image_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest source image, fetched or uploaded.")
    max_image_pixels: int = Field(4096 * 4096, gt=0, description="Largest source image in pixels (checked before decode).")
    max_image_side: int = Field(8192, gt=0, description="Longest side of a source image in pixels (checked before "
                                "decode; stops 1x20000 strips).")
    fetch_connect_timeout_s: float = Field(5.0, gt=0, description="Connect timeout for image URLs.")
    fetch_total_timeout_s: float = Field(30.0, gt=0, description="Whole-download timeout for one image URL.")
    fetch_max_redirects: int = Field(3, ge=0, le=10, description="Redirect hops followed (same host only).")
    sync_timeout_s: float = Field(
        600.0, gt=0, description="How long a celery=false request waits before answering 202 with its task id."
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
    license_policy: Literal["any", "commercial"] = Field(
        "any", description="'commercial' serves every id with a stand-in whose weights allow commercial use."
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
    save_threads: int = Field(2, ge=1, le=64, description=(
        "Threads that encode and store finished outputs, off the device's thread (the next render starts while "
        "the last one's PNGs are written)."))
    max_queue: int = Field(
        1000, ge=1, description="Most accepted jobs not yet finished; past it requests get 429 with Retry-After.")
    queue_retry_after_s: int = Field(10, ge=1, le=3600, description="Retry-After seconds sent with a 429.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins browsers may call from (CORS); empty = CORS off. Comma-separated.")
    webhook_secret: SecretStr | None = Field(
        None, min_length=16, description="Signs webhooks (X-Darkroom-Signature); default: derived from the API key "
        "a request used, else a random secret kept in the data dir.")
    webhook_attempts: int = Field(6, ge=1, le=20, description="Deliveries tried per webhook event.")
    webhook_backoff_s: float = Field(1.0, gt=0.0, le=600.0, description="First retry delay; doubles each time.")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Serve only these model ids (comma-separated; default: every id in "
        "configs/models.toml). Weights of the others are not located or loaded.")
    api_keys_file: Path | None = Field(
        None, description="TOML file of named keys ([keys.NAME] key=..., rate_per_minute, jobs_per_day); "
        "used with or instead of api_key.")
    rate_per_minute: int = Field(
        0, ge=0, description="Default requests per minute per key (0: unlimited); a keys-file entry may override.")
    jobs_per_day: int = Field(
        0, ge=0, description="Default accepted jobs per key per rolling 24 h (0: unlimited); per key in the keys file.")
    max_body_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest request body (JSON or multipart); past it 413 payload_too_large.")
    max_json_depth: int = Field(32, ge=2, le=256, description="Deepest nesting of objects/arrays in a JSON body.")
    max_multipart_parts: int = Field(64, ge=1, description="Most parts (files and fields) in one multipart body.")
    max_multipart_field_bytes: int = Field(
        256 * 1024, gt=0, description="Largest non-file multipart field (files are capped by max_image_bytes).")
    drain_timeout_s: float = Field(
        30.0, ge=0.0, description="On SIGTERM: how long running jobs may finish before they are re-queued on disk.")
    min_free_mb: float = Field(
        100.0, ge=0.0, description="Submissions are refused with 507 storage_full while the data dir has less free "
        "space than this (MB), so accepted jobs can still store their outputs.")
    store_deadline_s: float = Field(
        5.0, gt=0.0, le=120.0, description="How long a request waits for the job store (locked or slow) before it "
        "answers 503 store_busy with Retry-After; a submission is then not accepted.")
    job_max_attempts: int = Field(
        3, ge=1, le=50, description="Failures around a job's render (an input that cannot be read, outputs that "
        "cannot be stored) before it fails with the fault's code; the ones before are retried with backoff.")
    job_retry_backoff_s: float = Field(
        2.0, gt=0.0, le=600.0, description="Delay before a job is tried again after such a failure; it doubles "
        "each time (up to 60 s).")
    no_worker_grace_s: float = Field(
        60.0, gt=0.0, description="How long the engine may run no worker thread (/ready says 503 'no worker "
        "running') before it asks for a process restart (taken when supervised).")
    step_timeout_s: float = Field(
        600.0, gt=0.0, description="Watchdog: a worker with no denoising step (or load) for this long is hung; its "
        "jobs are re-queued and the server restarts its workers.")
    supervise: bool = Field(
        True, description="Run the server under a supervisor that restarts it after a GPU fault, a hung worker or "
        "a crash (jobs resume from the database).")
    restart_on_fault: bool = Field(
        False, description="After a GPU fault or a hung worker, drain and exit with code 75 so a supervisor starts "
        "a fresh process (set for its child by `--supervise`; set it under systemd/Kubernetes restart policies).")
    metrics_public: bool = Field(
        False, description="Serve /metrics without an API key (for a Prometheus on a trusted network); otherwise "
        "give Prometheus a key of its own (bearer_token in its scrape config).")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Server log level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text: a line per record; json: one JSON object per line with request_id and job_id.")

    @field_validator("url_allowlist", "cors_origins", "models", mode="before")
    @classmethod
    def _split_csv(cls, v: object) -> object:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    def config(self, name: str) -> Path:
        """A configuration file in `config_dir`."""
        return self.config_dir / name

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

    def binds_loopback_only(self) -> bool:
        """True when `host` is a loopback address or `localhost`."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def check_file_sharing(self) -> None:
        """Refuse a job store shared by several front ends over files each keeps to itself: a job accepted by one
        front end would be run by an engine that cannot read its inputs."""
        if self.database_url is not None and not self.s3_bucket and not self.shared_data_dir:
            raise ValueError(
                "a PostgreSQL job store is shared by every front end using it, so they must share files too: set "
                "DARKROOM_S3_BUCKET (an S3-compatible bucket), or put the data dir on storage they all mount and "
                "set DARKROOM_SHARED_DATA_DIR=true (also the setting for a single front end on PostgreSQL)")

    def check_bind_safety(self) -> None:
        """Refuse to expose an unauthenticated server beyond this machine."""
        if not self.binds_loopback_only() and self.api_key is None and self.api_keys_file is None:
            raise ValueError(
                f"refusing to bind to {self.host} without an API key: set DARKROOM_API_KEY (or --api-key) or "
                "DARKROOM_API_KEYS_FILE, or bind to 127.0.0.1"
            )
