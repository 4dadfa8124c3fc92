"""The sensitivity table as a model card shows it (:mod:`apex_gui.core.report.model_card`)."""

from __future__ import annotations

import os
from pathlib import Path

from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.gguf.types import effective_type
from apex_gui.core.report.card_facts import SensitivitySummary, safe_name
from apex_gui.core.quality.table import SensitivityTable, tensor_kind


def published_name(model_name: str) -> str:
    """``<Model>.sensitivity.json``: the table's name in the repository."""
    return f"{safe_name(model_name)}.sensitivity.json"


def sensitivity_summary(table: SensitivityTable, model: ModelInfo,
                        local_path: str | os.PathLike[str],
                        model_name: str | None = None) -> SensitivitySummary:
    """Per tensor kind, the predicted KLD of that kind alone at each candidate type (the
    type llama-quantize really writes for each tensor; "-" where that was not measured)."""
    kinds: dict[str, list[str]] = {}
    for name in table.errors:
        kinds.setdefault(tensor_kind(name), []).append(name)
    rows = []
    for kind in sorted(kinds):
        values: list[float | None] = []
        for candidate in table.candidates:
            written = {name: effective_type(candidate, model.tensor(name).row_length)
                       for name in kinds[kind]}
            if all(table.known(name, kind_type) for name, kind_type in written.items()):
                values.append(table.respond(sum(table.damage(n, t) for n, t in written.items())))
            else:
                values.append(None)
        rows.append((kind, len(kinds[kind]), tuple(values)))
    return SensitivitySummary(
        file_name=published_name(model_name or model.name), local_path=str(Path(local_path)),
        fingerprint=table.fingerprint, candidates=table.candidates, kinds=tuple(rows),
        probe_text=str(table.settings.get("text", "")),
        probe_tokens=int(table.settings.get("context", 0)) * int(table.settings.get("chunks", 0)))
