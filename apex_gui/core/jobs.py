"""Jobs as data: what to run, how to read its output, and what counts as success.

A job is a frozen dataclass that knows its tool's argument list (never a shell line), the
child environment, the files it reads and writes, the checks worth making before it starts,
how to turn its output into progress, and how to judge a finished run. The headless runner
(:mod:`apex_gui.core.runner`) and the Qt queue (:mod:`apex_gui.jobs`) both drive these
objects, so the same job behaves the same on the command line and in the window.

Every job that produces a file writes it under a temporary name next to the final one
(``OUT.gguf.partial``); the runner renames it when the job succeeded and deletes it
otherwise, so a failed or cancelled run never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from . import parsers
from .calibration import file_digest
from .quant_types import FTYPE_DEFAULT_TYPE, IMATRIX_REQUIRED
from .settings import data_dir
from .tools import LlamaTools, child_environment

if TYPE_CHECKING:
    from .plan import PrecisionPlan

PARTIAL_SUFFIX = ".partial"
#: Flags that make llama-imatrix / llama-perplexity output plain and parseable.
PLAIN_LOG_FLAGS = ("--no-log-prefix", "--log-colors", "off")
#: Characters per token assumed when estimating a text's token count before a run. Real
#: tokenizers give 3-5 characters per token on English and code; 6 under-counts on purpose,
#: so the early check only refuses texts that are certainly too short. The tool's own
#: message re-checks with the exact count.
CHARS_PER_TOKEN_UPPER_BOUND = 6
#: Tools whose output goes through llama.cpp's asynchronous common logger.
ASYNC_LOG_TOOLS = frozenset({"imatrix", "perplexity"})
#: Tools that take ``--rpc`` workers (they evaluate a model; llama-quantize does not).
RPC_TOOLS = frozenset({"imatrix", "perplexity", "bench"})
#: How each tool that multiplies matrices is told to keep weights as stored instead of
#: repacking them into the CPU's fastest layout. On AMX / AVX-512 Xeons the repacked (AMX)
#: path of this llama.cpp build crashes on quantized models (SIGSEGV or SIGILL right after
#: "llama threadpool init"); without repacking the same run computes the same numbers.
NO_REPACK_ARGS: dict[str, tuple[str, ...]] = {
    "imatrix": ("--no-repack",),
    "perplexity": ("--no-repack",),
    "completion": ("--no-repack",),
    "bench": ("--repack", "0"),
}


class JobError(Exception):
    """A job cannot start; the message names the cause and the fix."""


def partial_path(output: Path) -> Path:
    """The temporary name a job writes ``output`` under until it is complete."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


def estimate_tokens(text: str) -> int:
    """A deliberately low token count for ``text`` (see CHARS_PER_TOKEN_UPPER_BOUND)."""
    return len(text) // CHARS_PER_TOKEN_UPPER_BOUND


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_readable_model(path: Path, what: str = "model") -> None:
    """The file exists and starts like a GGUF: llama.cpp tools exit silently otherwise."""
    from .gguf_reader import GGUFError, read_header

    if not path.is_file():
        raise JobError(f"{what} {path} does not exist; check the path (split models: give the "
                       "first shard, NAME-00001-of-0000N.gguf)")
    if not os.access(path, os.R_OK):
        raise JobError(f"{what} {path} is not readable; fix its permissions (chmod +r)")
    try:
        read_header(path)
    except GGUFError as error:
        raise JobError(f"{what} {path} is not a usable GGUF file ({error}); re-download or "
                       "re-convert it") from None
    except OSError as error:
        raise JobError(f"{what} {path} cannot be read ({error})") from None


def gguf_output_problem(written: Path) -> str | None:
    """Why a GGUF the tool just wrote is incomplete (truncated, bad header), or None."""
    from .gguf_reader import GGUFError, read_header

    try:
        read_header(written)
    except GGUFError as error:
        return error.problem.replace("; download it again", "")
    return None


def check_readable_file(path: Path, what: str) -> None:
    """A regular, readable file (a folder, FIFO or device is named as such), else JobError."""
    from .files.inputs import InputFileError, check_input_file

    try:
        check_input_file(path, what)
    except InputFileError as error:
        raise JobError(str(error)) from None


def _check_output(output: Path, inputs: Iterable[Path]) -> None:
    for source in inputs:
        if _same_file(output, source):
            raise JobError(f"the output {output} is also an input of this job; choose another "
                           "output name (the source model is never overwritten)")
    folder = output.parent if str(output.parent) else Path(".")
    if folder.exists() and not os.access(folder, os.W_OK):
        raise JobError(f"cannot write to the folder {folder}; choose another output folder")


# --- progress ---------------------------------------------------------------------------------


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


# --- verdicts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """How a finished process went, judged from its exit code and output."""

    succeeded: bool
    message: str
    results: dict[str, Any] = field(default_factory=dict)
    #: The tool exited normally but its result lines were lost (see ToolJob.env): running
    #: it again is the fix, and the runner does so a few times before giving up.
    output_lost: bool = False


def _lost_output(tool: str) -> Verdict:
    return Verdict(False, (
        f"{tool} exited normally but its final result lines never arrived (llama.cpp's logger "
        "can drop its last lines at exit, issue 22142): run the job again"), output_lost=True)


def _completed_chunks(log: str) -> tuple[int | None, list[tuple[int, float]]]:
    """(announced chunk count, chunk values seen) for the chunk-based tools."""
    total = None
    for line in log.splitlines():
        count = parsers.parse_chunk_count(line)
        if count is not None:
            total = count
    return total, parsers.parse_chunk_values(log)


