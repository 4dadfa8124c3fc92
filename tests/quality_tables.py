"""Known synthetic sensitivity tables for tests of what the window does with sensitivity.

The figures follow the shape real measurements have (error falls about 4x per extra bit,
grows with the tensor's size; attention and shared experts reach the output harder), so the
optimizer makes plausible choices; the real measurement is tested in test_sensitivity*.
"""

from __future__ import annotations

from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.gguf.types import TYPES, effective_type
from apex_gui.core.plan.precision import is_quantizable
from apex_gui.core.quality.sensitivity import SensitivityTable, model_fingerprint, tensor_kind

CANDIDATES = ("Q2_K", "Q3_K", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "Q8_0")


def synthetic_table(model: ModelInfo) -> SensitivityTable:
    names = [t.name for t in model.tensors if is_quantizable(t.name, t.shape)]
    errors: dict[str, dict[str, float]] = {}
    for name in names:
        tensor = model.tensor(name)
        count = 1
        for n in tensor.shape:
            count *= n
        errors[name] = {}
        for candidate in CANDIDATES:
            actual = effective_type(candidate, tensor.row_length)
            errors[name][actual] = count * 4.0 ** (-TYPES[actual].bits_per_weight)
    scale = {}
    for name in names:
        kind = tensor_kind(name)
        scale[kind] = 4e-9 if "shexp" in kind or "attn" in kind else 1e-9
    return SensitivityTable(model=str(model.path), fingerprint=model_fingerprint(model),
                            imatrix=None,
                            candidates=CANDIDATES,
                            source_types={n: model.tensor(n).type_name for n in names},
                            errors=errors, kind_scale=scale)
