"""The reference logits of a model, text and context are computed once: the cache key is the
model's content, so a touched, copied or moved model finds them again (issue 22, #8: a third
run rebuilt them under a new key, 40 s on the demo and hours on a large model)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from window_fixtures import demo_with_panels  # noqa: F401 - a fixture

from apex_gui.core.jobs.assembly import pipeline_for
from apex_gui.core.jobs.calibration import quick_eval_text
from apex_gui.core.jobs.evaluations import reference_logits_path


def test_the_key_follows_the_content_not_the_path_or_the_time(tiny_qwen2moe: Path,
                                                              tiny_qwen3moe: Path,
                                                              tmp_path: Path) -> None:
    text = quick_eval_text()
    model = tmp_path / "model-f16.gguf"
    shutil.copyfile(tiny_qwen2moe, model)
    key = reference_logits_path(model, text, 512, None)
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert reference_logits_path(model, text, 512, None) == key  # touched
    moved = tmp_path / "elsewhere" / "model-f16.gguf"
    moved.parent.mkdir()
    shutil.copy(model, moved)
    assert reference_logits_path(moved, text, 512, None) == key  # copied, new time
    assert reference_logits_path(model, text, 1024, None) != key  # another context
    other = tmp_path / "model2-f16.gguf"
    shutil.copyfile(tiny_qwen3moe, other)
    assert reference_logits_path(other, text, 512, None).name != key.name  # another model


@pytest.mark.gui
def test_a_later_run_of_the_run_tab_reuses_the_reference_logits(demo_with_panels) -> None:  # type: ignore[no-untyped-def]
    window, panels = demo_with_panels
    run = panels.run
    run.set_checked_profiles(["quality"])
    first = pipeline_for(run.request())
    assert "reference" in [step.key for step in first.steps]
    # The first run wrote the logits (as the finished reference step does)...
    reference = first.step("reference").job.output_path
    reference.parent.mkdir(parents=True, exist_ok=True)
    reference.write_bytes(b"_logits_")
    # ...and the model's file time changed since (a copy, a sync, a touch).
    model = window.current_model.path
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 60_000_000_000))
    again = pipeline_for(run.request())
    assert "reference" not in [step.key for step in again.steps]
    kld = next(step.job for step in again.steps if step.key.endswith(":kld"))
    assert kld.reference_logits == reference
