"""Offload on a real GPU (marked ``gpu``: skipped with the reason where the tools see none).

With the Vulkan or CUDA backend built (`make gpu`) on a machine with a GPU driver, the app's
own placement puts the demo and a larger synthetic model on the card: the numbers match the
CPU's and the run is faster. Run with ``python -m pytest -m gpu``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from apex_gui.core.fit.job_placement import JobPlacer
from apex_gui.core.fixtures.bundled_demo import TRAINED_DEMO_NAME
from apex_gui.core.fixtures.synthetic import SyntheticModelSpec, write_synthetic_model
from apex_gui.core.jobs.calibration import quick_eval_text
from apex_gui.core.jobs.devices import ToolDevice, list_devices
from apex_gui.core.jobs.evaluations import PerplexityJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.runner import run_job
from apex_gui.core.jobs.tools import LlamaTools

pytestmark = pytest.mark.gpu

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo" / TRAINED_DEMO_NAME
#: 64M parameters (127 MB F16): enough work for a GPU to beat the CPU clearly.
LARGER = SyntheticModelSpec(arch="qwen2moe", n_layer=8, n_embd=512, n_head=8, n_head_kv=4,
                            n_expert=8, n_ff_exp=512, n_ff_shexp=512, seed=7)


def _device(tools: LlamaTools, backend: str) -> ToolDevice:
    listing = list_devices(tools)
    found = [d for d in listing.gpus if d.backend == backend and not d.software]
    if not found:
        pytest.skip(f"no {backend} GPU in the tools' device list (GPU backends: "
                    f"{', '.join(listing.backends) or 'none'}; `make gpu` on a machine with a "
                    f"GPU driver) {listing.error or ''}".strip())
    return found[0]


def _tools(llama_tools: LlamaTools, cpu_only: bool) -> LlamaTools:
    tools = LlamaTools(llama_tools.configured_dir)
    tools.placer = JobPlacer(tools, cpu_only=cpu_only)
    return tools


@pytest.mark.parametrize("backend", ["Vulkan", "CUDA"])
def test_the_app_places_the_model_on_a_real_gpu_and_matches_the_cpu(
        llama_tools: LlamaTools, backend: str, tmp_path: Path) -> None:
    device = _device(llama_tools, backend)
    larger = write_synthetic_model(tmp_path / "larger.gguf", LARGER)
    text = quick_eval_text()
    for model in (DEMO, larger):
        job = PerplexityJob(model=model, text=text, context=256, chunks=8,
                            options=RunOptions(threads=2))
        on_cpu = run_job(job, _tools(llama_tools, cpu_only=True))
        on_gpu = run_job(job, _tools(llama_tools, cpu_only=False))
        assert on_cpu.succeeded and on_gpu.succeeded, (on_cpu.message, on_gpu.message)
        placement = on_gpu.job.options.placement
        assert placement is not None and placement.verdict == "full GPU offload"
        assert device.name in placement.summary  # with several cards, each is named
        assert "offloaded" in on_gpu.log and f"using device {device.name}" in on_gpu.log
        ratio = float(on_gpu.results["ppl"]) / float(on_cpu.results["ppl"])
        assert abs(math.log(ratio)) <= 0.005, (on_gpu.results, on_cpu.results)
        if model == larger:
            # The measured speed-up (benchmarks/bench_gpu_offload.py gives the table): a
            # card that is not faster than two CPU threads on 127 MB of weights is not used.
            speedup = on_cpu.duration / max(on_gpu.duration, 1e-9)
            print(f"{device.summary()}: {speedup:.1f}x the CPU (2 threads)")
            assert speedup > 1.0
