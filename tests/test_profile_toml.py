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


def test_bands_that_meet_on_a_shallow_model_are_named() -> None:
    from apex_gui.core.plan.profiles import get_profile, shallow_model_note, unreached_types

    quality = get_profile("quality")
    # 40 layers (Qwen3.5-35B-A3B): every band and the middle are used.
    assert unreached_types(quality, 40) == []
    assert shallow_model_note(quality, 40) == ""
    # 12 layers: the 10-deep Q5_K band reaches every middle layer; IQ4_XS is never used.
    assert unreached_types(quality, 12) == [("routed_experts", "IQ4_XS")]
    note = shallow_model_note(quality, 12)
    assert "12-layer" in note and "routed experts never get IQ4_XS" in note
    # 8 layers: the shallower bands meet too (Q5_K reaches no layer: the 5-deep band is first).
    assert ("routed_experts", "Q5_K") in unreached_types(quality, 8)
    # Balanced's middle is its inner band's type: nothing is lost at 12 layers.
    assert unreached_types(get_profile("balanced"), 12) == []
