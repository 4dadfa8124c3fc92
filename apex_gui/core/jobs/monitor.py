"""Per-run bookkeeping shared by the headless runner and the Qt queue: the decoded log,
its lines, progress and ETA, and the stall watch of runs across RPC workers. Knows nothing
of processes.

Everything kept per run is bounded: a tool that prints without end (a loop in a wrapper
script, a debug build) must not grow this process's memory without end (it reached 11 GB in
45 s). The log keeps its head and its tail, which is where the verdicts read.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from apex_gui.core.jobs.parsers import LineSplitter
from apex_gui.core.jobs.progress import Progress
from apex_gui.core.jobs.specs import ToolJob
from apex_gui.core.jobs.tools import TOOL_NAMES


#: Characters of a run's log kept from its start (model loading, chunk counts, the CPU
#: variant) and from its end (results, errors). The longest real logs seen, llama-quantize
#: on a 1T-parameter model and 10k HellaSwag tasks, are well under 1 MB.
LOG_HEAD_CHARS = 2 * 2**20
LOG_TAIL_CHARS = 4 * 2**20
#: A "line" longer than this is cut: progress parsers read the unterminated tail on every
#: read, which must stay cheap.
MAX_LINE_CHARS = 256 * 2**10


def cut_long_lines(text: str, open_line: int, limit: int = MAX_LINE_CHARS) -> tuple[str, int]:
    """``text`` with every line cut at ``limit`` characters, for a log pane that shows output
    as it comes: ``open_line`` characters of the current line were seen before. Returns the
    text to show (a cut line ends in a note, once) and the new length of the open line."""
    shown: list[str] = []
    parts = text.split("\n")
    for index, part in enumerate(parts):
        total = open_line + len(part)
        if total <= limit:
            shown.append(part)
        else:
            shown.append(part[:max(0, limit - open_line)])
            if open_line <= limit:  # the first piece past the limit says so
                shown.append(f" [APEX Studio: line longer than {limit // 1024} KiB cut here]")
        open_line = total
        if index < len(parts) - 1:
            shown.append("\n")
            open_line = 0
    return "".join(shown), open_line


class CancelFlag(Protocol):
    """What stops a run from another thread: a ``threading.Event``, or a worker's token."""

    def is_set(self) -> bool: ...


class BoundedText:
    """Text added in pieces, keeping at most ``head`` characters from its start and ``tail``
    from its end; what is left out between is counted and named."""

    def __init__(self, head: int = LOG_HEAD_CHARS, tail: int = LOG_TAIL_CHARS) -> None:
        self._head_limit, self._tail_limit = head, tail
        self._head: list[str] = []
        self._head_size = 0
        self._tail: list[str] = []
        self._tail_size = 0
        self.dropped = 0

    def add(self, text: str) -> None:
        room = self._head_limit - self._head_size
        if room > 0:
            self._head.append(text[:room])
            self._head_size += min(room, len(text))
            text = text[room:]
        if not text:
            return
        self._tail.append(text)
        self._tail_size += len(text)
        if self._tail_size > 2 * self._tail_limit:  # trim in batches: amortised O(1)
            joined = "".join(self._tail)
            cut = len(joined) - self._tail_limit
            self.dropped += cut
            self._tail, self._tail_size = [joined[cut:]], self._tail_limit

    def text(self) -> str:
        head = "".join(self._head)
        tail = "".join(self._tail)
        if len(tail) > self._tail_limit:
            self.dropped += len(tail) - self._tail_limit
            tail = tail[-self._tail_limit:]
        self._head, self._tail, self._tail_size = [head], [tail], len(tail)
        if not self.dropped:
            return head + tail
        return (f"{head}\n[APEX Studio: {self.dropped} characters of output left out "
                f"here]\n{tail}")


