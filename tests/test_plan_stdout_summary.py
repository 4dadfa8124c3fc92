"""`apex-studio plan` without -o: the file on stdout, the size and the command on stderr."""

from __future__ import annotations

from pathlib import Path

import pytest

from apex_gui.cli import main
from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.model import open_model
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import get_profile


def test_plan_without_output_prints_size_and_command_after_the_patterns(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = write_shape_twin(tmp_path / "olmoe-bf16.gguf", "olmoe-1b-7b")[0]
    assert main(["plan", str(model), "--profile", "balanced"]) == 0
    captured = capsys.readouterr()
    plan = plan_from_profile(open_model(model), get_profile("balanced"))
    assert captured.out == plan.tensor_type_file_text()  # stdout stays a clean tensor-type file
    assert f"{plan.total_bytes():,} bytes" in captured.err
    command = captured.err.strip().splitlines()[-1]
    assert command.startswith("llama-quantize --tensor-type-file plan.txt")
    assert command.endswith(f"olmoe-APEX-Balanced.gguf {plan.base_type}")
