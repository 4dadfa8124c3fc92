"""Evaluation jobs: reference logits, perplexity, KL divergence, multiple-choice tasks, speed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from apex_gui.core.jobs import parsers
from apex_gui.core.jobs.calibration import file_digest
from apex_gui.core.jobs.progress import (
    BenchProgressReader, ChunkProgressReader, KLDivergenceProgressReader, ProgressReader,
    TaskProgressReader,
)
from apex_gui.core.jobs.specs import (
    CHARS_PER_TOKEN_UPPER_BOUND, MODEL_INPUT, JobError, JobInput, JobVerdict, ToolJob,
    completed_chunks, estimate_tokens, generic_failure, last_error_lines, lost_output,
    too_few_tokens_message,
)
from apex_gui.core.settings import data_dir

TEXT_INPUT = JobInput("text", "evaluation text")


def _perplexity_verdict(exit_code: int, log: str, text: Path, context: int,
                        success: str) -> JobVerdict:
    short = too_few_tokens_message("evaluation text", text, log, context)
    if short:
        return JobVerdict(False, short)
    final = parsers.parse_final_estimate(log)
    if exit_code == 0 and final is not None:
        return JobVerdict(True, success or f"PPL {final.ppl:.4f} ± {final.error:.4f}",
                       {"ppl": final.ppl, "ppl_error": final.error})
    total, values = completed_chunks(log)
    if exit_code == 0 and total and values and values[-1][0] == total:
        # The last running value is the final estimate; only its error bar was lost.
        ppl = values[-1][1]
        return JobVerdict(True, success or f"PPL {ppl:.4f}", {"ppl": ppl})
    if exit_code == 0 and log.strip() and not last_error_lines(log):
        return lost_output("llama-perplexity")
    return JobVerdict(False, generic_failure("llama-perplexity", exit_code, log))


def text_head(path: Path, what: str, context: int) -> str:
    """As much of a text as the length check needs (never the whole of a huge file, a FIFO
    or a device): at most 4 bytes a character for 2 * context tokens."""
    from apex_gui.core.files.inputs import TEXT_CAP_BYTES, InputFileError, check_input_file

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
    content = text_head(text, "evaluation text", context)
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
    reads: ClassVar[tuple[JobInput, ...]] = (JobInput("model", "reference model", model=True),
                                             TEXT_INPUT)
    writes: ClassVar[str] = "output_path"
    subject: ClassVar[str] = "reference logits"
    progress_reader: ClassVar[type[ProgressReader]] = ChunkProgressReader

    model: Path
    text: Path
    output_path: Path
    context: int = 512
    chunks: int | None = None

    @classmethod
    def cached(cls, model: Path, text: Path, context: int = 512,
               chunks: int | None = None) -> ReferenceLogitsJob:
        """The job whose output is the cache entry for these inputs."""
        return cls(model=model, text=text, context=context, chunks=chunks,
                   output_path=reference_logits_path(model, text, context, chunks))

    def args(self) -> list[str]:
        args = ["-m", str(self.model), "-f", str(self.text), "--no-escape",
                "--kl-divergence-base", str(self.partial_output())]
        return [*args, *self._context_args(self.context, self.chunks)]

    def check_details(self, produced: list[Path]) -> None:
        _check_text_length(self.text, self.context)

    def verdict(self, exit_code: int, log: str) -> JobVerdict:
        # llama-perplexity exits 0 even when it computed nothing: the final line decides, or
        # (when the logger dropped it) the running values having reached the last chunk.
        return _perplexity_verdict(exit_code, log, self.text, self.context,
                                   f"reference logits saved to {self.output_path}")

    def output_problem(self, written: Path) -> str | None:
        return reference_logits_problem(written)


@dataclass(frozen=True, kw_only=True)
class PerplexityJob(ToolJob):
    """``llama-perplexity -f TEXT``: perplexity of a model on a text."""

    tool: ClassVar[str] = "perplexity"
    kind: ClassVar[str] = "perplexity"
    reads: ClassVar[tuple[JobInput, ...]] = (MODEL_INPUT, TEXT_INPUT)
    subject: ClassVar[str] = "perplexity"
    progress_reader: ClassVar[type[ProgressReader]] = ChunkProgressReader

    model: Path
    text: Path
    context: int = 512
    chunks: int | None = None

    def args(self) -> list[str]:
        args = ["-m", str(self.model), "-f", str(self.text), "--no-escape"]
        return [*args, *self._context_args(self.context, self.chunks)]

    def check_details(self, produced: list[Path]) -> None:
        _check_text_length(self.text, self.context)

    def verdict(self, exit_code: int, log: str) -> JobVerdict:
        return _perplexity_verdict(exit_code, log, self.text, self.context, "")


@dataclass(frozen=True, kw_only=True)
class KLDivergenceJob(ToolJob):
    """``llama-perplexity --kl-divergence``: a quant against the reference logits."""

    tool: ClassVar[str] = "perplexity"
    kind: ClassVar[str] = "kl-divergence"
    reads: ClassVar[tuple[JobInput, ...]] = (MODEL_INPUT,
                                             JobInput("reference_logits", "reference logits"))
    subject: ClassVar[str] = "KL divergence"
    progress_reader: ClassVar[type[ProgressReader]] = KLDivergenceProgressReader

    model: Path
    reference_logits: Path
    context: int = 512
    chunks: int | None = None

    def args(self) -> list[str]:
        args = ["-m", str(self.model), "--kl-divergence-base", str(self.reference_logits),
                "--kl-divergence"]
        return [*args, *self._context_args(self.context, self.chunks)]

    def verdict(self, exit_code: int, log: str) -> JobVerdict:
        stats = parsers.parse_kl_divergence(log)
        if exit_code == 0 and stats.complete:
            results = {k: v for k, v in vars(stats).items() if v is not None}
            return JobVerdict(True, f"KLD mean {stats.kld_mean:.6f}, max {stats.kld_max}", results)
        if "has been computed with" in log:
            return JobVerdict(False, f"the reference logits {self.reference_logits} were computed "
                                  f"with another context than {self.context}; use the same "
                                  "--ctx as the reference or recompute it")
        total, _ = completed_chunks(log)
        scored = total * (self.context - 1 - self.context // 2) if total else None
        if exit_code == 0 and scored is not None and scored < 100 and stats.kld_mean is None:
            # llama-perplexity prints no statistics over fewer than 100 tokens.
            return JobVerdict(False, f"{total} chunk(s) of context {self.context} score only "
                                  f"{scored} tokens and KL divergence statistics need 100: use "
                                  "more chunks (--chunks), a longer text or a larger --ctx")
        if exit_code == 0 and log.strip() and not last_error_lines(log):
            return lost_output("llama-perplexity --kl-divergence")
        return JobVerdict(False, generic_failure("llama-perplexity --kl-divergence", exit_code, log))


@dataclass(frozen=True, kw_only=True)
class _TaskJob(ToolJob):
    """HellaSwag, Winogrande and multiple choice share their shape."""

    tool: ClassVar[str] = "perplexity"
    flag: ClassVar[str] = ""
    data_flag: ClassVar[str] = "-f"
    result_key: ClassVar[str] = ""
    progress_reader: ClassVar[type[ProgressReader]] = TaskProgressReader

    model: Path
    data: Path
    tasks: int | None = None  # None: all (HellaSwag: 400, as the published numbers)
    context: int = 512

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Each task's data file and title are named after its result key.
        super().__init_subclass__(**kwargs)
        cls.reads = (MODEL_INPUT, JobInput("data", f"{cls.result_key} data file"))
        cls.subject = cls.result_key

    def args(self) -> list[str]:
        args = ["-m", str(self.model), self.data_flag, str(self.data), self.flag]
        if self.tasks is not None:
            args += [f"{self.flag}-tasks", str(self.tasks)]
        return [*args, *self._context_args(self.context)]

    def _score(self, log: str) -> parsers.TaskScore | None:
        raise NotImplementedError

    def verdict(self, exit_code: int, log: str) -> JobVerdict:
        score = self._score(log)
        if exit_code == 0 and score is not None:
            results = {self.result_key: score.accuracy, f"{self.result_key}_error": score.error,
                       f"{self.result_key}_tasks": score.tasks}
            return JobVerdict(True, f"{self.result_key} {score.accuracy:.2f}% over {score.tasks} "
                                 "tasks", results)
        detail = last_error_lines(log)
        if exit_code == 0 and not detail and self._finished_rows(log):
            return lost_output(f"llama-perplexity {self.flag}")
        return JobVerdict(False, f"no {self.result_key} score: {detail}" if detail
                       else generic_failure(f"llama-perplexity {self.flag}", exit_code, log))

    def _finished_rows(self, log: str) -> bool:
        """Scoring started (so the final lines, not the input, are what went missing)."""
        return any(parsers.parse_task_row(line) is not None for line in log.splitlines())


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

    def verdict(self, exit_code: int, log: str) -> JobVerdict:
        verdict = super().verdict(exit_code, log)
        rows = [r for r in map(parsers.parse_task_row, log.splitlines()) if r is not None]
        if not verdict.succeeded and exit_code == 0 and rows and rows[-1] < 100:
            return JobVerdict(False, "llama-perplexity prints a Winogrande score only over 100 "
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
    reads: ClassVar[tuple[JobInput, ...]] = (MODEL_INPUT,)
    subject: ClassVar[str] = "speed"

    model: Path
    n_prompt: int = 512
    n_gen: int = 128
    repetitions: int = 5
    n_gpu_layers: int | None = None

    def args(self) -> list[str]:
        args = ["-m", str(self.model), "-p", str(self.n_prompt), "-n", str(self.n_gen),
                "-r", str(self.repetitions), "-o", "jsonl"]
        if self.n_gpu_layers is not None:
            args += ["-ngl", str(self.n_gpu_layers)]
        return args

    def new_progress(self) -> ProgressReader:
        return BenchProgressReader(int(self.n_prompt > 0) + int(self.n_gen > 0))

    def verdict(self, exit_code: int, log: str) -> JobVerdict:
        rows = parsers.parse_bench(log)
        if exit_code == 0 and rows:
            results: dict[str, Any] = {}
            for row in rows:
                results[row.test] = row.tokens_per_second
                results[f"{row.test}_stddev"] = row.stddev
            results["backends"] = rows[0].backends
            summary = ", ".join(f"{r.test} {r.tokens_per_second:.1f} t/s" for r in rows)
            return JobVerdict(True, summary, results)
        return JobVerdict(False, generic_failure("llama-bench", exit_code, log))
