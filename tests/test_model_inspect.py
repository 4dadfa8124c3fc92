"""`open_model` and `apex-studio inspect` on every shape twin, the synthetic models and the
companion files (vision projector, a real llama-imatrix output), and on split shards.

Expected values come from the twin layouts (what the published model is), not from the code
under test: layer counts, mixer kinds per layer, experts, leading dense layers, MLA ranks,
vocabulary, parameter counts against the published figures, and every tensor accounted for.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import subprocess
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest

from apex_gui.cli import main as cli_main
from apex_gui.commands.inspect import render_text
from apex_gui.core.fixtures.twin_layouts import TWIN_LAYOUTS, TwinLayout
from apex_gui.core.fixtures.twin_tensors import twin_tensors
from apex_gui.core.fixtures.twins import write_mmproj_twin, write_shape_twin
from apex_gui.core.gguf.model import FileKind, MixerKind, ModelInfo, open_model
from apex_gui.core.gguf.reader import GGUFError, read_header
from apex_gui.core.gguf.roles import TensorRole
from apex_gui.core.gguf.summary import summary_dict
from apex_gui.core.jobs.tools import child_environment
from apex_gui.core.units import format_size

# Not a published model: the deepseek2 loader (MLA without q_lora, a leading dense block,
# an MTP block), built from the Mistral 4 layout so every MLA path is covered.
DEEPSEEK2_VARIANT = replace(
    TWIN_LAYOUTS["mistral-small-4-119b"], name="deepseek2-variant", arch="deepseek2",
    q_lora_rank=0, n_dense_lead=1, n_nextn=1, fused_gate_up_exps=False, n_layer=12,
    published_total_params=0.0, published_active_params=0.0)
LAYOUTS: dict[str, TwinLayout] = {**TWIN_LAYOUTS, DEEPSEEK2_VARIANT.name: DEEPSEEK2_VARIANT}


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("twins")
    for name, layout in LAYOUTS.items():
        write_shape_twin(folder / f"{name}.gguf", layout)
    return folder


@pytest.fixture(scope="module")
def models(twin_dir: Path) -> dict[str, ModelInfo]:
    return {name: open_model(twin_dir / f"{name}.gguf") for name in LAYOUTS}


def expected_mixers(layout: TwinLayout) -> list[MixerKind]:
    """What mixes tokens in each block, from the architecture's llama.cpp loader."""
    mixers = []
    for i in range(layout.block_count):
        mtp = i >= layout.n_layer
        if layout.arch == "qwen35moe":  # gated delta-net, full attention every 4th block
            full = mtp or (i + 1) % layout.full_attention_interval == 0
            mixers.append(MixerKind.FULL_ATTENTION if full else MixerKind.LINEAR_ATTENTION)
        elif layout.arch == "afmoe":  # set_swa_pattern(4): 3 sliding, then 1 full
            mixers.append(MixerKind.SLIDING_WINDOW if i % 4 < 3 else MixerKind.FULL_ATTENTION)
        elif layout.arch == "gpt-oss":  # set_swa_pattern(2): sliding on even blocks
            mixers.append(MixerKind.SLIDING_WINDOW if i % 2 == 0 else MixerKind.FULL_ATTENTION)
        elif layout.arch in ("mistral4", "deepseek2"):
            mixers.append(MixerKind.MLA)
        elif layout.arch == "lfm2moe":
            mixers.append(MixerKind.FULL_ATTENTION if i in layout.attention_layers
                          else MixerKind.SHORT_CONV)
        else:
            mixers.append(MixerKind.FULL_ATTENTION)
    return mixers


