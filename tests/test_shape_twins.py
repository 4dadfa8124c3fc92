"""Sparse shape twins: real headers and tensor tables of big MoE models, data as a file hole."""

from __future__ import annotations

import os
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import pytest

from apex_gui.core.fixtures.twin_layouts import TWIN_LAYOUTS, TwinLayout
from apex_gui.core.fixtures.twin_tensors import twin_parameter_count, twin_tensors
from apex_gui.core.fixtures.twins import write_mmproj_twin, write_shape_twin

ALL_LAYOUTS = sorted(TWIN_LAYOUTS)

# Published total parameter counts (model cards / technical reports).
PUBLISHED_TOTALS = {
    "qwen3.5-35b-a3b": 35e9,
    "trinity-large-399b": 399e9,
    "mistral-small-4-119b": 119e9,
    "lfm2.5-8b-a1b": 8e9,
    "qwen3-30b-a3b": 30e9,
    "qwen1.5-moe-a2.7b": 14.3e9,
    "mixtral-8x7b": 46.7e9,
    "gpt-oss-20b": 21e9,
    "glm-4.5-air": 106e9,
    "olmoe-1b-7b": 6.9e9,
    "granite-3.0-3b-a800m": 3.3e9,
}

MAX_DISK_BYTES = 64 * 1024 * 1024


@dataclass
class Header:
    """A GGUF header as read by a small independent parser (gguf.GGUFReader takes seconds on
    a 248k-token vocabulary; these tests only need the header)."""

    fields: dict[str, object]
    field_types: dict[str, int]
    tensors: list[tuple[str, tuple[int, ...], int, int]]  # name, shape, ggml type, offset
    data_offset: int

    def tensor_bytes(self, i: int) -> int:
        _, shape, type_, _ = self.tensors[i]
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_)]
        n = 1
        for d in shape:
            n *= d
        return n // block * size

    @property
    def names(self) -> list[str]:
        return [t[0] for t in self.tensors]

    def types(self) -> dict[str, int]:
        return {t[0]: t[2] for t in self.tensors}


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}


