"""Typed, versioned user settings in the platform's config folder.

Paths: ``config_dir()`` (settings, user profiles), ``data_dir()`` (run database, logs,
demo model), ``cache_dir()``. Each can be moved with an environment variable, which the
tests use to keep every run in a temporary folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import platformdirs

APP_NAME = "apex-studio"
SETTINGS_VERSION = 1


def config_dir() -> Path:
    return Path(os.environ.get("APEX_STUDIO_CONFIG_DIR") or platformdirs.user_config_dir(APP_NAME))


def data_dir() -> Path:
    return Path(os.environ.get("APEX_STUDIO_DATA_DIR") or platformdirs.user_data_dir(APP_NAME))


def cache_dir() -> Path:
    return Path(os.environ.get("APEX_STUDIO_CACHE_DIR") or platformdirs.user_cache_dir(APP_NAME))


@dataclass
class Settings:
    """Everything the user can set; unknown keys in the file are ignored, missing ones defaulted."""

    version: int = SETTINGS_VERSION
    llama_cpp_dir: str = ""
    threads: int = 0  # 0: physical cores
    output_dir: str = ""
    context_length: int = 8192
    kv_cache_type: str = "f16"
    theme: str = "system"  # "system", "light" or "dark"
    recent_files: list[str] | None = None
    manual_devices: str = ""
    #: llama.cpp RPC workers, ``host:port`` comma-separated (Hardware & tiers, Run panel).
    rpc_workers: str = ""
    #: Run llama.cpp with ``--no-repack`` always (the crash retry does it after a crash).
    llama_no_repack: bool = False
    #: Run every job on the CPU, whatever GPU backends and devices the tools have.
    cpu_only: bool = False

    def effective_threads(self) -> int:
        if self.threads > 0:
            return self.threads
        import psutil
        return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def settings_path() -> Path:
    return config_dir() / "settings.json"


def load_settings() -> Settings:
    """Read the settings; a missing or unreadable file gives the defaults (never an error)."""
    path = settings_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Settings(recent_files=[])
    known = {f.name for f in fields(Settings)}
    values = {k: v for k, v in raw.items() if k in known} if isinstance(raw, dict) else {}
    settings = Settings(**values)
    settings.version = SETTINGS_VERSION
    if settings.recent_files is None:
        settings.recent_files = []
    return settings


def save_settings(settings: Settings) -> None:
    """Write atomically: a crash mid-write never leaves a half file."""
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(asdict(settings), indent=2), encoding="utf-8")
    os.replace(temporary, path)


def add_recent_file(settings: Settings, path: str, limit: int = 10) -> None:
    recent = [p for p in (settings.recent_files or []) if p != path]
    settings.recent_files = [path, *recent][:limit]
