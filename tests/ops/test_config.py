"""Configuration that cannot silently mis-configure: the TOML `[loom]` table validated like the environment,
unknown keys as one-line errors, unknown `LOOM_*` variables warned about, `loom config show`, `--version`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loom import __version__
from loom.config import Settings, SettingsError

REPO = Path(__file__).resolve().parents[2]


def loom(*args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    return subprocess.run(
        [sys.executable, "-m", "loom.cli", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_toml_paths_are_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOOM_DATA_DIR", "LOOM_SANDBOX_ENV", "LOOM_LEASE_S", "LOOM_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    cfg = tmp_path / "loom.toml"
    cfg.write_text(
        f'[loom]\ndata_dir = "{tmp_path / "d"}"\nsandbox_env = "/opt/sbx"\nlease_s = 4\napi_keys = "sk-a, sk-b"\n'
    )
    s = Settings.load(config_file=cfg)
    assert s.data_dir == tmp_path / "d" and isinstance(s.data_dir, Path)
    assert s.sandbox_env == Path("/opt/sbx") and isinstance(s.sandbox_env, Path)
    assert s.lease_s == 4.0 and isinstance(s.lease_s, float)
    assert s.api_keys == ["sk-a", "sk-b"]
    assert s.sources["data_dir"] == f"file {cfg}" and s.sources["upload_expiry_s"] == "default"
    # The environment wins over the file, and says so.
    monkeypatch.setenv("LOOM_LEASE_S", "7")
    s = Settings.load(config_file=cfg)
    assert s.lease_s == 7.0 and s.sources["lease_s"] == "env LOOM_LEASE_S"


def test_sandbox_env_defaults_into_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOM_SANDBOX_ENV", raising=False)
    monkeypatch.setenv("LOOM_DATA_DIR", str(tmp_path))
    assert Settings.load().sandbox_env == tmp_path / "sandbox-env"
    monkeypatch.delenv("LOOM_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Settings.load().data_dir == tmp_path / "xdg" / "loom"


def test_data_dir_from_toml_is_used_by_the_cli(tmp_path: Path) -> None:
    """`data_dir = "/path"` crashed every command with "'str' object has no attribute 'mkdir'"."""
    data = tmp_path / "data"
    cfg = tmp_path / "loom.toml"
    cfg.write_text(f'[loom]\ndata_dir = "{data}"\n')
    result = loom("migrate", env={"LOOM_CONFIG_FILE": str(cfg)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (data / "loom.db").is_file()


def test_unknown_key_is_one_line_naming_it(tmp_path: Path) -> None:
    cfg = tmp_path / "loom.toml"
    cfg.write_text('[loom]\ndata_dirr = "/tmp/x"\n')
    result = loom("serve", "--port", "1", env={"LOOM_CONFIG_FILE": str(cfg)})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key(s) in [loom]: data_dirr" in lines[0], result.stderr
    with pytest.raises(SettingsError, match="data_dirr"):
        Settings.load(config_file=cfg)


def test_bad_value_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "loom.toml"
    cfg.write_text('[loom]\nlease_s = "soon"\n')
    result = loom("config", "show", env={"LOOM_CONFIG_FILE": str(cfg)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "lease_s" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = loom("config", "show", env={"LOOM_RUN_EXPIRY_S": "never"})
    assert result.returncode == 2 and "LOOM_RUN_EXPIRY_S" in result.stderr and "Traceback" not in result.stderr
    # A model-routing mistake is one line too.
    cfg.write_text('[[models]]\nname = "x"\nbackend = "nowhere"\n')
    result = loom("serve", "--port", "1", env={"LOOM_CONFIG_FILE": str(cfg), "LOOM_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "unknown backend 'nowhere'" in result.stderr


def test_config_show_masks_secrets_and_names_sources(tmp_path: Path) -> None:
    cfg = tmp_path / "loom.toml"
    cfg.write_text('[loom]\nupstream_api_key = "sk-upstream-very-secret-value"\n')
    env = {
        "LOOM_CONFIG_FILE": str(cfg),
        "LOOM_API_KEYS": "sk-loom-another-secret-key",
        "LOOM_DATABASE_URL": "postgresql+asyncpg://loom:hunter2@db/loom",
        "LOOM_TYPO_SETTING": "1",
        "LOOM_WEIGHTS_DIR": str(tmp_path / "weights"),  # read by loom.retrieval.weights, not a Setting: no warning
    }
    result = loom("config", "show", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "very-secret" not in out and "another-secret" not in out and "hunter2" not in out
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert rows["upstream_api_key"].endswith(f"file {cfg}")
    assert rows["api_keys"].endswith("env LOOM_API_KEYS")
    assert "postgresql+asyncpg://loom:****@db/loom" in rows["database_url"]
    assert rows["lease_s"].endswith("default")
    assert "LOOM_TYPO_SETTING matches no setting" in result.stderr
    assert "LOOM_WEIGHTS_DIR" not in result.stderr


def test_version_and_help() -> None:
    result = loom("--version", env={})
    assert result.returncode == 0 and result.stdout.strip() == f"loom {__version__}"
    help_text = loom("serve", "--help", env={}).stdout
    assert "LOOM_LOG_FORMAT" in help_text and "LOOM_SANDBOX_TIMEOUT_S" in help_text and "default: 60.0" in help_text


def test_example_config_loads_with_every_recipe_uncommented(tmp_path: Path) -> None:
    """loom.example.toml is valid as shipped, and with every commented recipe line switched on."""
    from loom.llm.routing import ModelRouter

    text = (REPO / "loom.example.toml").read_text()
    Settings.load(config_file=_write(tmp_path / "as-is.toml", text))
    setting = re.compile(r"^# (\[|[A-Za-z_]+ = )")
    on = "\n".join(line[2:] if setting.match(line) else line for line in text.splitlines())
    # Each recipe routes its own name; the two Azure recipes both route gpt-4o, so keep the first only.
    on = on.replace('name = "gpt-4o"\nbackend = "azure-gpt4o"', 'name = "gpt-4o-deployment"\nbackend = "azure-gpt4o"')
    settings = Settings.load(config_file=_write(tmp_path / "on.toml", on))
    router = ModelRouter.from_settings(
        settings, environ={"AZURE_OPENAI_API_KEY": "k", "GROQ_API_KEY": "k", "OPENROUTER_API_KEY": "k"}
    )
    assert router.resolve("gpt-4o-deployment").backend.name == "azure-gpt4o"
    assert router.resolve("qwen2.5:7b").context_window == 32768
    assert settings.log_format == "json"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
