"""`apex-studio recommend` on every shape twin and hardware kind, MIG and manual devices,
and the printed llama-server flags run through the real llama.cpp argument parser (issue 5)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

import pynvml
import pytest

from apex_gui.commands import recommend as recommend_command
from apex_gui.core.fit import hardware
from apex_gui.core.fit.context_memory import (
    ContextSettings, ModelGeometry, Placement, kv_cache_estimate,
)
from apex_gui.core.fit.hardware import NvmlMemory
from apex_gui.core.fit.recommend import server_command, tier_candidates
from apex_gui.core.fit.placement import MachineMemory, Verdict, usable_by_one_process
from apex_gui.core.fixtures.twin_layouts import TWIN_LAYOUTS
from apex_gui.core.fixtures.twins import write_mmproj_twin, write_shape_twin
from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.parsers import parse_load_log
from apex_gui.core.jobs.tools import LlamaTools, child_environment
from apex_gui.core.units import GiB
from fakes import FakeGpu, FakeNvml, nvml_error

HARDWARE: dict[str, list[str]] = {
    "cpu-only": [],
    "rtx-4090": ["--gpu", "RTX 4090"],
    "2x-rtx-3090": ["--gpu", "2 x RTX 3090"],
    "80gb": ["--vram", "80GB"],
    "128gb-unified": ["--gpu", "128 GB unified"],
}


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="apex-studio")
    recommend_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as one without an NVIDIA driver, whatever the test machine has."""
    fake = FakeNvml(init_error=nvml_error(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    real_snapshot = hardware.snapshot
    monkeypatch.setattr(hardware, "snapshot", lambda: real_snapshot(fake))


def probed(monkeypatch: pytest.MonkeyPatch, gpus: list[FakeGpu]) -> None:
    fake = FakeNvml(gpus=gpus)
    real_snapshot = hardware.snapshot
    monkeypatch.setattr(hardware, "snapshot", lambda: real_snapshot(fake))


@pytest.fixture(scope="module")
def twin_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("all-twins")
    return {name: write_shape_twin(folder / f"{name}.gguf", name)[0] for name in TWIN_LAYOUTS}


def _flags_match(verdict: Verdict, flags: str) -> bool:
    if verdict is Verdict.FULL_GPU:
        return re.fullmatch(r"-ngl 999( -ts [\d,]+)?", flags) is not None
    if verdict is Verdict.EXPERTS_IN_RAM:
        return re.fullmatch(r"-ngl 999 --n-cpu-moe \d+( -ts [\d,]+)?", flags) is not None
    if verdict is Verdict.PARTIAL:
        return re.fullmatch(r"-ngl \d+", flags) is not None
    if verdict is Verdict.CPU_ONLY:
        return flags == "-ngl 0"
    return flags == "-"


@pytest.mark.parametrize("hw", sorted(HARDWARE))
@pytest.mark.parametrize("twin", sorted(TWIN_LAYOUTS))
def test_recommend_prints_a_sensible_table_for_every_twin(
        twin: str, hw: str, twin_paths: dict[str, Path], no_gpu: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = twin_paths[twin]
    argv = ["recommend", str(path), *HARDWARE[hw], "--ram", "64GB"]
    assert run_cli(argv) == 0
    text = capsys.readouterr().out
    assert run_cli([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)

    model = open_model(path)
    n_ctx = data["context"]["n_ctx"]
    # The default context is 8192, or the training context when that is shorter.
    assert n_ctx == min(8192, model.context_length)
    lines = text.splitlines()
    assert lines[0].startswith(f"{model.name}: context {n_ctx}, KV f16, 1 sequence(s)")
    header = next(i for i, line in enumerate(lines) if "profile" in line and "verdict" in line)
    rows = lines[header + 1: header + 1 + len(data["results"])]
    # The tiers as they build, the rows of the window's Hardware & tiers.
    assert [r["label"] for r in data["results"]] == [c.label for c in tier_candidates(model)]
    assert sum(row.startswith("*") for row in rows) == (1 if data["recommended"] else 0)

    for row, result in zip(rows, data["results"]):
        verdict = Verdict[result["verdict"].upper()]
        assert verdict.value in row and result["label"] in row
        assert _flags_match(verdict, result["flags"]), (result["label"], result["flags"])
        if verdict is Verdict.DOES_NOT_FIT:
            assert result["max_context"] is None and result["headroom"] == "none"
        else:
            # The largest context is never below the one the verdict was made for.
            assert result["max_context"] % 256 == 0 and result["max_context"] >= n_ctx
            assert result["headroom_bytes"] >= 0
        if hw == "cpu-only":
            assert verdict in (Verdict.CPU_ONLY, Verdict.DOES_NOT_FIT)
        else:
            assert verdict is not Verdict.CPU_ONLY

    if hw == "cpu-only":
        assert "note: No NVIDIA GPU found" in text
        assert data["gpus"] == []
    if hw == "2x-rtx-3090":
        assert len(data["gpus"]) == 2
    if hw == "128gb-unified":
        assert data["gpus"][0]["unified_memory"] is True
        assert "one pool shared with the CPU" in text

    usable = [r for r in data["results"] if r["verdict"] != "does_not_fit"]
    if not usable:
        assert data["recommended"] is None and "Nothing fits" in text
        return
    # The recommended tier (the rule printed under the table): among the tiers that need no
    # importance matrix (those that do only when no other loads), those with the best verdict;
    # of these the lowest KL figure when figures cover at least two (or all), else the first.
    def rank(r: dict) -> int:
        return Verdict[r["verdict"].upper()].rank

    pool = [r for r in usable if not r["needs_imatrix"]] or usable
    best_rank = min(rank(r) for r in pool)
    same = [r for r in pool if rank(r) == best_rank]
    # Headroom decides only where the whole model sits (full GPU, CPU only): there a tight fit
    # competes only as the first in tier order.
    eligible = [r for i, r in enumerate(same) if i == 0 or r["headroom"] == "comfortable"
                or r["verdict"] in ("experts_in_ram", "partial")]
    ranked = [r for r in eligible if r["profile"] in data["kld"]]
    first_best = eligible[0]
    if len(ranked) >= 2 or ranked and len(ranked) == len(eligible):
        first_best = min(ranked, key=lambda r: data["kld"][r["profile"]]["kld_mean"])
        assert data["quality_basis"] == "published"
    # Published figures describe Qwen3.5-35B-A3B, and no other model.
    assert all(f["basis"] == "published" for f in data["kld"].values())
    assert bool(data["kld"]) == (twin == "qwen3.5-35b-a3b")
    assert data["rule"] in text.replace("\n", " ").replace("* =", "★ =")
    assert data["recommended"] == first_best["profile"]
    command = data["command"]
    assert command == first_best["command"]
    assert command[:2] == ["llama-server", "-m"] and command[2].endswith(".gguf")
    assert command[command.index("-c") + 1] == str(n_ctx)
    assert command[command.index("-ctk") + 1] == "f16" == command[command.index("-ctv") + 1]
    assert command[command.index("-fa") + 1] == "on"
    assert f"Recommended: {first_best['label']} (" in text


def test_default_context_follows_a_short_training_context(
        twin_paths: dict[str, Path], no_gpu: None, capsys: pytest.CaptureFixture[str]) -> None:
    olmoe = twin_paths["olmoe-1b-7b"]
    assert open_model(olmoe).context_length == 4096
    assert run_cli(["recommend", str(olmoe), "--gpu", "RTX 4090", "--ram", "64GB"]) == 0
    assert "context 4096" in capsys.readouterr().out.splitlines()[0]
    # Asked for more than the training context: planned as asked, with a note saying so.
    assert run_cli(["recommend", str(olmoe), "--gpu", "RTX 4090", "--ram", "64GB",
                    "--ctx", "8192", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["context"]["n_ctx"] == 8192
    assert any("beyond the model's training context (4096)" in n for n in data["notes"])
    assert all(r["max_context"] >= 8192 for r in data["results"] if r["max_context"])


def test_kv_type_parallel_and_flash_attention_reach_the_command(
        twin_paths: dict[str, Path], no_gpu: None, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(twin_paths["qwen3-30b-a3b"])
    base = ["recommend", path, "--gpu", "RTX 4090", "--ram", "64GB", "--json"]
    assert run_cli(base) == 0
    f16 = json.loads(capsys.readouterr().out)
    assert run_cli([*base, "--kv-type", "q8_0", "--parallel", "2"]) == 0
    q8 = json.loads(capsys.readouterr().out)
    cmd = q8["command"]
    assert cmd[cmd.index("-ctk") + 1] == "q8_0" == cmd[cmd.index("-ctv") + 1]
    assert cmd[cmd.index("-np") + 1] == "2"
    # Same context over 2 sequences with a cache half the size: the KV bytes are about halved.
    kv = {r["profile"]: r["devices"][0]["kv"] for r in q8["results"]}
    kv_f16 = {r["profile"]: r["devices"][0]["kv"] for r in f16["results"]}
    assert kv["quality"] == pytest.approx(kv_f16["quality"] * 34 / 64, rel=0.01)
    assert run_cli([*base, "--no-flash-attn"]) == 0
    nofa = json.loads(capsys.readouterr().out)
    assert nofa["command"][nofa["command"].index("-fa") + 1] == "off"


def test_mmproj_and_mtp_are_counted_by_the_command(
        twin_paths: dict[str, Path], tmp_path: Path, no_gpu: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = str(twin_paths["qwen3.5-35b-a3b"])
    mmproj = write_mmproj_twin(tmp_path / "mmproj-F16.gguf")
    base = ["recommend", path, "--gpu", "RTX 4090", "--ram", "64GB", "--json"]
    assert run_cli(base) == 0
    plain = {r["profile"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert run_cli([*base, "--mmproj", str(mmproj), "--mtp"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mmproj_bytes"] == open_model(mmproj).tensor_bytes > 800 * 10**6
    assert data["context"]["use_mtp"] is True
    extended = {r["profile"]: r for r in data["results"]}
    mini, mini_plain = extended["i-mini"], plain["i-mini"]
    # Projector weights (plus its compute allowance), the MTP block and its KV on the GPU.
    gpu, gpu_plain = mini["devices"][0], mini_plain["devices"][0]
    assert gpu["total"] - gpu_plain["total"] > data["mmproj_bytes"]
    assert mini["command"][-4:] == ["--spec-type", "draft-mtp", "--mmproj", str(mmproj)]


def test_mtp_on_a_model_without_an_mtp_block_is_refused(
        twin_paths: dict[str, Path], no_gpu: None) -> None:
    with pytest.raises(ValueError, match=r"--mtp: .* has no MTP \(nextn\) block"):
        run_cli(["recommend", str(twin_paths["qwen3-30b-a3b"]), "--mtp", "--vram", "24GB",
                 "--ram", "64GB"])


def test_manual_devices_name_the_ram_they_assume(
        twin_paths: dict[str, Path], no_gpu: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["recommend", str(twin_paths["gpt-oss-20b"]), "--gpu", "RTX 4090"]) == 0
    assert "pass --ram SIZE to plan for another machine" in capsys.readouterr().out
    assert run_cli(["recommend", str(twin_paths["gpt-oss-20b"]), "--gpu", "RTX 4090",
                    "--ram", "64GB"]) == 0
    assert "--ram SIZE" not in capsys.readouterr().out


def test_add_detected_keeps_the_probed_gpu_and_adds_the_manual_one(
        twin_paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    probed(monkeypatch, [FakeGpu("NVIDIA GeForce RTX 4090", "GPU-a",
                                 memory=NvmlMemory(24 * GiB, 22 * GiB, 2 * GiB))])
    path = str(twin_paths["qwen3.5-35b-a3b"])
    assert run_cli(["recommend", path, "--json"]) == 0
    assert [g["name"] for g in json.loads(capsys.readouterr().out)["gpus"]] == [
        "NVIDIA GeForce RTX 4090"]
    assert run_cli(["recommend", path, "--gpu", "RTX 3090", "--add-detected", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(g["name"], g["free_bytes"]) for g in data["gpus"]] == [
        ("NVIDIA GeForce RTX 4090", 22 * GiB), ("RTX 3090 24GB", 24 * GiB)]
    # Without --add-detected the manual device replaces the probe.
    assert run_cli(["recommend", path, "--gpu", "RTX 3090", "--ram", "64GB", "--json"]) == 0
    assert [g["name"] for g in json.loads(capsys.readouterr().out)["gpus"]] == ["RTX 3090 24GB"]
    with pytest.raises(ValueError, match="--add-detected adds the devices of --gpu or --vram"):
        run_cli(["recommend", path, "--add-detected"])


def test_add_detected_on_a_machine_without_gpu(twin_paths: dict[str, Path], no_gpu: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["recommend", str(twin_paths["gpt-oss-20b"]), "--gpu", "RTX 4090",
                    "--add-detected", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [g["name"] for g in data["gpus"]] == ["RTX 4090 24GB"]
    assert data["notes"] == [
        "No NVIDIA GPU detected here; planning for the devices given by hand."]
    assert data["results"][0]["verdict"] == "full_gpu"


def test_several_mig_instances_plan_for_one(twin_paths: dict[str, Path],
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    small = FakeGpu("NVIDIA H100 MIG 2g.20gb", "MIG-small",
                    memory=NvmlMemory(20 * GiB, 19 * GiB, GiB))
    large = FakeGpu("NVIDIA H100 MIG 4g.40gb", "MIG-large",
                    memory=NvmlMemory(40 * GiB, 39 * GiB, GiB))
    parent = FakeGpu("NVIDIA H100 80GB HBM3", "GPU-parent",
                     memory=NvmlMemory(80 * GiB, 80 * GiB, 0),
                     mig_mode=(1, 1), mig_slots=[small, None, large])
    probed(monkeypatch, [parent])
    snap = hardware.snapshot()
    assert [g.uuid for g in snap.gpus] == ["MIG-small", "MIG-large"]  # the probe lists both
    machine = MachineMemory.from_snapshot(snap)
    assert [g.uuid for g in machine.gpus] == ["MIG-large"]  # one CUDA process sees one
    assert any("CUDA_VISIBLE_DEVICES=MIG-large" in note for note in machine.notes)

    assert run_cli(["recommend", str(twin_paths["qwen3.5-35b-a3b"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [g["name"] for g in data["gpus"]] == ["NVIDIA H100 MIG 4g.40gb"]
    assert all(len(r["devices"]) == 1 for r in data["results"])
    # 39 GiB hold Balanced comfortably, and its published KL mean is below Quality's.
    assert data["recommended"] == "balanced"


def test_one_mig_instance_and_plain_gpus_are_kept() -> None:
    from apex_gui.core.fit.device_spec import parse_device_spec

    plain = parse_device_spec("2 x RTX 3090")
    assert usable_by_one_process(plain) == (tuple(plain), ())


# ----------------------------------------------------------------------------- real llama.cpp

def _completion(llama_tools: LlamaTools) -> Path:
    exe = llama_tools.path("fit-params").with_name("llama-completion")
    if not exe.exists():
        pytest.skip("llama-completion is not installed beside llama-fit-params")
    return exe


def _load(exe: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    # llama.cpp's log worker may drop its last lines at exit (ggml-org/llama.cpp#22142).
    result: subprocess.CompletedProcess[str] | None = None
    for _attempt in range(6):
        result = subprocess.run(
            [str(exe), *args, "-n", "1", "-p", "hi", "--no-warmup", "-t", "1", "-v",
             "-fit", "off", "--seed", "1"],
            capture_output=True, text=True, errors="replace", timeout=120,
            env=child_environment(), check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        if "llama_kv_cache: size" in result.stderr:
            return result
    pytest.fail("llama-completion never printed its KV cache line in 6 runs")
    raise AssertionError  # unreachable: pytest.fail raises


# Flags llama-server has but llama-completion lacks; checked against common/arg.cpp:
# --kv-unified (server, perplexity, batched...), --spec-type (speculative, server, cli) and
# --mmproj (multimodal tools, server). Everything else the command prints is common to all tools.
SERVER_ONLY = {"--kv-unified": 0, "--spec-type": 1, "--mmproj": 1}


def _common_args(argv: tuple[str, ...]) -> list[str]:
    args, skip = [], 0
    for item in argv[1:]:
        if skip:
            skip -= 1
            continue
        if item in SERVER_ONLY:
            skip = SERVER_ONLY[item]
            continue
        args.append(item)
    return args


@pytest.mark.parametrize(
    ("verdict", "placement", "ctx"),
    [
        (Verdict.FULL_GPU, Placement(), ContextSettings(n_ctx=1000)),
        (Verdict.EXPERTS_IN_RAM, Placement(n_cpu_moe=1), ContextSettings(
            n_ctx=2048, type_k="q8_0", type_v="q8_0")),
        (Verdict.EXPERTS_IN_RAM, Placement(n_cpu_moe=2), ContextSettings(n_ctx=2048)),
        (Verdict.FULL_GPU, Placement(tensor_split=(2.0, 1.0)), ContextSettings(
            n_ctx=4096, n_seq=2, type_k="q4_0", type_v="q4_0", n_ubatch=256)),
        (Verdict.PARTIAL, Placement(n_gpu_layers=2), ContextSettings(
            n_ctx=2048, flash_attn=False, swa_full=True)),
        (Verdict.CPU_ONLY, Placement(n_gpu_layers=0), ContextSettings(
            n_ctx=512, type_k="q5_1", type_v="iq4_nl", kv_unified=True)),
    ],
)
def test_printed_flags_are_accepted_by_llama_cpp(
        verdict: Verdict, placement: Placement, ctx: ContextSettings, tiny_qwen3moe: Path,
        llama_tools: LlamaTools) -> None:
    """The command's flags go through this llama.cpp's own parser and load the model as sized."""
    exe = _completion(llama_tools)
    geom = ModelGeometry.from_model(open_model(tiny_qwen3moe))
    argv = server_command(str(tiny_qwen3moe), ctx, verdict, placement,
                          n_expert_layers=geom.n_layer)
    assert argv[:3] == ("llama-server", "-m", str(tiny_qwen3moe))
    if placement.n_cpu_moe:
        # Every block's experts in RAM is printed as --cpu-moe, fewer as --n-cpu-moe N.
        expected = (["--cpu-moe"] if placement.n_cpu_moe >= geom.n_layer
                    else ["--n-cpu-moe", str(placement.n_cpu_moe)])
        assert _contains(argv, expected)
    result = _load(exe, _common_args(argv))
    measured = parse_load_log(result.stderr.splitlines())
    assert measured.n_ctx == ctx.n_ctx_padded
    assert measured.kv_cells == ctx.cells_per_stream
    assert (measured.type_k, measured.type_v) == (ctx.type_k, ctx.type_v)
    assert measured.kv_mib == pytest.approx(kv_cache_estimate(geom, ctx).kv_bytes / 2**20,
                                            rel=0.02, abs=0.01)  # printed to 0.01 MiB
    flash = re.search(r"llama_context: flash_attn\s*=\s*(\w+)", result.stderr)
    assert flash is not None and flash.group(1) == ("enabled" if ctx.flash_attn else "disabled")


def _contains(argv: tuple[str, ...], part: list[str]) -> bool:
    return any(list(argv[i:i + len(part)]) == part for i in range(len(argv)))


def test_vram_sizes_are_taken_exactly(twin_paths: dict[str, Path], no_gpu: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["recommend", str(twin_paths["olmoe-1b-7b"]), "--vram", "24GiB,16GB",
                    "--vram", "0.5TB", "--ram", "8GB", "--json"]) == 0
    gpus = json.loads(capsys.readouterr().out)["gpus"]
    assert [(g["name"], g["free_bytes"]) for g in gpus] == [
        ("Manual 24GiB", 24 * GiB), ("Manual 16GB", 16 * 10**9), ("Manual 0.5TB", 5 * 10**11)]
    with pytest.raises(ValueError, match="--vram: '0GB' is no memory at all; give more than zero"):
        run_cli(["recommend", str(twin_paths["olmoe-1b-7b"]), "--vram", "0GB"])
