"""Tiers ranked by quality: which of the tiers that fit has the lowest KL divergence.

The fit ladder says which tiers load and how; among those with the best verdict and
comfortable headroom, the recommendation takes the one with the lowest KL divergence. The
figure comes, in order of trust, from a measurement of this model's quant (the run store),
from a prediction (measured sensitivity of this model, :mod:`apex_gui.core.quality`), or from
the KL means published on the APEX model cards, which apply only to the model they were
measured on (Qwen3.5-35B-A3B, its quants and shape twins): on another model they would rank
tiers by figures of a different network. All candidates are compared on one kind of figure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apex_gui.core.fit.placement import FitResult

#: Mean KL divergence against F16 published on the Qwen3.5-35B-A3B APEX model card
#: (/work/shared/reference/apex-method.md, "Published results"). Profiles without a figure
#: (Nano, Micro, I-Mini) are ranked only when something else measured them.
PUBLISHED_KLD: dict[str, float] = {
    "quality": 0.0114, "i-quality": 0.0102, "balanced": 0.0088, "i-balanced": 0.0078,
    "compact": 0.0469, "i-compact": 0.0332, "mini": 0.0870,
}
PUBLISHED_SOURCE = "published KL mean (APEX card, Qwen3.5-35B-A3B)"
#: The model the published figures were measured on: its architecture and trunk depth, or
#: its name (a fine-tune or quant named after it).
PUBLISHED_MODEL = ("qwen35moe", 40)
PUBLISHED_NAME = "qwen3.5-35b-a3b"

#: Kinds of figure, most trusted first.
BASES: tuple[str, ...] = ("measured", "predicted", "published")


@dataclass(frozen=True)
class QualityFigure:
    """A mean KL divergence against the full-precision model, and where it comes from."""

    kld: float
    basis: str  # one of BASES
    source: str  # in words, for the user


@dataclass(frozen=True)
class QualityChoice:
    """The tier picked by quality and the sentence that says why."""

    result: FitResult | None
    basis: str | None
    note: str | None


def published_applies(architecture: str, n_layer: int, name: str = "") -> bool:
    """The published KL means describe this model: Qwen3.5-35B-A3B by shape or by name."""
    named = PUBLISHED_NAME in re.sub(r"[\s_]+", "-", name.lower())
    return (architecture, n_layer) == PUBLISHED_MODEL or named


def published_figures(keys: Iterable[str], *, with_imatrix: bool = False) -> dict[str, QualityFigure]:
    """Published KL means for these profile keys; I-variants only when an importance matrix
    is at hand (without one, recommending them would send the user off to compute it)."""
    out: dict[str, QualityFigure] = {}
    for key in keys:
        if key in PUBLISHED_KLD and (with_imatrix or not key.startswith("i-")):
            out[key] = QualityFigure(PUBLISHED_KLD[key], "published", PUBLISHED_SOURCE)
    return out


def measured_figures(rows: Iterable[Any]) -> dict[str, QualityFigure]:
    """Measured KL means per profile key from :func:`apex_gui.core.report.results.collect_results`
    rows (the latest measurement of each profile's quant)."""
    out: dict[str, QualityFigure] = {}
    for row in rows:
        if getattr(row, "profile", "") and getattr(row, "kld_mean", None) is not None:
            out[row.profile] = QualityFigure(float(row.kld_mean.value), "measured",
                                             f"measured KL mean of {row.file_name}")
    return out


def predicted_figures(plans: Mapping[str, Any], table: Any) -> dict[str, QualityFigure]:
    """Predicted KL per key from a sensitivity table (a type it did not measure is estimated
    from the tensor's measured ones, and the note says so)."""
    out: dict[str, QualityFigure] = {}
    for key, plan in plans.items():
        if key.startswith("i-") and not getattr(table, "imatrix", None):
            continue  # measured without an imatrix: it cannot tell an I-variant apart
        try:
            prediction = table.predict_plan(plan)
        except KeyError:
            continue  # a type with nothing measured near it
        note = "predicted from measured sensitivity"
        if prediction.estimated:
            note += f" ({prediction.note()})"
        out[key] = QualityFigure(float(prediction.kld), "predicted", note)
    return out


def merge_figures(*layers: Mapping[str, QualityFigure]) -> dict[str, QualityFigure]:
    """Per key, the most trusted figure among the layers."""
    out: dict[str, QualityFigure] = {}
    for layer in layers:
        for key, figure in layer.items():
            held = out.get(key)
            if held is None or BASES.index(figure.basis) < BASES.index(held.basis):
                out[key] = figure
    return out


def _basis_for(eligible: Sequence[FitResult],
               figures: Mapping[str, QualityFigure]) -> tuple[str | None, list[FitResult]]:
    """The most trusted basis that covers every eligible tier, else the most trusted one that
    covers at least two (the others are then left out of the comparison)."""
    def covered(basis: str) -> list[FitResult]:
        return [r for r in eligible
                if (f := figures.get(r.candidate.key)) is not None and f.basis == basis]

    for basis in BASES:
        if len(covered(basis)) == len(eligible):
            return basis, list(eligible)
    for basis in BASES:
        if len(found := covered(basis)) >= 2:
            return basis, found
    return None, []


def choose_by_quality(eligible: Sequence[FitResult],
                      figures: Mapping[str, QualityFigure]) -> QualityChoice:
    """Among tiers that fit equally well (in tier order), the one with the lowest KL
    divergence; the first when no kind of figure covers them."""
    if not eligible:
        return QualityChoice(None, None, None)
    default = eligible[0]
    basis, ranked = _basis_for(eligible, figures)
    if basis is None or default not in ranked and len(ranked) < 2:
        return QualityChoice(default, None, None)
    best = min(ranked, key=lambda r: figures[r.candidate.key].kld)  # first of equals: order
    figure = figures[best.candidate.key]
    others = ", ".join(f"{r.candidate.label} {figures[r.candidate.key].kld:.4g}"
                       for r in ranked if r is not best)
    note = (f"Ranked by {basis} KL divergence: {best.candidate.label} {figure.kld:.4g} is "
            "the lowest among the tiers that fit as well"
            + (f" ({others})" if others else "") + f"; source: {figure.source}.")
    return QualityChoice(best, basis, note)
