"""Per-run bookkeeping shared by the headless runner and the Qt queue: the decoded log,
its lines, progress and ETA. Knows nothing of processes."""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable

from apex_gui.core.jobs.parsers import LineSplitter
from apex_gui.core.jobs.progress import Progress
from apex_gui.core.jobs.specs import ToolJob


class JobMonitor:
    """Per-run bookkeeping: decoded log, lines, progress, ETA. Knows nothing of processes."""

    def __init__(self, job: ToolJob, clock: Callable[[], float] = time.monotonic) -> None:
        self.job = job
        self._clock = clock
        self.started = clock()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._splitter = LineSplitter()
        self._chunks: list[str] = []
        self.reader = job.new_progress()
        self._first_progress: tuple[float, float] | None = None  # (time, fraction): ETA base

    @property
    def progress(self) -> Progress:
        return self.reader.progress

    def feed_bytes(self, data: bytes) -> tuple[str, bool]:
        """Decode a chunk of raw output (a UTF-8 sequence may be split across chunks)."""
        text = self._decoder.decode(data)
        return text, self.feed_text(text)

    def feed_text(self, text: str) -> bool:
        """Add decoded output; True when the progress changed."""
        if not text:
            return False
        self._chunks.append(text)
        changed = False
        for line in self._splitter.feed(text):
            changed |= self.reader.feed_line(line)
        if self._splitter.pending:
            changed |= self.reader.peek(self._splitter.pending)
        return changed

    def finish(self) -> None:
        """End of output: flush the decoder and the last unterminated line."""
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self._chunks.append(tail)
            self._splitter.feed(tail)
        for line in self._splitter.flush():
            self.reader.feed_line(line)

    @property
    def log(self) -> str:
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    def elapsed(self) -> float:
        return self._clock() - self.started

    def eta_seconds(self) -> float | None:
        """Remaining seconds at the rate since the first progress report; None until there
        are two reports to go by.

        Measured from the first report, not from the start: loading the model (a minute
        for a big one) is not part of the per-chunk rate, and counting it made the first
        ETA of an imatrix run three times the tool's own estimate (19m55s against 6.4 min).
        """
        fraction = self.progress.fraction
        now = self._clock()
        if not fraction or fraction <= 0.0:
            return None
        first = self._first_progress
        if first is None:
            self._first_progress = (now, fraction)
            return None
        first_time, first_fraction = first
        if fraction <= first_fraction or now <= first_time:
            return None
        return (now - first_time) * (1.0 - fraction) / (fraction - first_fraction)
