"""The Vulkan backend, for real, without a GPU: Mesa's lavapipe (a Vulkan device on the CPU).

llama.cpp's own CI tests its Vulkan backend this way. With the backend built (`make gpu`) and
``mesa-vulkan-drivers`` installed these run in the default `make test`; elsewhere they are
skipped with the reason. ggml skips software devices unless GGML_VK_VISIBLE_DEVICES names
them, so the tests name it: the app's own runs never put work on lavapipe by themselves.

Tolerances, measured on this project's machine (Mesa 22.3.6 lavapipe against the portable CPU
build, the bundled demo at context 128, 4 chunks): perplexity 5.6713 on Vulkan against
5.6758 on the CPU (ln ratio -0.00078 ± 0.00063), mean KLD 0.000061 ± 0.000017 (max 0.0033),
same top token 99.2%. Two CPU runs differ by a mean KLD of 0.000001. The limits are about
five times the measured differences, and still below what one quantization step costs on
this model (Q6_K's mean KLD is 0.00064): a Vulkan result as wrong as a quantization would fail.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from apex_gui.core.fit.job_placement import JobPlacer
from apex_gui.core.fixtures.bundled_demo import TRAINED_DEMO_NAME
from apex_gui.core.jobs.calibration import quick_eval_text
from apex_gui.core.jobs.devices import (
    VULKAN_VISIBLE_ENV, ToolDevice, gpu_backends_in, list_devices,
)
from apex_gui.core.jobs.evaluations import KLDivergenceJob, PerplexityJob, ReferenceLogitsJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.runner import run_job
from apex_gui.core.jobs.tools import LlamaTools

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo" / TRAINED_DEMO_NAME
CONTEXT = 128
CHUNKS = 4
MAX_LN_PPL_RATIO = 0.005
MAX_MEAN_KLD = 3e-4
MIN_SAME_TOP_P = 97.0
TWO_THREADS = RunOptions(threads=2)


@pytest.fixture(scope="module")
def lavapipe(llama_tools: LlamaTools) -> ToolDevice:
    """The software Vulkan device the tools see when asked, or a skip naming what is missing."""
    folder = llama_tools.path("perplexity").parent
    if "vulkan" not in gpu_backends_in(folder):
        pytest.skip(f"no Vulkan backend beside the tools in {folder}: `make gpu` builds it "
                    "(needs glslc libvulkan-dev spirv-headers)")
    listing = list_devices(llama_tools, base_env={**os.environ, VULKAN_VISIBLE_ENV: "0"})
    device = next((d for d in listing.devices if d.backend == "Vulkan" and d.software), None)
    if device is None:
        pytest.skip("no software Vulkan device: sudo apt-get install mesa-vulkan-drivers "
                    f"({listing.error or 'the tools list ' + str([d.name for d in listing.devices])})")
    return device


def _tools(llama_tools: LlamaTools, cpu_only: bool) -> LlamaTools:
    tools = LlamaTools(llama_tools.configured_dir)
    tools.placer = JobPlacer(tools, cpu_only=cpu_only)
    return tools


def test_the_tools_list_lavapipe_as_a_device_they_do_not_use(llama_tools: LlamaTools,
                                                             lavapipe: ToolDevice,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VULKAN_VISIBLE_ENV, raising=False)
    listing = list_devices(llama_tools)
    assert "vulkan" in listing.backends
    assert listing.gpus == ()  # skipped by default: a job is never placed on it unasked
    assert [d.name for d in listing.hidden_software] == [lavapipe.name]
    assert any("llvmpipe" in line and "not used" in line for line in listing.lines())


def test_demo_perplexity_and_kl_with_full_offload_on_lavapipe_match_the_cpu(
        llama_tools: LlamaTools, lavapipe: ToolDevice, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VULKAN_VISIBLE_ENV, "0")
    text = quick_eval_text()
    cpu, vulkan = _tools(llama_tools, cpu_only=True), _tools(llama_tools, cpu_only=False)
    reference = run_job(ReferenceLogitsJob(model=DEMO, text=text, context=CONTEXT,
                                           chunks=CHUNKS, options=TWO_THREADS,
                                           output_path=tmp_path / "demo.kld"), cpu)
    assert reference.succeeded, reference.message
    assert reference.job.options.placement is not None and reference.job.options.placement.cpu_only
    cpu_ppl = float(reference.results["ppl"])

    store = RunStore(tmp_path / "runs.sqlite")
    perplexity = run_job(PerplexityJob(model=DEMO, text=text, context=CONTEXT, chunks=CHUNKS,
                                       options=TWO_THREADS), vulkan, store)
    assert perplexity.succeeded, perplexity.message
    # The run history keeps the plan and what the tool reported using.
    record = store.runs(kind="perplexity")[0]
    assert record.spec["placement"]["verdict"] == "full GPU offload"
    assert record.results["devices_used"] == [f"{lavapipe.name} ({lavapipe.description})"]
    assert record.results["layers_offloaded"] == "13/13"
    store.close()
    placement = perplexity.job.options.placement
    assert placement is not None
    assert placement.summary.startswith(f"full GPU offload on {lavapipe.name} (llvmpipe")
    # The tool's own log names the device it used and what it offloaded.
    assert f"using device {lavapipe.name} (llvmpipe" in perplexity.log
    assert "offloaded 13/13 layers to GPU" in perplexity.log
    assert f"{lavapipe.name} model buffer size" in perplexity.log
    vulkan_ppl = float(perplexity.results["ppl"])
    assert abs(math.log(vulkan_ppl / cpu_ppl)) <= MAX_LN_PPL_RATIO, (vulkan_ppl, cpu_ppl)

    kld = run_job(KLDivergenceJob(model=DEMO, reference_logits=tmp_path / "demo.kld",
                                  context=CONTEXT, chunks=CHUNKS, options=TWO_THREADS), vulkan)
    assert kld.succeeded, kld.message
    assert "using device Vulkan0 (llvmpipe" in kld.log
    assert kld.results["kld_mean"] <= MAX_MEAN_KLD, kld.results
    assert abs(kld.results["ln_ppl_ratio"]) <= MAX_LN_PPL_RATIO, kld.results
    assert kld.results["same_top_p"] >= MIN_SAME_TOP_P, kld.results
    assert kld.results["ppl"] == pytest.approx(vulkan_ppl, rel=1e-4)


def test_tools_check_runs_perplexity_on_the_device(llama_tools: LlamaTools,
                                                   lavapipe: ToolDevice,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from apex_gui.core.jobs.tools_check import run_tools_check

    monkeypatch.setenv(VULKAN_VISIBLE_ENV, "0")
    report = run_tools_check(llama_tools, keep=False)
    device = next(c for c in report.checks if c.tool == lavapipe.name)
    assert device.working, device.detail
    assert "perplexity with every layer on it" in device.detail and "on the CPU" in device.detail
