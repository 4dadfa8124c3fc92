"""llama-quantize --tensor-type-file files: read and turned into plans."""

from __future__ import annotations

import re
from pathlib import Path

from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.gguf.types import FTYPE_DEFAULT_TYPE, UnknownTypeError, ggml_type
from apex_gui.core.plan.precision import PrecisionPlan, is_quantizable, plan_from_profile
from apex_gui.core.plan.profiles import Profile


class TensorTypeFileError(ValueError):
    """A tensor-type file that llama-quantize would reject; names the file and the token."""


def parse_tensor_type_file(text: str, source: str = "tensor-type file") -> list[tuple[str, str]]:
    """``pattern=type`` tokens, whitespace-separated, as llama-quantize reads them."""
    entries = []
    for token in text.split():
        pattern, sep, type_name = token.rpartition("=")
        if not sep or not pattern:
            raise TensorTypeFileError(f"{source}: {token!r} is not PATTERN=TYPE")
        try:
            entries.append((pattern.lower(), ggml_type(type_name).name))
        except UnknownTypeError:
            raise TensorTypeFileError(f"{source}: unknown type {type_name!r} in {token!r}") from None
    return entries


def plan_from_tensor_type_file(model: ModelInfo, path: str | Path, base_type: str,
                               profile: Profile | None = None) -> PrecisionPlan:
    """Apply a tensor-type file with llama-quantize's rules: lower-cased regex search, first
    match wins. Tensors no pattern matches get the profile's type when one is given (for
    token_embd/output, which reference files leave to flags), else the base type's."""
    file_path = Path(path)
    entries = [(re.compile(p), t) for p, t in parse_tensor_type_file(
        file_path.read_text(encoding="utf-8"), str(file_path))]
    fallback_plan = plan_from_profile(model, profile) if profile else None
    default = FTYPE_DEFAULT_TYPE[base_type.upper()]
    types: dict[str, str] = {}
    for tensor in model.tensors:
        if not is_quantizable(tensor.name, tensor.shape):
            continue
        for pattern, type_name in entries:
            if pattern.search(tensor.name):
                types[tensor.name] = type_name
                break
        else:
            types[tensor.name] = (fallback_plan.types[tensor.name] if fallback_plan else default)
    return PrecisionPlan(model, types, base_type, profile, origin=f"imported from {file_path.name}")