def _last_error_lines(log: str, limit: int = 3) -> str:
    keys = ("error", "failed", "unable", "cannot", "invalid", "abort", "exception")
    lines = [line.strip() for line in log.splitlines()
             if any(k in line.lower() for k in keys) and line.strip()]
    return " | ".join(lines[-limit:])


def _generic_failure(tool: str, exit_code: int, log: str) -> str:
    detail = _last_error_lines(log)
    if detail:
        return f"{tool} failed (exit code {exit_code}): {detail}"
    return (f"{tool} exited with code {exit_code} without saying why (llama.cpp tools print "
            "nothing when a model fails to load): check that the model opens in "
            "`apex-studio inspect`, and rerun the command line from the log with `-lv 4`")


def _too_few_tokens_message(what: str, path: Path | None, log: str, context: int) -> str | None:
    short = parsers.parse_too_few_tokens(log)
    if short is None:
        return None
    found = f"only {short.found} tokens" if short.found is not None else "too few tokens"
    where = f" {path}" if path else ""
    return (f"the {what}{where} has {found}; with a context of {context} the tool needs at "
            f"least {short.needed}: give a longer text or lower the context (--ctx "
            f"{max(16, (short.found or 0) // 2)} would fit)")


# --- jobs -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ToolJob:
    """Base of every job: one run of one llama.cpp tool."""

    tool: ClassVar[str] = ""
    kind: ClassVar[str] = ""

    threads: int = 0  # 0: the tool's own default
    label: str = ""
    #: Keep weights as stored (see NO_REPACK_ARGS); set by the crash retry or the user.
    no_repack: bool = False
    #: CPU backend variants (``sapphirerapids``...) the tool must not load: set when one
    #: crashed, so the tool runs on the next best variant of a portable build.
    skip_cpu_variants: tuple[str, ...] = ()
    #: llama.cpp RPC workers (``host:port``) whose devices the tool splits layers across
    #: (``--rpc``); only tools that evaluate a model take them (RPC_TOOLS).
    rpc_workers: tuple[str, ...] = ()

    # What the job reads and writes.
    def inputs(self) -> tuple[Path, ...]:
        return ()

    def output(self) -> Path | None:
        return None

    def partial_output(self) -> Path | None:
        out = self.output()
        return partial_path(out) if out is not None else None

    # How to run it.
    def args(self) -> list[str]:
        """Arguments after the executable (the output under its temporary name)."""
        raise NotImplementedError

    def argv(self, tools: LlamaTools) -> list[str]:
        """The full argument list; :class:`ToolNotFoundError` if the tool is missing."""
        if self.skip_cpu_variants:
            executable = tools.path_without_cpu_variants(self.tool, self.skip_cpu_variants)
        else:
            executable = tools.path(self.tool)
        repack = NO_REPACK_ARGS.get(self.tool, ()) if self.no_repack else ()
        return [str(executable), *self.args(), *repack, *self._rpc_args()]

    def _rpc_args(self) -> list[str]:
        if not self.rpc_workers:
            return []
        if self.tool not in RPC_TOOLS:
            raise JobError(f"{self.kind} jobs run locally only; remove the RPC workers "
                           f"({', '.join(self.rpc_workers)}) from this step")
        return ["--rpc", ",".join(self.rpc_workers)]

    def without_repack(self) -> ToolJob:
        """This job keeping weights as stored, where its tool can be told to."""
        return replace(self, no_repack=True) if self.tool in NO_REPACK_ARGS else self

    def crash_fallback(self, crashed_variant: str | None) -> tuple[ToolJob, str] | None:
        """The same job without the code path that just crashed, and how it differs.

        First without repacking (the AMX / repacked kernels); then, for a portable build,
        without the CPU variant that was loaded. None when nothing is left to avoid.
        """
        if self.tool in NO_REPACK_ARGS and not self.no_repack:
            return replace(self, no_repack=True), "without repacking the weights (--no-repack)"
        if crashed_variant and crashed_variant not in self.skip_cpu_variants:
            return (replace(self, skip_cpu_variants=(*self.skip_cpu_variants, crashed_variant)),
                    f"on the next CPU variant below {crashed_variant}")
        return None

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The child's environment: ours minus ``LLAMA_ARG_*`` (they set options silently).

        Note: llama-imatrix and llama-perplexity print through an asynchronous logger that
        is not drained at exit (llama.cpp issue 22142); on the tiny test models about one
        run in five loses its last lines, whatever reads the output (a file too). Verdicts
        therefore rely on lines printed early where they can, and flag ``output_lost`` so
        the runner reruns the job otherwise. Passive OpenMP waiting does not change the loss
        rate but keeps idle workers from spinning on a busy machine (4x faster here).
        """
        env = child_environment(base)
        if self.tool in ASYNC_LOG_TOOLS:
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if self.rpc_workers:
            # A lost worker aborts the tool; ggml would first try to attach a debugger.
            env.setdefault("GGML_NO_BACKTRACE", "1")
        return env

    def _thread_args(self, flag: str = "-t") -> list[str]:
        return [flag, str(self.threads)] if self.threads > 0 else []

    def _context_args(self, context: int, chunks: int | None = None) -> list[str]:
        """The tail llama-imatrix and llama-perplexity runs share: context, chunks, threads
        and plain log lines (the parsers read them without prefixes or colour codes)."""
        chunk_args = ["--chunks", str(chunks)] if chunks is not None else []
        return ["-c", str(context), *chunk_args, *self._thread_args(), *PLAIN_LOG_FLAGS]

    # Before and after.
    def check(self, produced: Iterable[Path] = ()) -> None:
        """Raise :class:`JobError` when the job would fail for a reason known in advance.

        ``produced`` lists files an earlier pipeline step will create: they need not exist yet.
        """

    def new_progress(self) -> ProgressReader:
        return ProgressReader()

    def verdict(self, exit_code: int, log: str) -> Verdict:
        raise NotImplementedError

    def output_problem(self, written: Path) -> str | None:
        """Why the file the tool wrote (under its temporary name) is unusable, or None.

        llama-imatrix, llama-perplexity and llama-quantize's last writes are not checked by
        the tools: on a full disk they can exit 0 with a truncated file. The runner asks
        this before it renames the file into place.
        """
        return None

    # Description.
    def title(self) -> str:
        return self.label or self.kind

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (the run history stores it)."""
        spec: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            # Absolute: a run started as `eval mini.gguf` and the same file opened in the
            # window must be recognised as one file in the history.
            spec[f.name] = os.path.abspath(value) if isinstance(value, Path) else value
        return spec


