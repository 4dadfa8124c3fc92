"""Jobs as data: what to run, how to read its output, and what counts as success.

A job is a frozen dataclass that knows its tool's argument list (never a shell line), the
child environment, the files it reads and writes, the checks worth making before it starts,
how to turn its output into progress, and how to judge a finished run. The headless runner
(:mod:`apex_gui.core.jobs.runner`) and the Qt queue (:mod:`apex_gui.qt.job_queue`) both drive these
objects, so the same job behaves the same on the command line and in the window.

Every job that produces a file writes it under a temporary name next to the final one
(``OUT.gguf.partial``); the runner renames it when the job succeeded and deletes it
otherwise, so a failed or cancelled run never leaves a file that looks complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from apex_gui.core.files.inputs import InputFileError, check_input_file
from apex_gui.core.gguf.reader import GGUFError, read_header
from apex_gui.core.jobs import parsers
from apex_gui.core.jobs.progress import ProgressReader
from apex_gui.core.jobs.run_options import NO_REPACK_ARGS, RunOptions
from apex_gui.core.jobs.tools import LlamaTools, child_environment


PARTIAL_SUFFIX = ".partial"
#: Flags that make llama-imatrix / llama-perplexity output plain and parseable.
PLAIN_LOG_FLAGS = ("--no-log-prefix", "--log-colors", "off")
#: Tools whose output goes through llama.cpp's asynchronous common logger.
ASYNC_LOG_TOOLS = frozenset({"imatrix", "perplexity"})


class JobError(Exception):
    """A job cannot start; the message names the cause and the fix."""


def partial_path(output: Path) -> Path:
    """The temporary name a job writes ``output`` under until it is complete."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


def same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_readable_model(path: Path, what: str = "model") -> None:
    """The file exists and starts like a GGUF: llama.cpp tools exit silently otherwise."""
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


def gguf_tensor_totals(path: Path) -> tuple[int, int]:
    """(tensor data bytes, weights) of a GGUF, from its tensor table: what llama-quantize's
    "model size" and "quant size" lines report in MiB and bits per weight."""
    tensors = read_header(path).tensors
    return sum(t.nbytes for t in tensors), sum(t.n_elements for t in tensors)


def gguf_output_problem(written: Path) -> str | None:
    """Why a GGUF the tool just wrote is incomplete (truncated, bad header), or None."""
    try:
        read_header(written)
    except GGUFError as error:
        return error.problem.replace("; download it again", "")
    return None


def check_readable_file(path: Path, what: str) -> None:
    """A regular, readable file (a folder, FIFO or device is named as such), else JobError."""
    try:
        check_input_file(path, what)
    except InputFileError as error:
        raise JobError(str(error)) from None


def check_output(output: Path, inputs: Iterable[Path]) -> None:
    for source in inputs:
        if same_file(output, source):
            raise JobError(f"the output {output} is also an input of this job; choose another "
                           "output name (the source model is never overwritten)")
    folder = output.parent if str(output.parent) else Path(".")
    if folder.exists() and not os.access(folder, os.W_OK):
        raise JobError(f"cannot write to the folder {folder}; choose another output folder")


# --- verdicts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobVerdict:
    """How a finished process went, judged from its exit code and output."""

    succeeded: bool
    message: str
    results: dict[str, Any] = field(default_factory=dict)
    #: The tool exited normally but its result lines were lost (see ToolJob.env): running
    #: it again is the fix, and the runner does so a few times before giving up.
    output_lost: bool = False
    #: What to conclude instead when the last run allowed lost them too: the figures the
    #: lines printed before them carry (a running mean), said as such.
    fallback: JobVerdict | None = None


def lost_output(tool: str, fallback: JobVerdict | None = None) -> JobVerdict:
    return JobVerdict(False, (
        f"{tool} exited normally but its final result lines never arrived (llama.cpp's logger "
        "can drop its last lines at exit, issue 22142): run the job again"), output_lost=True,
        fallback=fallback)


