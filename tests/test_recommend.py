"""The verdict ladder, the recommended tier and the CLI, on shape twins and synthetic models.

The Qwen3.5-35B-A3B card asks ~13 GB (Mini), ~17 GB (Compact), ~22 GB (Quality) and ~24 GB
(Balanced) of VRAM for full offload; the Trinity-Large card 2x H100 for Compact (169 GB),
3x H100 for Quality (219 GB) and 4x H100 for Balanced (267 GB). These tests record what the
memory model makes of that at context 8192 (f16 KV, one sequence, 1 GiB margin per GPU).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pynvml
import pytest

from apex_gui.commands import recommend as recommend_command
from apex_gui.core.fit.context_memory import ContextSettings, ModelGeometry
from apex_gui.core.fit.device_spec import parse_device_spec
from apex_gui.core.fit.hardware import NvmlMemory, snapshot
from apex_gui.core.fit.recommend import evaluate, file_candidate, profile_candidates, recommend
from apex_gui.core.fit.placement import Candidate, Headroom, MachineMemory, Verdict
from apex_gui.core.fixtures.twins import write_mmproj_twin, write_shape_twin
from apex_gui.core.gguf.model import ModelInfo, open_model
from apex_gui.core.units import GiB
from fakes import FakeGpu, FakeNvml, nvml_error  # the injected-NVML pattern

GB = 10**9
CTX = ContextSettings(n_ctx=8192)
PLENTY_RAM = 512 * GB


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelInfo, list[Candidate]]:
    path = write_shape_twin(tmp_path_factory.mktemp("q35") / "Qwen3.5-35B-A3B-BF16.gguf",
                            "qwen3.5-35b-a3b")[0]
    model = open_model(path)
    return model, profile_candidates(model)


@pytest.fixture(scope="module")
def trinity(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelInfo, list[Candidate]]:
    path = write_shape_twin(tmp_path_factory.mktemp("trinity") / "Trinity-Large-BF16.gguf",
                            "trinity-large-399b")[0]
    model = open_model(path)
    return model, profile_candidates(model)


def machine(spec: str, ram: int = PLENTY_RAM) -> MachineMemory:
    return MachineMemory(tuple(parse_device_spec(spec)), ram)


def table(rec) -> dict[str, tuple[Verdict, str]]:
    return {r.candidate.key: (r.verdict, r.flags) for r in rec.results}


def full(rec) -> set[str]:
    return {r.candidate.key for r in rec.results if r.verdict is Verdict.FULL_GPU}


# ----------------------------------------------------------------------------- Qwen3.5 card


def test_qwen35_on_16_gb_only_mini_and_smaller_fit_fully(qwen35) -> None:
    model, candidates = qwen35
    rec = recommend(ModelGeometry.from_model(model), candidates, machine("RTX 4060 Ti 16GB"), CTX)
    assert full(rec) == {"mini", "i-mini", "nano", "i-nano", "micro", "i-micro"}
    # Mini fits fully, but its IQ2_S experts need an importance matrix: the star goes to the
    # best tier without one (Balanced, published KL 0.0088) with its experts in RAM.
    assert rec.recommended is not None and rec.recommended.candidate.key == "balanced"
    assert rec.recommended.verdict is Verdict.EXPERTS_IN_RAM
    mini = next(r for r in rec.results if r.candidate.key == "mini")
    assert mini.headroom is Headroom.COMFORTABLE
    # card: "~13 GB VRAM": the GPU holds ~13 GiB (the file minus token_embd and MTP, plus
    # KV, DeltaNet state and the logits buffer)
    assert 12.5 * GiB < mini.estimate.devices[0].total < 13.5 * GiB
    assert mini.command == ("llama-server", "-m", str(model.path.parent /
                                                      "Qwen3.5-35B-A3B-APEX-Mini.gguf"),
                            "-c", "8192", "-ngl", "999", "-ctk", "f16", "-ctv", "f16",
                            "-fa", "on", "-np", "1")
    # Compact (card: ~17 GB) just misses a 16 GiB card: two blocks' experts go to RAM
    verdict, flags = table(rec)["compact"]
    assert verdict is Verdict.EXPERTS_IN_RAM and flags.startswith("-ngl 999 --n-cpu-moe ")
    assert int(flags.split()[-1]) <= 4


def test_qwen35_on_24_gb_quality_and_compact_fit(qwen35) -> None:
    model, candidates = qwen35
    geom = ModelGeometry.from_model(model)
    rec = recommend(geom, candidates, machine("RTX 4090 24GB"), CTX)
    assert {"quality", "i-quality", "compact", "i-compact", "mini"} <= full(rec)
    assert rec.recommended is not None and rec.recommended.candidate.key == "quality"
    quality = rec.recommended
    assert 21 * GiB < quality.estimate.devices[0].total < 22 * GiB  # card: ~22 GB
    # Balanced (card: ~24 GB) needs 23.9 GiB + the 1 GiB margin: not on a 24 GiB card
    balanced = next(r for r in rec.results if r.candidate.key == "balanced")
    assert 23.5 * GiB < evaluate(geom, balanced.candidate, machine("RTX 5090 32GB"),
                                 CTX).estimate.devices[0].total < 24.5 * GiB
    assert balanced.verdict is Verdict.EXPERTS_IN_RAM
    assert balanced.placement.n_cpu_moe <= 3
    # on 32 GB everything fits fully
    assert full(recommend(geom, candidates, machine("RTX 5090 32GB"), CTX)) == {
        c.key for c in candidates}


def test_qwen35_max_context_and_kv_type(qwen35) -> None:
    model, candidates = qwen35
    geom = ModelGeometry.from_model(model)
    mini = next(c for c in candidates if c.key == "mini")
    f16 = evaluate(geom, mini, machine("RTX 4060 Ti 16GB"), CTX)
    q8 = evaluate(geom, mini, machine("RTX 4060 Ti 16GB"),
                  ContextSettings(n_ctx=8192, type_k="q8_0", type_v="q8_0"))
    assert f16.max_context is not None and q8.max_context is not None
    assert f16.max_context % 256 == 0 and 8192 <= f16.max_context < q8.max_context
    assert q8.max_context <= model.context_length
    assert ("-ctk", "q8_0") == q8.command[q8.command.index("-ctk"):][:2]
    # one step past the maximum no longer fits
    beyond = evaluate(geom, mini, machine("RTX 4060 Ti 16GB"),
                      ContextSettings(n_ctx=f16.max_context + 256))
    assert beyond.verdict is not Verdict.FULL_GPU


def test_mmproj_and_mtp_cost_memory_and_appear_in_the_command(qwen35, tmp_path: Path) -> None:
    model, candidates = qwen35
    geom = ModelGeometry.from_model(model)
    mmproj = write_mmproj_twin(tmp_path / "mmproj-F16.gguf")
    mmproj_bytes = open_model(mmproj).tensor_bytes
    mini = next(c for c in candidates if c.key == "mini")
    plain = evaluate(geom, mini, machine("RTX 4060 Ti 16GB"), CTX)
    vision = evaluate(geom, mini, machine("RTX 4060 Ti 16GB"), CTX,
                      mmproj_bytes=mmproj_bytes, mmproj_path=str(mmproj))
    assert vision.command[-2:] == ("--mmproj", str(mmproj))
    assert vision.headroom_bytes < plain.headroom_bytes - mmproj_bytes
    mtp = evaluate(geom, mini, machine("RTX 4060 Ti 16GB"), replace(CTX, use_mtp=True))
    assert mtp.command[-2:] == ("--spec-type", "draft-mtp")
    assert mtp.headroom_bytes < plain.headroom_bytes


# ----------------------------------------------------------------------------- Trinity card


def test_trinity_multi_gpu_guidance(trinity) -> None:
    model, candidates = trinity
    geom = ModelGeometry.from_model(model)
    three = recommend(geom, candidates, machine("3 x H100 80GB"), CTX)
    # Quality (219 GiB) fits 3x H100 only with a byte-balanced split: llama.cpp's default
    # split counts layers, and the 6 small dense blocks leave the last GPU overfull.
    quality = three.results[0]
    assert quality.candidate.key == "quality" and quality.verdict is Verdict.FULL_GPU
    assert quality.placement.tensor_split is not None
    assert sum(quality.placement.tensor_split) == geom.n_layer_all + 1
    assert "-ts" in quality.command
    assert three.recommended is quality
    assert table(three)["balanced"][0] is Verdict.EXPERTS_IN_RAM
    # Balanced (261 GiB) needs 4x H100
    four = recommend(geom, candidates, machine("4 x H100 80GB"), CTX)
    assert {"quality", "balanced", "compact"} <= full(four)
    # Compact (166 GiB) cannot be fully on 2x H100 (160 GiB) despite the card's
    # "2x H100 80GB": most of its experts stay on the GPUs, some go to RAM.
    two = recommend(geom, candidates, machine("2 x H100 80GB"), CTX)
    compact = next(r for r in two.results if r.candidate.key == "compact")
    assert compact.verdict is Verdict.EXPERTS_IN_RAM
    assert 0 < compact.placement.n_cpu_moe < 20
    # Mini would fit fully but needs an importance matrix: the first tier, with experts in RAM.
    assert two.recommended is not None and two.recommended.candidate.key == "quality"
    assert two.recommended.verdict is Verdict.EXPERTS_IN_RAM


def test_trinity_experts_in_ram_needs_the_ram(trinity) -> None:
    model, candidates = trinity
    geom = ModelGeometry.from_model(model)
    compact = next(c for c in candidates if c.key == "compact")
    ok = evaluate(geom, compact, machine("2 x H100 80GB", ram=256 * GB), CTX)
    assert ok.verdict is Verdict.EXPERTS_IN_RAM
    starved = evaluate(geom, compact, machine("2 x H100 80GB", ram=4 * GB), CTX)
    assert starved.verdict is Verdict.DOES_NOT_FIT and starved.max_context is None
    assert "smaller tier" in starved.notes[0]


# ----------------------------------------------------------------------------- small machines


def test_cpu_only_checks_system_ram(tiny_qwen3moe: Path) -> None:
    model = open_model(tiny_qwen3moe)
    geom = ModelGeometry.from_model(model)
    candidate = file_candidate(model)
    rec = recommend(geom, [candidate], MachineMemory((), 8 * GB), ContextSettings(n_ctx=2048))
    only = rec.recommended
    assert only is not None and only.verdict is Verdict.CPU_ONLY
    assert only.command[only.command.index("-ngl") + 1] == "0"
    assert only.max_context == model.context_length
    assert any("CPU only" in note for note in rec.notes)
    tiny_ram = recommend(geom, [candidate], MachineMemory((), 10 * 2**20),
                         ContextSettings(n_ctx=2048))
    assert tiny_ram.recommended is None
    assert tiny_ram.results[0].verdict is Verdict.DOES_NOT_FIT
    assert tiny_ram.results[0].headroom is Headroom.NONE


def test_partial_offload_when_experts_cannot_move(tiny_qwen3moe: Path) -> None:
    model = open_model(tiny_qwen3moe)
    geom = ModelGeometry.from_model(model)
    dense = Candidate("dense", "dense", {t.name.replace("_exps", "_big"): t.nbytes
                                         for t in model.tensors}, model.file_size, "m.gguf")
    gpu = replace(parse_device_spec("1 GB")[0], free_bytes=2 * 2**20 + 7 * 2**20,
                  total_bytes=16 * 2**20)
    result = evaluate(geom, dense, MachineMemory((gpu,), 8 * GB), ContextSettings(n_ctx=512),
                      margin=2 * 2**20)
    assert result.verdict is Verdict.PARTIAL
    assert 1 <= result.placement.n_gpu_layers <= geom.n_layer_all
    assert result.command[result.command.index("-ngl") + 1] == str(result.placement.n_gpu_layers)


def test_headroom_bands(qwen35) -> None:
    model, candidates = qwen35
    geom = ModelGeometry.from_model(model)
    quality = candidates[0]
    need = evaluate(geom, quality, machine("H100 80GB"), CTX).estimate.devices[0].total
    for free, band in ((need + 10 * GiB, Headroom.COMFORTABLE),
                       (need + 1024 * 2**20 + 10 * 2**20, Headroom.TIGHT),
                       (need + 100 * 2**20, None)):
        gpu = replace(parse_device_spec("H100 80GB")[0], free_bytes=free)
        result = evaluate(geom, quality, MachineMemory((gpu,), PLENTY_RAM), CTX)
        if band is None:
            assert result.verdict is not Verdict.FULL_GPU
        else:
            assert result.verdict is Verdict.FULL_GPU and result.headroom is band
            assert result.headroom_bytes == free - need


# ----------------------------------------------------------------------------- probed devices


def _fake_snapshot(gpus: list[FakeGpu], tmp_path: Path, ram_gib: int = 64):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: {ram_gib * 2**20} kB\nMemAvailable: {ram_gib * 2**20} kB\n")
    return snapshot(FakeNvml(gpus=gpus), meminfo_path=meminfo)


def test_two_probed_gpus_split_by_free_memory(qwen35, tmp_path: Path) -> None:
    model, candidates = qwen35
    snap = _fake_snapshot([
        FakeGpu("NVIDIA GeForce RTX 3090", "GPU-a", memory=NvmlMemory(24 * GiB, 23 * GiB, GiB)),
        FakeGpu("NVIDIA GeForce RTX 3090", "GPU-b", "00000000:02:00.0",
                memory=NvmlMemory(24 * GiB, 12 * GiB, 12 * GiB)),
    ], tmp_path)
    rec = recommend(ModelGeometry.from_model(model), candidates,
                    MachineMemory.from_snapshot(snap), CTX)
    balanced = next(r for r in rec.results if r.candidate.key == "balanced")
    assert balanced.verdict is Verdict.FULL_GPU  # 35 GiB free together
    a, b = balanced.estimate.devices
    assert len(a.layers) > len(b.layers)  # the freer GPU takes more layers
    # Balanced fits comfortably and its published KL mean (0.0088) is below Quality's.
    assert rec.recommended is not None and rec.recommended.candidate.key == "balanced"


def test_mig_instance_is_planned_on_its_own_memory(qwen35, tmp_path: Path) -> None:
    model, candidates = qwen35
    mig = FakeGpu("NVIDIA A100 MIG 3g.40gb", "MIG-1", memory=NvmlMemory(40 * GiB, 39 * GiB, GiB))
    parent = FakeGpu("NVIDIA A100 80GB", "GPU-p", memory=NvmlMemory(80 * GiB, 80 * GiB, 0),
                     mig_mode=(1, 1), mig_slots=[mig, None])
    snap = _fake_snapshot([parent], tmp_path)
    assert [g.name for g in snap.gpus] == ["NVIDIA A100 MIG 3g.40gb"]
    rec = recommend(ModelGeometry.from_model(model), candidates,
                    MachineMemory.from_snapshot(snap), CTX)
    assert rec.recommended is not None and rec.recommended.candidate.key == "balanced"
    assert all(d.name == "NVIDIA A100 MIG 3g.40gb" for d in rec.recommended.estimate.devices)


def test_unified_memory_counts_the_host_share_once(qwen35, tmp_path: Path) -> None:
    model, candidates = qwen35
    gb10 = FakeGpu("NVIDIA GB10", "GPU-spark",
                   memory=nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED))
    snap = _fake_snapshot([gb10], tmp_path, ram_gib=24)
    assert snap.gpus[0].unified_memory
    memory = MachineMemory.from_snapshot(snap)
    rec = recommend(ModelGeometry.from_model(model), candidates, memory, CTX)
    mini = next(r for r in rec.results if r.candidate.key == "mini")
    assert mini.verdict is Verdict.FULL_GPU
    # token_embd (host) is charged to the same 24 GiB pool
    assert mini.headroom_bytes == (24 * GiB - mini.estimate.devices[0].total
                                   - mini.estimate.host.total)
    assert rec.recommended is not None and rec.recommended.candidate.key == "quality"


# ----------------------------------------------------------------------------- CLI


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="apex-studio")
    recommend_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_recommend_table_and_json(qwen35, capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = qwen35
    assert run_cli(["recommend", str(model.path), "--vram", "24GiB", "--ram", "64GB",
                    "--ctx", "8192"]) == 0
    out = capsys.readouterr().out
    assert "Recommended: Quality (full GPU offload" in out
    assert "llama-server -m" in out and "-c 8192 -ngl 999" in out
    star = [line for line in out.splitlines() if line.startswith("*  ")]
    assert len(star) == 1 and "Quality" in star[0]

    assert run_cli(["recommend", str(model.path), "--gpu", "RTX 4060 Ti 16GB", "--ram", "64GB",
                    "--kv-type", "q8_0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # Only I-Mini and smaller fit fully, and they need an importance matrix: Balanced, with
    # its experts in RAM.
    assert data["recommended"] == "balanced"
    assert data["context"]["type_k"] == "q8_0"
    assert "-ctk" in data["command"] and "q8_0" in data["command"]
    rows = {row["profile"]: row for row in data["results"]}
    assert rows["compact"]["verdict"] == "experts_in_ram"
    assert rows["i-mini"]["max_context"] > 8192 and rows["i-mini"]["needs_imatrix"]


def test_cli_several_vram_values_and_cpu_only(tiny_qwen3moe: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["recommend", str(tiny_qwen3moe), "--vram", "2GB,2GB", "--ram", "8GB",
                    "--as-is", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["gpus"]) == 2
    assert data["results"][0]["verdict"] == "full_gpu"


def test_cli_hardware(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    from apex_gui.core.fit import hardware

    fake = FakeNvml(gpus=[FakeGpu("NVIDIA GeForce RTX 4090", "GPU-x")])
    real_snapshot = hardware.snapshot
    monkeypatch.setattr(hardware, "snapshot", lambda: real_snapshot(fake))
    assert run_cli(["hardware"]) == 0
    out = capsys.readouterr().out
    assert "GPU 0: NVIDIA GeForce RTX 4090" in out and "System RAM" in out
    assert run_cli(["hardware", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpus"][0]["free_bytes"] == 20 * GiB
    assert data["cpu_cores_logical"] >= 1
