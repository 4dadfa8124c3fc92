"""Turn an edited plan back into a profile, so a hand-painted recipe applies to other models.

A profile sets one type per role group and layer band; a plan sets one type per tensor. The
per-layer type of each group (the byte-weighted majority of its tensors) becomes a band
layout peeled from both edges, which reproduces any per-layer sequence exactly. What a
profile cannot say (two kinds of one group at different types in one layer) is reported,
not silently dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.plan.bands import has_tied_embeddings, role_group
from apex_gui.core.plan.precision import PrecisionPlan
from apex_gui.core.plan.precision import plan_from_gguf, plan_from_profile
from apex_gui.core.plan.profiles import ROLE_GROUPS, Band, BandedType, Profile, builtin_profiles


def bands_from_sequence(types: list[str]) -> BandedType:
    """The band layout whose ``type_for(i, len(types))`` gives ``types[i]`` for every layer."""
    if not types:
        raise ValueError("no layers to describe")
    count = len(types)
    bands: list[Band] = []
    low, high = 0, count - 1
    while low <= high:
        window = types[low:high + 1]
        if all(t == window[0] for t in window):
            return BandedType(tuple(bands), window[0])
        run_low = next((i for i, t in enumerate(window) if t != window[0]), len(window))
        run_high = next((i for i, t in enumerate(reversed(window)) if t != window[-1]), len(window))
        if window[0] == window[-1]:
            low, high = low + run_low, high - run_high
            bands.append(Band(low, count - 1 - high, window[0]))
        else:
            # Only the low edge moves: ``last`` repeats what earlier bands already cover.
            low += run_low
            bands.append(Band(low, count - 1 - high, window[0]))
    return BandedType(tuple(bands[:-1]), bands[-1].type_name)


def profile_from_plan(plan: PrecisionPlan, key: str, label: str,
                      description: str = "") -> tuple[Profile, list[str]]:
    """A profile that reproduces ``plan`` as closely as bands allow, and what it cannot keep."""
    model = plan.model
    template = plan.profile or builtin_profiles()["quality"]
    n_layer = model.n_layer
    notes: list[str] = []
    # group -> layer -> type -> bytes
    weights: dict[str, dict[int, dict[str, int]]] = {g: {} for g in ROLE_GROUPS}
    mtp_types: dict[str, int] = {}
    mtp_layers = {layer.index for layer in model.layers if layer.is_mtp}
    for tensor in model.tensors:
        if not plan.is_quantizable(tensor.name) or tensor.layer is None:
            continue
        planned = plan.planned_type(tensor.name)
        nbytes = tensor.n_elements
        if tensor.layer in mtp_layers:
            mtp_types[planned] = mtp_types.get(planned, 0) + nbytes
            continue
        group = role_group(tensor.role)
        if group is None:
            continue
        by_type = weights[group].setdefault(tensor.layer, {})
        by_type[planned] = by_type.get(planned, 0) + nbytes
    groups: dict[str, BandedType | None] = {}
    for group in ROLE_GROUPS:
        per_layer = weights[group]
        if not per_layer:
            groups[group] = None if group == "dense_ffn" else template.group(group)
            continue
        sequence: list[str] = []
        mixed = 0
        for layer in range(n_layer):
            by_type = per_layer.get(layer)
            if not by_type:
                # Layers without this group (dense leading blocks) keep the nearest choice.
                sequence.append(sequence[-1] if sequence else "")
                continue
            if len(by_type) > 1:
                mixed += 1
            sequence.append(max(by_type.items(), key=lambda item: item[1])[0])
        first_known = next(t for t in sequence if t)
        sequence = [t or first_known for t in sequence]
        groups[group] = bands_from_sequence(sequence)
        if mixed:
            notes.append(f"{group.replace('_', ' ')}: {mixed} layer(s) mix types between "
                         "tensor kinds; the profile keeps each layer's majority type")
    mtp = "edge"
    if mtp_types:
        mtp = max(mtp_types.items(), key=lambda item: item[1])[0]
        if len(mtp_types) > 1:
            notes.append("MTP layers mix types; the profile keeps their majority type")
    embedding, output = plan.special_types()
    if output is None and has_tied_embeddings(model):
        # The tied embedding is the output head: its type is the output type, and the
        # embedding type of untied models stays the template's.
        embedding, output = None, embedding
    routed = groups["routed_experts"]
    shared = groups["shared_experts"]
    attention = groups["attention"]
    assert routed is not None and shared is not None and attention is not None
    profile = dataclasses.replace(
        template, key=key, label=label, description=description or f"made from a plan of {model.name}",
        base_type=plan.base_type, uses_imatrix=template.uses_imatrix or plan.needs_imatrix(),
        token_embedding_type=embedding or template.token_embedding_type,
        output_tensor_type=output or template.output_tensor_type,
        routed_experts=routed, shared_experts=shared, attention=attention,
        dense_ffn=groups["dense_ffn"], mtp=mtp, builtin=False, source="", raw={})
    return profile, notes


__all__ = ["bands_from_sequence", "profile_from_plan"]


@dataclass(frozen=True)
class ProfileMatch:
    profile: Profile
    differing_share: float  # share of tensor bytes whose type differs
    differences: dict[str, tuple[str, str]]  # name -> (file's type, profile's type)
    #: Other profiles that plan exactly these types on this model (on a shallow model the
    #: edge bands meet: Quality and Balanced are one plan at 12 layers), and its depth.
    same_plan: tuple[Profile, ...] = ()
    n_layer: int = 0

    @property
    def exact(self) -> bool:
        return not self.differences

    def describe(self) -> str:
        if self.exact and self.same_plan:
            labels = " = ".join(p.label for p in (self.profile, *self.same_plan))
            return (f"APEX {labels} (exact match: the profiles are one plan on this "
                    f"{self.n_layer}-layer model)")
        if self.exact:
            return f"APEX {self.profile.label} (exact match)"
        return (f"closest: APEX {self.profile.label}, {len(self.differences)} tensors "
                f"({self.differing_share:.1%} of bytes) differ")


def detect_profile(model: ModelInfo) -> list[ProfileMatch]:
    """Built-in profiles ranked by how closely the file's types match each (best first).

    Plain and I- variants have the same types; the I- name is given when the file shows
    it was quantized with an importance matrix.
    """
    actual = plan_from_gguf(model)
    imatrix = model.looks_imatrix_quantized
    matches = []
    total = sum(t.nbytes for t in model.tensors)
    profiles = builtin_profiles()
    for profile in profiles.values():
        if profile.is_imatrix_variant != imatrix and (
                f"i-{profile.key}" in profiles or profile.key.startswith("i-")):
            continue
        candidate = plan_from_profile(model, profile)
        differences = {name: (actual.types[name], candidate.effective_type(name))
                       for name in candidate.quantizable
                       if actual.types[name] != candidate.effective_type(name)}
        share = sum(model.tensor(n).nbytes for n in differences) / total if total else 0.0
        matches.append(ProfileMatch(profile, share, differences))
    matches.sort(key=lambda m: (m.differing_share, len(m.differences)))
    exact = [m for m in matches if m.exact]
    if len(exact) > 1:
        matches[0] = dataclasses.replace(matches[0], same_plan=tuple(m.profile for m in exact[1:]),
                                         n_layer=model.n_layer)
    return matches
