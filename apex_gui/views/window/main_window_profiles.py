"""Switching, resetting and saving profiles from the main window."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QInputDialog

from apex_gui.core.plan.detect import profile_from_plan
from apex_gui.core.plan.precision import plan_from_gguf, plan_from_profile
from apex_gui.core.plan.profiles import (
    ProfileError, all_profiles, get_profile, save_user_profile, user_profiles,
)
from apex_gui.core.units import format_size


class ProfileActions:
    """Switching, resetting and saving profiles from the main window: a part of MainWindow, which derives from it."""

    # --- profiles ---------------------------------------------------------------------------
    def switch_profile(self, key: str) -> None:
        """Replace the plan with a profile's (or, for "stored", the file's own types)."""
        model, plan = self.current_model, self.current_plan
        if model is None or plan is None:
            return
        if plan.can_undo() and not self.confirm(
                "Switch profile?", "Switching the profile starts a new plan: your edits to the "
                "current one are dropped. Export it first (Ctrl+S) to keep them."):
            self.plan_panel.set_profiles(all_profiles(), plan.profile.key if plan.profile else None,
                                         f"As stored in {model.path.name}" if not model.is_full_precision else None)
            return
        try:
            if key == "stored":
                new_plan = plan_from_gguf(model)
            else:
                new_plan = plan_from_profile(model, get_profile(key))
                self._profile_key = new_plan.profile.key if new_plan.profile else key
        except (ValueError, ProfileError) as error:
            self.show_error("Cannot use this profile", str(error))
            return
        detected = self.profile_matches[0].profile if self.profile_matches else None
        self._set_plan(new_plan, band_profile=detected)
        # The request may come from elsewhere (Hardware & tiers): the picker shows the result.
        self.plan_panel.select_profile(key if key == "stored" or new_plan.profile is None
                                       else new_plan.profile.key)
        if self.reference_plan is not None:
            self._update_diff_summary()
            self.heatmap.set_reference(self.reference_plan, self.heatmap.reference_label)
        self.statusBar().showMessage(f"Plan: {new_plan.origin}, {format_size(new_plan.total_bytes())}", 6000)

    def reset_to_profile(self) -> None:
        """Every cell back to the profile's (or the file's) type, as one undoable step."""
        plan, baseline = self.current_plan, self._baseline
        if plan is None or baseline is None:
            return
        change = plan.set_tensor_types(baseline.types, f"reset to {baseline.origin}")
        self.statusBar().showMessage("Already matches the profile" if change is None else
                                     f"Reset to {baseline.origin} (Ctrl+Z undoes it)", 5000)

    def save_as_profile(self) -> None:
        plan = self.current_plan
        if plan is None:
            return
        label, ok = QInputDialog.getText(self, "Save as my profile", "Profile name:",
                                         text=f"My {plan.profile.label if plan.profile else 'plan'}")
        if ok and label.strip():
            self.save_profile_named(label.strip())

    def save_profile_named(self, label: str) -> Path | None:
        """Save the plan as a user profile (config folder) and offer it in the picker."""
        plan = self.current_plan
        if plan is None:
            return None
        key = "".join(c if c.isalnum() or c in "-_." else "-" for c in label.lower()).strip("-") or "my-profile"
        try:
            profile, notes = profile_from_plan(plan, key, label)
            path = save_user_profile(profile)
        except (ProfileError, ValueError, OSError) as error:
            self.show_error("Cannot save the profile", f"{label}: {error}")
            return None
        current = plan.profile.key if plan.profile else None
        model = plan.model
        self.plan_panel.set_profiles(all_profiles(), current,
                                     f"As stored in {model.path.name}" if not model.is_full_precision else None)
        self._edits_kept = True
        problems = user_profiles()[1]
        message = f"Saved profile {label} to {path}"
        if notes:
            message += " (" + "; ".join(notes) + ")"
        if problems:
            message += f"; unreadable user profiles: {'; '.join(problems)}"
        self.statusBar().showMessage(message, 10000)
        return path
