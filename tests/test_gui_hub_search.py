"""Hub search with a fit badge per remote file; offline it says so at once."""

from __future__ import annotations

import pytest
from pytestqt.qtbot import QtBot

from apex_gui.core.fit import hardware
from apex_gui.core.fit.hardware import NvmlMemory
from apex_gui.core.hub.download import HubError, RemoteFile
from apex_gui.core.hub.search import RepoHit, fit_badge, search_repos
from apex_gui.core.units import GiB
from apex_gui.qt.workers import WorkerPool
from apex_gui.views.window.hf_download import HubDownloadDialog
from fakes import FakeGpu, FakeNvml

LISTING = [RepoHit("mudler/Qwen3.5-35B-A3B-APEX-GGUF", 5000, 40),
           RepoHit("someone/Qwen3.5-35B-A3B-GGUF", 90000, 300),
           RepoHit("other/Llama-3-8B-GGUF", 100000, 900)]
FILES = {"mudler/Qwen3.5-35B-A3B-APEX-GGUF": [
    RemoteFile("Qwen3.5-35B-A3B-APEX-Mini.gguf", 13_800_000_000),
    RemoteFile("Qwen3.5-35B-A3B-APEX-Quality.gguf", 23_500_000_000),
    RemoteFile("Qwen3.5-35B-A3B-BF16-00001-of-00002.gguf", 70_000_000_000,
               ("a", "b"))]}


def listing(query: str, limit: int) -> list[RepoHit]:
    return LISTING[:limit]


def test_search_keeps_matching_repos_most_downloaded_first() -> None:
    hits = search_repos("qwen3.5 gguf", listing)
    assert [h.repo_id for h in hits] == ["someone/Qwen3.5-35B-A3B-GGUF", "mudler/Qwen3.5-35B-A3B-APEX-GGUF"]
    with pytest.raises(HubError, match="type what to search"):
        search_repos("  ", listing)


def test_fit_badges() -> None:
    assert fit_badge(10 * GiB, [16 * GiB], 32 * GiB)[0] == "GPU"
    assert fit_badge(20 * GiB, [16 * GiB], 32 * GiB)[0] == "GPU + RAM"
    assert fit_badge(20 * GiB, [], 32 * GiB)[0] == "RAM"
    assert fit_badge(200 * GiB, [16 * GiB], 32 * GiB)[0] == "too big"
    assert fit_badge(None, [16 * GiB], 32 * GiB)[0] == "?"


@pytest.mark.gui
def test_dialog_searches_lists_and_badges_each_file(qtbot: QtBot) -> None:
    gpu = FakeGpu("NVIDIA GeForce RTX 4060 Ti", "GPU-cccc", memory=NvmlMemory(16 * GiB, 15 * GiB, GiB))
    snapshot = hardware.snapshot(backend=FakeNvml([gpu]))
    pool = WorkerPool()
    dialog = HubDownloadDialog(pool, snapshot=snapshot, listing=listing,
                               file_lister=lambda repo: FILES[repo])
    qtbot.addWidget(dialog)
    dialog.show()
    # No network here: the dialog's own check fails first; the injected listing still works.
    qtbot.waitUntil(lambda: dialog.network_ok is not None, timeout=5000)
    qtbot.keyClicks(dialog.search_edit, "APEX qwen")
    with qtbot.waitSignal(dialog.statusChanged, timeout=5000,
                          check_params_cb=lambda text: "repositories" in text):
        dialog.search_button.click()
    assert dialog.results.count() == 1
    with qtbot.waitSignal(dialog.statusChanged, timeout=5000,
                          check_params_cb=lambda text: "GGUF file(s)" in text):
        dialog.results.itemClicked.emit(dialog.results.item(0))
    assert dialog.repo_edit.text() == "mudler/Qwen3.5-35B-A3B-APEX-GGUF"
    badges = dict(zip((dialog.table.item(r, 0).text() for r in range(dialog.table.rowCount())),
                      dialog.fit_badges()))
    ram = snapshot.system.available_bytes
    assert badges["Qwen3.5-35B-A3B-APEX-Mini.gguf"] == "GPU"
    assert badges["Qwen3.5-35B-A3B-APEX-Quality.gguf"] == fit_badge(23_500_000_000, [15 * GiB], ram)[0]
    assert badges["Qwen3.5-35B-A3B-APEX-Quality.gguf"] != "GPU"
    dialog.reject()
    pool.shutdown()


@pytest.mark.gui
def test_offline_search_says_so_at_once(qtbot: QtBot, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pool = WorkerPool()
    dialog = HubDownloadDialog(pool)
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitUntil(lambda: dialog.network_ok is False, timeout=5000)
    dialog.search_edit.setText("qwen3")
    with qtbot.waitSignal(dialog.statusChanged, timeout=5000,
                          check_params_cb=lambda text: "offline" in text):
        dialog.search()
    assert "HF_HUB_OFFLINE" in dialog.status_label.text()
    dialog.reject()
    pool.shutdown()
