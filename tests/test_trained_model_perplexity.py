"""llama.cpp and PyTorch agree on the trained demo model's perplexity (same text, same chunks).

Runs when the trained GGUF exists (resources/demo/, or APEX_TRAINED_MODEL=path) and PyTorch is
installed (``pip install -e .[train]``): a quantization result on a model that llama.cpp
evaluates differently from how it was trained would mean nothing.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from apex_gui.core.jobs import parsers
from apex_gui.core.jobs.calibration import quick_eval_text
from apex_gui.core.jobs.evaluations import PerplexityJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.runner import run_job

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "resources" / "demo" / "apex-demo-trained-qwen2moe-f16.gguf"
CONTEXT = 128


def trained_model() -> Path | None:
    chosen = Path(os.environ.get("APEX_TRAINED_MODEL", BUNDLED))
    return chosen if chosen.is_file() else None


def training_module():
    spec = importlib.util.spec_from_file_location("train_demo_moe",
                                                  ROOT / "training" / "train_demo_moe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(trained_model() is None, reason="no trained demo model (see training/)")
def test_llama_perplexity_equals_pytorch(llama_tools, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    train = training_module()
    model_path = trained_model()
    text = quick_eval_text()
    outcome = run_job(PerplexityJob(model=model_path, text=text, context=CONTEXT,
                                    options=RunOptions(no_repack=True)), llama_tools)
    assert outcome.succeeded, outcome.message
    estimate = parsers.parse_final_estimate(outcome.log)
    assert estimate is not None
    ours, chunks = train.llama_style_perplexity(train.load_gguf(model_path),
                                                text.read_text(encoding="utf-8"), CONTEXT)
    assert chunks > 10
    # F16 weights in both; llama.cpp also rounds activations to F16 inside its matmuls.
    assert estimate.ppl == pytest.approx(ours, rel=0.01), (estimate.ppl, ours)
