"""Loading a model off the GUI thread for the window: the plan it opens with, the errors."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from apex_gui.core.gguf.browse import MetadataRow, TensorRow, metadata_rows, tensor_rows
from apex_gui.core.gguf.model import FileKind, ModelInfo, open_model
from apex_gui.core.gguf.reader import GGUFError
from apex_gui.core.plan.detect import ProfileMatch, detect_profile
from apex_gui.core.plan.precision import PrecisionPlan, plan_from_gguf, plan_from_profile
from apex_gui.core.plan.profiles import Profile, ProfileError, all_profiles, get_profile
from apex_gui.qt.workers import CancelToken
from apex_gui.views.window.model_info import render_summary_html


DEFAULT_PROFILE = "quality"
PANEL_AREAS = ("right", "bottom", "center")


@dataclass
class LoadedModel:
    """What the open worker hands to the GUI thread: everything computed, nothing to wait on."""

    model: ModelInfo
    plan: PrecisionPlan
    profile_key: str | None  # None: the plan is the file's own types
    matches: list[ProfileMatch]
    baseline: PrecisionPlan  # what "reset" returns to and "change" is measured against
    detected_plan: PrecisionPlan | None  # the closest profile's plan, for diff mode
    profiles: dict[str, Profile]
    summary_html: str
    seconds: float
    tensor_rows: list[TensorRow] = field(default_factory=list)  # the Tensors tab, made off-thread
    metadata_rows: list[MetadataRow] = field(default_factory=list)


def load_model(path: Path, profile_key: str, token: CancelToken) -> LoadedModel:
    """Open a GGUF and build its first plan (runs on a worker thread; Qt-free)."""
    started = time.perf_counter()
    token.progress(0.1, f"reading {path.name}")
    model = open_model(path)
    if model.file_kind is not FileKind.MODEL:
        raise GGUFError(path, f"is a {model.file_kind.value}, not a model: open the model "
                              "GGUF it belongs to")
    token.raise_if_cancelled()
    # Everything that costs more than a few milliseconds is computed here, so the GUI
    # thread only hands finished objects to the widgets (a 400B model stays smooth).
    matches: list[ProfileMatch] = []
    detected_plan: PrecisionPlan | None = None
    if not model.is_full_precision:
        token.progress(0.5, "detecting the profile")
        plan = plan_from_gguf(model)
        baseline = plan_from_gguf(model)
        matches = detect_profile(model)
        detected_plan = plan_from_profile(model, matches[0].profile) if matches else None
        key: str | None = None
    else:
        token.progress(0.5, "planning")
        profile = get_profile(profile_key)
        plan = plan_from_profile(model, profile)
        baseline = plan_from_profile(model, profile)
        key = plan.profile.key if plan.profile else profile_key
    token.raise_if_cancelled()
    summary = render_summary_html(model, matches)
    planned = {name: plan.effective_type(name) for name in plan.types}
    return LoadedModel(model, plan, key, matches, baseline, detected_plan, all_profiles(), summary,
                       time.perf_counter() - started, tensor_rows(model, planned), metadata_rows(model))


def open_error_message(path: Path, error: BaseException) -> str:
    """A message that names the file and what to do; never a traceback."""
    if isinstance(error, GGUFError):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return f"{path}: the file does not exist (moved or deleted?). Choose it again with File > Open."
    if isinstance(error, PermissionError):
        return f"{path}: permission denied. Check the file's permissions."
    if isinstance(error, IsADirectoryError):
        return f"{path} is a folder: choose a .gguf file inside it."
    if isinstance(error, OSError):
        return f"{path}: cannot be read ({error.strerror or error}). Check the disk and the path."
    if isinstance(error, (ValueError, ProfileError)):
        return f"{path}: {error}"
    return (f"{path}: unexpected error ({type(error).__name__}: {error}). Please report it with "
            "the file's `apex-studio inspect` output.")
