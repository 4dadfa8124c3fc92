"""The Hub dialog against a Hub that accepts connections and never answers (issue 20, #15):
the search fails with a timeout message instead of spinning on, and Stop frees the dialog
at once while the stalled call runs out its timeout off the GUI thread."""

from __future__ import annotations

import huggingface_hub.constants as hub_constants
import pytest
from pytestqt.qtbot import QtBot

import local_hub
from apex_gui.core.hub import download
from apex_gui.qt.workers import WorkerPool
from apex_gui.views.window.hf_download import HubDownloadDialog


@pytest.fixture
def stalled_hub(monkeypatch: pytest.MonkeyPatch):
    with local_hub.stalled_server() as url:
        monkeypatch.setattr(hub_constants, "ENDPOINT", url)
        monkeypatch.setattr(download, "API_TIMEOUT_S", 1.0)
        monkeypatch.setattr(download, "_bounded", False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield url


@pytest.mark.gui
def test_stalled_search_ends_with_a_timeout_message(qtbot: QtBot, stalled_hub: str) -> None:
    pool = WorkerPool()
    dialog = HubDownloadDialog(pool)
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitUntil(lambda: dialog.network_ok is True, timeout=10000)  # the socket accepts
    qtbot.keyClicks(dialog.search_edit, "qwen")
    with qtbot.waitSignal(dialog.statusChanged, timeout=30000,
                          check_params_cb=lambda text: "did not answer" in text):
        dialog.search_button.click()
    assert "within 1 s" in dialog.status_label.text()
    # The worker reports its error, then that it stopped: two queued reports, the second
    # may come in a later turn of the event loop on a busy machine.
    qtbot.waitUntil(dialog.search_button.isEnabled, timeout=10000)
    pool.shutdown()


@pytest.mark.gui
def test_stop_frees_a_dialog_stalled_on_a_listing(qtbot: QtBot, stalled_hub: str) -> None:
    pool = WorkerPool()
    dialog = HubDownloadDialog(pool)
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitUntil(lambda: dialog.network_ok is True, timeout=10000)
    dialog.repo_edit.setText("owner/model")
    dialog.list_button.click()
    assert not dialog.list_button.isEnabled() and dialog.cancel_button.text() == "Stop"
    with qtbot.waitSignal(dialog.statusChanged, timeout=5000,
                          check_params_cb=lambda text: text == "Stopped."):
        dialog.cancel_button.click()
    assert dialog.list_button.isEnabled() and dialog.cancel_button.text() == "Close"
    assert dialog.isVisible()
    pool.shutdown()