def _exists_or_produced(path: Path, produced: Iterable[Path], what: str, model: bool) -> None:
    if any(_same_file(path, p) for p in produced):
        return
    if model:
        check_readable_model(path, what)
    else:
        check_readable_file(path, what)


@dataclass(frozen=True, kw_only=True)
class ImatrixJob(ToolJob):
    """``llama-imatrix``: an importance matrix from calibration text."""

    tool: ClassVar[str] = "imatrix"
    kind: ClassVar[str] = "imatrix"

    model: Path
    calibration: Path
    output_path: Path
    context: int = 512
    chunks: int | None = None  # None: all the text

    def inputs(self) -> tuple[Path, ...]:
        return (self.model, self.calibration)

    def output(self) -> Path:
        return self.output_path

    def args(self) -> list[str]:
        # --no-escape: code in the calibration text keeps its backslashes (the default turns
        # "\n" inside a string literal into a newline). --output-format gguf: the temporary
        # ".partial" suffix would otherwise draw a warning about a non-.gguf name.
        args = ["-m", str(self.model), "-f", str(self.calibration),
                "-o", str(self.partial_output()), "--output-format", "gguf", "--no-escape"]
        return [*args, *self._context_args(self.context, self.chunks)]

    def check(self, produced: Iterable[Path] = ()) -> None:
        produced = list(produced)
        _exists_or_produced(self.model, produced, "model", model=True)
        check_readable_file(self.calibration, "calibration text")
        _check_output(self.output_path, self.inputs())
        text = _text_head(self.calibration, "calibration text", self.context)
        needed = 2 * self.context
        if estimate_tokens(text) < needed:
            raise JobError(
                f"the calibration text {self.calibration} is too short: about "
                f"{max(estimate_tokens(text), 0)} tokens (estimated from {len(text)} characters) "
                f"but an importance matrix with a context of {self.context} needs at least "
                f"{needed}; add text (or use the bundled calibration set) or lower the context")

    def new_progress(self) -> ProgressReader:
        return ChunkProgressReader()

    def verdict(self, exit_code: int, log: str) -> Verdict:
        # llama-imatrix exits 1 on a too-short text and saves the file from the main thread
        # before it returns, so exit 0 plus the file (checked by the runner) means success
        # even when the logger lost the final estimate.
        short = _too_few_tokens_message("calibration text", self.calibration, log, self.context)
        if short:
            return Verdict(False, short)
        if exit_code == 0:
            results: dict[str, Any] = {}
            final = parsers.parse_final_estimate(log)
            _, values = _completed_chunks(log)
            if final is not None:
                results = {"calibration_ppl": final.ppl, "calibration_ppl_error": final.error}
            elif values:
                results = {"calibration_ppl": values[-1][1]}
            if values:
                results["chunks"] = values[-1][0]
            return Verdict(True, f"importance matrix written to {self.output_path}", results)
        return Verdict(False, _generic_failure("llama-imatrix", exit_code, log))

    def output_problem(self, written: Path) -> str | None:
        return gguf_output_problem(written)

    def title(self) -> str:
        return self.label or f"imatrix {self.model.name}"


def needed_imatrix_types(tensor_type_file: Path | None, base_type: str) -> set[str]:
    """Types in a tensor-type file (and the base type) that llama-quantize refuses without
    an imatrix. Conservative: a pattern that only matches token_embd/output still counts."""
    found: set[str] = set()
    default = FTYPE_DEFAULT_TYPE.get(base_type.upper(), base_type.upper())
    if default in IMATRIX_REQUIRED:
        found.add(default)
    if base_type.upper() == "Q2_K_S":
        found.add("Q2_K")
    if tensor_type_file is not None and tensor_type_file.is_file():
        for token in tensor_type_file.read_text(encoding="utf-8", errors="replace").split():
            _, _, type_name = token.rpartition("=")
            if type_name.upper() in IMATRIX_REQUIRED:
                found.add(type_name.upper())
    return found


