"""One `Settings` object, from `LOOM_*` environment variables (and an optional TOML file).

Settings are passed explicitly to whatever needs them; nothing reads them from a global.
Every key of the TOML file's `[loom]` table is validated exactly as its environment variable is;
an unknown key, a bad value or an unreadable file is a `SettingsError` naming it (one line).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "LOOM_"
# LOOM_ variables that are not Settings, read where they are needed (known: no "matches no setting" warning).
# LOOM_WEIGHTS_DIR: where `loom weights fetch` puts model weights and where loading finds them (loom.retrieval.weights).
READ_ELSEWHERE = frozenset({"LOOM_WEIGHTS_DIR"})
# Settings whose values are secrets: `loom config show` masks them.
SECRET_SETTINGS = frozenset({"api_keys", "upstream_api_key", "embedding_api_key", "metrics_key"})
# Settings that only the environment (or an argument) can give: the file cannot name itself.
_NOT_IN_FILE = frozenset({"config_file", "file_config"})


class SettingsError(ValueError):
    """A setting is invalid, unknown or unreadable; the message names it and where it came from."""


def user_data_dir() -> Path:
    """Where Loom keeps its data by default: `$XDG_DATA_HOME/loom`, else `~/.local/share/loom`
    (never the working directory, so `loom serve` finds the same data wherever it is started)."""
    base = os.environ.get("XDG_DATA_HOME", "")
    return (Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share") / "loom"


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _split_keys(value: object) -> list[str]:
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    if isinstance(value, list):
        return [str(k) for k in value]
    return []


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # The SQLite database, file bytes, sandbox volumes and (by default) the sandbox's environment.
    data_dir: Path = Field(default_factory=user_data_dir)
    # Empty means SQLite at <data_dir>/loom.db.
    database_url: str = ""
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A TOML file with model routes and other settings (see README).
    config_file: Path | None = None

    # Model backends (the default one; more come from the config file).
    upstream_base_url: str = "https://api.openai.com/v1"
    upstream_api_key: str = ""
    upstream_timeout_s: float = 600.0
    upstream_max_retries: int = 2
    # The default backend's kind of server ("auto": asked on first use; see loom.llm.dialects).
    upstream_dialect: str = "auto"

    # Runs.
    # How long a run may execute (queued or in progress) before it ends `expired`, counted from its
    # creation and again from each submission of tool outputs; its `expires_at` shows the deadline.
    run_max_duration_s: int = 600
    # How long a run waits for tool outputs (`requires_action`) before it ends `expired`.
    run_expiry_s: int = 600
    lease_s: float = 15.0
    # Every thread accepts several active runs at once (else only threads whose metadata has
    # `"loom_concurrent_runs": "true"` do; OpenAI's one active run per thread otherwise).
    concurrent_runs: bool = False
    # The largest `loom_max_run_seconds` an assistant's or run's metadata may ask for.
    run_max_duration_limit_s: int = 86400
    poll_after_ms: int = 100
    # Seconds of silence after which a run's event stream sends a `: keep-alive` comment.
    sse_keepalive_s: float = 10.0

    # Files.
    max_file_bytes: int = 512 * 1024 * 1024
    max_upload_part_bytes: int = 64 * 1024 * 1024
    max_upload_bytes: int = 8 * 1024 * 1024 * 1024
    upload_expiry_s: int = 3600
    # Where file bytes live: file:///path (empty: <data_dir>/files) or s3://bucket/prefix, with the
    # standard AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION variables.
    blob_url: str = ""
    # Tests only: seconds to pause between parts while completing an upload (to crash a server mid-way).
    test_upload_assembly_pause_s: float = 0.0

    # Sandbox (code interpreter). "bwrap" (default) or "unsafe-local" (development only: no isolation).
    sandbox: str = "bwrap"
    # The sandbox's own virtualenv (made by `loom sandbox setup`; default <data_dir>/sandbox-env), and the
    # interpreter it is made from (empty: /usr/bin/python3 when present, else this interpreter's base).
    sandbox_env: Path = Path()
    sandbox_python: str = ""
    # Where sessions' /mnt/data volumes and kernels' runtime files live (empty: <data_dir>/sandbox).
    sandbox_dir: Path | None = None
    # Limits, per execution or per session.
    sandbox_timeout_s: float = 60.0
    # The largest `loom_max_execution_seconds` an assistant's or run's metadata may ask for.
    sandbox_max_timeout_s: float = 3600.0
    sandbox_memory_mb: int = 1024
    sandbox_max_processes: int = 128
    sandbox_disk_mb: int = 1024
    sandbox_tmp_mb: int = 256
    sandbox_max_output_bytes: int = 64 * 1024
    sandbox_max_images: int = 16
    # CPU cores a session may use (cgroup `cpu`, where the machine has it; 0: no limit).
    sandbox_cpus: float = 1.0
    # Files the code writes that the answer links become Files: at most this many per answer, each at
    # most this large (the model is told about the others).
    sandbox_max_output_files: int = 20
    sandbox_max_output_file_mb: int = 100
    # Sessions: idle expiry, how many live at once, and how many kernels are kept started in advance.
    sandbox_idle_timeout_s: float = 1200.0
    sandbox_max_sessions: int = 16
    sandbox_pool_size: int = 2
    # Start the sandbox (and its pool of kernels) at boot, in the background; false: on first use.
    sandbox_prewarm: bool = True
    # Host uids for sandboxes (when the server runs as root): one per session, in a block of 1024 per
    # server process, from this base up to base + 4096 * 1024.
    sandbox_uid_base: int = 1_500_000

    # Several replicas (loom.scaleout): the base URL other replicas reach this one at for code-interpreter
    # sessions it owns (empty: what `loom serve` listens on, 0.0.0.0 as this machine's routable address),
    # and the secret of that internal channel (empty: one made once and kept in the database).
    internal_address: str = ""
    internal_secret: str = ""
    # On SIGTERM (graceful drain): how long a run executing here (and open event streams) may go on with
    # the turn in flight; a run still mid-turn then is interrupted and handed over to another replica.
    drain_timeout_s: float = 25.0

    # Retrieval. embedding_provider: "minilm" (all-MiniLM-L6-v2 int8, offline, weights from `make weights` or
    # `loom weights fetch`; `loom serve` refuses to start without them), "wordllama" (bundled, offline, ~4x faster
    # ingestion, weaker search) or "openai" (any /v1/embeddings). Each vector store keeps the embedder it was
    # built with; a change applies to new stores.
    embedding_provider: str = "minilm"
    embedding_base_url: str = ""  # empty: upstream_base_url
    embedding_api_key: str = ""  # empty: upstream_api_key
    embedding_model: str = "text-embedding-3-small"
    embedding_dimensions: int | None = None
    # Vector stores: ingestion tasks at once per process; seconds between passes expiring stores.
    ingest_concurrency: int = 2
    # Each file is parsed in a child process: extra memory (MB) and seconds it may use before it fails.
    ingest_memory_mb: int = 2048
    ingest_timeout_s: float = 600.0
    vector_store_janitor_s: float = 60.0
    # PostgreSQL keyword search: memory (MB) per replica for stores' in-memory keyword indexes (about
    # 0.5 GB per million chunks); past it the least recently searched stores are dropped and reloaded
    # when next searched.
    keyword_cache_mb: int = 1024

    # Webhooks (`/v1/loom/webhooks`). Endpoints on loopback, private or link-local addresses are refused
    # (at registration and again at each delivery) unless this is true.
    webhooks_allow_private: bool = False
    # Deliveries in flight at once per process, and the time one attempt may take.
    webhooks_concurrency: int = 16
    webhooks_timeout_s: float = 10.0
    # Retries: exponential backoff from base to max (with jitter) until the window since the event ends.
    webhooks_retry_base_s: float = 5.0
    webhooks_retry_max_s: float = 3600.0
    webhooks_retry_window_s: float = 72 * 3600.0
    # How often a replica looks for due deliveries written elsewhere (its own wake it at once).
    webhooks_poll_s: float = 1.0

    # Logs: level, format ("text" or "json"), and one access-log line per request (with its request id).
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    access_log: bool = True
    # GET /metrics (Prometheus): "key" needs a valid API key or metrics_key as bearer token (any bearer
    # token while the server is open), "open" needs none, "off" answers 404.
    metrics: Literal["key", "open", "off"] = "key"
    metrics_key: str = ""

    # The raw TOML table, when a config file was given (sections are read by the parts that own them).
    file_config: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> list[str]:
        return _split_keys(value)

    @field_validator("blob_url")
    @classmethod
    def _check_blob_url(cls, value: str) -> str:
        if value and not value.startswith(("file:///", "s3://")):
            raise ValueError("must be file:///path or s3://bucket/prefix")
        return value

    @model_validator(mode="after")
    def _derived_defaults(self) -> Settings:
        if "sandbox_env" not in self.model_fields_set:
            # Not through __setattr__, which would count it as set (and hide it from the file's [loom]).
            self.__dict__["sandbox_env"] = self.data_dir / "sandbox-env"
        return self

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Arguments first, then the environment, then the TOML file's `[loom]` table, then defaults.

        `sources` of the result says where each setting came from."""
        settings = _validated(lambda: cls(**overrides), "the environment")
        sources = {name: "default" for name in cls.model_fields if name != "file_config"}
        for name in settings.model_fields_set & sources.keys():
            sources[name] = "argument" if name in overrides else f"env {env_name(name)}"
        if settings.config_file is not None:
            path = settings.config_file
            try:
                raw = tomllib.loads(path.read_text())
            except OSError as exc:
                raise SettingsError(f"config file {path}: {exc.strerror or exc}") from None
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(f"config file {path}: invalid TOML: {exc}") from None
            table = raw.get("loom", {})
            if not isinstance(table, dict):
                raise SettingsError(f"config file {path}: [loom] must be a table")
            unknown = sorted(k for k in table if k not in cls.model_fields or k in _NOT_IN_FILE)
            if unknown:
                raise SettingsError(f"config file {path}: unknown key(s) in [loom]: {', '.join(unknown)}")
            from_file = {k: v for k, v in table.items() if k not in settings.model_fields_set}
            if from_file:
                settings = _validated(lambda: cls(**overrides, **from_file), f"config file {path} [loom]")
                for name in from_file:
                    sources[name] = f"file {path}"
            settings.file_config = raw
        known = {env_name(name) for name in cls.model_fields if name != "file_config"} | READ_ELSEWHERE
        settings._unknown_env = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in known)
        settings._sources = sources
        return settings

    # Where each setting came from ("default", "env LOOM_X", "file PATH", "argument"); set by `load`.
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)
    # `LOOM_*` environment variables that match no setting (warned about at start); set by `load`.
    _unknown_env: list[str] = PrivateAttr(default_factory=list)

    @property
    def sources(self) -> dict[str, str]:
        return self._sources

    @property
    def unknown_env(self) -> list[str]:
        return self._unknown_env

    def effective(self) -> list[tuple[str, str, str]]:
        """(setting, value as shown, source) for every setting, secrets masked."""
        rows = []
        for name in type(self).model_fields:
            if name == "file_config":
                continue
            value: Any = getattr(self, name)
            if name in SECRET_SETTINGS:
                shown = mask_secret(value)
            elif name == "database_url":
                shown = mask_url(value) if value else f"(SQLite) {mask_url(self.effective_database_url)}"
            elif name == "blob_url":
                shown = value or f"(local) {self.effective_blob_url}"
            elif isinstance(value, list):
                shown = ",".join(str(v) for v in value)
            else:
                shown = "" if value is None else str(value)
            rows.append((name, shown, self.sources.get(name, "default")))
        return rows

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'loom.db').resolve()}"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def effective_blob_url(self) -> str:
        return self.blob_url or self.files_dir.absolute().as_uri()


