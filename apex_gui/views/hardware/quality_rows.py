"""The quality side of the Hardware & tiers table: KL figures per tier and the optimizer's
"Best plan for this set-up" row. Runs in the panel's worker (no widgets touched here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from apex_gui.core.fit.quality_rank import QualityFigure
from apex_gui.core.fit.recommend import Recommendation
from apex_gui.core.fit.placement import Candidate, FitResult
from apex_gui.core.jobs.run_store import RunStore, RunStoreError
from apex_gui.core.quality.figures import quality_figures
from apex_gui.core.quality.known import known_sensitivity
from apex_gui.core.quality.optimizer import BudgetTooSmall, optimize_for_fit


def figures_for(model: Any, candidates: Sequence[Candidate],
                table: Any = None) -> tuple[Any, dict[str, QualityFigure]]:
    """The sensitivity table to use (the one given, else one measured earlier) and every KL
    figure known for the candidates (measured runs, predicted, published)."""
    if table is None:
        try:
            table = known_sensitivity(model)
        except OSError:
            table = None  # an unreadable model file is reported by the fit itself
    try:
        store: Any = RunStore.for_reading()
    except RunStoreError:
        store = None
    try:
        keys = [c.key for c in candidates]
        return table, quality_figures(model, keys, table=_matching(model, table), store=store)
    finally:
        if store is not None:
            store.close()


def _matching(model: Any, table: Any) -> Any:
    """The table when it covers this model's tensors (a table of another model predicts
    nothing about this one)."""
    if table is None:
        return None
    names = {t.name for t in model.tensors}
    return table if table.errors and set(table.errors) <= names else None


def best_plan_for(model: Any, table: Any, machine: Any, ctx: Any,
                  margin: int) -> tuple[Any, FitResult] | None:
    """The optimizer's plan that loads fully here and its fit, or None (no table, or even
    the smallest plan does not load)."""
    if _matching(model, table) is None:
        return None
    try:
        return optimize_for_fit(model, table, machine, ctx, margin=margin)
    except (BudgetTooSmall, ValueError, KeyError):
        return None


def kl_cell(rec: Recommendation, fit: FitResult, best_plan: Any = None) -> tuple[str, str]:
    """The KL column's text and tooltip for one row."""
    if best_plan is not None:
        return (f"{best_plan.predicted_kld:.4g} (predicted)",
                "Predicted mean KL divergence of the optimizer's plan (measured sensitivity)")
    figure = rec.quality.get(fit.candidate.key)
    if figure is None:
        return "--", "No KL divergence measured, predicted or published for this tier"
    return f"{figure.kld:.4g} ({figure.basis})", figure.source
