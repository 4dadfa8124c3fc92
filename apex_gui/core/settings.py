"""Typed, versioned user settings in the platform's config folder.

Paths: ``config_dir()`` (settings, user profiles), ``data_dir()`` (run database, logs,
demo model), ``cache_dir()``. Each can be moved with an environment variable, which the
tests use to keep every run in a temporary folder.

``settings.json`` is a file users edit by hand: every value is checked by type and range
when it is read, and one that does not fit falls back to its default with one warning naming
the key (:func:`read_settings` returns the warnings; :func:`load_settings` logs each once).
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import typing
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import platformdirs
import psutil

APP_NAME = "apex-studio"
SETTINGS_VERSION = 1
#: The window's themes.
THEMES: tuple[str, ...] = ("system", "light", "dark")
#: KV cache types llama.cpp accepts for ``-ctk`` / ``-ctv``.
KV_CACHE_TYPES: tuple[str, ...] = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
                                   "iq4_nl", "f32")
#: The context lengths the window's fields offer.
CONTEXT_RANGE = (256, 1 << 20)
#: llama.cpp's thread limit is far above any machine; this one only refuses nonsense.
MAX_THREADS = 4096
#: A settings file is a few hundred bytes; a bigger one is not ours (and is not read whole).
MAX_SETTINGS_BYTES = 1 << 20

_log = logging.getLogger(__name__)


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
        return psutil.cpu_count(logical=False) or os.cpu_count() or 1


@dataclass(frozen=True)
class SettingsRead:
    """The settings as read, and one line per value that was replaced by its default."""

    settings: Settings
    warnings: tuple[str, ...] = ()


def settings_path() -> Path:
    return config_dir() / "settings.json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _in(low: int, high: int) -> Callable[[Any], bool]:
    return lambda value: _is_int(value) and low <= value <= high


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and value in choices


#: Checks beyond the type, and how a warning describes what is expected.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "threads": (_in(0, MAX_THREADS), f"a whole number from 0 (automatic) to {MAX_THREADS}"),
    "context_length": (_in(*CONTEXT_RANGE),
                       f"a whole number of tokens from {CONTEXT_RANGE[0]} to {CONTEXT_RANGE[1]:,}"),
    "kv_cache_type": (_one_of(KV_CACHE_TYPES), "one of " + ", ".join(KV_CACHE_TYPES)),
    "theme": (_one_of(THEMES), "one of " + ", ".join(THEMES)),
}
#: By type, for every other field (a field added later is checked without a rule of its own).
_BY_TYPE: dict[Any, tuple[Callable[[Any], bool], str]] = {
    str: (lambda value: isinstance(value, str) and "\x00" not in value, "text"),
    int: (_is_int, "a whole number"),
    bool: (lambda value: isinstance(value, bool), "true or false"),
    float: (lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value), "a number"),
}


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def _default(name: str) -> Any:
    for item in fields(Settings):
        if item.name == name:
            if item.default is not MISSING:
                return item.default
            if item.default_factory is not MISSING:
                return item.default_factory()
    raise KeyError(name)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _checked(name: str, value: Any, hint: Any, path: Path,
             warnings: list[str]) -> tuple[bool, Any]:
    """(keep, value): the value as it will be used, or (False, None) for the default."""
    if name == "recent_files":
        if value is None:
            return True, []
        if isinstance(value, list):
            kept = [item for item in value if isinstance(item, str) and item and "\x00" not in item]
            if len(kept) != len(value):
                warnings.append(f"{path}: {name} holds entries that are not file paths; "
                                "those were left out")
            return True, kept
        warnings.append(f"{path}: {name} is {_shown(value)}, not a list of file paths; "
                        "using an empty list")
        return True, []
    rule = _RULES.get(name) or _BY_TYPE.get(hint)
    if rule is None or rule[0](value):
        return True, value
    warnings.append(f"{path}: {name} is {_shown(value)}, not {rule[1]}; using the default "
                    f"{_shown(_default(name))}")
    return False, None


_NOTHING: Any = object()


def _read_json(path: Path, warnings: list[str]) -> Any:
    """The file's JSON, or _NOTHING (missing: silently; unusable: with a warning)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return _NOTHING
    except OSError as error:
        warnings.append(f"{path} cannot be read ({error.strerror or error}); using the default "
                        "settings")
        return _NOTHING
    if not stat.S_ISREG(info.st_mode):
        # A FIFO would block the read for good, a device would never end.
        warnings.append(f"{path} is not a regular file; using the default settings (remove it)")
        return _NOTHING
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SETTINGS_BYTES + 1)
    except OSError as error:
        warnings.append(f"{path} cannot be read ({error.strerror or error}); using the default "
                        "settings")
        return _NOTHING
    if len(data) > MAX_SETTINGS_BYTES:
        warnings.append(f"{path} is over {MAX_SETTINGS_BYTES // 1024} KB, not a settings file; "
                        "using the default settings (remove it)")
        return _NOTHING
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        where = f" ({error})" if isinstance(error, json.JSONDecodeError) else ""
        warnings.append(f"{path} is not valid JSON{where}; using the default settings (fix the "
                        "file or remove it)")
        return _NOTHING


def read_settings() -> SettingsRead:
    """Read the settings and say what in them could not be used (never an error)."""
    path = settings_path()
    warnings: list[str] = []
    raw = _read_json(path, warnings)
    if raw is _NOTHING:
        raw = None
    elif not isinstance(raw, dict):
        shown = "null" if raw is None else type(raw).__name__
        warnings.append(f"{path} holds {shown}, not a set of settings; using the default "
                        "settings")
        raw = None
    hints = _field_types()
    values: dict[str, Any] = {}
    for name, value in (raw or {}).items():
        if name == "version" or name not in hints:
            continue  # written by another version: read what is known, keep the rest out
        keep, checked = _checked(name, value, hints[name], path, warnings)
        if keep:
            values[name] = checked
    settings = Settings(**values)
    settings.version = SETTINGS_VERSION
    if settings.recent_files is None:
        settings.recent_files = []
    return SettingsRead(settings, tuple(warnings))


_reported: set[str] = set()


def load_settings() -> Settings:
    """Read the settings; a missing, unreadable or wrong value gives its default (never an
    error), with one logged warning per problem and process."""
    read = read_settings()
    log_warnings(read.warnings)
    return read.settings


def log_warnings(warnings: tuple[str, ...]) -> None:
    """Log each settings warning once per process (the CLI shows them on stderr)."""
    for line in warnings:
        if line not in _reported:
            _reported.add(line)
            _log.warning("warning: %s", line)


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