def completed_chunks(log: str) -> tuple[int | None, list[tuple[int, float]]]:
    """(announced chunk count, chunk values seen) for the chunk-based tools."""
    total = None
    for line in log.splitlines():
        count = parsers.parse_chunk_count(line)
        if count is not None:
            total = count
    return total, parsers.parse_chunk_values(log)


def last_error_lines(log: str, limit: int = 3) -> str:
    keys = ("error", "failed", "unable", "cannot", "invalid", "abort", "exception")
    lines = [line.strip() for line in log.splitlines()
             if any(k in line.lower() for k in keys) and line.strip()]
    return " | ".join(lines[-limit:])


def generic_failure(tool: str, exit_code: int, log: str) -> str:
    detail = last_error_lines(log)
    if detail:
        return f"{tool} failed (exit code {exit_code}): {detail}"
    return (f"{tool} exited with code {exit_code} without saying why (llama.cpp tools print "
            "nothing when a model fails to load): check that the model opens in "
            "`apex-studio inspect`, and rerun the command line from the log with `-lv 4`")


def too_few_tokens_message(what: str, path: Path | None, log: str, context: int) -> str | None:
    short = parsers.parse_too_few_tokens(log)
    if short is None:
        return None
    found = f"only {short.found} tokens" if short.found is not None else "too few tokens"
    where = f" {path}" if path else ""
    return (f"the {what}{where} has {found}; with a context of {context} the tool needs at "
            f"least {short.needed}: give a longer text or lower the context (--ctx "
            f"{max(16, (short.found or 0) // 2)} would fit)")


# --- jobs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobInput:
    """A file a job reads: the field holding its path (None: not given), how messages name
    it, and whether it is a GGUF model (its header is checked before the run)."""

    field: str
    what: str
    model: bool = False


#: The model most jobs run (``-m``).
MODEL_INPUT = JobInput("model", "model", model=True)


