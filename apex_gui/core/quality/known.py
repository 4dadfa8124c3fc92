"""Sensitivity already measured for a model: the cache entry the default measurement wrote.

The window and ``recommend`` use a table only when one exists; they never start hours of
measuring on their own. A table saved next to the model (``MODEL.sensitivity.json``, what
``apex-studio sensitivity MODEL -o`` is usually given) counts too. A table that cannot be
used (damaged, from another model) is skipped, and the reason is there for whoever wants
to say it: the window and ``recommend`` go on without a table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from apex_gui.core.files.inputs import InputFileError
from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.jobs.calibration import CalibrationError
from apex_gui.core.quality.probe_text import probe_text
from apex_gui.core.quality.sensitivity import (DEFAULT_CANDIDATES, DEFAULT_PROBE_CHUNKS,
                                               IMATRIX_CANDIDATES, MeasurementSettings,
                                               cache_path)
from apex_gui.core.quality.table import (SensitivityFileError, SensitivityTable,
                                         check_table_matches, model_fingerprint)


def beside_model(model_path: str | os.PathLike[str]) -> Path:
    """Where a table for a model is looked for beside it: ``<stem>.sensitivity.json``."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.sensitivity.json")


def default_cache_path(model: ModelInfo, imatrix: str | os.PathLike[str] | None = None,
                       fingerprint: str | None = None) -> Path:
    """The cache entry a default ``measure_sensitivity(model, imatrix)`` writes."""
    imatrix_path = Path(imatrix) if imatrix else None
    chosen = DEFAULT_CANDIDATES + (IMATRIX_CANDIDATES if imatrix_path else ())
    settings = MeasurementSettings(model, imatrix_path, probe_text(), 512,
                                   DEFAULT_PROBE_CHUNKS, chosen)
    return cache_path(settings.key(fingerprint or model_fingerprint(model)))


class FoundTable(NamedTuple):
    """A model's measured table, where it was found, and why a table beside the model was
    not used (None when there was none, or it was used)."""

    table: SensitivityTable | None
    path: Path | None
    problem: str | None


def find_sensitivity(model: ModelInfo,
                     imatrix: str | os.PathLike[str] | None = None) -> FoundTable:
    """The measured table of this model: beside it, else in the cache."""
    fingerprint = model_fingerprint(model)
    problem = None
    beside = beside_model(model.path)
    if beside.is_file():
        try:
            table = SensitivityTable.load(beside)
            check_table_matches(table, model, beside.name)
            return FoundTable(table, beside, None)
        except (SensitivityFileError, InputFileError, OSError) as error:
            problem = f"{beside.name} not used: {error}"
    try:
        cached = default_cache_path(model, imatrix, fingerprint)
    except (CalibrationError, OSError):
        return FoundTable(None, None, problem)
    if cached.is_file():
        try:
            table = SensitivityTable.load(cached)
            if table.fingerprint == fingerprint:
                return FoundTable(table, cached, problem)
        except (SensitivityFileError, InputFileError, OSError):
            pass  # a damaged cache entry: as if there were none
    return FoundTable(None, None, problem)


def known_sensitivity(model: ModelInfo,
                      imatrix: str | os.PathLike[str] | None = None) -> SensitivityTable | None:
    """The measured table of this model (beside it, or in the cache), or None."""
    return find_sensitivity(model, imatrix).table
