"""Synthetic MoE GGUFs: structure read back with gguf, and the real llama.cpp tools run on them."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest

from apex_gui.core.fixtures import synthetic
from apex_gui.core.fixtures.synthetic import (
    DEMO_SPEC, FALLBACK_SPEC, TINY_QWEN2MOE, TINY_QWEN3MOE, VOCAB_SIZE, SyntheticModelSpec,
    synthetic_model_path, expected_tensor_shapes, is_valid_synthetic_model, preset,
    write_synthetic_model,
)
from apex_gui.core.jobs.tools import LlamaTools, child_environment

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- helpers --------------------------------------------------------------------------------

def _tool(name: str) -> Path:
    location = LlamaTools().locate(name)
    if location.path is None:
        pytest.skip(f"llama.cpp tool {location.executable} not installed")
    return location.path


def _run(argv: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=child_environment(), timeout=120,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
    )


def _run_until_logged(argv: list[str | Path], cwd: Path, marker: str,
                      attempts: int = 8) -> subprocess.CompletedProcess[str]:
    """Run an imatrix/perplexity command, again when it exited 0 without logging ``marker``.

    These tools log through llama.cpp's common_log worker thread, which this build leaks on
    purpose (ggml-org/llama.cpp#22273, for #22142): a run can exit 0 before the queue drains
    (seen from 1 in 30 to 1 in 3 runs on a loaded 2-core machine), and the last lines ("Final estimate: PPL = ...") never appear.
    """
    for _ in range(attempts):
        proc = _run(argv, cwd)
        if proc.returncode != 0 or marker in proc.stdout:
            return proc
    return proc


def _eval_text(n_words: int = 400) -> str:
    # Byte tokenizer: one token per byte (a space becomes the 3-byte "▁"), so 400 words are
    # far above the 2 * 128 tokens that -c 128 needs.
    rng = np.random.default_rng(0)
    words = "experts route every token through a sparse mixture of small feed forward layers".split()
    return " ".join(words[i] for i in rng.integers(0, len(words), n_words)) + "\n"


def _read(path: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(path, "r")


def _field(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    assert field is not None, f"missing metadata key {key}"
    return field.contents()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("synthetic")
    specs = {"qwen2moe": TINY_QWEN2MOE, "qwen3moe": TINY_QWEN3MOE, "fallback": FALLBACK_SPEC}
    return {key: write_synthetic_model(folder / f"{key}.gguf", spec) for key, spec in specs.items()}


@pytest.fixture(scope="module")
def eval_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "eval.txt"
    path.write_text(_eval_text())
    return path


# --- the spec -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "llama"}, "unsupported synthetic architecture"),
        ({"dtype": "q4_0"}, "unsupported weight dtype"),
        ({"n_expert_used": 9}, "cannot exceed n_expert"),
        ({"n_head": 3}, "multiple of n_head"),
        ({"n_head_kv": 3}, "multiple of n_head_kv"),
        ({"n_layer": 0}, "n_layer must be > 0"),
    ],
)
def test_spec_rejects_models_llama_cpp_cannot_load(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticModelSpec(**changes)


def test_head_dim_is_derived() -> None:
    spec = SyntheticModelSpec(n_embd=512, n_head=8, n_head_kv=2)
    assert (spec.head_dim, spec.n_embd_q, spec.n_embd_kv) == (64, 512, 128)


def test_presets_by_name() -> None:
    assert preset("tiny-qwen3moe") is TINY_QWEN3MOE
    with pytest.raises(KeyError, match="known: demo"):
        preset("huge")


def test_default_rows_suit_k_quants_and_fallback_spec_does_not() -> None:
    for spec in (DEMO_SPEC, TINY_QWEN2MOE, TINY_QWEN3MOE):
        rows = {ne[0] for ne in expected_tensor_shapes(spec).values() if len(ne) > 1}
        assert all(r % 256 == 0 for r in rows), (spec.name, rows)
    down = expected_tensor_shapes(FALLBACK_SPEC)["blk.0.ffn_down_exps.weight"]
    assert down[0] % 32 == 0 and down[0] % 256 != 0


def test_fingerprint_follows_every_field() -> None:
    assert TINY_QWEN2MOE.fingerprint() == replace(TINY_QWEN2MOE).fingerprint()
    assert TINY_QWEN2MOE.fingerprint() != replace(TINY_QWEN2MOE, seed=99).fingerprint()


# --- the files, read back -------------------------------------------------------------------

def _expected_qwen2moe_layer(i: int) -> set[str]:
    names = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate_inp",
             "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_inp_shexp",
             "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"]
    return ({f"blk.{i}.{n}.weight" for n in names}
            | {f"blk.{i}.attn_{x}.bias" for x in "qkv"})


def test_qwen2moe_file_has_exactly_the_arch_tensors(models: dict[str, Path]) -> None:
    spec = TINY_QWEN2MOE
    reader = _read(models["qwen2moe"])
    found = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    expected_names = {"token_embd.weight", "output_norm.weight", "output.weight"}
    for i in range(spec.n_layer):
        expected_names |= _expected_qwen2moe_layer(i)
    assert set(found) == expected_names
    e, ff, nx = spec.n_embd, spec.n_ff_exp, spec.n_expert
    assert found["token_embd.weight"] == (e, VOCAB_SIZE)
    assert found["blk.1.ffn_gate_exps.weight"] == (e, ff, nx)
    assert found["blk.1.ffn_down_exps.weight"] == (ff, e, nx)
    assert found["blk.0.attn_k.weight"] == (e, spec.n_head_kv * spec.head_dim)
    assert found["blk.0.ffn_gate_inp_shexp.weight"] == (e,)
    assert found["blk.0.ffn_down_shexp.weight"] == (spec.n_ff_shexp, e)


def test_qwen3moe_file_has_qk_norms_and_no_shared_expert(models: dict[str, Path]) -> None:
    spec = TINY_QWEN3MOE
    reader = _read(models["qwen3moe"])
    found = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert found == expected_tensor_shapes(spec)
    assert found["blk.0.attn_q_norm.weight"] == (spec.head_dim,)
    assert not [n for n in found if "shexp" in n or n.endswith(".bias")]
    assert _field(reader, "qwen3moe.attention.key_length") == spec.head_dim
    assert _field(reader, "qwen3moe.attention.value_length") == spec.head_dim


def test_metadata_and_tokenizer(models: dict[str, Path]) -> None:
    spec = TINY_QWEN2MOE
    reader = _read(models["qwen2moe"])
    assert _field(reader, "general.architecture") == "qwen2moe"
    assert _field(reader, "general.name") == spec.name
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    hparams = {
        "context_length": spec.context_length, "embedding_length": spec.n_embd,
        "block_count": spec.n_layer, "feed_forward_length": spec.n_ff_shexp,
        "attention.head_count": spec.n_head, "attention.head_count_kv": spec.n_head_kv,
        "expert_count": spec.n_expert, "expert_used_count": spec.n_expert_used,
        "expert_feed_forward_length": spec.n_ff_exp,
        "expert_shared_feed_forward_length": spec.n_ff_shexp,
    }
    for key, value in hparams.items():
        assert _field(reader, f"qwen2moe.{key}") == value, key
    assert _field(reader, "qwen2moe.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert _field(reader, "qwen2moe.rope.freq_base") == pytest.approx(1e6)

    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert _field(reader, "tokenizer.ggml.model") == "llama"
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[3:] == [f"<0x{b:02X}>" for b in range(256)]
    assert types[3:] == [gguf.TokenType.BYTE] * 256
    assert len(_field(reader, "tokenizer.ggml.scores")) == VOCAB_SIZE
    ids = [_field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("unknown", "bos", "eos")]
    assert ids == [0, 1, 2]


def test_norms_are_f32_ones_and_weights_small(models: dict[str, Path]) -> None:
    reader = _read(models["qwen2moe"])
    tensors = {t.name: t for t in reader.tensors}
    norm = tensors["blk.0.ffn_norm.weight"]
    assert norm.tensor_type == gguf.GGMLQuantizationType.F32
    assert np.all(norm.data == 1.0)
    assert tensors["blk.0.attn_q.bias"].tensor_type == gguf.GGMLQuantizationType.F32
    weight = tensors["blk.0.ffn_up_exps.weight"]
    assert weight.tensor_type == gguf.GGMLQuantizationType.F16
    assert 0.015 < float(np.std(weight.data.astype(np.float32))) < 0.025


@pytest.mark.parametrize(
    ("dtype", "tensor_type", "file_type"),
    [
        ("f32", gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
        ("bf16", gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    ],
)
def test_weight_dtypes(tmp_path: Path, dtype: str, tensor_type, file_type) -> None:
    spec = replace(TINY_QWEN3MOE, n_layer=1, dtype=dtype)
    path = write_synthetic_model(tmp_path / f"{dtype}.gguf", spec)
    reader = _read(path)
    tensors = {t.name: t for t in reader.tensors}
    assert _field(reader, "general.file_type") == file_type
    assert tensors["blk.0.ffn_down_exps.weight"].tensor_type == tensor_type
    assert tensors["blk.0.attn_q_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tuple(int(d) for d in tensors["blk.0.ffn_down_exps.weight"].shape) == (
        spec.n_ff_exp, spec.n_embd, spec.n_expert)


def test_bf16_keeps_the_values(tmp_path: Path) -> None:
    f32 = _read(write_synthetic_model(tmp_path / "a.gguf", replace(TINY_QWEN3MOE, n_layer=1, dtype="f32")))
    bf16 = _read(write_synthetic_model(tmp_path / "b.gguf", replace(TINY_QWEN3MOE, n_layer=1, dtype="bf16")))
    name = "blk.0.attn_q.weight"
    reference = next(t for t in f32.tensors if t.name == name).data.astype(np.float32)
    raw = next(t for t in bf16.tensors if t.name == name).data
    widened = (np.asarray(raw).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_allclose(widened.reshape(reference.shape), reference, rtol=2 ** -8)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    spec = replace(TINY_QWEN3MOE, n_layer=1)
    a = write_synthetic_model(tmp_path / "a.gguf", spec).read_bytes()
    b = write_synthetic_model(tmp_path / "b.gguf", spec).read_bytes()
    c = write_synthetic_model(tmp_path / "c.gguf", replace(spec, seed=7)).read_bytes()
    assert a == b
    assert a != c


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    target = folder / "model.gguf"
    target.write_bytes(b"previous")

    def broken(writer, spec):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_add_tensors", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic_model(target, TINY_QWEN3MOE)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in folder.iterdir()) == ["model.gguf"]

    monkeypatch.undo()
    write_synthetic_model(target, TINY_QWEN3MOE)
    assert sorted(p.name for p in folder.iterdir()) == ["model.gguf"]
    assert is_valid_synthetic_model(target, TINY_QWEN3MOE)


def test_validity_check_rejects_other_and_truncated_files(tmp_path: Path, models: dict[str, Path]) -> None:
    assert is_valid_synthetic_model(models["qwen2moe"], TINY_QWEN2MOE)
    assert not is_valid_synthetic_model(models["qwen2moe"], TINY_QWEN3MOE)
    assert not is_valid_synthetic_model(models["qwen2moe"], replace(TINY_QWEN2MOE, n_layer=3))
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(models["qwen2moe"].read_bytes()[:-4096])
    assert not is_valid_synthetic_model(truncated, TINY_QWEN2MOE)
    assert not is_valid_synthetic_model(tmp_path / "missing.gguf", TINY_QWEN2MOE)


def test_demo_model_is_built_once_and_rebuilt_when_damaged(tmp_path: Path) -> None:
    spec = replace(TINY_QWEN2MOE, name="APEX demo qwen2moe (test)")
    cache = tmp_path / "cache"
    first = synthetic_model_path(cache, spec)
    stamp = first.stat().st_mtime_ns, first.stat().st_ino
    again = synthetic_model_path(cache, spec)
    assert again == first
    assert (again.stat().st_mtime_ns, again.stat().st_ino) == stamp

    first.write_bytes(first.read_bytes()[:1000])
    rebuilt = synthetic_model_path(cache, spec)
    assert rebuilt == first
    assert is_valid_synthetic_model(rebuilt, spec)


def test_demo_spec_is_bigger_than_tiny_but_small() -> None:
    def f16_bytes(spec: SyntheticModelSpec) -> int:
        return sum(2 * int(np.prod(ne)) for ne in expected_tensor_shapes(spec).values())

    assert DEMO_SPEC.n_layer >= 12
    assert f16_bytes(DEMO_SPEC) < 60_000_000
    assert f16_bytes(TINY_QWEN2MOE) < 8_000_000 and f16_bytes(TINY_QWEN3MOE) < 8_000_000


def test_demo_model_written_under_cache_dir(tmp_path: Path) -> None:
    path = synthetic_model_path(tmp_path / "cache")
    assert path.parent == tmp_path / "cache"
    assert 20_000_000 < path.stat().st_size < 60_000_000
    assert is_valid_synthetic_model(path, DEMO_SPEC)


# --- the real llama.cpp tools ---------------------------------------------------------------

@pytest.mark.parametrize("arch", ["qwen2moe", "qwen3moe"])
def test_quantize_q4_k_m(models: dict[str, Path], tmp_path: Path, arch: str) -> None:
    out = tmp_path / f"{arch}-q4km.gguf"
    proc = _run([_tool("quantize"), models[arch], out, "Q4_K_M", "2"], tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "quant size" in proc.stdout
    types = {t.name: t.tensor_type for t in _read(out).tensors}
    assert types["blk.0.ffn_up_exps.weight"] == gguf.GGMLQuantizationType.Q4_K
    assert out.stat().st_size < models[arch].stat().st_size / 2


@pytest.mark.parametrize("arch", ["qwen2moe", "qwen3moe"])
def test_perplexity_is_finite(models: dict[str, Path], eval_text: Path, tmp_path: Path, arch: str) -> None:
    proc = _run_until_logged(
        [_tool("perplexity"), "-m", models[arch], "-f", eval_text, "-c", "128", "--chunks", "2",
         "-t", "2", "--no-log-prefix", "--log-colors", "off"], tmp_path, "Final estimate: PPL")
    assert proc.returncode == 0, proc.stdout
    final = [line for line in proc.stdout.splitlines() if line.startswith("Final estimate: PPL = ")]
    assert final, proc.stdout
    ppl = float(final[-1].split("=")[1].split()[0])
    # Random weights: close to uniform over the 259-token vocabulary, and above all finite.
    assert 50 < ppl < 2000


@pytest.fixture(scope="module")
def imatrix_run(models: dict[str, Path], eval_text: Path,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    folder = tmp_path_factory.mktemp("imatrix")
    imatrix = folder / "imatrix.gguf"
    proc = _run_until_logged(
        [_tool("imatrix"), "-m", models["qwen2moe"], "-f", eval_text, "-o", imatrix, "-c", "128",
         "--chunks", "2", "-t", "2", "--no-log-prefix", "--log-colors", "off"], folder,
        "Final estimate: PPL")
    return proc, imatrix


def test_imatrix_writes_gguf(imatrix_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, imatrix = imatrix_run
    assert proc.returncode == 0, proc.stdout
    assert "computing over 2 chunks" in proc.stdout
    reader = _read(imatrix)
    assert _field(reader, "imatrix.chunk_count") == 2
    sums = {t.name: t for t in reader.tensors if t.name.endswith(".in_sum2")}
    spec = TINY_QWEN2MOE
    down = sums["blk.1.ffn_down_exps.weight.in_sum2"]
    assert int(np.prod(down.shape)) == spec.n_ff_exp * spec.n_expert
    assert "blk.0.ffn_down_shexp.weight.in_sum2" in sums


@pytest.mark.slow
def test_iq2_s_quantize_with_imatrix(models: dict[str, Path], tmp_path: Path,
                                     imatrix_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, imatrix = imatrix_run
    out = tmp_path / "iq2s.gguf"
    proc = _run([_tool("quantize"), "--imatrix", imatrix, models["qwen2moe"], out, "IQ2_S", "2"],
                tmp_path)
    assert proc.returncode == 0, proc.stdout
    types = {t.name: t.tensor_type for t in _read(out).tensors}
    assert types["blk.0.ffn_up_exps.weight"] in (gguf.GGMLQuantizationType.IQ2_S,
                                                  gguf.GGMLQuantizationType.IQ2_XS)


def test_fallback_spec_forces_quantize_fallback(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "fallback-q4k.gguf"
    proc = _run([_tool("quantize"), models["fallback"], out, "Q4_K_M", "2"], tmp_path)
    assert proc.returncode == 0, proc.stdout
    warnings = [line for line in proc.stdout.splitlines() if "falling back" in line]
    assert warnings and all("ffn_down_exps" in line for line in warnings), proc.stdout
    types = {t.name: t.tensor_type for t in _read(out).tensors}
    assert types["blk.0.ffn_down_exps.weight"] in (gguf.GGMLQuantizationType.Q5_0,
                                                    gguf.GGMLQuantizationType.Q8_0)
    assert types["blk.0.ffn_up_exps.weight"] == gguf.GGMLQuantizationType.Q4_K


# --- the recorded logs stay in step with what the tools print -------------------------------

LOGS = Path(__file__).parent / "logs"


def test_recorded_logs_are_present_with_their_key_lines() -> None:
    expectations = {
        "quantize_q4km.log": "llama_model_quantize_impl: quant size",
        "quantize_fallback.log": "-> falling back to",
        "quantize_dry_run.log": "(q4_K)",
        "quantize_needs_imatrix.log": "ERROR: this quantization requires an importance matrix!",
        "imatrix.log": "compute_imatrix: computing over 2 chunks",
        "perplexity.log": "Final estimate: PPL = ",
        "kld_base.log": "Final estimate: PPL = ",
        "kld.log": "Same top p:",
        "perplexity_too_short.log": "you need at least 256 tokens",
        "bench.jsonl": '"avg_ts"',
    }
    for name, needle in expectations.items():
        text = (LOGS / name).read_text(encoding="utf-8")
        assert needle in text, name
    codes = dict(line.split() for line in (LOGS / "exit_codes.txt").read_text().splitlines())
    assert codes["quantize_needs_imatrix.log"] == "1"
    assert codes["perplexity_too_short.log"] == "0"
