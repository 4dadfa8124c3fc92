"""Sensitivity already measured for a model: the cache entry the default measurement wrote.

The window and ``recommend`` use a table only when one exists; they never start hours of
measuring on their own. A table saved next to the model (``MODEL.sensitivity.json``, what
``apex-studio sensitivity MODEL -o`` is usually given) counts too.
"""

from __future__ import annotations

import os
from pathlib import Path

from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.jobs.calibration import CalibrationError, quick_eval_text
from apex_gui.core.quality.sensitivity import (DEFAULT_CANDIDATES, IMATRIX_CANDIDATES, SensitivityTable, cache_path,
                          model_fingerprint)


def beside_model(model_path: str | os.PathLike[str]) -> Path:
    """Where a table for a model is looked for beside it: ``<stem>.sensitivity.json``."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.sensitivity.json")


def default_cache_path(model: ModelInfo, imatrix: str | os.PathLike[str] | None = None) -> Path:
    """The cache entry a default ``measure_sensitivity(model, imatrix)`` writes."""
    imatrix_path = Path(imatrix) if imatrix else None
    chosen = DEFAULT_CANDIDATES + (IMATRIX_CANDIDATES if imatrix_path else ())
    return cache_path(model_fingerprint(model), imatrix_path, chosen, quick_eval_text(),
                      512, None)


def known_sensitivity(model: ModelInfo,
                      imatrix: str | os.PathLike[str] | None = None) -> SensitivityTable | None:
    """The measured table of this model (beside it, or in the cache), or None."""
    candidates = [beside_model(model.path)]
    try:
        candidates.append(default_cache_path(model, imatrix))
    except (CalibrationError, OSError):
        pass
    names = {t.name for t in model.tensors}
    for path in candidates:
        if not path.is_file():
            continue
        try:
            table = SensitivityTable.load(path)
        except (ValueError, KeyError, OSError):
            continue
        if set(table.errors) <= names and table.errors:
            return table
    return None
