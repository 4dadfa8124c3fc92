"""Wire the Hardware & tiers, Run and Results panels into the main window.

``install_panels(window)`` is the only place that knows both sides: the panels stay
standalone widgets (tested without a window) and the window knows nothing about them beyond
``add_panel``, ``add_close_guard``, ``switch_profile``, ``workers``, ``settings`` and its
``modelChanged`` / ``planChanged`` signals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apex_gui.core.fit.job_placement import JobPlacer
from apex_gui.core.jobs.baselines import baselines
from apex_gui.core.jobs.run_store import RunStore, RunStoreError
from apex_gui.core.jobs.tools import LlamaTools
from apex_gui.core.settings import save_settings
from apex_gui.qt.job_queue import JobQueue
from apex_gui.views.hardware.hardware_panel import HardwarePanel
from apex_gui.views.results.results_panel import ResultsPanel
from apex_gui.views.run.run_panel import RunPanel
from apex_gui.views.window.quality_wiring import install_quality

__all__ = ["InstalledPanels", "install_panels"]


@dataclass
class InstalledPanels:
    hardware: HardwarePanel
    run: RunPanel
    results: ResultsPanel
    queue: JobQueue
    store: RunStore


def install_panels(window: Any, *, store: RunStore | None = None,
                   queue: JobQueue | None = None, probe_hardware: bool = True) -> InstalledPanels:
    """Create the three panels, add them to ``window`` and connect the signals.

    * Hardware & tiers (centre): ``applyProfileRequested(key)`` -> ``window.switch_profile``
      and back to the heatmap tab; its recommendation feeds the model card's run commands.
    * Run (centre): jobs go through one :class:`JobQueue` recording into the run store; a
      close guard asks before quitting while jobs run, then cancels them and waits.
    * Results (centre): refreshed after every job; uniform baselines are sized in the
      background for each newly opened full-precision model (size-only rows).
    """
    settings = window.settings
    store = store or RunStore()
    try:
        store.mark_interrupted()  # runs a previous session left "running" ended with it
    except RunStoreError as error:  # locked by another program: they are marked next time
        window.statusBar().showMessage(str(error), 15_000)
    tools = placed_tools(settings, window)
    queue = queue or JobQueue(tools, store, parent=window)

    hardware = HardwarePanel(window.current_model, workers=window.workers,
                             context=getattr(settings, "context_length", 8192),
                             kv_cache_type=getattr(settings, "kv_cache_type", "f16"),
                             manual_devices=getattr(settings, "manual_devices", ""),
                             auto_probe=probe_hardware,
                             rpc_workers=getattr(settings, "rpc_workers", ""))
    run = RunPanel(queue, window.current_model, window.current_plan, settings=settings)
    results = ResultsPanel(store)
    results.set_model(window.current_model)

    window.add_panel("Hardware && tiers", hardware, area="center")
    window.add_panel("Run", run, area="center")
    window.add_panel("Results", results, area="center")

    def size_baselines(model: Any) -> None:
        results.set_baselines([])
        if model is None or not model.is_full_precision:
            return

        task = window.workers.submit("size baselines", lambda token: baselines(
            model, tools=tools, cancelled=lambda: token.cancelled))
        task.finished.connect(lambda found, m=model: results.set_baselines(found[0])
                              if window.current_model is m else None)

    def model_changed(model: Any) -> None:
        hardware.set_model(model)
        run.set_model(model)
        results.set_model(model)
        size_baselines(model)

    window.modelChanged.connect(model_changed)
    window.planChanged.connect(run.set_plan)
    def apply_profile(key: str) -> None:
        window.switch_profile(key)
        tabs = getattr(window, "center_tabs", None)
        if tabs is not None:
            tabs.setCurrentIndex(0)  # show the heatmap the tier was applied to

    def remember(**values: Any) -> None:
        """Keep what the user set in a panel for the next session (typed settings file)."""
        changed = False
        for key, value in values.items():
            if getattr(settings, key, None) != value:
                setattr(settings, key, value)
                changed = True
        if changed:
            try:
                save_settings(settings)
            except OSError as error:
                window.statusBar().showMessage(f"Could not save settings: {error}", 8000)

    def hardware_devices_changed(text: str) -> None:
        remember(manual_devices=text)
        plan_panel = getattr(window, "plan_panel", None)
        if plan_panel is not None and plan_panel.device_edit.text() != text:
            plan_panel.set_manual_devices_text(text)  # one device list for both fit views

    def settings_changed(new: Any) -> None:
        # The queue looks tools up when a job starts: the next job uses the folder just
        # chosen, a running one keeps its process.
        queue.tools = placed_tools(new, window)
        hardware.set_context(getattr(new, "context_length", 8192),
                             getattr(new, "kv_cache_type", "f16"))
        run.set_default_output_dir(getattr(new, "output_dir", "") or "")

    def job_started(job_id: int) -> None:
        window.statusBar().showMessage(f"Running {queue.job(job_id).title()}: see the Run tab",
                                       0)

    hardware.manualDevicesChanged.connect(hardware_devices_changed)
    # The Run panel reads the worker list from the settings when a run starts.
    hardware.rpc_box.workersChanged.connect(lambda text: remember(rpc_workers=text))
    hardware.contextChanged.connect(
        lambda context, kv: remember(context_length=context, kv_cache_type=kv))
    hardware.commandCopied.connect(
        lambda _text: window.statusBar().showMessage("llama-server command copied", 4000))
    plan_devices = getattr(getattr(window, "plan_panel", None), "manualDevicesChanged", None)
    if plan_devices is not None:
        plan_devices.connect(hardware.set_manual_devices)
    settings_signal = getattr(window, "settingsChanged", None)
    if settings_signal is not None:
        settings_signal.connect(settings_changed)
    queue.jobStarted.connect(job_started)
    run.startRefused.connect(lambda message: window.show_error("Cannot start the run",
                                                               f"Not started: {message}."))
    results.exported.connect(lambda path: window.statusBar().showMessage(f"Wrote {path}", 8000))
    results.exportFailed.connect(lambda message: window.show_error("Cannot export", message))
    hardware.applyProfileRequested.connect(apply_profile)
    hardware.recommendationChanged.connect(
        lambda rec: results.set_recommendation(rec, hardware.hardware_label()))
    memory_view = getattr(window, "memory_view", None)
    if memory_view is not None:
        # The Memory tab speaks of the set-up the fit table is for, typed devices included.
        hardware.recommendationChanged.connect(lambda rec: memory_view.set_machine(
            rec.machine if rec is not None else None))
    run.jobFinished.connect(lambda _outcome: results.refresh())

    def close_guard() -> bool:
        if run.has_running_jobs():
            if not window.confirm("Jobs are running",
                                  "Quantize or evaluation jobs are still running. Cancel them "
                                  "and quit? Their unfinished output files are deleted."):
                return False
            run.cancel_all_and_wait(10_000)
        hardware.shutdown()
        return True

    window.add_close_guard(close_guard)

    install_quality(window, hardware, queue, results)
    if window.current_model is not None:
        size_baselines(window.current_model)
    return InstalledPanels(hardware, run, results, queue, store)


def placed_tools(settings: Any, window: Any) -> LlamaTools:
    """The tools as set up, each job placed on the devices by the memory model when it starts
    (or on the CPU with the "CPU only" setting). The tools' device list (``--list-devices``,
    up to a second with a Vulkan backend) is read now on a worker, so the first job does not
    wait for it on the GUI thread."""
    tools = LlamaTools.for_settings(settings)
    placer = JobPlacer(tools)
    tools.placer = placer
    if tools.locate("perplexity").path is not None:
        window.workers.submit("list the tools' devices", lambda _token: placer.listing())
    return tools
