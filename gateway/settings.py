"""Every gateway setting, read once from environment variables (documented in the README):
MEMEFLY_<FIELD>, parsed by type with pydantic-settings."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from memefly import contract as c
from memefly.decoding.limits import MAX_BEAMS, MAX_CANDIDATES
from memefly.paths import data_dir as default_data_dir
from memefly.paths import models_dir as default_models_dir
from memefly.paths import templates_dir as default_templates_dir

MAX_RENDER_SIDE = 8192  # the most MEMEFLY_RENDER_MAX_SIDE may be (and so any requested size)


class Settings(BaseSettings):
    """Settings(...) is what it is given (and the defaults below); Settings.from_env() reads the
    MEMEFLY_* variables. Checked whole on construction: a bad value is a ValueError."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    # Where the models are: "grpc" (TF Serving) or "inprocess" (the SavedModels in this process).
    backend: str = "inprocess"
    models_dir: Path = Field(default_factory=default_models_dir)
    # The pinned pair: both models at this version. None: the newest version of the decoder
    # (in-process: the newest version both model directories have).
    model_version: int | None = None
    # grpc: where each model's TF Serving listens (compose publishes them on these ports), and
    # the names they serve the models under (KServe names a model after its InferenceService,
    # which allows no underscores). At start, each target must serve its model.
    encoder_target: str = "localhost:8500"
    decoder_target: str = "localhost:8510"
    encoder_model: str = c.ENCODER_MODEL
    decoder_model: str = c.DECODER_MODEL

    # gRPC: a deadline on every call; retries (with backoff) on UNAVAILABLE only.
    call_timeout_s: float = 10.0
    retries: int = 3
    retry_backoff_s: float = 0.05
    max_message_bytes: int = 64 * 1024 * 1024
    # How the decoder's GRU state and context travel each step: "float16" halves the requests and
    # cuts replies by 40% (the decoder's step_float16 signature casts in the graph, computes in float32).
    wire_state: str = "float32"

    # A request that takes longer than this gets 504 and frees its beams.
    request_timeout_s: float = 30.0
    # On SIGTERM: /readyz and new requests get 503 at once, requests in flight get this long to
    # finish (longer than a request may take), then what is left gets 503. Keep Kubernetes'
    # terminationGracePeriodSeconds above it.
    shutdown_grace_s: float = 35.0
    # Refuse a request at once (503, Retry-After) when the encoder, decoding or render queue would
    # not let it finish within request_timeout_s, instead of letting it wait and time out. The library client
    # (memefly batch) turns it off: it would rather queue.
    admission_control: bool = True
    # Readiness: how often the model servers are checked, and Retry-After on 503.
    health_interval_s: float = 5.0
    retry_after_s: int = 5

    # Gateway processes on one port (`memefly serve --workers`): each has its own event loop,
    # scheduler and searches, so decoding bookkeeping uses that many cores. Over gRPC, TF
    # Serving's batcher merges their calls; in-process, each loads its own copy of the models.
    workers: int = 1

    # Access (docs/gateway.md, "Access"): API keys as a comma-separated list and/or a file of
    # `KEY [LIMIT]` lines; requests per key (or per client address without keys) as "N/minute";
    # where the counts live (async+redis://host:6379 to share them between replicas); the
    # browser origins allowed to call the API (comma-separated, or *). All empty: no checks.
    api_keys: str = Field(default="", repr=False)
    api_keys_file: str = ""
    rate_limit: str = ""
    rate_limit_storage: str = "async+memory://"
    cors_origins: str = ""
    # Shared image URLs (docs/gateway.md, "Shareable image URLs"): the gateway's public address
    # for absolute URLs (empty: the address each request came to); the key that signs upload
    # URLs (empty: a random one kept in data_dir/url-secret; give every replica the same one);
    # where uploads are kept for them (local: upload_dir; s3://bucket/prefix; off: no upload
    # URLs), for how long after each request, and up to how many bytes (local).
    public_url: str = ""
    url_secret: str = Field(default="", repr=False)
    data_dir: Path = Field(default_factory=default_data_dir)
    upload_store: str = "local"
    upload_dir: Path | None = None  # None: data_dir/uploads
    upload_ttl_s: int = 7 * 24 * 3600
    upload_store_max_bytes: int = 1024**3
    s3_endpoint_url: str = ""
    # Addresses of proxies whose X-Forwarded-For gives the client's address (per-address limits,
    # logs): uvicorn's forwarded_allow_ips. "*" only where nothing but the proxy reaches the
    # gateway (docker-compose.replicas.yml), or clients could claim any address.
    forwarded_allow_ips: str = "127.0.0.1"

    # Batching. Caps match the TF Serving batching configs (max_batch_size 64 / 1024) with
    # headroom, so one gateway call is never split by the server.
    continuous_batching: bool = True
    decoder_max_rows: int = 512
    encoder_max_batch: int = 32
    # 0: no waiting; batches form from the images that queue while a call is in flight.
    encoder_max_wait_ms: float = 0.0
    template_cache_size: int = 4096

    # Uploads. A request's headers must arrive within header_timeout_s and its body within
    # body_timeout_s (else 408): slow clients cannot hold connections. At most max_connections
    # connections are handled at once (uvicorn answers 503 beyond).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1024
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_batch_images: int = 16

    # Rendering (render=png|jpeg|webp, POST /render): blank template images are read from
    # templates_dir (`memefly data download` fills it); rendered images are at most
    # render_max_side pixels on their longer side; the latest renders are kept up to render_cache_bytes.
    templates_dir: Path = Field(default_factory=default_templates_dir)
    render_max_side: int = 2048
    render_jpeg_quality: int = 85
    render_cache_bytes: int = 64 * 1024 * 1024
    # Renders drawn at once (0: one per core, at most 4); more wait, and with admission_control
    # one that would not be drawn within request_timeout_s is refused (503, Retry-After).
    render_workers: int = 0

    @property
    def cors_origin_list(self) -> list[str]:
        # Browsers send the origin lower-case, without a default port.
        origins = [
            origin.strip().lower().removesuffix(":443") for origin in self.cors_origins.split(",") if origin.strip()
        ]
        return [o.removesuffix(":80") if o.startswith("http://") else o for o in origins]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the environment only through from_env()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """MEMEFLY_<FIELD> for every field (e.g. MEMEFLY_BACKEND=grpc); overrides that are not None win."""
        values = _Environment(cls, os.environ if environ is None else environ)()
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as error:
            raise ValueError(_first_problem(error)) from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with CHANGES, checked as a new one is."""
        try:
            return type(self)(**{**self.model_dump(), **changes})
        except ValidationError as error:
            raise ValueError(_first_problem(error)) from None

    @field_validator("model_version", mode="before")
    @classmethod
    def _latest_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in ("latest", "none") else value

    @model_validator(mode="after")
    def _checked(self) -> Settings:
        self._check()
        return self

    def _check(self) -> None:
        if self.backend not in ("grpc", "inprocess"):
            raise ValueError(f"MEMEFLY_BACKEND must be 'grpc' or 'inprocess', not {self.backend!r}")
        for name in (
            "decoder_max_rows",
            "encoder_max_batch",
            "template_cache_size",
            "max_batch_images",
            "render_max_side",
            "max_connections",
            "workers",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"MEMEFLY_{name.upper()} must be at least 1")
        if self.render_max_side > MAX_RENDER_SIDE:
            raise ValueError(f"MEMEFLY_RENDER_MAX_SIDE must be at most {MAX_RENDER_SIDE}")
        if not 1 <= self.render_jpeg_quality <= 100:
            raise ValueError("MEMEFLY_RENDER_JPEG_QUALITY must be between 1 and 100")
        widest = max(MAX_BEAMS, MAX_CANDIDATES)  # one request's rows must fit in a call
        if self.decoder_max_rows < widest:
            raise ValueError(
                f"MEMEFLY_DECODER_MAX_ROWS must be at least {widest} "
                "(the most beams or sampled candidates a request may ask for)"
            )
        for name in ("header_timeout_s", "body_timeout_s", "request_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"MEMEFLY_{name.upper()} must be more than 0")
        if self.render_workers < 0:
            raise ValueError("MEMEFLY_RENDER_WORKERS must be at least 0 (0: one per core, at most 4)")
        for origin in self.cors_origin_list:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"MEMEFLY_CORS_ORIGINS: {origin!r} is not an origin such as https://app.example or *")
        self._check_access()
        if self.wire_state not in ("float32", "float16"):
            raise ValueError(f"MEMEFLY_WIRE_STATE must be 'float32' or 'float16', not {self.wire_state!r}")
        for name in ("encoder_target", "decoder_target", "encoder_model", "decoder_model"):
            if not getattr(self, name).strip():
                raise ValueError(f"MEMEFLY_{name.upper()} must not be empty")
        if self.upload_ttl_s < 1 or self.upload_store_max_bytes < 1:
            raise ValueError("MEMEFLY_UPLOAD_TTL_S and MEMEFLY_UPLOAD_STORE_MAX_BYTES must be at least 1")
        if not (self.upload_store in ("local", "off") or self.upload_store.startswith("s3://")):
            raise ValueError(
                f"MEMEFLY_UPLOAD_STORE must be local, off or s3://bucket/prefix, not {self.upload_store!r}"
            )
        if self.public_url and not re.fullmatch(r"https?://[^\s?#]+", self.public_url):
            raise ValueError(f"MEMEFLY_PUBLIC_URL: {self.public_url!r} is not an http(s) URL")
        if self.url_secret and len(self.url_secret) < 16:
            raise ValueError("MEMEFLY_URL_SECRET must be at least 16 characters")
        if self.shutdown_grace_s < 0:
            raise ValueError("MEMEFLY_SHUTDOWN_GRACE_S must be at least 0")

    def _check_access(self) -> None:
        from gateway.api.access import Keys, parse_limit, storage

        try:
            Keys.load(self.api_keys, self.api_keys_file)
        except OSError as error:
            raise ValueError(f"MEMEFLY_API_KEYS_FILE: cannot read {self.api_keys_file}: {error.strerror}") from None
        if self.rate_limit:
            parse_limit(self.rate_limit)
        storage(self.rate_limit_storage)


class _Environment(PydanticBaseSettingsSource):
    """MEMEFLY_<FIELD> (exactly so: names are case-sensitive, as on Linux) from ENVIRON, os.environ
    or a mapping a caller gives; an empty value counts as unset."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._environ.get(f"MEMEFLY_{field_name.upper()}"), field_name, False

    def __call__(self) -> dict[str, Any]:
        values = {}
        for name, field in self.settings_cls.model_fields.items():
            value = self.get_field_value(field, name)[0]
            if value not in (None, ""):
                values[name] = value
        return values


def _first_problem(error: ValidationError) -> str:
    """The first problem in the words the gateway has always used: its check's own message, or
    MEMEFLY_<FIELD>=<value> is not a valid <type>."""
    problem = error.errors()[0]
    if problem["type"] == "value_error" and "error" in problem.get("ctx", {}):
        return str(problem["ctx"]["error"])
    name = str(problem["loc"][0]) if problem["loc"] else ""
    if name not in Settings.model_fields:
        return f"{name}: {problem['msg']}" if name else problem["msg"]  # e.g. a misspelled override
    kind = Settings.model_fields[name].annotation
    return f"MEMEFLY_{name.upper()}={problem['input']!r} is not a valid {getattr(kind, '__name__', str(kind))}"