def read_header(path: Path) -> Header:
    buf = path.open("rb").read(64 * 1024 * 1024)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        (v,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        s = buf[pos:pos + n].decode("utf-8")
        pos += n
        return s

    def value(type_: int):
        nonlocal pos
        if type_ == 8:
            return string()
        if type_ == 9:
            sub, n = take("<I"), take("<Q")
            if sub == 8:
                return [string() for _ in range(n)]
            fmt = _SCALARS[sub]
            size = struct.calcsize(fmt)
            vals = list(struct.unpack_from("<" + fmt[1] * n, buf, pos))
            pos += size * n
            return vals
        return take(_SCALARS[type_])

    assert buf[:4] == b"GGUF"
    pos = 4
    version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
    assert version == 3
    fields: dict[str, object] = {}
    field_types: dict[str, int] = {}
    for _ in range(n_kv):
        key = string()
        type_ = take("<I")
        field_types[key] = type_
        fields[key] = value(type_)
    tensors = []
    for _ in range(n_tensors):
        name = string()
        n_dims = take("<I")
        shape = tuple(take("<Q") for _ in range(n_dims))
        tensors.append((name, shape, take("<I"), take("<Q")))
    return Header(fields, field_types, tensors, (pos + 31) // 32 * 32)



def test_every_required_layout_is_registered():
    assert set(PUBLISHED_TOTALS) <= set(TWIN_LAYOUTS)
    assert all(isinstance(layout, TwinLayout) for layout in TWIN_LAYOUTS.values())


@pytest.mark.parametrize("name", ALL_LAYOUTS)
def test_parameter_count_matches_published_total(name):
    total = twin_parameter_count(name)
    published = PUBLISHED_TOTALS[name]
    assert abs(total - published) / published < 0.10, f"{name}: {total / 1e9:.2f}B"


@pytest.mark.parametrize("name", ALL_LAYOUTS)
def test_twin_writes_fast_sparse_and_readable(tmp_path, name):
    # Write speed is measured by benchmarks, not asserted here (timed tests flake under load).
    paths = write_shape_twin(tmp_path / "out" / f"{name}.gguf", name)
    assert len(paths) == 1
    path = paths[0]
    st = path.stat()
    assert st.st_blocks * 512 < MAX_DISK_BYTES
    h = read_header(path)
    # apparent size: exactly header + every tensor's bytes, each padded to 32, back to back
    offset = 0
    for i, (_, _, _, tensor_offset) in enumerate(h.tensors):
        assert tensor_offset == offset
        offset += (h.tensor_bytes(i) + 31) // 32 * 32
    assert st.st_size == h.data_offset + offset
    # the tensor table is the layout's, in order
    assert h.names == [t.name for t in twin_tensors(name)]
    layout = TWIN_LAYOUTS[name]
    assert h.fields["general.architecture"] == layout.arch
    assert h.fields[f"{layout.arch}.block_count"] == layout.block_count
    assert h.fields[f"{layout.arch}.expert_count"] == layout.n_expert
    assert h.fields[f"{layout.arch}.expert_used_count"] == layout.n_expert_used
    # full-length tokenizer arrays (the inspector benchmark relies on a realistic header size)
    assert len(h.fields["tokenizer.ggml.tokens"]) == layout.n_vocab
    assert len(h.fields["tokenizer.ggml.token_type"]) == layout.n_vocab
    if layout.tokenizer == "llama":
        assert len(h.fields["tokenizer.ggml.scores"]) == layout.n_vocab
    else:
        assert len(h.fields["tokenizer.ggml.merges"]) > layout.n_vocab // 2
    # bf16 twin: weights bf16, norms / routers / biases f32
    types = h.types()
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.BF16
    assert types[f"blk.{layout.n_layer - 1}.ffn_gate_inp.weight"] == gguf.GGMLQuantizationType.F32
    assert all(types[n] == gguf.GGMLQuantizationType.F32 for n in types if n.endswith("norm.weight"))
    expected_ft = (gguf.LlamaFileType.MOSTLY_MXFP4_MOE if layout.native_expert_type == "MXFP4"
                   else gguf.LlamaFileType.MOSTLY_BF16)
    assert h.fields["general.file_type"] == expected_ft
    assert "general.quantization_version" in h.fields or expected_ft == gguf.LlamaFileType.MOSTLY_BF16


@pytest.mark.slow  # GGUFReader parses every vocabulary string into numpy views (seconds)
def test_gguf_reader_agrees_with_the_header(tmp_path):
    (path,) = write_shape_twin(tmp_path / "out" / "g.gguf", "granite-3.0-3b-a800m")
    reader = gguf.GGUFReader(str(path))
    h = read_header(path)
    assert [t.name for t in reader.tensors] == h.names
    assert [int(t.data_offset) for t in reader.tensors] == [h.data_offset + t[3] for t in h.tensors]
    assert reader.fields["granitemoe.logit_scale"].contents() == pytest.approx(6.0)


def test_qwen35_twin_has_hybrid_layers_and_mtp_block(tmp_path):
    (path,) = write_shape_twin(tmp_path / "out" / "q35.gguf", "qwen3.5-35b-a3b")
    h = read_header(path)
    names = set(h.names)
    # layers 0-2 gated delta net, layer 3 full attention
    assert "blk.0.ssm_conv1d.weight" in names and "blk.0.attn_q.weight" not in names
    assert "blk.3.attn_q.weight" in names and "blk.3.ssm_out.weight" not in names
    assert sum(1 for n in names if n.endswith("ssm_out.weight")) == 30
    # MTP block 40 with its nextn tensors and a full MoE FFN
    assert "blk.40.nextn.eh_proj.weight" in names
    assert "blk.40.ffn_down_exps.weight" in names and "blk.40.ffn_up_shexp.weight" in names
    assert "blk.41.attn_norm.weight" not in names
    assert h.fields["qwen35moe.nextn_predict_layers"] == 1
    assert h.fields["qwen35moe.full_attention_interval"] == 4
    assert h.fields["tokenizer.ggml.tokens"][:2] == ["!", '"']  # byte-level BPE alphabet first


def test_architecture_specific_tensors():
    def names(layout: str) -> set[str]:
        return {t.name for t in twin_tensors(layout)}

    lfm = names("lfm2.5-8b-a1b")
    assert "blk.0.ffn_down.weight" in lfm and "blk.2.ffn_down_exps.weight" in lfm
    assert sum(1 for n in lfm if n.endswith("shortconv.in_proj.weight")) == 18
    assert sum(1 for n in lfm if n.endswith("attn_q.weight")) == 6
    assert "output.weight" not in lfm  # tied embeddings
    mistral = names("mistral-small-4-119b")
    assert {"blk.0.attn_kv_a_mqa.weight", "blk.0.attn_k_b.weight", "blk.0.attn_v_b.weight",
            "blk.0.ffn_gate_up_exps.weight", "blk.35.ffn_down_shexp.weight"} <= mistral
    trinity = names("trinity-large-399b")
    assert "blk.5.ffn_down.weight" in trinity and "blk.6.ffn_down_exps.weight" in trinity
    assert "blk.59.attn_gate.weight" in trinity
    assert "blk.0.attn_sinks.weight" in names("gpt-oss-20b")
    glm = names("glm-4.5-air")
    assert "blk.0.ffn_down.weight" in glm and "blk.46.nextn.eh_proj.weight" in glm


def test_quantized_twin_uses_exact_block_sizes(tmp_path):
    def apex_quality(name: str, shape: tuple[int, ...]) -> str | None:
        if "_exps." in name:
            return "IQ4_XS" if shape[0] % 256 == 0 else "Q8_0"
        if "_shexp." in name and "gate_inp" not in name:
            return "Q8_0"
        if name.endswith(".weight") and len(shape) > 1 and "gate_inp" not in name \
                and "conv1d" not in name:
            return "Q6_K"
        return None

    (path,) = write_shape_twin(tmp_path / "out" / "q.gguf", "qwen3.5-35b-a3b",
                               tensor_types=apex_quality)
    h = read_header(path)
    index = {name: i for i, name in enumerate(h.names)}
    types = h.types()
    i_down = index["blk.10.ffn_down_exps.weight"]
    assert types["blk.10.ffn_down_exps.weight"] == gguf.GGMLQuantizationType.IQ4_XS
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.IQ4_XS]
    assert h.tensor_bytes(i_down) == 512 * 2048 * 256 // block * size
    # the next tensor starts right after it (byte sizes are the real ones)
    assert h.tensors[i_down + 1][3] - h.tensors[i_down][3] == (h.tensor_bytes(i_down) + 31) // 32 * 32
    assert types["blk.10.ffn_gate_shexp.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.10.ffn_gate_inp.weight"] == gguf.GGMLQuantizationType.F32
    assert types["output.weight"] == gguf.GGMLQuantizationType.Q6_K
    assert h.fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_IQ4_XS
    assert h.fields["general.quantization_version"] == 2
    data_bytes = sum((h.tensor_bytes(i) + 31) // 32 * 32 for i in range(len(h.tensors)))
    assert path.stat().st_size == h.data_offset + data_bytes


def test_tensor_types_mapping_and_bad_block_size(tmp_path):
    out = tmp_path / "out"
    (path,) = write_shape_twin(out / "m.gguf", "olmoe-1b-7b",
                               tensor_types={"output.weight": "Q6_K"}, file_type=18)
    h = read_header(path)
    types = h.types()
    assert types["output.weight"] == gguf.GGMLQuantizationType.Q6_K
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.BF16
    assert h.fields["general.file_type"] == 18
    # qwen1.5-moe experts are 1408 wide: not a multiple of the K-quant block
    with pytest.raises(ValueError, match="ffn_down_exps.*1408.*Q4_K"):
        write_shape_twin(out / "bad.gguf", "qwen1.5-moe-a2.7b",
                         tensor_types=lambda n, s: "Q4_K" if "_exps" in n else None)
    with pytest.raises(ValueError, match="unknown ggml type"):
        write_shape_twin(out / "bad.gguf", "olmoe-1b-7b", dtype="q9_z")
    assert sorted(p.name for p in out.iterdir()) == ["m.gguf"]  # nothing half-written
    with pytest.raises(KeyError, match="unknown shape-twin layout"):
        write_shape_twin(out / "x.gguf", "no-such-model")


def test_split_shards_carry_split_keys(tmp_path):
    paths = write_shape_twin(tmp_path / "out" / "trinity.gguf", "trinity-large-399b", n_splits=4)
    assert [p.name for p in paths] == [f"trinity-{i:05d}-of-00004.gguf" for i in range(1, 5)]
    total_tensors = len(twin_tensors("trinity-large-399b"))
    seen: list[str] = []
    sizes = []
    for i, p in enumerate(paths):
        h = read_header(p)
        assert h.fields["split.no"] == i
        assert h.fields["split.count"] == 4
        assert h.fields["split.tensors.count"] == total_tensors
        assert h.field_types["split.no"] == gguf.GGUFValueType.UINT16
        assert h.field_types["split.count"] == gguf.GGUFValueType.UINT16
        assert h.field_types["split.tensors.count"] == gguf.GGUFValueType.INT32
        # as llama-gguf-split: model metadata in the first shard only, split keys last
        if i == 0:
            assert list(h.fields)[-3:] == ["split.no", "split.count", "split.tensors.count"]
            assert "general.architecture" in h.fields
        else:
            assert list(h.fields) == ["split.no", "split.count", "split.tensors.count"]
        assert h.tensors, "every shard holds tensors"
        assert h.tensors[0][3] == 0  # offsets are relative to each shard's data section
        seen += h.names
        sizes.append(p.stat().st_size)
        assert p.stat().st_blocks * 512 < MAX_DISK_BYTES
    assert seen == [t.name for t in twin_tensors("trinity-large-399b")]
    assert max(sizes) < 2 * min(sizes)  # roughly balanced by bytes


def test_writes_are_atomic_and_replace(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "g.gguf"
    target.write_bytes(b"old")
    write_shape_twin(target, "granite-3.0-3b-a800m")
    with target.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert sorted(p.name for p in out.iterdir()) == ["g.gguf"]


def test_mmproj_twin(tmp_path):
    path = write_mmproj_twin(tmp_path / "out" / "mmproj-F16.gguf")
    st = path.stat()
    assert 0.8e9 < st.st_size < 0.95e9
    assert st.st_blocks * 512 < MAX_DISK_BYTES
    h = read_header(path)
    assert h.fields["general.architecture"] == "clip"
    assert h.fields["clip.has_vision_encoder"] is True
    assert h.fields["clip.vision.block_count"] == 27
    names = set(h.names)
    assert {"v.patch_embd.weight", "v.blk.26.attn_qkv.weight", "mm.0.weight",
            "mm.2.weight"} <= names
    f16 = sum(h.tensor_bytes(i) for i, t in enumerate(h.tensors)
              if t[2] == gguf.GGMLQuantizationType.F16)
    assert 0.8e9 < f16 < 0.95e9



# ---------------------------------------------------------------------------------------------
# llama.cpp loads the twins


def _quantize_tool() -> Path | None:
    try:
        from apex_gui.core.jobs.tools import LlamaTools

        return LlamaTools().path("quantize")
    except Exception:
        return None


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}


@pytest.mark.parametrize("name", ALL_LAYOUTS)
def test_llama_quantize_dry_run_loads_twin(tmp_path, name):
    quantize = _quantize_tool()
    if quantize is None:
        pytest.skip("llama-quantize not found")
    (path,) = write_shape_twin(tmp_path / f"{name}.gguf", name)
    proc = subprocess.run([str(quantize), "--dry-run", str(path), "Q4_K_M"],
                          capture_output=True, text=True, errors="replace", timeout=60,
                          env=_clean_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "quant size" in out
    n = len(twin_tensors(name))
    assert f"/{n:4d}]" in out or f"/{n}]" in out


def test_llama_quantize_dry_run_loads_split_and_quantized_twins(tmp_path):
    quantize = _quantize_tool()
    if quantize is None:
        pytest.skip("llama-quantize not found")
    paths = write_shape_twin(tmp_path / "q35.gguf", "qwen3.5-35b-a3b", n_splits=3)
    (mixed,) = write_shape_twin(tmp_path / "q35-q8.gguf", "qwen3.5-35b-a3b",
                                tensor_types=lambda n, s: "Q8_0" if "_exps" in n else None)
    sizes = []
    for p in (paths[0], mixed):
        proc = subprocess.run([str(quantize), "--dry-run", str(p), "Q4_K_M"],
                              capture_output=True, text=True, errors="replace", timeout=60,
                              env=_clean_env())
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        sizes.append([line for line in out.splitlines() if "quant size" in line])
    # the target size does not depend on how the input is split or typed
    assert sizes[0] == sizes[1]
