"""One `Settings` object, from `LOOM_*` environment variables (and an optional TOML file).

Settings are passed explicitly to whatever needs them; nothing reads them from a global.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_keys(value: object) -> list[str]:
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    if isinstance(value, list):
        return [str(k) for k in value]
    return []


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOM_", extra="ignore")

    data_dir: Path = Path("./data")
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
    poll_after_ms: int = 100
    # Seconds of silence after which a run's event stream sends a `: keep-alive` comment.
    sse_keepalive_s: float = 10.0

    # Files.
    max_file_bytes: int = 512 * 1024 * 1024
    max_upload_part_bytes: int = 64 * 1024 * 1024
    max_upload_bytes: int = 8 * 1024 * 1024 * 1024
    upload_expiry_s: int = 3600
    # Tests only: seconds to pause between parts while completing an upload (to crash a server mid-way).
    test_upload_assembly_pause_s: float = 0.0

    # Sandbox (code interpreter). "bwrap" (default) or "unsafe-local" (development only: no isolation).
    sandbox: str = "bwrap"
    # The sandbox's own virtualenv (made by `python -m loom.sandbox.setup`), and the interpreter it is
    # made from (empty: /usr/bin/python3 when present, else this interpreter's base).
    sandbox_env: Path = Path(".venv-sandbox")
    sandbox_python: str = ""
    # Where sessions' /mnt/data volumes and kernels' runtime files live (empty: <data_dir>/sandbox).
    sandbox_dir: Path | None = None
    # Limits, per execution or per session.
    sandbox_timeout_s: float = 60.0
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

    # Retrieval. embedding_provider: "wordllama" (bundled, offline) or "openai" (any /v1/embeddings).
    embedding_provider: str = "wordllama"
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

    # The raw TOML table, when a config file was given (sections are read by the parts that own them).
    file_config: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> list[str]:
        return _split_keys(value)

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Environment first, then the TOML file's `[loom]` table fills what the environment left unset."""
        settings = cls(**overrides)
        if settings.config_file is not None:
            raw = tomllib.loads(settings.config_file.read_text())
            settings.file_config = raw
            env_set = settings.model_fields_set
            for key, value in raw.get("loom", {}).items():
                if key in cls.model_fields and key not in env_set:
                    setattr(settings, key, value)
            settings.api_keys = _split_keys(settings.api_keys)
        return settings

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'loom.db').resolve()}"

    @property
    def is_postgres(self) -> bool:
        return self.effective_database_url.startswith("postgresql")

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"
