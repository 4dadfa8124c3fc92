"""What a resumable pipeline has finished, kept beside its outputs and checked on resume.

``apex-pipeline.json`` in the work folder records, per step, the files it wrote and read
(size and modification time) and its results; it is replaced atomically after each step.
On a restart a step counts as done only when its record is there, each output still has the
recorded fingerprint and passes its content check (a complete GGUF or safetensors file), and
its inputs are the ones it was made from. The journal lists every start and finish, so a
test (or a curious user) can see that no finished step ran twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "apex-pipeline.json"
STATE_VERSION = 1


#: Files up to this size are fingerprinted by content: a plan's tensor-type file is written
#: anew (same text, new time) each time its job is built.
HASHED_BYTES = 4 * 1024 * 1024


def fingerprint(path: Path) -> list[int | str] | None:
    """(size, modification time in ns) of a file, or (size, sha256) of a small one; None
    when it is missing."""
    try:
        stat = path.stat()
        if stat.st_size <= HASHED_BYTES and path.is_file():
            return [stat.st_size, hashlib.sha256(path.read_bytes()).hexdigest()]
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


@dataclass
class PipelineState:
    """The record of one work folder's pipeline."""

    path: Path
    source: str = ""
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    journal: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path, source: str) -> PipelineState:
        """The folder's record; a record of another source (or an unreadable one) starts anew."""
        path = folder / STATE_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return cls(path, source)
        if (not isinstance(raw, dict) or raw.get("version") != STATE_VERSION
                or raw.get("source") != source or not isinstance(raw.get("steps"), dict)):
            return cls(path, source)
        journal = raw.get("journal") if isinstance(raw.get("journal"), list) else []
        return cls(path, source, dict(raw["steps"]), list(journal))

    def save(self) -> None:
        payload = {"version": STATE_VERSION, "source": self.source, "steps": self.steps,
                   "journal": self.journal}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=STATE_FILE + ".", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(payload, out, indent=1, default=str)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def note(self, key: str, event: str) -> None:
        self.journal.append({"step": key, "event": event, "pid": os.getpid()})
        self.save()

    def record(self, key: str, outputs: list[Path], inputs: list[Path],
               results: dict[str, Any] | None = None) -> None:
        """Step ``key`` finished: remember what it wrote and read."""
        self.steps[key] = {
            "outputs": {str(p): fingerprint(p) for p in outputs},
            "inputs": {str(p): fingerprint(p) for p in inputs},
            "results": results or {}}
        self.journal.append({"step": key, "event": "done", "pid": os.getpid()})
        self.save()

    def forget(self, key: str) -> None:
        if self.steps.pop(key, None) is not None:
            self.save()

    def done(self, key: str, problem: Any = None) -> bool:
        """Whether ``key`` finished and nothing it wrote or read has changed since.

        ``problem(path)`` is the content check of an output (None when it is sound).
        """
        record = self.steps.get(key)
        if not isinstance(record, dict):
            return False
        for name, seen in {**record.get("outputs", {}), **record.get("inputs", {})}.items():
            if fingerprint(Path(name)) != seen:
                return False
        if problem is not None:
            for name in record.get("outputs", {}):
                if problem(Path(name)) is not None:
                    return False
        return True

    def results(self, key: str) -> dict[str, Any]:
        record = self.steps.get(key)
        return dict(record.get("results", {})) if isinstance(record, dict) else {}

    def started(self, key: str) -> int:
        return sum(1 for entry in self.journal if entry.get("step") == key
                   and entry.get("event") == "started")
