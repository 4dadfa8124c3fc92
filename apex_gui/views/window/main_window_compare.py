"""Comparing the plan with a profile or another file (diff mode)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog

from apex_gui.core.gguf.model import open_model
from apex_gui.core.gguf.reader import GGUFError
from apex_gui.core.plan.precision import PrecisionPlan, plan_from_gguf, plan_from_profile
from apex_gui.core.plan.profiles import ProfileError, get_profile
from apex_gui.qt.workers import CancelToken
from apex_gui.views.window.model_loading import DEFAULT_PROFILE, open_error_message


class PlanComparison:
    """Comparing the plan with a profile or another file (diff mode): a part of MainWindow, which derives from it."""

    # --- diff -------------------------------------------------------------------------------
    def set_diff(self, choice: str) -> None:
        """"" (off), "detected", "profile:<key>", or "file" (asks for a GGUF)."""
        model = self.current_model
        if model is None:
            return
        if choice == "file":
            self.choose_compare_file()
            return
        reference: PrecisionPlan | None = None
        label = ""
        try:
            if choice == "detected" and self.profile_matches:
                profile = self.profile_matches[0].profile
                reference = self._detected_plan or plan_from_profile(model, profile)
                label = f"profile {profile.label}"
            elif choice.startswith("profile:"):
                profile = get_profile(choice.split(":", 1)[1])
                reference, label = plan_from_profile(model, profile), f"profile {profile.label}"
        except (ValueError, ProfileError) as error:
            self.show_error("Cannot compare", str(error))
            return
        self._set_reference(reference, label, choice if reference is not None else "")

    def _set_reference(self, reference: PrecisionPlan | None, label: str, choice: str) -> None:
        self.reference_plan = reference
        self._diff_choice = choice
        self.heatmap.set_reference(reference, label)
        self.diff_action.blockSignals(True)
        self.diff_action.setChecked(reference is not None)
        self.diff_action.blockSignals(False)
        self._update_diff_summary()

    def _update_diff_summary(self) -> None:
        plan, reference = self.current_plan, self.reference_plan
        if plan is None or reference is None:
            self.plan_panel.set_diff_choice("", "")
            return
        differing = plan.diff(reference)
        share = plan.differing_bytes_share(reference)
        label = self.heatmap.reference_label
        summary = (f"{len(differing)} tensors ({share:.1%} of bytes) differ from {label}"
                   if differing else f"identical to {label}")
        self.plan_panel.set_diff_choice(self._diff_choice, summary)

    def _diff_toggled(self, on: bool) -> None:
        if not on:
            self.set_diff("")
        elif self.profile_matches:
            self.set_diff("detected")
        elif self.current_plan is not None and self.current_plan.profile is not None:
            # The plan's own profile: diff mode then shows exactly the hand edits.
            self.set_diff(f"profile:{self.current_plan.profile.key}")
        elif self.current_plan is not None:
            self.set_diff(f"profile:{DEFAULT_PROFILE}")

    def choose_compare_file(self) -> None:
        if self.current_model is None:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Compare with another GGUF",
                                              str(self.current_model.path.parent),
                                              "GGUF models (*.gguf);;All files (*)")
        if path:
            self.compare_with_file(Path(path))
        else:
            self.plan_panel.set_diff_choice(self._diff_choice, self.plan_panel.diff_label.text())

    def compare_with_file(self, path: str | Path) -> None:
        """Diff against the real types of another GGUF of the same model (read off-thread)."""
        file_path = Path(path)
        model = self.current_model
        if model is None:
            return

        def read(_token: CancelToken) -> PrecisionPlan:
            other = open_model(file_path)
            ours = {t.name: t.shape for t in model.tensors}
            theirs = {t.name: t.shape for t in other.tensors}
            if ours != theirs:
                missing = len(set(ours) ^ set(theirs))
                raise GGUFError(file_path, f"is not the same model as {model.path.name} "
                                f"({missing} tensor names or shapes differ): compare quants of one model")
            return plan_from_gguf(other)

        self.statusBar().showMessage(f"Reading {file_path.name}...")
        task = self.workers.submit(f"compare with {file_path.name}", read)
        self._compare_task = task
        task.finished.connect(lambda plan: self._set_reference(plan, file_path.name, f"gguf:{file_path}")
                              if task is self._compare_task else None)
        task.failed.connect(lambda error: self.show_error(
            f"Cannot compare with {file_path.name}", open_error_message(file_path, error)))
