"""The memory model against what llama.cpp itself reports.

Recorded logs (tests/logs):

* ``load_tiny_<arch>_c<ctx>_<kv>[_nofa|_np2].log``: ``llama-completion -m tiny-<arch>-f16.gguf
  -c <ctx> -n 1 -p hi --no-warmup -t 2 -v -fa on|off -ctk <kv> -ctv <kv> -fit off --seed 1``
  on the synthetic ``TINY_QWEN2MOE`` / ``TINY_QWEN3MOE`` (CPU build), with the per-tensor
  debug lines filtered out. ``_np2``: ``-np 2``.
* ``fit_params_<twin>_c8192_<kv>.log``: ``llama-fit-params -m <twin>.gguf -c 8192 -ctk <kv>
  -ctv <kv> --fit-print on -v`` on the BF16 shape twins (no allocation: it reads the header
  only), which prints the KV cache, recurrent state and compute buffer of the real model.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from apex_gui.core.fit.context_memory import (
    DEFAULT_MARGIN, ContextSettings, ModelGeometry, Placement, compute_buffer_bytes,
    kv_cache_estimate, kv_row_bytes, pad256, recurrent_state_bytes, swa_cells,
)
from apex_gui.core.fit.memory import estimate_memory, layer_devices, weight_table
from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.model import ModelInfo, open_model
from apex_gui.core.jobs.parsers import parse_fit_print, parse_load_log
from apex_gui.core.jobs.tools import child_environment

LOGS = Path(__file__).parent / "logs"
MiB = 2**20
KiB = 2**10

LOAD_LOG = re.compile(r"load_tiny_(?P<arch>qwen[23]moe)_c(?P<ctx>\d+)_(?P<kv>f16|q8_0)"
                      r"(?P<extra>_nofa|_np2)?\.log$")
LOAD_LOGS = sorted(p.name for p in LOGS.glob("load_tiny_*.log"))
FIT_LOGS = sorted(p.name for p in LOGS.glob("fit_params_*_c8192_*.log"))


def read_log(name: str) -> list[str]:
    return (LOGS / name).read_text(encoding="utf-8", errors="replace").splitlines()


def geometry_and_weights(model: ModelInfo):
    geom = ModelGeometry.from_model(model)
    return geom, weight_table({t.name: t.nbytes for t in model.tensors}, geom)


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelInfo]:
    folder = tmp_path_factory.mktemp("twins")
    names = ("qwen3.5-35b-a3b", "trinity-large-399b", "mistral-small-4-119b", "lfm2.5-8b-a1b",
             "qwen3-30b-a3b")
    return {name: open_model(write_shape_twin(folder / f"{name}.gguf", name)[0])
            for name in names}


# ----------------------------------------------------------------------------- the parser


def test_parser_reads_every_buffer_of_a_completion_log() -> None:
    found = parse_load_log(read_log("load_tiny_qwen2moe_c4096_f16.log"))
    assert found.n_ctx == 4096
    assert found.kv_mib == pytest.approx(4.0)
    assert (found.kv_cells, found.kv_layers, found.type_k, found.type_v) == (4096, 2, "f16", "f16")
    assert found.model_mib == {"CPU_Mapped": pytest.approx(4.77)}
    assert found.compute_mib == {"CPU": pytest.approx(9.52)}
    assert found.total_mib == pytest.approx(4.77 + 4.0 + 9.52, abs=0.02)


def test_parser_keeps_the_real_load_over_a_no_alloc_probe() -> None:
    lines = ["llama_kv_cache:        CPU KV buffer size =    12.00 MiB",
             "llama_kv_cache:        CPU KV buffer size =     0.00 MiB",
             "sched_reserve:      CUDA0 compute buffer size =   300.75 MiB",
             "llama_memory_recurrent:      CUDA0 RS buffer size =    62.81 MiB",
             "llama_context:  CUDA_Host  output buffer size =     0.95 MiB",
             "load_tensors:        CUDA0 model buffer size = 20480.50 MiB"]
    found = parse_load_log(lines)
    assert found.kv_buffer_mib == {"CPU": 12.0}
    assert found.compute_mib == {"CUDA0": 300.75}
    assert found.recurrent_mib == {"CUDA0": 62.81}
    assert found.output_mib == {"CUDA_Host": 0.95}
    assert found.model_mib == {"CUDA0": 20480.5}


def test_fit_print_table_is_parsed() -> None:
    table = parse_fit_print(read_log("fit_params_qwen3.5-35b-a3b_c8192_f16.log"))
    assert table == {"Host": (66152, 222, 513)}


# ----------------------------------------------------------------------------- synthetic models


@pytest.mark.parametrize("log_name", LOAD_LOGS)
def test_estimate_matches_llama_cpp_on_synthetic_models(
        log_name: str, tiny_qwen2moe: Path, tiny_qwen3moe: Path) -> None:
    match = LOAD_LOG.match(log_name)
    assert match, f"unexpected log name {log_name}"
    path = tiny_qwen2moe if match["arch"] == "qwen2moe" else tiny_qwen3moe
    geom, weights = geometry_and_weights(open_model(path))
    ctx = ContextSettings(n_ctx=int(match["ctx"]), type_k=match["kv"], type_v=match["kv"],
                          flash_attn=match["extra"] != "_nofa",
                          n_seq=2 if match["extra"] == "_np2" else 1)
    estimate = estimate_memory(geom, weights, ctx)  # no GPU: everything on the host
    measured = parse_load_log(read_log(log_name))

    kv_mib = estimate.kv.kv_bytes / MiB
    assert kv_mib == pytest.approx(measured.kv_mib, rel=0.02)
    assert estimate.host.compute / MiB == pytest.approx(sum(measured.compute_mib.values()),
                                                        rel=0.05)
    assert estimate.host.weights / MiB == pytest.approx(sum(measured.model_mib.values()),
                                                        rel=0.01)
    assert estimate.total / MiB == pytest.approx(measured.total_mib, rel=0.10)


def test_estimate_matches_a_live_llama_cpp_load(tiny_qwen3moe: Path, llama_tools) -> None:
    """One live run (about 0.3 s): a context and KV type no recorded log uses."""
    exe = llama_tools.path("fit-params").with_name("llama-completion")
    if not exe.exists():
        pytest.skip("llama-completion is not installed beside llama-fit-params")
    # llama.cpp's log worker thread is not drained at exit (ggml-org/llama.cpp#22142): a
    # run can end before its last lines are written. Run again until every figure is there.
    for _attempt in range(6):
        result = subprocess.run(
            [str(exe), "-m", str(tiny_qwen3moe), "-c", "3000", "-n", "1", "-p", "hi",
             "--no-warmup", "-t", "1", "-v", "-fa", "on", "-ctk", "q8_0", "-ctv", "q4_0",
             "-fit", "off", "--seed", "1"],
            capture_output=True, text=True, errors="replace", timeout=60,
            env=child_environment(), check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        measured = parse_load_log(result.stderr.splitlines())
        if measured.compute_mib and measured.model_mib and measured.kv_size_mib is not None:
            break
    else:
        pytest.fail("llama-completion never printed its complete load log in 6 runs")
    assert measured.kv_cells == 3072  # 3000 padded to 256
    geom, weights = geometry_and_weights(open_model(tiny_qwen3moe))
    estimate = estimate_memory(geom, weights, ContextSettings(n_ctx=3000, type_k="q8_0",
                                                              type_v="q4_0"))
    assert estimate.kv.kv_bytes / MiB == pytest.approx(measured.kv_mib, rel=0.02)
    assert estimate.total / MiB == pytest.approx(measured.total_mib, rel=0.10)


# ----------------------------------------------------------------------------- shape twins


@pytest.mark.parametrize("log_name", FIT_LOGS)
def test_estimate_matches_llama_fit_params_on_twins(log_name: str,
                                                    twins: dict[str, ModelInfo]) -> None:
    """Hybrid DeltaNet (Qwen3.5), SWA (Trinity), MLA (Mistral-4), short conv (LFM2)."""
    match = re.match(r"fit_params_(?P<twin>.+)_c8192_(?P<kv>f16|q8_0)\.log$", log_name)
    assert match
    geom, weights = geometry_and_weights(twins[match["twin"]])
    ctx = ContextSettings(n_ctx=8192, type_k=match["kv"], type_v=match["kv"])
    estimate = estimate_memory(geom, weights, ctx)
    lines = read_log(log_name)
    measured = parse_load_log(lines)
    kv_sizes = [float(m.group(1)) for line in lines
                if (m := re.search(r"llama_kv_cache: size =\s*([0-9.]+) MiB", line))]
    model_mib, context_mib, compute_mib = parse_fit_print(lines)["Host"]

    assert estimate.kv.kv_bytes / MiB == pytest.approx(sum(kv_sizes), rel=0.02)
    assert estimate.kv.state_bytes / MiB == pytest.approx(
        sum(measured.recurrent_mib.values()), rel=0.02, abs=0.01)
    assert estimate.host.weights / MiB == pytest.approx(model_mib, rel=0.001)
    assert (estimate.kv.kv_bytes + estimate.kv.state_bytes) / MiB == pytest.approx(
        context_mib, abs=1.0)
    assert estimate.host.compute / MiB == pytest.approx(compute_mib, rel=0.03)
    total = model_mib + context_mib + compute_mib
    assert estimate.total / MiB == pytest.approx(total, rel=0.10)


# ----------------------------------------------------------------------------- formulas


def test_pad_and_row_sizes() -> None:
    assert [pad256(n) for n in (1, 256, 257, 8192, 8193)] == [256, 256, 512, 8192, 8448]
    assert kv_row_bytes("f16", 128) == 256
    assert kv_row_bytes("q8_0", 128) == 4 * 34
    assert kv_row_bytes("q4_0", 64) == 2 * 18
    assert kv_row_bytes("q5_1", 32) == 24
    assert kv_row_bytes("iq4_nl", 32) == 18
    with pytest.raises(ValueError, match="multiple of 32"):
        kv_row_bytes("q8_0", 48)


def test_qwen3_30b_full_attention_is_96_kib_per_token(twins: dict[str, ModelInfo]) -> None:
    geom = ModelGeometry.from_model(twins["qwen3-30b-a3b"])
    kv = kv_cache_estimate(geom, ContextSettings(n_ctx=4096))
    assert kv.kv_bytes == 96 * KiB * 4096
    kv_q8 = kv_cache_estimate(geom, ContextSettings(n_ctx=4096, type_k="q8_0", type_v="q8_0"))
    assert kv_q8.kv_bytes == 48 * 2 * (4 * 128 // 32 * 34) * 4096


def test_qwen35_hybrid_layers(twins: dict[str, ModelInfo]) -> None:
    geom = ModelGeometry.from_model(twins["qwen3.5-35b-a3b"])
    assert len(geom.attention_layers) == 10 and len(geom.recurrent_layers) == 30
    assert geom.mtp_layers == frozenset({40})
    # DeltaNet: conv (4-1) * (4096 + 2*16*128) and state 128 * 4096, F32 per sequence
    assert (geom.n_embd_r, geom.n_embd_s) == (3 * (4096 + 2 * 16 * 128), 128 * 4096)
    one = recurrent_state_bytes(geom, ContextSettings(n_seq=1))
    assert recurrent_state_bytes(geom, ContextSettings(n_seq=4)) == 4 * one
    # state does not grow with context; KV does
    small = kv_cache_estimate(geom, ContextSettings(n_ctx=4096))
    big = kv_cache_estimate(geom, ContextSettings(n_ctx=65536))
    assert small.state_bytes == big.state_bytes and big.kv_bytes == 16 * small.kv_bytes
    # the MTP block's KV is counted only when speculative decoding uses it
    mtp = kv_cache_estimate(geom, ContextSettings(n_ctx=4096, use_mtp=True))
    assert mtp.kv_bytes == small.kv_bytes * 11 // 10
    assert mtp.state_bytes == small.state_bytes * 4  # 3 rollback snapshots per sequence


def test_sliding_window_cells(twins: dict[str, ModelInfo]) -> None:
    geom = ModelGeometry.from_model(twins["trinity-large-399b"])
    assert geom.n_swa == 4096 and len(geom.swa_layers) == 45
    assert swa_cells(geom, ContextSettings(n_ctx=8192)) == 4608  # 4096 + 512 ubatch
    assert swa_cells(geom, ContextSettings(n_ctx=2048)) == 2048
    assert swa_cells(geom, ContextSettings(n_ctx=8192, swa_full=True)) == 8192
    assert swa_cells(geom, ContextSettings(n_ctx=65536, n_seq=2, kv_unified=True)) == 8704  # 2 * 4096 + 512
    long = kv_cache_estimate(geom, ContextSettings(n_ctx=131072))
    assert long.cells_swa == 4608 and long.cells_full == 131072


def test_mla_cache_is_k_only(twins: dict[str, ModelInfo]) -> None:
    geom = ModelGeometry.from_model(twins["mistral-small-4-119b"])
    assert geom.is_mla
    kv = kv_cache_estimate(geom, ContextSettings(n_ctx=1024))
    assert sum(kv.v_bytes) == 0
    assert kv.k_bytes[0] == (256 + 64) * 2 * 1024  # kv_lora_rank + rope dims, one KV head


def test_parallel_streams_split_the_context(tiny_qwen3moe: Path) -> None:
    geom, _ = geometry_and_weights(open_model(tiny_qwen3moe))
    ctx = ContextSettings(n_ctx=5000, n_seq=3)
    assert ctx.n_ctx_padded == 5120 and ctx.cells_per_stream == 1792  # pad256(5120 / 3)
    kv = kv_cache_estimate(geom, ctx)
    assert kv.n_stream == 3
    assert kv.kv_bytes == 2 * 2 * 128 * 2 * 1792 * 3


def test_quantized_v_without_flash_attention_is_refused() -> None:
    with pytest.raises(ValueError, match="flash attention"):
        ContextSettings(type_v="q8_0", flash_attn=False)
    with pytest.raises(ValueError, match="unknown KV cache type"):
        ContextSettings(type_k="q3_k")


def test_compute_buffer_logits_live_on_the_output_device(twins: dict[str, ModelInfo]) -> None:
    geom = ModelGeometry.from_model(twins["qwen3.5-35b-a3b"])
    ctx = ContextSettings(n_ctx=8192)
    with_output = compute_buffer_bytes(geom, ctx, holds_output=True)
    without = compute_buffer_bytes(geom, ctx, holds_output=False)
    assert with_output - without > 400 * MiB  # 248320 vocab * 512 * 4 bytes of logits
    assert compute_buffer_bytes(geom, ContextSettings(n_ctx=8192, n_ubatch=256),
                                holds_output=True) < with_output


# ----------------------------------------------------------------------------- placement


def test_output_layer_is_offloaded_first_and_split_follows_free_memory() -> None:
    # 4 blocks + output = 5 offloadable layers
    assert layer_devices(4, 1, [1.0]) == [-1, -1, -1, -1, 0]
    assert layer_devices(4, 5, [1.0]) == [0, 0, 0, 0, 0]
    assert layer_devices(4, 3, [1.0]) == [-1, -1, 0, 0, 0]
    # two GPUs, the second with 3x the free memory: 5 * 1/4 -> 2 layers on GPU0
    assert layer_devices(4, 5, [8.0, 24.0]) == [0, 0, 1, 1, 1]
    assert layer_devices(4, 0, [1.0]) == [-1] * 5
    assert layer_devices(4, 5, []) == [-1] * 5


def test_weights_per_device_follow_llama_cpp_rules(twins: dict[str, ModelInfo]) -> None:
    model = twins["qwen3.5-35b-a3b"]
    geom, weights = geometry_and_weights(model)
    ctx = ContextSettings(n_ctx=4096)
    token_embd = model.tensor("token_embd.weight").nbytes
    mtp = sum(t.nbytes for t in model.tensors_in_layer(40))
    full = estimate_memory(geom, weights, ctx, [80 * 2**30])
    assert full.host.weights == token_embd  # token_embd stays on the CPU
    assert full.devices[0].weights == model.tensor_bytes - token_embd - mtp  # MTP not loaded
    with_mtp = estimate_memory(geom, weights, ContextSettings(n_ctx=4096, use_mtp=True),
                               [80 * 2**30])
    assert with_mtp.devices[0].weights == full.devices[0].weights + mtp

    experts_0_9 = sum(t.nbytes for t in model.tensors
                      if t.layer is not None and t.layer < 10 and "_exps" in t.name)
    moe = estimate_memory(geom, weights, ctx, [80 * 2**30], Placement(n_cpu_moe=10))
    assert moe.host.weights == token_embd + experts_0_9
    assert moe.devices[0].weights == full.devices[0].weights - experts_0_9
    # op offload: the largest CPU-resident expert tensor is copied to the GPU for prompts
    largest = max(t.nbytes for t in model.tensors
                  if t.layer is not None and t.layer < 10 and "_exps" in t.name)
    assert moe.devices[0].extra == largest

    two = estimate_memory(geom, weights, ctx, [40 * 2**30, 40 * 2**30])
    assert two.devices[0].layers == tuple(range(21))  # 42 layers (40 + MTP + output) / 2
    assert two.devices[1].compute > two.devices[0].compute  # logits on the output GPU
    assert sum(d.weights for d in two.devices) == full.devices[0].weights


def test_tied_output_is_copied_only_to_a_gpu(twins: dict[str, ModelInfo]) -> None:
    model = twins["lfm2.5-8b-a1b"]
    geom, weights = geometry_and_weights(model)
    token_embd = model.tensor("token_embd.weight").nbytes
    cpu = estimate_memory(geom, weights, ContextSettings())
    gpu = estimate_memory(geom, weights, ContextSettings(), [24 * 2**30])
    assert cpu.host.weights == model.tensor_bytes
    assert gpu.devices[0].weights + gpu.host.weights == model.tensor_bytes + token_embd


def test_mmproj_goes_to_the_first_gpu(twins: dict[str, ModelInfo]) -> None:
    geom, weights = geometry_and_weights(twins["qwen3-30b-a3b"])
    plain = estimate_memory(geom, weights, ContextSettings(), [40 * 2**30, 40 * 2**30])
    vision = estimate_memory(geom, weights, ContextSettings(), [40 * 2**30, 40 * 2**30],
                             mmproj_bytes=900 * MiB)
    assert vision.devices[0].total - plain.devices[0].total >= 900 * MiB
    assert vision.devices[1].total == plain.devices[1].total
    assert DEFAULT_MARGIN == 1024 * MiB
