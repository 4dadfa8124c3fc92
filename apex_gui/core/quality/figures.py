"""Every quality figure known for a model's profiles: measured, predicted, published."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from apex_gui.core.fit.quality_rank import (
    QualityFigure, measured_figures, merge_figures, predicted_figures, published_applies,
    published_figures,
)
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import all_profiles
from apex_gui.core.report.results import collect_results


def quality_figures(model: Any, keys: Iterable[str], *, table: Any = None, store: Any = None,
                    with_imatrix: bool = False) -> dict[str, QualityFigure]:
    """Every figure known for these profiles of ``model``: measured (run store), predicted
    (sensitivity ``table``), published (only for the model it was measured on); the most
    trusted per profile."""
    wanted = list(keys)
    layers: list[Mapping[str, QualityFigure]] = []
    if store is not None:
        rows = collect_results(store, reference=model.path, family_only=True)
        layers.append({k: f for k, f in measured_figures(rows).items() if k in wanted})
    if table is not None:
        profiles = all_profiles()
        plans = {k: plan_from_profile(model, profiles[k]) for k in wanted if k in profiles}
        layers.append(predicted_figures(plans, table))
    names = " ".join(str(model.metadata.get(key, "")) for key in
                     ("general.name", "general.basename", "general.base_model.0.name"))
    if published_applies(model.architecture, model.n_layer, names):
        layers.append(published_figures(wanted, with_imatrix=with_imatrix))
    return merge_figures(*layers)
