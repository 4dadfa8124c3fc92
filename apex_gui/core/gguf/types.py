"""The ggml tensor types: block geometry, bits per weight, imatrix needs and fallbacks.

Block sizes and bytes per block are ggml's (the same table the ``gguf`` package ships);
the fallback chain and the imatrix rule mirror llama-quantize's type selection so that a
plan can say, before anything runs, which type a tensor will really get.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class GGMLType:
    """One ggml tensor type."""

    name: str  # canonical upper-case name, e.g. "Q4_K"
    type_id: int  # the value stored in the GGUF tensor table
    block_size: int  # weights per block
    block_bytes: int  # bytes per block
    quantized: bool

    @property
    def bits_per_weight(self) -> float:
        return self.block_bytes * 8 / self.block_size

    @property
    def needs_imatrix(self) -> bool:
        """llama-quantize refuses these targets (bar token_embd/output) without an imatrix."""
        return self.name in IMATRIX_REQUIRED

    @property
    def fallback(self) -> "GGMLType | None":
        """The type llama-quantize uses when a row length does not divide the block."""
        target = _FALLBACK.get(self.name)
        return TYPES[target] if target else None

    def fits_row(self, n_per_row: int) -> bool:
        return n_per_row % self.block_size == 0


# (name, id, block size, bytes per block, quantized)
_TABLE: tuple[tuple[str, int, int, int, bool], ...] = (
    ("F32", 0, 1, 4, False),
    ("F16", 1, 1, 2, False),
    ("Q4_0", 2, 32, 18, True),
    ("Q4_1", 3, 32, 20, True),
    ("Q5_0", 6, 32, 22, True),
    ("Q5_1", 7, 32, 24, True),
    ("Q8_0", 8, 32, 34, True),
    ("Q8_1", 9, 32, 40, True),
    ("Q2_K", 10, 256, 84, True),
    ("Q3_K", 11, 256, 110, True),
    ("Q4_K", 12, 256, 144, True),
    ("Q5_K", 13, 256, 176, True),
    ("Q6_K", 14, 256, 210, True),
    ("Q8_K", 15, 256, 292, True),
    ("IQ2_XXS", 16, 256, 66, True),
    ("IQ2_XS", 17, 256, 74, True),
    ("IQ3_XXS", 18, 256, 98, True),
    ("IQ1_S", 19, 256, 50, True),
    ("IQ4_NL", 20, 32, 18, True),
    ("IQ3_S", 21, 256, 110, True),
    ("IQ2_S", 22, 256, 82, True),
    ("IQ4_XS", 23, 256, 136, True),
    ("I8", 24, 1, 1, False),
    ("I16", 25, 1, 2, False),
    ("I32", 26, 1, 4, False),
    ("I64", 27, 1, 8, False),
    ("F64", 28, 1, 8, False),
    ("IQ1_M", 29, 256, 56, True),
    ("BF16", 30, 1, 2, False),
    ("TQ1_0", 34, 256, 54, True),
    ("TQ2_0", 35, 256, 66, True),
    ("MXFP4", 39, 32, 17, True),
    ("NVFP4", 40, 64, 36, True),
    ("Q1_0", 41, 128, 18, True),
    ("Q2_0", 42, 64, 18, True),
)

TYPES: dict[str, GGMLType] = {row[0]: GGMLType(*row) for row in _TABLE}
TYPES_BY_ID: dict[int, GGMLType] = {t.type_id: t for t in TYPES.values()}

IMATRIX_REQUIRED = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS"})

# llama-quantize's tensor_type_fallback: a target whose block does not divide the row
# length is swapped for a 32-block type; if even that does not divide, F16.
_FALLBACK: dict[str, str] = {
    **{name: "IQ4_NL" for name in ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S",
                                   "IQ3_XXS", "IQ3_S", "IQ4_XS")},
    **{name: "Q4_0" for name in ("Q2_0", "Q2_K", "Q3_K", "TQ1_0", "TQ2_0")},
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}

#: Types a user can choose for a tensor in a plan, highest precision first.
PLAN_TYPES: tuple[str, ...] = (
    "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "IQ4_XS", "IQ4_NL",
    "Q4_1", "Q4_0", "IQ3_S", "Q3_K", "IQ3_XXS", "Q2_K", "IQ2_S", "IQ2_XS", "IQ2_XXS",
    "IQ1_M", "IQ1_S", "MXFP4",
)


class UnknownTypeError(ValueError):
    """A type name that ggml does not know."""


def ggml_type(name: str) -> GGMLType:
    """Look a type up by name, case-insensitively (``q4_k`` and ``Q4_K`` both work)."""
    found = TYPES.get(name.strip().upper())
    if found is None:
        raise UnknownTypeError(
            f"unknown ggml type {name!r}; known types: {', '.join(PLAN_TYPES)}")
    return found


def type_by_id(type_id: int) -> GGMLType:
    found = TYPES_BY_ID.get(type_id)
    if found is None:
        raise UnknownTypeError(f"unknown ggml type id {type_id}")
    return found


@lru_cache(maxsize=4096)
def effective_type(target: str, n_per_row: int) -> str:
    """The type llama-quantize really writes for ``target`` on rows of ``n_per_row`` weights."""
    wanted = ggml_type(target)
    if wanted.fits_row(n_per_row):
        return wanted.name
    fallback = wanted.fallback
    if fallback is None:
        if wanted.block_size <= 32:
            return "F16"
        raise UnknownTypeError(f"llama-quantize has no fallback for {wanted.name}")
    return fallback.name if fallback.fits_row(n_per_row) else "F16"


def tensor_bytes(type_name: str, shape: tuple[int, ...]) -> int:
    """Exact bytes of a tensor of ``shape`` (ne0 first, ggml order) stored as ``type_name``."""
    kind = ggml_type(type_name)
    n_rows = 1
    for dim in shape[1:]:
        n_rows *= dim
    n_per_row = shape[0] if shape else 1
    return -(-n_per_row // kind.block_size) * kind.block_bytes * n_rows


#: llama-quantize file types (the positional TYPE) and the tensor type each defaults to.
FTYPE_DEFAULT_TYPE: dict[str, str] = {
    "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q8_0": "Q8_0",
    "Q2_K": "Q2_K", "Q2_K_S": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K",
    "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_XS", "IQ2_M": "IQ2_S",
    "IQ3_XXS": "IQ3_XXS", "IQ3_XS": "IQ3_S", "IQ3_S": "IQ3_S", "IQ3_M": "IQ3_S",
    "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS",
    "F16": "F16", "BF16": "BF16", "F32": "F32", "MXFP4_MOE": "MXFP4",
    "Q1_0": "Q1_0", "Q2_0": "Q2_0", "TQ1_0": "TQ1_0", "TQ2_0": "TQ2_0",
}

#: general.file_type values (llama_ftype) by name, for reading a file's declared type.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
}
