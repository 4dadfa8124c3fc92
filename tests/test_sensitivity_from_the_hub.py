"""A sensitivity table published on Hugging Face: ``optimize --sensitivity hf://OWNER/REPO/
FILE.json`` downloads it through huggingface_hub (pointed at a local stand-in of the Hub's
resolve endpoint with HF_ENDPOINT), checks it is this model's table, and plans with it; the
window's "Load sensitivity table" takes the same address."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from apex_gui.core.gguf.model import open_model
from quality_tables import synthetic_table


@contextmanager
def resolve_endpoint(root: Path) -> Iterator[tuple[str, list[str]]]:
    """A minimal stand-in of the Hub: ``HEAD|GET /OWNER/REPO/resolve/REV/FILE`` serves
    ``root/OWNER/REPO/FILE`` with the headers huggingface_hub reads; yields (url, log)."""
    log: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def _serve(self, head: bool) -> None:
            log.append(f"{self.command} {self.path}")
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                self.send_error(404)
                return
            path = root.joinpath(parts[0], parts[1], *parts[4:])
            if not path.is_file():
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Repo-Commit", "0" * 40)
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(head=False)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture()
def hub(tiny_qwen2moe: Path, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    repo = tmp_path / "hub" / "someone" / "tiny-APEX-GGUF"
    repo.mkdir(parents=True)
    synthetic_table(open_model(tiny_qwen2moe)).save(repo / "tiny.sensitivity.json")
    (repo / "broken.json").write_text("[]")
    with resolve_endpoint(tmp_path / "hub") as served:
        yield served


def _optimize(model: Path, spec: str, url: str, tmp_path: Path, *extra: str):
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, "-m", "apex_gui", "optimize", str(model), "--budget",
                           "2MB", "--sensitivity", spec, "--json", *extra],
                          capture_output=True, text=True, timeout=300, env=env)


def test_optimize_plans_with_a_table_from_the_hub(hub, tiny_qwen2moe: Path,
                                                  tmp_path: Path) -> None:
    url, log = hub
    done = _optimize(tiny_qwen2moe, "hf://someone/tiny-APEX-GGUF/tiny.sensitivity.json", url,
                     tmp_path)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["bytes"] <= 2_000_000 and plan["predicted_kld"] > 0
    assert any(line.startswith("GET /someone/tiny-APEX-GGUF/resolve/") for line in log)


@pytest.mark.parametrize("spec, says", [
    ("hf://someone/tiny-APEX-GGUF/missing.json", "has no file missing.json"),
    ("hf://someone/tiny-APEX-GGUF/broken.json", "not a JSON object"),
    ("hf://someone", "is not a file on the Hub"),
])
def test_a_bad_hub_table_is_one_line(hub, tiny_qwen2moe: Path, tmp_path: Path, spec: str,
                                     says: str) -> None:
    url, _log = hub
    done = _optimize(tiny_qwen2moe, spec, url, tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert says in done.stderr


def test_a_hub_table_of_another_model_is_refused(hub, tiny_qwen3moe: Path,
                                                 tmp_path: Path) -> None:
    url, _log = hub
    done = _optimize(tiny_qwen3moe, "hf://someone/tiny-APEX-GGUF/tiny.sensitivity.json", url,
                     tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "measured on another model" in done.stderr


@pytest.mark.gui
def test_the_window_loads_a_table_from_the_hub(hub, qtbot, tiny_qwen2moe: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    from huggingface_hub import constants

    from apex_gui.core.jobs.run_store import RunStore
    from apex_gui.qt.job_queue import JobQueue
    from apex_gui.core.jobs.tools import LlamaTools
    from apex_gui.views.window.main_window import MainWindow
    from apex_gui.views.window.panels import install_panels
    from apex_gui.views.window.quality_wiring import load_sensitivity

    url, _log = hub
    monkeypatch.setattr(constants, "ENDPOINT", url)  # what HF_ENDPOINT sets at import
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    store = RunStore(tmp_path / "runs.sqlite")
    window = MainWindow(probe_hardware=False)
    qtbot.addWidget(window)
    install_panels(window, store=store, queue=JobQueue(LlamaTools(), store),
                   probe_hardware=False)
    state = window.quality_state
    try:
        with qtbot.waitSignal(window.modelChanged, timeout=60_000):
            window.open_model_file(tiny_qwen2moe)
        # The look-up of a table beside the model or in the cache finds none.
        qtbot.waitUntil(lambda: "look up sensitivity" not in window.workers.task_descriptions(),
                        timeout=60_000)
        assert state.table is None
        with qtbot.waitSignal(state.tableChanged, timeout=60_000,
                              check_params_cb=lambda table: table is not None):
            load_sensitivity(window, state, "hf://someone/tiny-APEX-GGUF/tiny.sensitivity.json")
        assert state.overlay_action.isEnabled()
        assert float(state.kld_label.text()) > 0
        # A broken one is one line in the status bar; the table in use stays.
        task = load_sensitivity(window, state, "hf://someone/tiny-APEX-GGUF/broken.json")
        with qtbot.waitSignal(task.failed, timeout=60_000):
            pass
        assert "not a JSON object" in window.statusBar().currentMessage()
        assert state.table is not None
    finally:
        window.close()
        store.close()
