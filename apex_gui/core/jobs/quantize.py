"""The imatrix and quantize jobs: the one place the llama-quantize argv is built."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from typing import TYPE_CHECKING

from apex_gui.core.gguf.reader import read_header
from apex_gui.core.gguf.types import FTYPE_DEFAULT_TYPE, IMATRIX_REQUIRED
from apex_gui.core.jobs import parsers
from apex_gui.core.jobs.progress import ChunkProgressReader, ProgressReader, TensorProgressReader
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.text_tokens import check_text_tokens
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.jobs.specs import (
    MODEL_INPUT, JobError, JobInput, JobVerdict, ToolJob, completed_chunks, generic_failure,
    gguf_output_problem, gguf_tensor_totals, same_file, too_few_tokens_message,
)
from apex_gui.core.settings import data_dir
from apex_gui.core.units import format_size

if TYPE_CHECKING:
    from apex_gui.core.plan.precision import PrecisionPlan


@dataclass(frozen=True, kw_only=True)
class ImatrixJob(ToolJob):
    """``llama-imatrix``: an importance matrix from calibration text."""

    tool: ClassVar[str] = "imatrix"
    kind: ClassVar[str] = "imatrix"
    reads: ClassVar[tuple[JobInput, ...]] = (MODEL_INPUT,
                                             JobInput("calibration", "calibration text"))
    writes: ClassVar[str] = "output_path"
    subject: ClassVar[str] = "imatrix"
    progress_reader: ClassVar[type[ProgressReader]] = ChunkProgressReader

    model: Path
    calibration: Path
    output_path: Path
    context: int = 512
    chunks: int | None = None  # None: all the text

    def args(self) -> list[str]:
        # --no-escape: code in the calibration text keeps its backslashes (the default turns
        # "\n" inside a string literal into a newline). --output-format gguf: the temporary
        # ".partial" suffix would otherwise draw a warning about a non-.gguf name.
        args = ["-m", str(self.model), "-f", str(self.calibration),
                "-o", str(self.partial_output()), "--output-format", "gguf", "--no-escape"]
        return [*args, *self._context_args(self.context, self.chunks)]

    def check_details(self, produced: list[Path], tools: LlamaTools | None) -> None:
        model = None if any(same_file(self.model, p) for p in produced) else self.model
        check_text_tokens(self.calibration, "calibration text", self.context, model, tools,
                          purpose="for an importance matrix", context_flag="--imatrix-ctx",
                          fix="add text (or use the bundled calibration set) or lower the "
                              "context")

    def verdict(self, exit_code: int, log: str) -> JobVerdict:
        # llama-imatrix exits 1 on a too-short text and saves the file from the main thread
        # before it returns, so exit 0 plus the file (checked by the runner) means success
        # even when the logger lost the final estimate.
        short = too_few_tokens_message("calibration text", self.calibration, log, self.context)
        if short:
            return JobVerdict(False, short)
        if exit_code == 0:
            results: dict[str, Any] = {}
            final = parsers.parse_final_estimate(log)
            _, values = completed_chunks(log)
            if final is not None:
                results = {"calibration_ppl": final.ppl, "calibration_ppl_error": final.error}
            elif values:
                results = {"calibration_ppl": values[-1][1]}
            return JobVerdict(True, f"importance matrix written to {self.output_path}", results)
        return JobVerdict(False, generic_failure("llama-imatrix", exit_code, log))

    def output_problem(self, written: Path) -> str | None:
        return gguf_output_problem(written)

    def output_results(self, written: Path) -> dict[str, Any]:
        # The chunks the matrix was computed over, as the file records them (the log's
        # last chunk line can be lost at exit; under load it was, and 2 chunks read as 1).
        count = read_header(written).get("imatrix.chunk_count")
        return {"chunks": count} if isinstance(count, int) else {}


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
    reads: ClassVar[tuple[JobInput, ...]] = (
        JobInput("source", "source model", model=True),
        JobInput("tensor_type_file", "tensor-type file"),
        JobInput("imatrix", "importance matrix"))
    writes: ClassVar[str] = "output_path"

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
                  imatrix: str | os.PathLike[str] | None = None,
                  label: str = "", options: RunOptions = RunOptions()) -> QuantizeJob:
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
        profile = plan.profile_key
        chosen_imatrix = imatrix or plan.imatrix
        # The quant's header carries the imatrix path and counts: size the plan with them.
        predicted = plan.total_bytes_for(str(chosen_imatrix) if chosen_imatrix else None)
        return cls(source=Path(plan.model.path), output_path=Path(output),
                   base_type=plan.base_type, tensor_type_file=type_file,
                   imatrix=Path(chosen_imatrix) if chosen_imatrix else None,
                   token_embedding_type=embedding.lower() if embedding else None,
                   output_tensor_type=output_type.lower() if output_type else None,
                   allow_requantize=plan.requantizes(),
                   predicted_bytes=predicted, needs_imatrix=plan.needs_imatrix(),
                   profile=profile, label=label, options=options)

    def args(self) -> list[str]:
        return self.quantize_args(self.partial_output())

    def quantize_args(self, output: Path) -> list[str]:
        """The llama-quantize arguments writing to ``output``: the one place they are built."""
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
        args += [str(self.source), str(output), self.base_type]
        if self.options.threads > 0:  # llama-quantize's thread count is its last argument
            args.append(str(self.options.threads))
        return args

    def requires_imatrix(self) -> bool:
        if self.needs_imatrix is not None:
            return self.needs_imatrix
        return bool(needed_imatrix_types(self.tensor_type_file, self.base_type))

    def check_details(self, produced: list[Path], tools: LlamaTools | None) -> None:
        if self.base_type.upper() not in FTYPE_DEFAULT_TYPE:
            raise JobError(f"{self.base_type!r} is not a llama-quantize type; use one of "
                           f"{', '.join(FTYPE_DEFAULT_TYPE)}")
        if self.imatrix is None and self.requires_imatrix():
            kinds = ", ".join(sorted(needed_imatrix_types(self.tensor_type_file, self.base_type)))
            raise JobError(
                f"this plan uses types that need an importance matrix ({kinds or 'IQ1/IQ2/IQ3_XXS'})"
                f"; give one with --imatrix FILE, let APEX Studio compute it (--imatrix auto), "
                "or choose a profile without I-quants")
        if self.predicted_bytes is not None:
            folder = self.output_path.parent if str(self.output_path.parent) else Path(".")
            probe = folder if folder.exists() else Path(folder.anchor or ".")
            free = shutil.disk_usage(probe).free
            if free < self.predicted_bytes:
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

    def verdict(self, exit_code: int, log: str) -> JobVerdict:
        summary = parsers.parse_quantize_log(log)
        if summary.needs_imatrix_tensor:
            return JobVerdict(False, (
                f"llama-quantize refused: {summary.needs_imatrix_tensor} is planned as "
                f"{summary.needs_imatrix_type or 'an IQ type'}, which needs an importance matrix;"
                " give one with --imatrix FILE (or --imatrix auto), or pick a K-quant for it"))
        if exit_code == 0:
            # Sizes come from the written file (output_results); the runner has checked it.
            results: dict[str, Any] = {"fallback_tensors": summary.fallback_count}
            if self.predicted_bytes is not None:
                results["predicted_bytes"] = self.predicted_bytes
            return JobVerdict(True, f"quantized to {self.output_path}", results)
        return JobVerdict(False, generic_failure("llama-quantize", exit_code, log))

    def output_problem(self, written: Path) -> str | None:
        return gguf_output_problem(written)

    def output_results(self, written: Path) -> dict[str, Any]:
        # Sizes as llama-quantize's summary lines give them, from the two files' tensor
        # tables (the same sums, at full precision).
        results: dict[str, Any] = {}
        for prefix, path in (("model", self.source), ("quant", written)):
            data_bytes, weights = gguf_tensor_totals(path)
            results[f"{prefix}_mib"] = data_bytes / 2**20
            results[f"{prefix}_bpw"] = 8 * data_bytes / weights if weights else None
        return results

    def title(self) -> str:
        what = self.profile or self.base_type
        return self.label or f"quantize {self.source.name} -> {self.output_path.name} ({what})"


def quantize_argv(plan: PrecisionPlan, quantize_exe: str | Path, source: str | Path,
                  output: str | Path, tensor_type_file: str | Path, threads: int | None = None,
                  imatrix: str | Path | None = None) -> list[str]:
    """The full llama-quantize argument list that applies ``plan``, built by the job."""
    embedding, output_type = plan.special_types()
    chosen = imatrix or plan.imatrix
    job = QuantizeJob(source=Path(source), output_path=Path(output), base_type=plan.base_type,
                      tensor_type_file=Path(tensor_type_file),
                      imatrix=Path(chosen) if chosen else None,
                      token_embedding_type=embedding.lower() if embedding else None,
                      output_tensor_type=output_type.lower() if output_type else None,
                      allow_requantize=plan.requantizes(),
                      options=RunOptions(threads=threads or 0))
    return [str(quantize_exe), *job.quantize_args(Path(output))]


def command_line(plan: PrecisionPlan, tensor_type_file: str = "plan.txt",
                 output: str = "OUT.gguf") -> str:
    """A copyable shell command (display only; jobs run argument lists, never a shell)."""
    return shlex.join(quantize_argv(plan, "llama-quantize", plan.model.path, output,
                                    tensor_type_file))
