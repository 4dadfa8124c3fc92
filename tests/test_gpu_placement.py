"""Jobs placed on the devices by the memory model that makes the recommendation.

The device list is what the tools print (recorded ``--list-devices`` output); the placement
of a model file must be the recommendation's verdict and flags for that file on those
devices; a job carries it to its command line and into the run history; a run that runs out
of GPU memory is run again on the CPU. Real tools run on the CPU-only build here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from apex_gui.core.fit.context_memory import ContextSettings, ModelGeometry
from apex_gui.core.fit.job_placement import JobPlacer, _as_gpu, job_context, place_model
from apex_gui.core.fit.placement import MachineMemory
from apex_gui.core.fit.recommend import file_candidate, recommend
from apex_gui.core.jobs.calibration import quick_eval_text
from apex_gui.core.jobs.device_placement import (
    CPU_ONLY, DevicePlacement, gpu_out_of_memory, parse_device_use,
)
from apex_gui.core.jobs.devices import DeviceListing, ToolDevice, parse_device_list
from apex_gui.core.jobs.evaluations import PerplexityJob
from apex_gui.core.jobs.quantize import QuantizeJob
from apex_gui.core.jobs.run_options import RunOptions
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.jobs.runner import JobOutcome, JobStatus, crash_retry_for, run_job
from apex_gui.core.jobs.tools import LlamaTools

LOGS = Path(__file__).parent / "logs"
GiB = 1024 ** 3
RAM = 512 * GiB


def _listing(*devices: ToolDevice, backends: tuple[str, ...] = ("vulkan",)) -> DeviceListing:
    return DeviceListing(Path("/tools"), backends, devices)


def _card(name: str, free_gib: float, description: str = "NVIDIA GeForce RTX 4090") -> ToolDevice:
    return ToolDevice(name, description, 24 * GiB, int(free_gib * GiB))


def test_the_device_list_is_read_as_the_tools_print_it() -> None:
    lavapipe = parse_device_list((LOGS / "list_devices_lavapipe.txt").read_text())
    assert [(d.name, d.backend, d.software) for d in lavapipe] == [("Vulkan0", "Vulkan", True)]
    assert lavapipe[0].description == "llvmpipe (LLVM 15.0.6, 256 bits)"
    assert lavapipe[0].free_bytes == 2048 * 1024 * 1024
    assert parse_device_list((LOGS / "list_devices_none.txt").read_text()) == []
    rpc = parse_device_list((LOGS / "rpc_list_devices_two.log").read_text())
    assert [d.backend for d in rpc] == ["RPC", "RPC"]
    assert _listing(*rpc).gpus == ()  # workers are planned from their probes, not as local GPUs


@pytest.mark.parametrize("free_gib", [80.0, 24.0, 12.0])
def test_a_job_is_placed_as_the_recommendation_places_the_file(twin_model, free_gib: float) -> None:
    """The flags of the job's placement are the recommendation's flags for the same file,
    devices and context: one memory model decides both."""
    device = ToolDevice("Vulkan0", "AMD Radeon PRO W7900", int(free_gib * GiB),
                        int(free_gib * GiB))
    ctx = ContextSettings(n_ctx=4096, flash_attn=False)
    placed = place_model(twin_model.path, _listing(device), ctx, ram_available=RAM)
    machine = MachineMemory((_as_gpu(device, 0),), RAM)
    advice = recommend(ModelGeometry.from_model(twin_model), [file_candidate(twin_model)],
                       machine, ctx)
    assert advice.recommended is not None
    assert placed.verdict == advice.recommended.verdict.value
    assert placed.flags_text() == advice.recommended.flags
    assert advice.recommended.flags in placed.summary and "Vulkan0" in placed.summary
    assert placed.tool_args("imatrix")[-2:] == ["-lv", "4"]  # the log names the devices
    if free_gib == 80.0:
        assert placed.summary.startswith("full GPU offload on Vulkan0")
    else:
        assert not placed.summary.startswith("full GPU")  # 65 GB of BF16 weights


@pytest.mark.parametrize("free_gib", [(40.0, 40.0), (30.0, 12.0)])
def test_two_cards_are_placed_as_the_recommendation_places_them(
        twin_model, free_gib: tuple[float, float]) -> None:
    devices = (_card("CUDA0", free_gib[0]), _card("CUDA1", free_gib[1]))
    ctx = ContextSettings(n_ctx=4096, flash_attn=False)
    placed = place_model(twin_model.path, _listing(*devices, backends=("cuda",)), ctx,
                         ram_available=RAM)
    machine = MachineMemory(tuple(_as_gpu(d, i) for i, d in enumerate(devices)), RAM)
    advice = recommend(ModelGeometry.from_model(twin_model), [file_candidate(twin_model)],
                       machine, ctx)
    assert placed.flags_text() == advice.recommended.flags
    assert placed.verdict == advice.recommended.verdict.value
    assert "CUDA0" in placed.summary and "CUDA1" in placed.summary


def test_a_cuda_card_is_not_also_used_through_vulkan(twin_model) -> None:
    """A card with both backends is listed twice; one process must use one view of it."""
    listing = _listing(_card("CUDA0", 80.0), _card("Vulkan0", 80.0),
                       backends=("vulkan", "cuda"))
    placed = place_model(twin_model.path, listing, ContextSettings(n_ctx=4096), ram_available=RAM)
    assert placed.devices == ("CUDA0",)
    assert placed.tool_args("perplexity")[:2] == ["--device", "CUDA0"]


def test_nothing_fits_runs_on_the_cpu_and_says_so(twin_model) -> None:
    device = ToolDevice("Vulkan0", "Intel Arc A380", 6 * GiB, 2 * GiB)
    placed = place_model(twin_model.path, _listing(device), ContextSettings(n_ctx=4096),
                         ram_available=8 * GiB)
    assert placed.cpu_only and "does not fit" in placed.summary
    assert placed.tool_args("perplexity") == ["--device", "none", "-ngl", "0"]


def test_placement_flags_per_tool_and_round_trip() -> None:
    placement = DevicePlacement(devices=("CUDA0", "CUDA1"), gpu_layers=999, n_cpu_moe=12,
                                tensor_split=(20.0, 21.0), verdict="routed experts in system RAM",
                                summary="routed experts ...", env=(("A", "1"),))
    assert placement.tool_args("perplexity") == [
        "--device", "CUDA0,CUDA1", "-ngl", "999", "--n-cpu-moe", "12", "-ts", "20,21",
        "-lv", "4"]
    assert placement.tool_args("bench") == [
        "-dev", "CUDA0/CUDA1", "-ngl", "999", "-ncmoe", "12", "-ts", "20/21"]
    assert placement.tool_args("quantize") == [] and placement.tool_args("gguf-split") == []
    assert DevicePlacement.from_dict(placement.to_dict()) == placement
    # Carried by the run options, flat in the run history's job description.
    options = RunOptions(threads=2, placement=placement)
    assert options.tool_args("perplexity")[:2] == ["-t", "2"]
    assert options.tool_args("perplexity")[2:] == placement.tool_args("perplexity")
    assert RunOptions.from_fields(options.to_fields()) == options
    assert RunOptions(cpu_only=True).tool_args("imatrix") == ["--device", "none", "-ngl", "0"]
    assert RunOptions(cpu_only=True).tool_args("quantize") == []
    assert CPU_ONLY.tool_args("bench") == ["-dev", "none", "-ngl", "0"]
    assert DevicePlacement(cpu_moe=True, gpu_layers=999).flags_text() == "-ngl 999 --cpu-moe"


def test_job_context_counts_the_sequences_perplexity_evaluates_at_once(tmp_path: Path) -> None:
    job = PerplexityJob(model=tmp_path / "m.gguf", text=tmp_path / "t.txt", context=512)
    assert job_context(job).n_ctx == 2048 and job_context(job).n_seq == 4


def test_the_placer_gives_cpu_only_and_leaves_quantize_alone(tiny_qwen2moe: Path,
                                                             tmp_path: Path) -> None:
    cards = _listing(_card("Vulkan0", 20.0))
    job = PerplexityJob(model=tiny_qwen2moe, text=tmp_path / "t.txt", context=128)
    placed = JobPlacer(None, list_devices=lambda _tools: cards)(job).options.placement
    assert placed is not None and placed.summary.startswith("full GPU")
    cpu = JobPlacer(None, cpu_only=True, list_devices=lambda _tools: cards)(job)
    assert cpu.options.placement.cpu_only and "--cpu-only" in cpu.options.placement.summary
    asked = job.with_options(RunOptions(cpu_only=True))  # the setting, through RunOptions
    assert JobPlacer(None, list_devices=lambda _tools: cards)(asked).options.placement.cpu_only
    none = JobPlacer(None, list_devices=lambda _tools: _listing(backends=()))(job)
    assert none.options.placement.cpu_only and "make gpu" in none.options.placement.summary
    quantize = QuantizeJob(source=tiny_qwen2moe, output_path=tmp_path / "q.gguf",
                           base_type="Q4_K_M")
    assert JobPlacer(None, list_devices=lambda _tools: cards)(quantize) is quantize
    # A job placed by hand keeps its placement.
    kept = JobPlacer(None, list_devices=lambda _tools: cards)(cpu)
    assert kept.options.placement == cpu.options.placement


def test_out_of_gpu_memory_runs_again_on_the_cpu(tmp_path: Path) -> None:
    # What ggml-vulkan and ggml-cuda print when an allocation fails.
    vulkan = ("ggml_vulkan: Device memory allocation of size 4294967296 failed.\n"
              "ggml_vulkan: vk::Device::allocateMemory: ErrorOutOfDeviceMemory\n"
              "llama_model_load: error loading model: unable to allocate Vulkan0 buffer\n")
    cuda = "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 20480.00 MiB on device 0: " \
           "cudaMalloc failed: out of memory\n"
    assert gpu_out_of_memory(vulkan) and gpu_out_of_memory(cuda)
    assert not gpu_out_of_memory("error: failed to open model\n")
    placement = DevicePlacement(gpu_layers=999, verdict="full GPU offload",
                                summary="full GPU offload on Vulkan0 (-ngl 999)")
    job = PerplexityJob(model=tmp_path / "m.gguf", text=tmp_path / "t.txt",
                        options=RunOptions(placement=placement))
    failed = JobOutcome(job, JobStatus.FAILED, "llama-perplexity failed", exit_code=1, log=vulkan)
    retry = crash_retry_for(failed, LlamaTools())
    assert retry is not None
    again, note = retry
    assert again.options.placement.cpu_only and "out of memory" in note and "-ngl 999" in note
    assert crash_retry_for(JobOutcome(again, JobStatus.FAILED, "x", exit_code=1, log=vulkan),
                           LlamaTools()) is None  # on the CPU: nothing left to give up


def test_a_placed_run_records_its_devices(llama_tools: LlamaTools, tiny_qwen2moe: Path,
                                          tmp_path: Path) -> None:
    """A real run through the runner: the placement is on the command line, in the run
    history's job description and in what the outcome reports."""
    tools = LlamaTools(llama_tools.configured_dir)
    tools.placer = JobPlacer(tools, cpu_only=True)
    job = PerplexityJob(model=tiny_qwen2moe, text=quick_eval_text(), context=128, chunks=2,
                        options=RunOptions(threads=2))
    store = RunStore(tmp_path / "runs.sqlite")
    outcome = run_job(job, tools, store)
    assert outcome.succeeded, outcome.message
    assert outcome.job.options.placement is not None and outcome.job.options.placement.cpu_only
    run = store.runs(kind="perplexity")[0]
    assert run.spec["placement"]["summary"].startswith("CPU only")
    assert run.argv[-4:] == ["--device", "none", "-ngl", "0"]


def test_the_log_of_an_offloaded_run_says_where_it_ran() -> None:
    """A real llama-perplexity log at -lv 4 (the demo on lavapipe, full offload)."""
    use = parse_device_use((LOGS / "perplexity_vulkan_lavapipe.log").read_text())
    assert use.devices == ("Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits))",)
    assert (use.layers_offloaded, use.layers_total) == (13, 13)
    assert dict(use.model_mib) == {"CPU_Mapped": 0.13, "Vulkan0": 10.73}
    assert use.to_results()["layers_offloaded"] == "13/13"
    assert parse_device_use((LOGS / "perplexity.log").read_text()).to_results() == {}
