"""The conversion as a job: llama.cpp's ``convert_hf_to_gguf.py`` on a checkpoint folder.

It runs like every other job (same runner, queue, run history, partial-name discipline):
the converter writes ``OUT.<unique>.partial`` and the runner renames it once it is a
complete GGUF. The text model and the multimodal projector (``--mmproj``) are two jobs, so
each is its own file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from apex_gui.core.convert import pre_tokenizer
from apex_gui.core.convert.checkpoint import (OUTPUT_TYPES, CheckpointError, missing_tokenizer,
                                              open_checkpoint)
from apex_gui.core.convert.converter import SCRIPT
from apex_gui.core.jobs.specs import JobError, JobVerdict, ToolJob, check_output

if TYPE_CHECKING:
    from apex_gui.core.jobs.tools import LlamaTools

#: What the converter prints when this llama.cpp does not know the model's tokenizer.
UNKNOWN_PRE_TOKENIZER = "BPE pre-tokenizer was not recognized"


@dataclass(frozen=True, kw_only=True)
class ConvertJob(ToolJob):
    """Convert a Hugging Face checkpoint folder to a BF16/F16 GGUF (or its mmproj)."""

    tool: ClassVar[str] = "convert"
    kind: ClassVar[str] = "convert"

    checkpoint: Path
    output_path: Path
    converter: Path  # the folder holding convert_hf_to_gguf.py
    output_type: str = "bf16"
    mmproj: bool = False
    #: For a model whose BPE pre-tokenizer this llama.cpp does not know yet: the name it
    #: uses (llama.cpp's list, e.g. ``qwen2``); written only when the converter's own
    #: table has no entry for the model's tokenizer.
    pre_tokenizer: str = ""
    python: str = ""  # the interpreter with the converter's needs; "" = this one

    def inputs(self) -> tuple[Path, ...]:
        return (self.checkpoint,)

    def output(self) -> Path:
        return self.output_path

    def args(self) -> list[str]:
        flags = ["--mmproj"] if self.mmproj else []
        return [str(self.checkpoint), "--outtype", self.output_type, "--outfile",
                str(self.partial_output()), *flags]

    def argv(self, tools: LlamaTools) -> list[str]:
        python = self.python or sys.executable
        script = str(self.converter / SCRIPT)
        if self.pre_tokenizer:
            return [python, str(Path(pre_tokenizer.__file__)), self.pre_tokenizer, script,
                    *self.args()]
        return [python, script, *self.args()]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = super().env(base)
        # The converter runs on the CPU only; a CUDA torch would otherwise probe the GPUs.
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def check(self, produced: Iterable[Path] = ()) -> None:
        if self.output_type not in OUTPUT_TYPES:
            raise JobError(f"output type {self.output_type!r}: choose one of "
                           f"{', '.join(OUTPUT_TYPES)}")
        if not (self.converter / SCRIPT).is_file():
            raise JobError(f"llama.cpp's converter is missing from {self.converter}: run "
                           "`apex-studio convert --setup`")
        if any(p == self.checkpoint for p in produced):
            return
        try:
            checkpoint = open_checkpoint(self.checkpoint)
        except CheckpointError as error:
            raise JobError(str(error)) from None
        if self.mmproj and not checkpoint.has_projector:
            raise JobError(f"{self.checkpoint} has no vision or audio tower: there is no "
                           "projector (mmproj) to convert")
        problem = None if self.mmproj else missing_tokenizer(self.checkpoint)
        if problem:
            raise JobError(problem)
        check_output(self.output_path, [*checkpoint.weight_files])

    def verdict(self, exit_code: int, log: str) -> JobVerdict:
        if exit_code == 0:
            return JobVerdict(True, f"converted to {self.output_path.name} "
                                    f"({self.output_type.upper()})")
        return JobVerdict(False, conversion_failure(log, exit_code, self.checkpoint))

    def title(self) -> str:
        what = "projector (mmproj)" if self.mmproj else self.output_type.upper()
        return self.label or f"convert {self.checkpoint.name} to {what}"


def conversion_failure(log: str, exit_code: int, checkpoint: Path) -> str:
    """One line for a failed conversion: the converter's own reason where it gave one."""
    if UNKNOWN_PRE_TOKENIZER in log:
        hashes = [line.split("chkhsh:", 1)[1].strip() for line in log.splitlines()
                  if "chkhsh:" in line]
        code = f" (chkhsh {hashes[-1][:16]}...)" if hashes else ""
        return (f"this llama.cpp's converter does not know the tokenizer of {checkpoint.name}"
                f"{code}: use a newer llama.cpp (Settings > llama.cpp folder), or give the "
                "pre-tokenizer the model uses with --pre-tokenizer NAME (e.g. qwen2)")
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(("ModuleNotFoundError", "ImportError")):
            return (f"the converter cannot start: {line}; run `apex-studio convert --setup`")
        if "Model " in line and "is not supported" in line:
            return f"{line}: this llama.cpp cannot convert this architecture yet"
    detail = next((line for line in reversed(lines)
                   if "Error" in line or "error" in line), lines[-1] if lines else "")
    return f"the converter failed (exit code {exit_code}){': ' + detail if detail else ''}"
