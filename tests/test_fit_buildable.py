"""Tier list: a plain profile that needs an imatrix gives way to its identical I- variant."""

from __future__ import annotations

from pathlib import Path

from apex_gui.core.fit.buildable import buildable_profiles
from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.model import open_model
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import builtin_profiles


def test_plain_imatrix_tiers_give_way_to_their_i_variants(tmp_path: Path) -> None:
    model = open_model(write_shape_twin(tmp_path / "q.gguf", "qwen3.5-35b-a3b")[0])
    profiles = list(builtin_profiles().values())
    kept = [p.key for p in buildable_profiles(model, profiles)]
    dropped = [p for p in profiles if p.key not in kept]
    assert dropped, "no duplicate tier was dropped"
    for profile in dropped:
        plan = plan_from_profile(model, profile)
        assert plan.needs_imatrix()
        assert f"i-{profile.key}" in kept
        twin = plan_from_profile(model, builtin_profiles()[f"i-{profile.key}"])
        assert twin.total_bytes() == plan.total_bytes()
    # Tiers that build without an imatrix stay, as do all I- variants.
    assert {"quality", "balanced", "compact", "i-quality", "i-mini"} <= set(kept)
    assert [k for k in [p.key for p in profiles] if k in kept] == kept  # order kept
