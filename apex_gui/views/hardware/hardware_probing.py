"""Probing the machine's GPUs and reading devices typed by hand, for Hardware & tiers."""

from __future__ import annotations

from apex_gui.core.fit.device_spec import marketed_size_note, parse_device_spec
from apex_gui.core.units import format_size
from apex_gui.qt.workers import Task
from apex_gui.views.hardware.memory_bar import MemoryBar


class HardwareProbing:
    """Probing the machine's GPUs and reading devices typed by hand, for Hardware & tiers: a part of HardwarePanel, which derives from it."""

    # --- probing ------------------------------------------------------------------------
    def probe_hardware(self) -> Task:
        """Probe GPUs and RAM off the GUI thread."""
        probe = self._probe
        self.refresh_button.setEnabled(False)
        self.notes_label.setText("Detecting GPUs…")
        task = self._workers.submit("probe hardware", lambda _token: probe())
        self._probe_task = task
        task.finished.connect(self.set_snapshot)
        task.failed.connect(lambda error: self.notes_label.setText(f"Hardware probe failed: {error}"))
        task.done.connect(lambda: self.refresh_button.setEnabled(True))
        return task

    def _manual_changed(self, text: str) -> None:
        self._update_manual_status()
        self._show_devices()
        self.manualDevicesChanged.emit(text)
        self._debounce.start()

    def _update_manual_status(self) -> None:
        text = self.manual_edit.text().strip()
        self.manual_error = ""
        self.manual_status.setToolTip("")
        if not text:
            self.manual_status.setText("Fitting to this machine. Type devices (or pick a "
                                       "common card) to plan for another one.")
            self.manual_status.setStyleSheet("")
            return
        try:
            devices = parse_device_spec(text)
        except ValueError as error:
            self.manual_error = str(error)
            # The parser's message lists every known card and form (a paragraph): the label
            # keeps its first clause so typing does not make the panel jump; the rest is
            # in the tooltip and the "Common cards" menu.
            short = self.manual_error.split("; ", 1)[0]
            if len(short) > 110:
                short = short.split(" (", 1)[0]
            if short != self.manual_error:
                short += " (hover for the accepted forms, or pick from Common cards)"
            self.manual_status.setText(short)
            self.manual_status.setToolTip(self.manual_error)
            self.manual_status.setStyleSheet("color: #e03131;")
            return
        total = sum(d.total_bytes for d in devices)
        memory = f"{format_size(total)} ({format_size(total, binary=True)})"
        if self.add_detected_check.isChecked():
            status = (f"Planning for the detected GPUs plus {len(devices)} device(s) of "
                      f"{memory} in all.")
        else:
            status = f"Planning for {len(devices)} device(s), {memory} in all (not this machine)."
        note = marketed_size_note(text)
        self.manual_status.setText(f"{status} {note}" if note else status)
        self.manual_status.setStyleSheet("")

    def _show_devices(self) -> None:
        while self.bars_container.count():
            item = self.bars_container.takeAt(0)
            widget = item.widget()
            if widget is not None:
                widget.deleteLater()
        self.bars = []
        snapshot = self._snapshot
        manual = self.manual_devices()
        devices = manual if manual is not None else (list(snapshot.gpus) if snapshot else [])
        # The heading says whose devices the bars are: typed ones are not this machine's.
        if manual is None:
            self.devices_heading.setText("Detected on this machine")
        elif self.add_detected_check.isChecked():
            self.devices_heading.setText("Detected on this machine, plus the devices typed below")
        else:
            self.devices_heading.setText("Planning for the devices typed below (not this "
                                         "machine)")
        # Workers first, in the order llama.cpp lists devices (the fit's devices line up).
        for probe in self.rpc_probes:
            for remote in probe.devices:
                bar = MemoryBar(f"{remote.name} {remote.endpoint} (RPC worker)",
                                remote.total_bytes, remote.total_bytes - remote.free_bytes)
                self.bars_container.addWidget(bar)
                self.bars.append(bar)
        for device in devices:
            suffix = " (manual)" if device.source == "manual" else ""
            bar = MemoryBar(device.name + suffix, device.total_bytes,
                            device.total_bytes - device.free_bytes)
            self.bars_container.addWidget(bar)
            self.bars.append(bar)
        if snapshot is not None:
            system = snapshot.system
            ram = MemoryBar("System RAM", system.total_bytes,
                            system.total_bytes - system.available_bytes)
            self.bars_container.addWidget(ram)
            self.bars.append(ram)
            self.notes_label.setText("\n".join(snapshot.notes))
            # The probe's notes are about this machine ("no GPU: CPU only"): beside devices
            # typed in its place they contradicted the heading.
            replaced = manual is not None and not self.add_detected_check.isChecked()
            self.notes_label.setVisible(bool(snapshot.notes) and not replaced)
