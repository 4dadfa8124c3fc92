"""The optimizer's quality-per-byte curve beside the fixed tiers: predicted KL divergence
against exact file size, for the Results view's "KL vs size" plot."""

from __future__ import annotations

from dataclasses import dataclass

from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import all_profiles
from apex_gui.core.quality.optimizer import BudgetTooSmall, optimize, smallest_plan_bytes
from apex_gui.core.quality.sensitivity import SensitivityTable


@dataclass(frozen=True)
class CurvePoint:
    label: str
    nbytes: int
    predicted_kld: float


def tier_points(model: ModelInfo, table: SensitivityTable,
                keys: tuple[str, ...] = ("quality", "balanced", "compact", "mini",
                                         "nano", "micro")) -> list[CurvePoint]:
    """Each fixed tier's exact size and its KL divergence predicted from the same table."""
    profiles = all_profiles()
    points = []
    for key in keys:
        if key not in profiles:
            continue
        plan = plan_from_profile(model, profiles[key])
        try:
            points.append(CurvePoint(profiles[key].label, plan.total_bytes(),
                                     table.predict_plan(plan).kld))
        except KeyError:
            continue  # a type with nothing measured near it
    return points


def optimizer_curve(model: ModelInfo, table: SensitivityTable, *, steps: int = 10,
                    high: int | None = None) -> list[CurvePoint]:
    """The optimizer's plans at ``steps`` budgets spaced evenly in size, from a little
    below the smallest tier (not below the optimizer's smallest plan, whose damage would
    dwarf the rest of the plot) up to ``high`` (default: the largest tier)."""
    low = smallest_plan_bytes(model, table)
    tiers = tier_points(model, table)
    if tiers:
        low = max(low, int(min(p.nbytes for p in tiers) * 0.75))
    if high is None:
        high = max((p.nbytes for p in tiers), default=low * 2)
    points = []
    for index in range(steps):
        budget = low + (high - low) * index // max(steps - 1, 1)
        try:
            result = optimize(model, table, budget)
        except BudgetTooSmall:
            continue
        points.append(CurvePoint("optimizer", result.plan.total_bytes(), result.predicted_kld))
    return points
