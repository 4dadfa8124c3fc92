"""What the tools check found, kept per tools build and CPU (``tools-check.json``).

This sits below :mod:`apex_gui.core.jobs.tools`: the tools read a stored "repacking crashes
here" finding to add ``--no-repack`` to every run, while running the check itself
(:mod:`apex_gui.core.jobs.tools_check`) needs the tools and the job engine above them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from apex_gui.core.settings import data_dir

CHECK_FILE = "tools-check.json"


class ToolLocator(Protocol):
    """What identifying a tools build needs of :class:`~apex_gui.core.jobs.tools.LlamaTools`."""

    def locate(self, tool: str, probe_version: bool = False) -> Any: ...


@dataclass(frozen=True)
class ToolCheck:
    """One tool's verdict."""

    tool: str  # executable name
    working: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class ToolsCheckReport:
    """Everything one check found, for one tools build on one CPU."""

    identity: str
    checks: tuple[ToolCheck, ...]
    #: Perplexity of a quantized model crashes with repacking and works without it.
    repack_broken: bool = False
    cpu_variant: str | None = None
    seconds: float = 0.0
    checked_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return all(c.working for c in self.checks)

    @property
    def broken(self) -> list[ToolCheck]:
        return [c for c in self.checks if not c.working]

    def summary(self) -> str:
        """One line for a banner or a status bar."""
        if self.broken:
            first = self.broken[0]
            more = f" (and {len(self.broken) - 1} more)" if len(self.broken) > 1 else ""
            return f"{first.tool} is broken on this CPU{more}: {first.detail}. Fix: {first.fix}"
        if self.repack_broken:
            return ("llama.cpp's repacked CPU kernels crash on this CPU; APEX Studio runs every "
                    "evaluation with --no-repack (same results, somewhat slower)")
        return "all llama.cpp tools work on this CPU"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checks"] = [asdict(c) for c in self.checks]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolsCheckReport:
        checks = tuple(ToolCheck(**c) for c in data.get("checks", []))
        return cls(identity=str(data["identity"]), checks=checks,
                   repack_broken=bool(data.get("repack_broken", False)),
                   cpu_variant=data.get("cpu_variant"), seconds=float(data.get("seconds", 0.0)),
                   checked_at=float(data.get("checked_at", 0.0)))


def _cpu_identity() -> str:
    """The CPU model and its feature flags: a check holds for this CPU only."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    model = flags = ""
    for line in text.splitlines():
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = line.split(":", 1)[1].strip()
    return model + "|" + hashlib.sha256(flags.encode()).hexdigest()[:12]


def build_identity(tools: ToolLocator) -> str | None:
    """Which tools build this is (paths, sizes, times) on which CPU; None if tools are missing."""
    parts = []
    for short in ("quantize", "perplexity"):
        location = tools.locate(short)
        if location.path is None:
            return None
        stat = location.path.stat()
        parts.append(f"{location.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    parts.append(_cpu_identity())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def _check_path() -> Path:
    return data_dir() / CHECK_FILE


def _read_reports() -> dict[str, Any]:
    try:
        data = json.loads(_check_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def known_check(tools: ToolLocator) -> ToolsCheckReport | None:
    """The stored report for this tools build on this CPU, or None when it was never checked."""
    identity = build_identity(tools)
    if identity is None:
        return None
    raw = _read_reports().get(identity)
    try:
        return ToolsCheckReport.from_dict(raw) if isinstance(raw, dict) else None
    except (KeyError, TypeError, ValueError):
        return None


def store_check(report: ToolsCheckReport) -> None:
    """Keep the report (atomically; a few builds at most are remembered)."""
    reports = _read_reports()
    reports[report.identity] = report.to_dict()
    newest = sorted(reports.items(), key=lambda kv: kv[1].get("checked_at", 0))[-8:]
    path = _check_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(dict(newest), indent=2), encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        pass  # the check still reports; it only runs again next time