@dataclass(frozen=True, kw_only=True)
class ToolJob:
    """Base of every job: one run of one llama.cpp tool.

    A job class declares what it reads (``reads``), the field naming what it writes
    (``writes``), what its title calls it (``subject``) and how its progress is read
    (``progress_reader``); the files' checks, the title and the rest of the skeleton are
    here, once. It adds its own arguments (``args``), judgement (``verdict``) and any
    check beyond its files (``check_details``).
    """

    tool: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    #: The files the job reads, in argument order; the first names the job in its title.
    reads: ClassVar[tuple[JobInput, ...]] = ()
    #: The field holding the file the job writes ("" for none).
    writes: ClassVar[str] = ""
    #: What the title calls the job: "perplexity" gives "perplexity MODEL.gguf".
    subject: ClassVar[str] = ""
    progress_reader: ClassVar[type[ProgressReader]] = ProgressReader

    label: str = ""
    #: How the tool is run here (threads, --no-repack, CPU variants, RPC workers): what the
    #: job itself chose; the tools' standing options fill the rest when it starts.
    options: RunOptions = RunOptions()

    # What the job reads and writes.
    def inputs(self) -> tuple[Path, ...]:
        found = (getattr(self, read.field) for read in self.reads)
        return tuple(path for path in found if path is not None)

    def output(self) -> Path | None:
        return getattr(self, self.writes) if self.writes else None

    def partial_output(self) -> Path | None:
        out = self.output()
        return partial_path(out) if out is not None else None

    # How to run it.
    def args(self) -> list[str]:
        """Arguments after the executable (the output under its temporary name)."""
        raise NotImplementedError

    def argv(self, tools: LlamaTools) -> list[str]:
        """The full argument list; :class:`ToolNotFoundError` if the tool is missing."""
        if self.options.rpc_workers and self.options.for_tool(self.tool) != self.options:
            raise JobError(f"{self.kind} jobs run locally only; remove the RPC workers "
                           f"({', '.join(self.options.rpc_workers)}) from this step")
        executable = tools.executable(self.tool, self.options)
        return [str(executable), *self.args(), *self.options.tool_args(self.tool)]

    def with_options(self, options: RunOptions) -> ToolJob:
        """This job run with ``options``."""
        return self if options == self.options else replace(self, options=options)

    def without_repack(self) -> ToolJob:
        """This job keeping weights as stored, where its tool can be told to."""
        if self.tool not in NO_REPACK_ARGS:
            return self
        return self.with_options(replace(self.options, no_repack=True))

    def crash_fallback(self, crashed_variant: str | None) -> tuple[ToolJob, str] | None:
        """The same job without the code path that just crashed, and how it differs
        (:meth:`RunOptions.crash_fallback`); None when nothing is left to avoid."""
        fallback = self.options.crash_fallback(self.tool, crashed_variant)
        if fallback is None:
            return None
        options, how = fallback
        return self.with_options(options), how

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
        if self.options.rpc_workers:
            # A lost worker aborts the tool; ggml would first try to attach a debugger.
            env.setdefault("GGML_NO_BACKTRACE", "1")
        if self.options.placement is not None:
            env.update(self.options.placement.environment())
        return env

    def _context_args(self, context: int, chunks: int | None = None) -> list[str]:
        """The tail llama-imatrix and llama-perplexity runs share: context, chunks and plain
        log lines (the parsers read them without prefixes or colour codes)."""
        chunk_args = ["--chunks", str(chunks)] if chunks is not None else []
        return ["-c", str(context), *chunk_args, *PLAIN_LOG_FLAGS]

    # Before and after.
    def check(self, produced: Iterable[Path] = (), tools: LlamaTools | None = None) -> None:
        """Raise :class:`JobError` when the job would fail for a reason known in advance:
        an input missing or unreadable, an output that is also an input, then the job's own
        :meth:`check_details`.

        ``produced`` lists files an earlier pipeline step will create: they need not exist yet.
        ``tools``: where known, checks may run a tool (llama-tokenize counts a text's tokens).
        """
        produced = list(produced)
        for read in self.reads:
            path = getattr(self, read.field)
            if path is not None:
                exists_or_produced(path, produced, read.what, read.model)
        output = self.output()
        if output is not None:
            check_output(output, self.inputs())
        self.check_details(produced, tools)

    def check_details(self, produced: list[Path], tools: LlamaTools | None) -> None:
        """The job's own checks once its files are known to be there (JobError)."""

    def new_progress(self) -> ProgressReader:
        return self.progress_reader()

    def verdict(self, exit_code: int, log: str) -> JobVerdict:
        raise NotImplementedError

    def output_problem(self, written: Path) -> str | None:
        """Why the file the tool wrote (under its temporary name) is unusable, or None.

        llama-imatrix, llama-perplexity and llama-quantize's last writes are not checked by
        the tools: on a full disk they can exit 0 with a truncated file. The runner asks
        this before it renames the file into place.
        """
        return None

    def output_results(self, written: Path) -> dict[str, Any]:
        """Results the finished output file records (read by the runner once the file is in
        place; they replace what the log said). The log is for progress: llama.cpp's
        logger can drop lines at exit, the file cannot."""
        return {}

    # Description.
    def title(self) -> str:
        inputs = self.inputs()
        if self.label or not self.subject or not inputs:
            return self.label or self.kind
        return f"{self.subject} {inputs[0].name}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (the run history stores it)."""
        spec: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            if f.name == "options":
                spec.update(self.options.to_fields())  # flat, as the history always had them
                continue
            value = getattr(self, f.name)
            # Absolute: a run started as `eval mini.gguf` and the same file opened in the
            # window must be recognised as one file in the history.
            spec[f.name] = os.path.abspath(value) if isinstance(value, Path) else value
        return spec


def exists_or_produced(path: Path, produced: Iterable[Path], what: str, model: bool) -> None:
    if any(same_file(path, p) for p in produced):
        return
    if model:
        check_readable_model(path, what)
    else:
        check_readable_file(path, what)
