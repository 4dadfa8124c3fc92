"""The band rule: which type a profile gives a tensor, by role group and layer band."""

from __future__ import annotations

from apex_gui.core.gguf.model import LayerInfo, ModelInfo
from apex_gui.core.gguf.roles import TensorRole
from apex_gui.core.gguf.roles import classify_kind
from apex_gui.core.plan.profiles import Profile


_GROUP_ROLES: dict[str, tuple[TensorRole, ...]] = {
    "routed_experts": (TensorRole.ROUTED_EXPERT,),
    "shared_experts": (TensorRole.SHARED_EXPERT,),
    "attention": (TensorRole.ATTENTION, TensorRole.LINEAR_ATTENTION, TensorRole.SHORT_CONV),
    "dense_ffn": (TensorRole.DENSE_FFN,),
}


def role_group(role: TensorRole) -> str | None:
    for group, roles in _GROUP_ROLES.items():
        if role in roles:
            return group
    return None


def profile_type_for(profile: Profile, model: ModelInfo, layer: LayerInfo | None,
                     role: TensorRole) -> str | None:
    """The profile's type for a role at a layer, or None where the profile has no rule."""
    if role is TensorRole.EMBEDDING:
        return profile.token_embedding_type
    if role is TensorRole.OUTPUT:
        return profile.output_tensor_type
    if layer is None:
        return None
    n_layer = model.n_layer
    position = layer.index
    if layer.is_mtp:
        if profile.mtp != "edge":
            return profile.mtp
        position = 0  # one more edge layer
    if role is TensorRole.MTP:
        return profile.attention.type_for(position, n_layer)
    group = role_group(role)
    if group is None:
        return None
    return profile.group(group).type_for(position, n_layer)


def has_tied_embeddings(model: ModelInfo) -> bool:
    """No ``output.weight``: llama.cpp reuses ``token_embd`` as the output head."""
    names = {t.name for t in model.tensors if t.layer is None}
    return "token_embd.weight" in names and "output.weight" not in names


def cell_band(profile: Profile, n_layer: int, layer: int | None, kind: str) -> tuple[str, int] | None:
    """(role group, band index) of a precision-map cell (``layer``, tensor ``kind``) under
    ``profile``; None outside the banded groups and layers. Plans and the map both ask here."""
    if layer is None or layer >= n_layer:
        return None
    group = role_group(classify_kind(kind, True))
    if group is None:
        return None
    return group, profile.group(group).band_index(layer, n_layer)
