"""Jobs started from the window check their texts without reading more than they need."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apex_gui.core.jobs.evaluations import PerplexityJob
from apex_gui.core.jobs.quantize import ImatrixJob
from apex_gui.core.jobs.specs import JobError


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_a_fifo_as_evaluation_or_calibration_text_is_refused_without_hanging(
        tiny_qwen2moe: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "text.fifo"
    os.mkfifo(fifo)
    with pytest.raises(JobError, match="not a regular file"):
        PerplexityJob(model=tiny_qwen2moe, text=fifo, context=128).check()
    with pytest.raises(JobError, match="not a regular file"):
        ImatrixJob(model=tiny_qwen2moe, calibration=fifo, output_path=tmp_path / "i.gguf",
                   context=128).check()


def test_a_huge_text_is_refused_by_its_size_without_being_read(tiny_qwen2moe: Path,
                                                               tmp_path: Path) -> None:
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as handle:  # sparse: no disk used, 2 GiB long
        handle.truncate(2 * 2**30)
    with pytest.raises(JobError, match="more than"):
        PerplexityJob(model=tiny_qwen2moe, text=huge, context=128).check()


def test_a_long_text_passes_after_reading_only_its_head(tiny_qwen2moe: Path, tmp_path: Path,
                                                        text_words, llama_tools) -> None:
    text = tmp_path / "long.txt"
    text.write_text(text_words(200_000))  # about 1.5 MB; the check reads 4 KiB of it
    PerplexityJob(model=tiny_qwen2moe, text=text, context=128).check((), llama_tools)
    short = tmp_path / "short.txt"
    short.write_text(text_words(20))
    with pytest.raises(JobError, match="too short"):
        PerplexityJob(model=tiny_qwen2moe, text=short, context=128).check((), llama_tools)