@dataclass(frozen=True, kw_only=True)
class QuantizeJob(ToolJob):
    """``llama-quantize`` with an APEX plan: a tensor-type file, a base type, special types."""

    tool: ClassVar[str] = "quantize"
    kind: ClassVar[str] = "quantize"

    source: Path
    output_path: Path
    base_type: str
    tensor_type_file: Path | None = None
    imatrix: Path | None = None
    token_embedding_type: str | None = None
    output_tensor_type: str | None = None
    allow_requantize: bool = False
    predicted_bytes: int | None = None  # the plan's exact size: the disk-space check uses it
    needs_imatrix: bool | None = None  # None: judged from the tensor-type file and base type
    profile: str = ""

    @classmethod
    def from_plan(cls, plan: PrecisionPlan, output: str | os.PathLike[str],
                  tensor_type_file: str | os.PathLike[str] | None = None,
                  imatrix: str | os.PathLike[str] | None = None, threads: int = 0,
                  label: str = "") -> QuantizeJob:
        """A job that applies ``plan`` to its model; writes the plan's tensor-type file
        (by default content-addressed under the data dir, so equal plans share it)."""
        text = plan.tensor_type_file_text()
        if tensor_type_file is None:
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            tensor_type_file = data_dir() / "plans" / f"{Path(output).stem}-{digest}.txt"
        type_file = Path(tensor_type_file)
        type_file.parent.mkdir(parents=True, exist_ok=True)
        plan.write_tensor_type_file(type_file)
        embedding, output_type = plan.special_types()
        args = plan.quantize_args(type_file)
        profile = plan.profile.key if plan.profile else plan.origin
        chosen_imatrix = imatrix or plan.imatrix
        # The quant's header carries the imatrix path and counts: size the plan with them.
        previous, plan.imatrix = plan.imatrix, str(chosen_imatrix) if chosen_imatrix else None
        try:
            predicted = plan.total_bytes()
        finally:
            plan.imatrix = previous
        return cls(source=Path(plan.model.path), output_path=Path(output),
                   base_type=plan.base_type, tensor_type_file=type_file,
                   imatrix=Path(chosen_imatrix) if chosen_imatrix else None,
                   token_embedding_type=embedding.lower() if embedding else None,
                   output_tensor_type=output_type.lower() if output_type else None,
                   allow_requantize="--allow-requantize" in args,
                   predicted_bytes=predicted, needs_imatrix=plan.needs_imatrix(),
                   profile=profile, threads=threads, label=label)

    def inputs(self) -> tuple[Path, ...]:
        extra = [p for p in (self.tensor_type_file, self.imatrix) if p is not None]
        return (self.source, *extra)

    def output(self) -> Path:
        return self.output_path

    def args(self) -> list[str]:
        args: list[str] = []
        if self.tensor_type_file is not None:
            args += ["--tensor-type-file", str(self.tensor_type_file)]
        if self.token_embedding_type:
            args += ["--token-embedding-type", self.token_embedding_type]
        if self.output_tensor_type:
            args += ["--output-tensor-type", self.output_tensor_type]
        if self.allow_requantize:
            args.append("--allow-requantize")
        if self.imatrix is not None:
            args += ["--imatrix", str(self.imatrix)]
        args += [str(self.source), str(self.partial_output()), self.base_type]
        if self.threads > 0:
            args.append(str(self.threads))
        return args

    def requires_imatrix(self) -> bool:
        if self.needs_imatrix is not None:
            return self.needs_imatrix
        return bool(needed_imatrix_types(self.tensor_type_file, self.base_type))

    def check(self, produced: Iterable[Path] = ()) -> None:
        produced = list(produced)
        check_readable_model(self.source, "source model")
        if self.base_type.upper() not in FTYPE_DEFAULT_TYPE:
            raise JobError(f"{self.base_type!r} is not a llama-quantize type; use one of "
                           f"{', '.join(FTYPE_DEFAULT_TYPE)}")
        if self.tensor_type_file is not None:
            check_readable_file(self.tensor_type_file, "tensor-type file")
        if self.imatrix is not None:
            _exists_or_produced(self.imatrix, produced, "importance matrix", model=False)
        elif self.requires_imatrix():
            kinds = ", ".join(sorted(needed_imatrix_types(self.tensor_type_file, self.base_type)))
            raise JobError(
                f"this plan uses types that need an importance matrix ({kinds or 'IQ1/IQ2/IQ3_XXS'})"
                f"; give one with --imatrix FILE, let APEX Studio compute it (--imatrix auto), "
                "or choose a profile without I-quants")
        _check_output(self.output_path, self.inputs())
        if self.predicted_bytes is not None:
            folder = self.output_path.parent if str(self.output_path.parent) else Path(".")
            probe = folder if folder.exists() else Path(folder.anchor or ".")
            free = shutil.disk_usage(probe).free
            if free < self.predicted_bytes:
                from .units import format_size
                raise JobError(
                    f"not enough disk space in {folder}: the quant needs "
                    f"{format_size(self.predicted_bytes)} and only {format_size(free)} is "
                    "free; free some space or choose another output folder")

    def new_progress(self) -> ProgressReader:
        try:
            size = self.source.stat().st_size
        except OSError:
            size = None
        return TensorProgressReader(size)

    def verdict(self, exit_code: int, log: str) -> Verdict:
        summary = parsers.parse_quantize_log(log)
        if summary.needs_imatrix_tensor:
            return Verdict(False, (
                f"llama-quantize refused: {summary.needs_imatrix_tensor} is planned as "
                f"{summary.needs_imatrix_type or 'an IQ type'}, which needs an importance matrix;"
                " give one with --imatrix FILE (or --imatrix auto), or pick a K-quant for it"))
        if exit_code == 0 and summary.quant_mib is not None:
            results: dict[str, Any] = {
                "model_mib": summary.model_mib, "model_bpw": summary.model_bpw,
                "quant_mib": summary.quant_mib, "quant_bpw": summary.quant_bpw,
                "fallback_tensors": summary.fallback_count,
            }
            if self.predicted_bytes is not None:
                results["predicted_bytes"] = self.predicted_bytes
            return Verdict(True, f"quantized to {self.output_path}", results)
        return Verdict(False, _generic_failure("llama-quantize", exit_code, log))

    def output_problem(self, written: Path) -> str | None:
        return gguf_output_problem(written)

    def title(self) -> str:
        what = self.profile or self.base_type
        return self.label or f"quantize {self.source.name} -> {self.output_path.name} ({what})"