class JobMonitor:
    """Per-run bookkeeping: decoded log, lines, progress, ETA. Knows nothing of processes."""

    def __init__(self, job: ToolJob, clock: Callable[[], float] = time.monotonic) -> None:
        self.job = job
        self._clock = clock
        self.started = clock()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._splitter = LineSplitter(MAX_LINE_CHARS)
        self._log = BoundedText()
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
        self._log.add(text)
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
            self._log.add(tail)
            self._splitter.feed(tail)
        for line in self._splitter.flush():
            self.reader.feed_line(line)

    @property
    def log(self) -> str:
        """The output, or its head and tail with a note of what was left out between."""
        return self._log.text()

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


#: Seconds a run across RPC workers may go without printing or computing before it counts as
#: stalled. A worker computing a batch of a huge model answers within a minute; a stopped
#: one never does.
RPC_STALL_TIMEOUT_S = 180.0
#: CPU seconds that count as the tool doing something (less is a thread waking up).
CPU_PROGRESS_S = 0.05


class StallWatch:
    """Says when a run has neither printed nor used CPU for ``timeout_s``: a tool waiting on
    an RPC worker that will not answer (a stopped rpc-server still accepts connections, so
    the tool blocks on its reply with no output and no message, for ever)."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self._last = clock()
        self._cpu: float | None = None

    def activity(self) -> None:
        """The tool printed something."""
        self._last = self._clock()

    def cpu(self, seconds: float | None) -> None:
        """The tool's CPU time so far (None: unknown, counted as activity)."""
        if seconds is None or self._cpu is None or seconds > self._cpu + CPU_PROGRESS_S:
            self._last = self._clock()
            self._cpu = seconds

    def stalled(self) -> bool:
        return self._clock() - self._last >= self.timeout_s

    def idle_seconds(self) -> float:
        return self._clock() - self._last


def stall_message(tool: str, workers: tuple[str, ...], seconds: float) -> str:
    """Why a run across RPC workers was stopped by the stall watch, naming the workers."""
    which = (f"the RPC worker {workers[0]}" if len(workers) == 1
             else f"one of the RPC workers {', '.join(workers)}")
    return (f"{tool} waited {seconds:.0f} s for {which}, printing and computing nothing: "
            "the worker does not answer (a stopped or hung rpc-server still accepts "
            "connections). APEX Studio stopped the run; restart that worker (or remove it "
            "from the list) and run again; no output was kept")


def time_limit_message(tool: str, seconds: float) -> str:
    return (f"{tool} did not finish within {seconds:.0f} s and was stopped (it hangs); no "
            "output was kept")


@dataclass(frozen=True)
class RunLimits:
    """How long one run may take in all (None: as long as it needs), and how long a run
    across RPC workers may go without printing or computing (None: no stall watch)."""

    time_s: float | None = None
    rpc_stall_s: float | None = RPC_STALL_TIMEOUT_S


class RunWatch:
    """The limits of one run, checked as it goes: the reason to stop it, or None."""

    #: Seconds between two readings of the tool's CPU time.
    CPU_INTERVAL_S = 1.0

    def __init__(self, job: ToolJob, limits: RunLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._tool = TOOL_NAMES.get(job.tool, job.tool)
        self._workers = job.options.rpc_workers
        self._clock = clock
        self._deadline = clock() + limits.time_s if limits.time_s else None
        self._time_s = limits.time_s
        self._stall = (StallWatch(limits.rpc_stall_s, clock)
                       if self._workers and limits.rpc_stall_s else None)
        self._cpu_read = float("-inf")

    def output(self) -> None:
        """The tool printed something."""
        if self._stall is not None:
            self._stall.activity()

    def reason_to_stop(self, cpu: Callable[[], float | None]) -> str | None:
        """Why the run must stop now (its time is up, or it stalled), or None. ``cpu`` reads
        the tool's CPU seconds; it is called at most once a second."""
        now = self._clock()
        if self._deadline is not None and now >= self._deadline:
            return time_limit_message(self._tool, self._time_s or 0.0)
        if self._stall is None:
            return None
        if now - self._cpu_read >= self.CPU_INTERVAL_S:
            self._cpu_read = now
            self._stall.cpu(cpu())
        if self._stall.stalled():
            return stall_message(self._tool, self._workers, self._stall.idle_seconds())
        return None