def mask_secret(value: object) -> str:
    if isinstance(value, list):
        return ",".join(mask_secret(v) for v in value) if value else ""
    text = str(value or "")
    return "" if not text else ("****" if len(text) < 12 else f"{text[:3]}…{text[-2:]}")


def mask_url(url: str) -> str:
    """A database URL with its password hidden."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:****@{host}"


def _validated(build: Any, origin: str) -> Settings:
    try:
        settings: Settings = build()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            name = env_name(field) if origin == "the environment" else field
            problems.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError(f"invalid setting in {origin}: " + "; ".join(problems)) from None
    return settings


def settings_help() -> str:
    """Every setting with its environment variable and default, for `--help`."""
    lines = ["settings (environment variable, or the same key in the [loom] table of LOOM_CONFIG_FILE):"]
    defaults = Settings.model_construct()
    for name, field in Settings.model_fields.items():
        if name == "file_config":
            continue
        if name == "data_dir":
            default = "$XDG_DATA_HOME/loom or ~/.local/share/loom"
        elif name == "sandbox_env":
            default = "<data_dir>/sandbox-env"
        elif name == "database_url":
            default = "SQLite at <data_dir>/loom.db"
        elif name == "blob_url":
            default = "file://<data_dir>/files"
        else:
            value = getattr(defaults, name, field.default)
            default = ",".join(value) if isinstance(value, list) else ("" if value is None else str(value))
        lines.append(f"  {env_name(name):34} default: {default or '(empty)'}")
    return "\n".join(lines)