# --------------------------------------------------------------------------------------------
# every twin
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_twin_structure(models: dict[str, ModelInfo], name: str) -> None:
    layout, model = LAYOUTS[name], models[name]
    assert model.file_kind is FileKind.MODEL
    assert model.architecture == layout.arch
    assert model.n_layer == layout.n_layer
    assert model.block_count == layout.block_count
    assert model.n_mtp_layers == layout.n_nextn
    assert [layer.index for layer in model.layers] == list(range(layout.block_count))
    assert [layer.is_mtp for layer in model.layers] == [
        i >= layout.n_layer for i in range(layout.block_count)]
    assert [layer.mixer for layer in model.layers] == expected_mixers(layout)
    assert model.n_expert == layout.n_expert
    assert model.n_expert_used == layout.n_expert_used
    assert model.n_expert_shared == layout.n_expert_shared
    assert model.n_leading_dense == layout.n_dense_lead
    assert model.q_lora_rank == layout.q_lora_rank
    assert model.kv_lora_rank == layout.kv_lora_rank
    assert model.vocab_size == layout.n_vocab
    assert model.context_length == layout.context_length
    assert model.sliding_window == layout.sliding_window
    for layer in model.layers:
        dense = layer.index < layout.n_dense_lead
        assert layer.has_dense_ffn == dense, layer
        assert layer.has_routed_experts == (not dense), layer
        assert layer.has_shared_experts == (not dense and (layout.n_expert_shared > 0
                                                           or layout.n_ff_shexp > 0)), layer


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_twin_no_tensor_dropped(twin_dir: Path, models: dict[str, ModelInfo], name: str) -> None:
    model = models[name]
    expected = twin_tensors(LAYOUTS[name])
    assert [t.name for t in model.tensors] == [t.name for t in expected]
    assert [t.shape for t in model.tensors] == [t.shape for t in expected]
    # The tensor table tiles the data section exactly: header + padded tensors == file.
    header = read_header(twin_dir / f"{name}.gguf")
    position = 0
    for entry in header.tensors:
        assert entry.offset == position, entry.name
        position += -(-entry.nbytes // 32) * 32
    assert model.header_bytes + position == model.file_size
    assert model.tensor_bytes == sum(entry.nbytes for entry in header.tensors)
    # Every tensor has a role, and every name in a real model is one we know.
    assert all(isinstance(t.role, TensorRole) for t in model.tensors)
    assert [t.name for t in model.tensors if t.role is TensorRole.OTHER] == []


@pytest.mark.parametrize("name", sorted(TWIN_LAYOUTS))
def test_twin_parameters_match_published(models: dict[str, ModelInfo], name: str) -> None:
    layout, model = LAYOUTS[name], models[name]
    assert model.total_params == sum(t.n_elements for t in twin_tensors(layout))
    # Published totals leave the MTP block out.
    mtp = {layer.index for layer in model.layers if layer.is_mtp}
    trunk = sum(t.n_elements for t in model.tensors if t.layer not in mtp)
    assert trunk == pytest.approx(layout.published_total_params, rel=0.03)
    # Active: routed experts count k of N, MTP blocks nothing. Vendors differ on whether the
    # input embedding (a row lookup) counts: OpenAI and Qwen3.5 leave it out, Qwen3 and
    # Mixtral keep it. The published figure must lie between the two readings.
    embedding = model.tensor("token_embd.weight").n_elements
    if "output.weight" not in {t.name for t in model.tensors}:
        embedding = 0  # tied: the embedding is also the output head, always active
    assert (model.active_params - embedding) * 0.9 <= layout.published_active_params
    assert layout.published_active_params <= model.active_params * 1.1
    expected_active = 0
    for tensor in twin_tensors(layout):
        layer = int(tensor.name.split(".")[1]) if tensor.name.startswith("blk.") else None
        if layer is not None and layer >= layout.n_layer:
            continue
        share = (layout.n_expert_used / layout.n_expert) if "_exps." in tensor.name else 1
        expected_active += tensor.n_elements * share
    assert model.active_params == pytest.approx(expected_active, rel=1e-6)


def test_qwen35_hybrid_layers_and_mtp(models: dict[str, ModelInfo]) -> None:
    model = models["qwen3.5-35b-a3b"]
    mtp = model.layers[40]
    assert mtp.is_mtp and mtp.label == "MTP 40"
    assert model.tensor("blk.40.nextn.eh_proj.weight").role is TensorRole.MTP
    assert model.tensor("blk.40.nextn.enorm.weight").role is TensorRole.NORM
    assert model.tensor("blk.0.ssm_out.weight").role is TensorRole.LINEAR_ATTENTION
    assert model.tensor("blk.0.ssm_conv1d.weight").role is TensorRole.LINEAR_ATTENTION
    assert model.tensor("blk.3.attn_q.weight").role is TensorRole.ATTENTION
    assert model.tensor("blk.0.ffn_gate_inp_shexp.weight").role is TensorRole.ROUTER
    assert model.tensor("blk.0.ffn_down_shexp.weight").role is TensorRole.SHARED_EXPERT
    # The MTP block's parameters are in the file but not in the per-token forward pass.
    mtp_params = sum(t.n_elements for t in model.tensors_in_layer(40))
    assert 0.7e9 < mtp_params < 1.0e9
    assert "mtp eh" in render_text(model)
    assert "MTP 40" in render_text(model)
    summary = summary_dict(model)
    assert summary["mixers"] == {"linear attention / SSM": 30, "full attention": 10}
    assert summary["layers"] == 40 and summary["mtp_layers"] == 1


def test_mla_tensors(models: dict[str, ModelInfo]) -> None:
    mistral = models["mistral-small-4-119b"]
    for kind in ("attn_q_a", "attn_q_b", "attn_kv_a_mqa", "attn_k_b", "attn_v_b"):
        assert mistral.tensor(f"blk.7.{kind}.weight").role is TensorRole.ATTENTION
        assert kind in mistral.kinds
    assert mistral.tensor("blk.0.ffn_gate_up_exps.weight").role is TensorRole.ROUTED_EXPERT
    assert "MLA q_lora 1024 kv_lora 256" in render_text(mistral)
    deepseek = models["deepseek2-variant"]
    assert deepseek.tensor("blk.0.attn_q.weight").role is TensorRole.ATTENTION
    assert deepseek.tensor("blk.0.ffn_down.weight").role is TensorRole.DENSE_FFN
    assert deepseek.layers[12].is_mtp and deepseek.layers[12].mixer is MixerKind.MLA


def test_lfm2_short_conv_and_per_layer_heads(models: dict[str, ModelInfo]) -> None:
    layout, model = LAYOUTS["lfm2.5-8b-a1b"], models["lfm2.5-8b-a1b"]
    assert model.per_layer("attention.head_count_kv") == [
        layout.n_head_kv if i in layout.attention_layers else 0 for i in range(layout.n_layer)]
    assert model.n_head_kv == layout.n_head_kv
    for kind in ("shortconv.in_proj", "shortconv.out_proj", "shortconv.conv"):
        assert model.tensor(f"blk.0.{kind}.weight").role is TensorRole.SHORT_CONV
    assert "(2 leading dense)" in render_text(model)


def test_gpt_oss_sinks_and_mxfp4(models: dict[str, ModelInfo]) -> None:
    model = models["gpt-oss-20b"]
    assert model.tensor("blk.0.attn_sinks.weight").role is TensorRole.ATTENTION
    assert model.tensor("blk.0.ffn_down_exps.weight").type_name == "MXFP4"
    assert model.file_type == "MXFP4_MOE"
    assert model.head_dim_k == 64


def test_afmoe_dense_lead_and_router_bias(models: dict[str, ModelInfo]) -> None:
    model = models["trinity-large-399b"]
    assert model.tensor("blk.6.exp_probs_b.bias").role is TensorRole.ROUTER
    assert model.tensor("blk.0.ffn_up.weight").role is TensorRole.DENSE_FFN
    assert model.tensor("blk.0.attn_gate.weight").role is TensorRole.ATTENTION
    assert model.layers[59].mixer is MixerKind.FULL_ATTENTION


def test_unknown_tensor_names_are_other_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen3moe")
    writer.add_block_count(1)
    names = ["token_embd.weight", "rope_freqs.weight", "blk.0.mystery_proj.weight",
             "blk.0.ffn_down_exps.weight", "v.blk.0.attn_q.weight"]
    for name in names:
        writer.add_tensor(name, np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model = open_model(path)
    roles = {t.name: t.role for t in model.tensors}
    assert roles["rope_freqs.weight"] is TensorRole.OTHER
    assert roles["blk.0.mystery_proj.weight"] is TensorRole.OTHER
    assert roles["v.blk.0.attn_q.weight"] is TensorRole.OTHER
    assert roles["blk.0.ffn_down_exps.weight"] is TensorRole.ROUTED_EXPERT
    assert model.total_params == 5 * 4 * 32
    assert "mystery_proj" in model.kinds


@pytest.mark.parametrize("name", sorted(TWIN_LAYOUTS))
def test_cli_json_on_twins(twin_dir: Path, name: str) -> None:
    layout = TWIN_LAYOUTS[name]
    code, out, err = run_cli("inspect", "--json", str(twin_dir / f"{name}.gguf"))
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["layers"] == layout.n_layer and data["mtp_layers"] == layout.n_nextn
    assert data["vocab_size"] == layout.n_vocab
    assert data["experts"] == layout.n_expert
    mixers: dict[str, int] = {}
    for mixer in expected_mixers(layout)[: layout.n_layer]:
        mixers[mixer.value] = mixers.get(mixer.value, 0) + 1
    assert data["mixers"] == mixers
    rows = data["layer_table"]["rows"]
    assert [row[0] for row in rows] == [str(i) for i in range(layout.n_layer)] + [
        f"MTP {i}" for i in range(layout.n_layer, layout.block_count)]
    code, text, _ = run_cli("inspect", str(twin_dir / f"{name}.gguf"))
    assert code == 0 and f"layers        {layout.n_layer}" in text


# --------------------------------------------------------------------------------------------
# synthetic models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_qwen2moe", "tiny_qwen3moe", "fallback_model"])
def test_synthetic_models(fixture: str, request: pytest.FixtureRequest) -> None:
    from apex_gui.core.fixtures.synthetic import (
        FALLBACK_SPEC, TINY_QWEN2MOE, TINY_QWEN3MOE, VOCAB_SIZE,
    )

    spec = {"tiny_qwen2moe": TINY_QWEN2MOE, "tiny_qwen3moe": TINY_QWEN3MOE,
            "fallback_model": FALLBACK_SPEC}[fixture]
    path: Path = request.getfixturevalue(fixture)
    model = open_model(path)
    reference = gguf.GGUFReader(path)
    assert model.architecture == spec.arch
    assert model.n_layer == spec.n_layer and model.n_mtp_layers == 0
    assert all(layer.mixer is MixerKind.FULL_ATTENTION for layer in model.layers)
    assert model.n_expert == spec.n_expert and model.n_expert_used == spec.n_expert_used
    assert model.n_expert_shared == (1 if spec.arch == "qwen2moe" else 0)
    assert model.n_leading_dense == 0
    assert model.vocab_size == VOCAB_SIZE
    assert model.total_params == sum(int(t.n_elements) for t in reference.tensors)
    assert model.tensor_bytes == sum(int(t.n_bytes) for t in reference.tensors)
    assert [t.type_name for t in model.tensors] == [t.tensor_type.name for t in reference.tensors]
    assert not [t for t in model.tensors if t.role is TensorRole.OTHER]
    assert model.n_head == spec.n_head and model.n_head_kv == spec.n_head_kv
    assert model.head_dim_k == spec.head_dim


# --------------------------------------------------------------------------------------------
# split shards
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split_twin(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("split")
    return write_shape_twin(folder / "qwen35.gguf", "qwen3.5-35b-a3b", n_splits=3)


def _fingerprint(model: ModelInfo) -> tuple:
    return ([(t.name, t.shape, t.type_name, t.nbytes) for t in model.tensors],
            [(layer.index, layer.mixer, layer.is_mtp) for layer in model.layers],
            model.total_params, model.active_params, model.vocab_size, model.n_layer)


def test_split_model_opens_from_any_shard(split_twin: list[Path],
                                          models: dict[str, ModelInfo]) -> None:
    opened = [open_model(shard) for shard in split_twin]
    for model in opened:
        assert model.paths == tuple(split_twin)
        assert _fingerprint(model) == _fingerprint(opened[0])
        assert model.file_size == sum(p.stat().st_size for p in split_twin)
    # The same model as the single-file twin, shard by shard.
    assert _fingerprint(opened[0]) == _fingerprint(models["qwen3.5-35b-a3b"])
    assert {t.shard for t in opened[0].tensors} == {0, 1, 2}
    outputs = {run_cli("inspect", "--json", str(shard))[1] for shard in split_twin}
    assert len(outputs) == 1


def test_split_model_with_a_missing_shard(split_twin: list[Path], tmp_path: Path) -> None:
    for shard in (split_twin[0], split_twin[2]):
        os.link(shard, tmp_path / shard.name)  # never copy a twin: copies fill in the holes
    for shard in (split_twin[0], split_twin[2]):
        path = tmp_path / shard.name
        with pytest.raises(GGUFError, match=split_twin[1].name):
            open_model(path)
        code, out, err = run_cli("inspect", str(path))
        assert code == 2 and out == "" and err.count("\n") == 1
        assert str(path) in err and split_twin[1].name in err


def test_first_shard_renamed_alone(split_twin: list[Path], tmp_path: Path) -> None:
    lonely = tmp_path / "renamed.gguf"
    os.link(split_twin[0], lonely)
    with pytest.raises(GGUFError, match="declares 3 shards but 1"):
        open_model(lonely)


def test_impossible_shard_name(tmp_twin_copy: Path) -> None:
    with pytest.raises(GGUFError, match="shard 1 of 0"):
        open_model(tmp_twin_copy)


@pytest.fixture
def tmp_twin_copy(twin_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model-00001-of-00000.gguf"
    os.link(twin_dir / "olmoe-1b-7b.gguf", target)
    return target


# --------------------------------------------------------------------------------------------
# companion files
# --------------------------------------------------------------------------------------------


def test_mmproj_twin_is_a_vision_projector(tmp_path: Path) -> None:
    path = write_mmproj_twin(tmp_path / "mmproj-Qwen3.5-35B-A3B-F16.gguf")
    model = open_model(path)
    assert model.file_kind is FileKind.VISION_PROJECTOR
    assert model.architecture == "clip"
    assert model.layers == []
    header = read_header(path)
    assert model.tensor_bytes == sum(entry.nbytes for entry in header.tensors)
    assert 0.8e9 < model.tensor_bytes < 1.0e9
    code, text, _ = run_cli("inspect", str(path))
    assert code == 0
    assert "vision projector" in text
    assert format_size(model.tensor_bytes) in text
    code, out, _ = run_cli("inspect", "--json", str(path))
    data = json.loads(out)
    assert data["file_kind"] == FileKind.VISION_PROJECTOR.value
    assert data["tensor_bytes"] == model.tensor_bytes
    assert len(data["tensors"]) == len(header.tensors)


@pytest.fixture(scope="module")
def real_imatrix(tiny_qwen2moe: Path, llama_tools, tmp_path_factory: pytest.TempPathFactory
                 ) -> tuple[Path, Path]:
    """An imatrix made by the real llama-imatrix on the tiny synthetic model (as record.sh)."""
    folder = tmp_path_factory.mktemp("imatrix")
    words = ("the quick brown fox jumps over a lazy dog while experts route tokens "
             "through mixture layers of a small model").split()
    rng = random.Random(0)
    text = folder / "calibration.txt"
    text.write_text(" ".join(rng.choice(words) for _ in range(600)) + "\n")
    output = folder / "imatrix.gguf"
    result = subprocess.run(
        [str(llama_tools.path("imatrix")), "-m", str(tiny_qwen2moe), "-f", str(text),
         "-o", str(output), "-c", "128", "--chunks", "2", "-t", "2", "--no-log-prefix",
         "--log-colors", "off"],
        capture_output=True, text=True, timeout=120, env=child_environment())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return output, text


def test_real_imatrix_reports_datasets_chunks_and_coverage(real_imatrix: tuple[Path, Path],
                                                           tiny_qwen2moe: Path) -> None:
    path, text = real_imatrix
    info = open_model(path)
    assert info.file_kind is FileKind.IMATRIX
    assert info.imatrix is not None
    assert [Path(d).name for d in info.imatrix.datasets] == [text.name]
    assert info.imatrix.chunk_count == 2
    assert info.imatrix.chunk_size == 128
    model = open_model(tiny_qwen2moe)
    covered = set(info.imatrix.covered_tensors)
    # Every matmul weight in the blocks gets statistics; norms and embeddings do not.
    matmuls = {t.name for t in model.tensors if t.layer is not None and len(t.shape) >= 2
               and t.role in (TensorRole.ATTENTION, TensorRole.ROUTED_EXPERT,
                              TensorRole.SHARED_EXPERT)}
    assert matmuls <= covered
    assert covered <= {t.name for t in model.tensors}
    assert "token_embd.weight" not in covered
    code, out, _ = run_cli("inspect", "--json", str(path))
    data = json.loads(out)
    assert code == 0 and data["file_kind"] == FileKind.IMATRIX.value
    assert data["imatrix"]["chunk_count"] == 2
    assert data["imatrix"]["covered_tensors"] == len(covered)
    code, text_out, _ = run_cli("inspect", str(path))
    assert "importance matrix" in text_out and "2 x 128 tokens" in text_out