def _perplexity_verdict(exit_code: int, log: str, text: Path, context: int,
                        success: str) -> Verdict:
    short = _too_few_tokens_message("evaluation text", text, log, context)
    if short:
        return Verdict(False, short)
    final = parsers.parse_final_estimate(log)
    if exit_code == 0 and final is not None:
        return Verdict(True, success or f"PPL {final.ppl:.4f} ± {final.error:.4f}",
                       {"ppl": final.ppl, "ppl_error": final.error})
    total, values = _completed_chunks(log)
    if exit_code == 0 and total and values and values[-1][0] == total:
        # The last running value is the final estimate; only its error bar was lost.
        ppl = values[-1][1]
        return Verdict(True, success or f"PPL {ppl:.4f}", {"ppl": ppl})
    if exit_code == 0 and log.strip() and not _last_error_lines(log):
        return _lost_output("llama-perplexity")
    return Verdict(False, _generic_failure("llama-perplexity", exit_code, log))


def _text_head(path: Path, what: str, context: int) -> str:
    """As much of a text as the length check needs (never the whole of a huge file, a FIFO
    or a device): at most 4 bytes a character for 2 * context tokens."""
    from .files.inputs import TEXT_CAP_BYTES, InputFileError, check_input_file

    try:
        check_input_file(path, what, TEXT_CAP_BYTES)
    except InputFileError as error:
        raise JobError(str(error)) from None
    with open(path, "rb") as handle:
        head = handle.read(4 * 2 * context * CHARS_PER_TOKEN_UPPER_BOUND)
    return head.decode("utf-8", errors="replace")


def _check_text_length(text: Path, context: int) -> None:
    """Refuse an evaluation text that certainly has fewer than 2 * context tokens: the tool
    would exit 0 having computed nothing."""
    content = _text_head(text, "evaluation text", context)
    if estimate_tokens(content) < 2 * context:
        raise JobError(
            f"the evaluation text {text} is too short: about {estimate_tokens(content)} tokens "
            f"(estimated from {len(content)} characters) but a context of {context} needs at "
            f"least {2 * context}; give a longer text or lower the context (--ctx)")


def _model_identity(model: Path) -> str:
    """Path, size and modification time: a re-converted model gets new reference logits."""
    stat = model.stat()
    return f"{model.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


#: ``--kl-divergence-base`` files start with this magic, then int32 n_ctx, n_vocab, n_chunk.
KLD_BASE_MAGIC = b"_logits_"


