"""A profile saved by the app reads back as the same profile, whatever its label says."""

from __future__ import annotations

from dataclasses import replace

import pytest

from apex_gui.core.plan.profiles import builtin_profiles, load_profile_file, save_user_profile


@pytest.mark.parametrize("label", ['My "fast" mix', "back\\slash \\n", "two\nlines",
                                   "tab\there, 'single' and \u00fcn\u00efcode", "[routed_experts]"])
def test_a_profile_with_a_hostile_label_round_trips(label: str) -> None:
    profile = replace(builtin_profiles()["i-quality"], key="mine", label=label,
                      description=f"{label} (described)", builtin=False)
    loaded = load_profile_file(save_user_profile(profile))
    assert (loaded.label, loaded.description) == (label, f"{label} (described)")
    assert replace(loaded, source=profile.source) == profile
