"""RPC workers in the window: the Hardware & tiers panel probes a real rpc-server, fits the
tiers across it and shows the --rpc command; non-private addresses are warned about; the Run
panel runs imatrix and evaluations across the workers in the settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from apex_gui.core.fit.rpc_local import LocalRpcWorker
from apex_gui.core.gguf.model import open_model
from apex_gui.core.jobs.assembly import pipeline_for
from apex_gui.core.settings import Settings
from apex_gui.qt.job_queue import JobQueue
from apex_gui.views.hardware.hardware_panel import HardwarePanel
from apex_gui.views.run.run_panel import RunPanel
from fakes import fake_snapshot

pytestmark = pytest.mark.gui


def test_the_panel_fits_across_a_probed_worker_and_shows_the_rpc_command(
        qtbot, twin_model, llama_tools):
    with LocalRpcWorker(llama_tools, threads=1) as worker:
        endpoint = worker.worker.endpoint
        panel = HardwarePanel(twin_model, snapshot=fake_snapshot(), auto_probe=False)
        qtbot.addWidget(panel)
        assert "fitting to this machine alone" in panel.rpc_box.status.text()
        with qtbot.waitSignal(panel.rpc_box.probesChanged, timeout=30_000) as probed:
            panel.rpc_box.edit.setText(endpoint)
        assert probed.args[0][0].reachable
        assert panel.rpc_box.status.text().startswith(f"RPC worker {endpoint}: RPC0 ")
        assert not panel.rpc_box.warning.isVisible()  # loopback: nothing to warn about

        def across_worker(rec: object) -> bool:
            return rec is not None and rec.machine.rpc_workers == (endpoint,)

        with qtbot.waitSignal(panel.recommendationChanged, timeout=30_000,
                              check_params_cb=across_worker) as fitted:
            pass
        machine = fitted.args[0].machine
        assert machine.gpus[0].name == f"RPC0 {endpoint}" and machine.gpus[0].source == "rpc"
        panel.table.selectRow(0)
        command = panel.command_edit.text()
        assert f"--rpc {endpoint}" in command and "-ts " in command
        # The worker's bar comes first, as its device does in the fit, and shows its need.
        assert panel.bars[0].text().startswith(f"RPC0 {endpoint} (RPC worker)")
        selected = panel.selected_fit()
        assert selected is not None and selected.estimate.devices[0].name.startswith("RPC0")
        assert panel.bars[0].need == selected.estimate.devices[0].total
        panel.shutdown()


def test_a_public_worker_is_warned_about_and_a_dead_one_named(qtbot, twin_model):
    panel = HardwarePanel(twin_model, snapshot=fake_snapshot(), auto_probe=False)
    qtbot.addWidget(panel)
    panel.show()
    with qtbot.waitSignal(panel.rpc_box.probesChanged, timeout=30_000):
        panel.rpc_box.edit.setText("1.2.3.4:50052")  # public; unreachable from here
    assert panel.rpc_box.warning.isVisible()
    assert "1.2.3.4:50052 is on a public address" in panel.rpc_box.warning.text()
    assert "no authentication" in panel.rpc_box.warning.text()
    assert panel.rpc_box.status.text().startswith("RPC worker 1.2.3.4:50052: ")
    assert panel.machine().rpc_workers == ()  # an unreachable worker is not planned with
    panel.rpc_box.edit.setText("10.0.0.2")
    panel.rpc_box.probe()
    assert "has no port" in panel.rpc_box.status.text()
    panel.shutdown()


def test_the_run_panel_runs_imatrix_and_evaluations_across_the_settings_workers(
        qtbot, tmp_path: Path, tiny_qwen2moe: Path):
    settings = Settings(rpc_workers="127.0.0.1:50052, 192.168.1.20:50052")
    panel = RunPanel(JobQueue(), open_model(tiny_qwen2moe), settings=settings)
    qtbot.addWidget(panel)
    panel.output_dir.edit.setText(str(tmp_path / "out"))
    panel.set_checked_profiles(["i-mini"])
    request = panel.request()
    assert request.options.rpc_workers == ("127.0.0.1:50052", "192.168.1.20:50052")
    pipeline = pipeline_for(request)
    spread = {s.key: s.job.options.rpc_workers for s in pipeline.steps}
    assert spread["imatrix"] == request.options.rpc_workers
    assert spread["i-mini:kld"] == request.options.rpc_workers
    assert spread["i-mini:quantize"] == ()
    settings.rpc_workers = "10.0.0.2"
    with pytest.raises(ValueError, match="has no port"):
        panel.request()


def test_the_window_keeps_the_worker_list_and_hands_it_to_the_run_panel(qtbot, tmp_path: Path,
                                                                       llama_tools):
    from apex_gui.core.jobs.run_store import RunStore
    from apex_gui.core.settings import load_settings
    from apex_gui.views.window.main_window import MainWindow
    from apex_gui.views.window.panels import install_panels

    store = RunStore(tmp_path / "runs.sqlite")
    window = MainWindow(probe_hardware=False)
    qtbot.addWidget(window)
    panels = install_panels(window, store=store, queue=JobQueue(llama_tools, store),
                            probe_hardware=False)
    panels.hardware.rpc_box.edit.setText("192.168.1.20:50052")
    assert load_settings().rpc_workers == "192.168.1.20:50052"  # saved for the next session
    assert panels.run._settings.rpc_workers == "192.168.1.20:50052"
    panels.hardware.rpc_box._debounce.stop()  # no probe of an address nobody serves here
    window.close()
    store.close()
