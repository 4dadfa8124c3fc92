"""Which tiers to offer on the Hardware & tiers panel: each one buildable as shown.

A plain profile whose types need an importance matrix (Mini, Nano, Micro: IQ-types in the
experts) cannot be quantized without one, and with one it is its I- variant, byte for byte.
Listing both showed duplicates and starred a row the Plan panel then flagged as unbuildable;
only the I- variant is offered.
"""

from __future__ import annotations

from collections.abc import Iterable

from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import Profile


def buildable_profiles(model: ModelInfo, profiles: Iterable[Profile]) -> list[Profile]:
    """``profiles`` without the plain ones whose types need an imatrix and that plan exactly
    like an I- variant in the list (the I- variant is kept); order is preserved."""
    chosen = list(profiles)
    plans = {p.key: plan_from_profile(model, p) for p in chosen}
    variant_types = [plans[p.key].types for p in chosen if p.is_imatrix_variant]
    return [p for p in chosen
            if p.is_imatrix_variant or not plans[p.key].needs_imatrix()
            or plans[p.key].types not in variant_types]
