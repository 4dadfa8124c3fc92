"""Progress readers: each turns a tool's log lines into a fraction done and a status line."""

from __future__ import annotations

from dataclasses import dataclass

from apex_gui.core.jobs import parsers


@dataclass
class Progress:
    """How far a job got: ``done`` of ``total`` units (chunks, tensors, tasks, tests)."""

    done: float = 0.0
    total: float | None = None
    unit: str = ""
    detail: str = ""

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))


class ProgressReader:
    """Turns a job's output lines into :class:`Progress`; subclasses know one tool's format."""

    unit = ""

    def __init__(self) -> None:
        self.progress = Progress(unit=self.unit)

    def feed_line(self, line: str) -> bool:
        """Read one complete line; True when the progress changed."""
        return False

    def peek(self, pending: str) -> bool:
        """Look at the unterminated tail of the output (chunk values arrive without newlines)."""
        return False


class ChunkProgressReader(ProgressReader):
    """``computing over N chunks`` then ``[1]v,[2]v,...`` (imatrix, perplexity)."""

    unit = "chunks"

    def feed_line(self, line: str) -> bool:
        count = parsers.parse_chunk_count(line)
        if count is not None:
            self.progress.total = count
            return True
        return self.peek(line)

    def peek(self, pending: str) -> bool:
        values = parsers.parse_chunk_values(pending)
        if not values:
            return False
        index, value = values[-1]
        if index == self.progress.done:
            return False
        self.progress.done = index
        self.progress.detail = f"chunk {index}: running PPL {value:.4f}"
        return True


class KLDivergenceProgressReader(ChunkProgressReader):
    """The KL divergence table prints one row per chunk."""

    def feed_line(self, line: str) -> bool:
        row = parsers.parse_kld_chunk_row(line)
        if row is not None and self.progress.total is not None:
            self.progress.done = row
            self.progress.detail = f"chunk {row}"
            return True
        return super().feed_line(line)


class TaskProgressReader(ProgressReader):
    """HellaSwag, Winogrande and multiple choice print one running-accuracy row per task."""

    unit = "tasks"

    def feed_line(self, line: str) -> bool:
        total = parsers.parse_task_total(line)
        if total is not None:
            self.progress.total = total
            return True
        row = parsers.parse_task_row(line)
        if row is not None and self.progress.total is not None:
            self.progress.done = row
            self.progress.detail = f"task {row}"
            return True
        return False


class TensorProgressReader(ProgressReader):
    """llama-quantize's ``[ i/ n] name ...`` lines, weighted by each tensor's source size.

    Tensors differ in size by orders of magnitude (one expert stack outweighs hundreds of
    norms), so the fraction counts MiB of the source file rather than tensors when the
    source size is known; the detail line still says ``tensor i of n``.
    """

    unit = "MiB"

    def __init__(self, source_bytes: int | None) -> None:
        super().__init__()
        self._source_mib = source_bytes / 2**20 if source_bytes else None
        self._done_mib = 0.0
        self.tensors_done = 0
        self.tensors_total: int | None = None
        self.fallbacks: list[parsers.FallbackWarning] = []
        if self._source_mib is None:
            self.progress.unit = "tensors"

    def feed_line(self, line: str) -> bool:
        fallback = parsers.parse_fallback_warning(line)
        if fallback is not None:
            self.fallbacks.append(fallback)
            return False
        tensor = parsers.parse_tensor_progress(line)
        if tensor is None or not tensor.complete:
            return False
        self.tensors_done, self.tensors_total = tensor.index, tensor.total
        self._done_mib += tensor.source_mib or 0.0
        if self._source_mib is not None:
            self.progress.total = self._source_mib
            # The header and padding are not tensors; the last tensor always means done.
            self.progress.done = (self._source_mib if tensor.index == tensor.total
                                  else min(self._done_mib, self._source_mib))
        else:
            self.progress.total, self.progress.done = tensor.total, tensor.index
        change = f"{tensor.source_type} -> {tensor.target_type}" if tensor.target_type and \
            tensor.target_type != tensor.source_type else f"{tensor.source_type}, copied"
        self.progress.detail = f"tensor {tensor.index}/{tensor.total} {tensor.name} ({change})"
        return True

    def peek(self, pending: str) -> bool:
        tensor = parsers.parse_tensor_progress(pending)
        if tensor is None or tensor.complete:
            return False
        detail = f"tensor {tensor.index}/{tensor.total} {tensor.name} (working)"
        if detail == self.progress.detail:
            return False
        self.progress.detail = detail
        return True


class BenchProgressReader(ProgressReader):
    unit = "tests"

    def __init__(self, n_tests: int) -> None:
        super().__init__()
        self.progress.total = n_tests

    def feed_line(self, line: str) -> bool:
        result = parsers.parse_bench_line(line)
        if result is None:
            return False
        self.progress.done += 1
        self.progress.detail = f"{result.test}: {result.tokens_per_second:.1f} t/s"
        return True