def reference_logits_problem(written: Path) -> str | None:
    """Why a ``--kl-divergence-base`` file is incomplete, or None.

    Its size follows from its header (llama-perplexity's writer, tools/perplexity): the
    header, ``n_chunk * n_ctx`` int32 tokens, then for each chunk the last ``n_ctx - 1 -
    n_ctx / 2`` tokens' log-probabilities as ``2 * ((n_vocab + 1) / 2) + 4`` uint16 values.
    """
    import struct

    try:
        size = written.stat().st_size
        with open(written, "rb") as handle:
            head = handle.read(len(KLD_BASE_MAGIC) + 12)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if len(head) < len(KLD_BASE_MAGIC) + 12 or not head.startswith(KLD_BASE_MAGIC):
        return f"no complete logits header in its {size} bytes"
    n_ctx, n_vocab, n_chunk = struct.unpack("<iii", head[len(KLD_BASE_MAGIC):])
    if n_ctx <= 0 or n_vocab <= 0 or n_chunk <= 0:
        return f"invalid header: n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}"
    values_per_token = 2 * ((n_vocab + 1) // 2) + 4
    expected = (len(KLD_BASE_MAGIC) + 12 + n_chunk * n_ctx * 4
                + n_chunk * (n_ctx - 1 - n_ctx // 2) * values_per_token * 2)
    if size != expected:
        return f"truncated: {size} bytes where its header promises {expected}"
    return None


def reference_logits_path(model: Path, text: Path, context: int, chunks: int | None) -> Path:
    """Where the F16 model's logits for (model, text, context, chunks) are cached.

    The key hashes the model's identity and the text's content, so the reference is
    computed once and reused by every quant evaluated against it.
    """
    key = hashlib.sha256("|".join([
        _model_identity(model), file_digest(text), str(context), str(chunks)]).encode())
    return data_dir() / "reference-logits" / f"{model.stem}-c{context}-{key.hexdigest()[:16]}.kld"


@dataclass(frozen=True, kw_only=True)
class ReferenceLogitsJob(ToolJob):
    """``llama-perplexity --kl-divergence-base FILE`` on the full-precision model."""

    tool: ClassVar[str] = "perplexity"
    kind: ClassVar[str] = "reference-logits"

    model: Path
    text: Path
    output_path: Path
    context: int = 512
    chunks: int | None = None

    @classmethod
    def cached(cls, model: Path, text: Path, context: int = 512, chunks: int | None = None,
               threads: int = 0) -> ReferenceLogitsJob:
        """The job whose output is the cache entry for these inputs."""
        return cls(model=model, text=text, context=context, chunks=chunks, threads=threads,
                   output_path=reference_logits_path(model, text, context, chunks))

    def inputs(self) -> tuple[Path, ...]:
        return (self.model, self.text)

    def output(self) -> Path:
        return self.output_path

    def args(self) -> list[str]:
        args = ["-m", str(self.model), "-f", str(self.text), "--no-escape",
                "--kl-divergence-base", str(self.partial_output())]
        return [*args, *self._context_args(self.context, self.chunks)]

    def check(self, produced: Iterable[Path] = ()) -> None:
        _exists_or_produced(self.model, list(produced), "reference model", model=True)
        check_readable_file(self.text, "evaluation text")
        _check_text_length(self.text, self.context)
        _check_output(self.output_path, self.inputs())

    def new_progress(self) -> ProgressReader:
        return ChunkProgressReader()

    def verdict(self, exit_code: int, log: str) -> Verdict:
        # llama-perplexity exits 0 even when it computed nothing: the final line decides, or
        # (when the logger dropped it) the running values having reached the last chunk.
        return _perplexity_verdict(exit_code, log, self.text, self.context,
                                   f"reference logits saved to {self.output_path}")

    def output_problem(self, written: Path) -> str | None:
        return reference_logits_problem(written)

    def title(self) -> str:
        return self.label or f"reference logits {self.model.name}"


@dataclass(frozen=True, kw_only=True)
class PerplexityJob(ToolJob):
    """``llama-perplexity -f TEXT``: perplexity of a model on a text."""

    tool: ClassVar[str] = "perplexity"
    kind: ClassVar[str] = "perplexity"

    model: Path
    text: Path
    context: int = 512
    chunks: int | None = None

    def inputs(self) -> tuple[Path, ...]:
        return (self.model, self.text)

    def args(self) -> list[str]:
        args = ["-m", str(self.model), "-f", str(self.text), "--no-escape"]
        return [*args, *self._context_args(self.context, self.chunks)]

    def check(self, produced: Iterable[Path] = ()) -> None:
        _exists_or_produced(self.model, list(produced), "model", model=True)
        check_readable_file(self.text, "evaluation text")
        _check_text_length(self.text, self.context)

    def new_progress(self) -> ProgressReader:
        return ChunkProgressReader()

    def verdict(self, exit_code: int, log: str) -> Verdict:
        return _perplexity_verdict(exit_code, log, self.text, self.context, "")

    def title(self) -> str:
        return self.label or f"perplexity {self.model.name}"


@dataclass(frozen=True, kw_only=True)
class KLDivergenceJob(ToolJob):
    """``llama-perplexity --kl-divergence``: a quant against the reference logits."""

    tool: ClassVar[str] = "perplexity"
    kind: ClassVar[str] = "kl-divergence"

    model: Path
    reference_logits: Path
    context: int = 512
    chunks: int | None = None

    def inputs(self) -> tuple[Path, ...]:
        return (self.model, self.reference_logits)

    def args(self) -> list[str]:
        args = ["-m", str(self.model), "--kl-divergence-base", str(self.reference_logits),
                "--kl-divergence"]
        return [*args, *self._context_args(self.context, self.chunks)]

    def check(self, produced: Iterable[Path] = ()) -> None:
        produced = list(produced)
        _exists_or_produced(self.model, produced, "model", model=True)
        _exists_or_produced(self.reference_logits, produced, "reference logits", model=False)

    def new_progress(self) -> ProgressReader:
        return KLDivergenceProgressReader()

    def verdict(self, exit_code: int, log: str) -> Verdict:
        stats = parsers.parse_kl_divergence(log)
        if exit_code == 0 and stats.complete:
            results = {k: v for k, v in vars(stats).items() if v is not None}
            return Verdict(True, f"KLD mean {stats.kld_mean:.6f}, max {stats.kld_max}", results)
        if "has been computed with" in log:
            return Verdict(False, f"the reference logits {self.reference_logits} were computed "
                                  f"with another context than {self.context}; use the same "
                                  "--ctx as the reference or recompute it")
        total, _ = _completed_chunks(log)
        scored = total * (self.context - 1 - self.context // 2) if total else None
        if exit_code == 0 and scored is not None and scored < 100 and stats.kld_mean is None:
            # llama-perplexity prints no statistics over fewer than 100 tokens.
            return Verdict(False, f"{total} chunk(s) of context {self.context} score only "
                                  f"{scored} tokens and KL divergence statistics need 100: use "
                                  "more chunks (--chunks), a longer text or a larger --ctx")
        if exit_code == 0 and log.strip() and not _last_error_lines(log):
            return _lost_output("llama-perplexity --kl-divergence")
        return Verdict(False, _generic_failure("llama-perplexity --kl-divergence", exit_code, log))

    def title(self) -> str:
        return self.label or f"KL divergence {self.model.name}"


@dataclass(frozen=True, kw_only=True)
class _TaskJob(ToolJob):
    """HellaSwag, Winogrande and multiple choice share their shape."""

    tool: ClassVar[str] = "perplexity"
    flag: ClassVar[str] = ""
    data_flag: ClassVar[str] = "-f"
    result_key: ClassVar[str] = ""

    model: Path
    data: Path
    tasks: int | None = None  # None: all (HellaSwag: 400, as the published numbers)
    context: int = 512

    def inputs(self) -> tuple[Path, ...]:
        return (self.model, self.data)

    def args(self) -> list[str]:
        args = ["-m", str(self.model), self.data_flag, str(self.data), self.flag]
        if self.tasks is not None:
            args += [f"{self.flag}-tasks", str(self.tasks)]
        return [*args, *self._context_args(self.context)]

    def check(self, produced: Iterable[Path] = ()) -> None:
        _exists_or_produced(self.model, list(produced), "model", model=True)
        check_readable_file(self.data, f"{self.result_key} data file")

    def new_progress(self) -> ProgressReader:
        return TaskProgressReader()

    def _score(self, log: str) -> parsers.TaskScore | None:
        raise NotImplementedError

    def verdict(self, exit_code: int, log: str) -> Verdict:
        score = self._score(log)
        if exit_code == 0 and score is not None:
            results = {self.result_key: score.accuracy, f"{self.result_key}_error": score.error,
                       f"{self.result_key}_tasks": score.tasks}
            return Verdict(True, f"{self.result_key} {score.accuracy:.2f}% over {score.tasks} "
                                 "tasks", results)
        detail = _last_error_lines(log)
        if exit_code == 0 and not detail and self._finished_rows(log):
            return _lost_output(f"llama-perplexity {self.flag}")
        return Verdict(False, f"no {self.result_key} score: {detail}" if detail
                       else _generic_failure(f"llama-perplexity {self.flag}", exit_code, log))

    def _finished_rows(self, log: str) -> bool:
        """Scoring started (so the final lines, not the input, are what went missing)."""
        return any(parsers.parse_task_row(line) is not None for line in log.splitlines())

    def title(self) -> str:
        return self.label or f"{self.result_key} {self.model.name}"


@dataclass(frozen=True, kw_only=True)
class HellaSwagJob(_TaskJob):
    kind: ClassVar[str] = "hellaswag"
    flag: ClassVar[str] = "--hellaswag"
    result_key: ClassVar[str] = "hellaswag"

    tasks: int | None = 400

    def _score(self, log: str) -> parsers.TaskScore | None:
        # No final line: the last row is the result only if it is the last task. A row lost
        # at exit (llama.cpp issue 22142) would otherwise pass the running accuracy of one
        # task fewer off as the score; the verdict then asks for a rerun.
        score = parsers.parse_hellaswag(log)
        totals = [t for t in map(parsers.parse_task_total, log.splitlines()) if t is not None]
        if score is not None and totals and score.tasks < totals[-1]:
            return None
        return score


@dataclass(frozen=True, kw_only=True)
class WinograndeJob(_TaskJob):
    kind: ClassVar[str] = "winogrande"
    flag: ClassVar[str] = "--winogrande"
    result_key: ClassVar[str] = "winogrande"

    tasks: int | None = 400

    def _score(self, log: str) -> parsers.TaskScore | None:
        score = parsers.parse_winogrande(log)
        return score

    def verdict(self, exit_code: int, log: str) -> Verdict:
        verdict = super().verdict(exit_code, log)
        rows = [r for r in map(parsers.parse_task_row, log.splitlines()) if r is not None]
        if not verdict.succeeded and exit_code == 0 and rows and rows[-1] < 100:
            return Verdict(False, "llama-perplexity prints a Winogrande score only over 100 "
                                  f"tasks or more; {self.data} gave fewer: use a bigger file")
        return verdict


@dataclass(frozen=True, kw_only=True)
class MultipleChoiceJob(_TaskJob):
    """``--multiple-choice`` on the llama.cpp binary files (MMLU, ARC, TruthfulQA)."""

    kind: ClassVar[str] = "multiple-choice"
    flag: ClassVar[str] = "--multiple-choice"
    data_flag: ClassVar[str] = "-bf"
    result_key: ClassVar[str] = "multiple_choice"

    def _score(self, log: str) -> parsers.TaskScore | None:
        return parsers.parse_multiple_choice(log)


@dataclass(frozen=True, kw_only=True)
class BenchJob(ToolJob):
    """``llama-bench -o jsonl``: prompt processing and generation speed."""

    tool: ClassVar[str] = "bench"
    kind: ClassVar[str] = "bench"

    model: Path
    n_prompt: int = 512
    n_gen: int = 128
    repetitions: int = 5
    n_gpu_layers: int | None = None

    def inputs(self) -> tuple[Path, ...]:
        return (self.model,)

    def args(self) -> list[str]:
        args = ["-m", str(self.model), "-p", str(self.n_prompt), "-n", str(self.n_gen),
                "-r", str(self.repetitions), "-o", "jsonl"]
        if self.n_gpu_layers is not None:
            args += ["-ngl", str(self.n_gpu_layers)]
        return [*args, *self._thread_args()]

    def check(self, produced: Iterable[Path] = ()) -> None:
        _exists_or_produced(self.model, list(produced), "model", model=True)

    def new_progress(self) -> ProgressReader:
        return BenchProgressReader(int(self.n_prompt > 0) + int(self.n_gen > 0))

    def verdict(self, exit_code: int, log: str) -> Verdict:
        rows = parsers.parse_bench(log)
        if exit_code == 0 and rows:
            results: dict[str, Any] = {}
            for row in rows:
                results[row.test] = row.tokens_per_second
                results[f"{row.test}_stddev"] = row.stddev
            results["backends"] = rows[0].backends
            summary = ", ".join(f"{r.test} {r.tokens_per_second:.1f} t/s" for r in rows)
            return Verdict(True, summary, results)
        return Verdict(False, _generic_failure("llama-bench", exit_code, log))

    def title(self) -> str:
        return self.label or f"speed {self.model.name}"


JOB_TYPES: dict[str, type[ToolJob]] = {cls.kind: cls for cls in (
    ImatrixJob, QuantizeJob, ReferenceLogitsJob, PerplexityJob, KLDivergenceJob,
    HellaSwagJob, WinograndeJob, MultipleChoiceJob, BenchJob)}


def job_from_dict(spec: dict[str, Any]) -> ToolJob:
    """Rebuild a job from :meth:`ToolJob.to_dict` (e.g. to rerun one from the history)."""
    cls = JOB_TYPES.get(spec.get("kind", ""))
    if cls is None:
        raise ValueError(f"unknown job kind {spec.get('kind')!r}; known: {', '.join(JOB_TYPES)}")
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in spec:
            continue
        value = spec[f.name]
        if value is not None and "Path" in str(f.type):
            value = Path(value)
        elif isinstance(value, list):  # JSON has no tuples
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


# --- pipelines --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineStep:
    """One job in a pipeline and the keys of the steps it waits for."""

    key: str
    job: ToolJob
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pipeline:
    """Jobs with dependencies, in a runnable order: a failed step stops its dependants."""

    steps: tuple[PipelineStep, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for step in self.steps:
            if step.key in seen:
                raise ValueError(f"pipeline step key {step.key!r} is used twice")
            missing = [k for k in step.after if k not in seen]
            if missing:
                raise ValueError(f"pipeline step {step.key!r} waits for {missing}, which must "
                                 "come before it")
            seen.add(step.key)

    @classmethod
    def from_jobs(cls, jobs: Sequence[tuple[str, ToolJob]]) -> Pipeline:
        """Steps in the given order; a step waits for every earlier step whose output it reads."""
        steps: list[PipelineStep] = []
        for key, job in jobs:
            after = tuple(s.key for s in steps if s.job.output() is not None
                          and any(_same_file(s.job.output(), p) for p in job.inputs()))
            steps.append(PipelineStep(key, job, after))
        return cls(tuple(steps))

    def step(self, key: str) -> PipelineStep:
        for step in self.steps:
            if step.key == key:
                return step
        raise KeyError(key)

    def with_rpc_workers(self, workers: Sequence[str]) -> Pipeline:
        """The same steps, every one whose tool takes ``--rpc`` running across ``workers``."""
        chosen = tuple(workers)
        return Pipeline(tuple(
            replace(step, job=replace(step.job, rpc_workers=chosen))
            if step.job.tool in RPC_TOOLS else step for step in self.steps))

    def produced_before(self, key: str) -> list[Path]:
        """Outputs of the steps before ``key``: files that will exist by the time it runs."""
        out: list[Path] = []
        for step in self.steps:
            if step.key == key:
                break
            if step.job.output() is not None:
                out.append(step.job.output())  # type: ignore[arg-type]
        return out

    def check(self) -> list[tuple[str, str]]:
        """Every step's problems known before anything runs, as (key, message)."""
        problems = []
        for step in self.steps:
            try:
                step.job.check(self.produced_before(step.key))
            except JobError as error:
                problems.append((step.key, str(error)))
        return problems


@dataclass(frozen=True)
class EvaluationOptions:
    """Which evaluations a pipeline runs on each quant."""

    reference: Path | None = None  # the F16/BF16 model for KL divergence
    text: Path | None = None  # evaluation text for perplexity and KL divergence
    context: int = 512
    chunks: int | None = None
    kl_divergence: bool = True
    perplexity: bool = False  # KL divergence already reports the quant's PPL on the text
    hellaswag: Path | None = None
    winogrande: Path | None = None
    multiple_choice: tuple[Path, ...] = ()
    tasks: int | None = None
    bench: bool = False
    bench_prompt: int = 512
    bench_gen: int = 128
    bench_repetitions: int = 5


def evaluation_jobs(model: Path, options: EvaluationOptions, threads: int = 0,
                    prefix: str = "") -> list[tuple[str, ToolJob]]:
    """The evaluation steps for one model (the reference logits job is added separately)."""
    jobs: list[tuple[str, ToolJob]] = []
    name = prefix or model.stem
    common = {"threads": threads}
    if options.kl_divergence and options.reference is not None and options.text is not None:
        ref = reference_logits_path(options.reference, options.text, options.context,
                                    options.chunks)
        jobs.append((f"{name}:kld", KLDivergenceJob(
            model=model, reference_logits=ref, context=options.context, chunks=options.chunks,
            **common)))
    if options.perplexity and options.text is not None:
        jobs.append((f"{name}:ppl", PerplexityJob(model=model, text=options.text,
                                                  context=options.context,
                                                  chunks=options.chunks, **common)))
    task_args = {"tasks": options.tasks} if options.tasks is not None else {}
    if options.hellaswag is not None:
        jobs.append((f"{name}:hellaswag", HellaSwagJob(model=model, data=options.hellaswag,
                                                       **task_args, **common)))
    if options.winogrande is not None:
        jobs.append((f"{name}:winogrande", WinograndeJob(model=model, data=options.winogrande,
                                                         **task_args, **common)))
    for data in options.multiple_choice:
        jobs.append((f"{name}:mc:{data.stem}", MultipleChoiceJob(model=model, data=data,
                                                                 **task_args, **common)))
    if options.bench:
        jobs.append((f"{name}:bench", BenchJob(model=model, n_prompt=options.bench_prompt,
                                               n_gen=options.bench_gen,
                                               repetitions=options.bench_repetitions, **common)))
    return jobs


def build_pipeline(quantize_jobs: Sequence[QuantizeJob], imatrix_job: ImatrixJob | None = None,
                   evaluation: EvaluationOptions | None = None, threads: int = 0) -> Pipeline:
    """imatrix -> quantize each plan -> evaluate each quant, as one dependency graph.

    The reference logits are computed once (and skipped when the cache already has them);
    every KL divergence step waits for them.
    """
    jobs: list[tuple[str, ToolJob]] = []
    if imatrix_job is not None:
        jobs.append(("imatrix", imatrix_job))
    options = evaluation or EvaluationOptions(kl_divergence=False)
    if options.kl_divergence and options.reference is not None and options.text is not None:
        reference = ReferenceLogitsJob.cached(options.reference, options.text, options.context,
                                              options.chunks, threads)
        if not reference.output_path.is_file():
            jobs.append(("reference", reference))
    # Each quant is evaluated right after it is written: its numbers arrive early, and a
    # failed quantize stops only its own evaluations.
    for job in quantize_jobs:
        key = job.profile or job.output_path.stem
        jobs.append((f"{key}:quantize", job))
        jobs += evaluation_jobs(job.output_path, options, threads, prefix=key)
    return Pipeline.from_jobs(jobs)
