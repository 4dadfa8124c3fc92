"""Flat views of a GGUF for browsing: every tensor as a row, every metadata key as a row.

What the Hugging Face GGUF viewer shows (name, shape, type, bytes; every key with its
value), as plain data a table view sorts and filters. Qt-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apex_gui.core.gguf.model import ModelInfo

#: metadata groups a user looks for, by key prefix (checked in order; first match wins)
METADATA_GROUPS: tuple[tuple[str, str], ...] = (
    ("tokenizer.chat_template", "chat template"),
    ("tokenizer.", "tokenizer"),
    ("general.", "general"),
    ("split.", "split"),
)
ARRAY_PREVIEW = 8  # items of a long array shown inline; the rest is counted


@dataclass(frozen=True)
class TensorRow:
    """One tensor as the flat table shows it."""

    name: str
    layer: int | None
    shape: str  # "2048 x 768 x 128", ggml order (row length first)
    type_name: str  # as stored in the file
    planned: str  # the plan's type ("" when no plan)
    elements: int
    nbytes: int
    role: str


@dataclass(frozen=True)
class MetadataRow:
    """One metadata key: its group, value type and a one-line preview; :meth:`full_text`
    is the whole value (a chat template, a long token list), made only when asked for."""

    key: str
    group: str
    value_type: str
    preview: str
    value: Any

    def full_text(self) -> str:
        if isinstance(self.value, list):
            return "\n".join(map(str, self.value))
        return str(self.value)


def tensor_rows(model: ModelInfo, planned: dict[str, str] | None = None) -> list[TensorRow]:
    """Every tensor in file order, with the plan's type beside the stored one."""
    planned = planned or {}
    return [TensorRow(t.name, t.layer, " x ".join(str(d) for d in t.shape), t.type_name,
                      planned.get(t.name, ""), t.n_elements, t.nbytes, t.role.value)
            for t in model.tensors]


def metadata_group(key: str, architecture: str) -> str:
    for prefix, group in METADATA_GROUPS:
        if key.startswith(prefix):
            return group
    if key.startswith(f"{architecture}.rope") or ".rope." in key:
        return "RoPE"
    if key.startswith(f"{architecture}."):
        return "architecture"
    return "other"


def _value_type(value: Any) -> str:
    if isinstance(value, list):
        inner = _value_type(value[0]) if value else "?"
        return f"array[{inner}] ({len(value):,})"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(type(value), type(value).__name__)


def _preview(value: Any) -> str:
    if isinstance(value, list):
        shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in value[:ARRAY_PREVIEW])
        more = f", ... ({len(value) - ARRAY_PREVIEW:,} more)" if len(value) > ARRAY_PREVIEW else ""
        return f"[{shown}{more}]"
    text = str(value)
    first_line = text.splitlines()[0] if text else ""
    if len(first_line) > 120 or "\n" in text:
        return first_line[:120] + f" ... ({len(text):,} characters)"
    return first_line


def metadata_rows(model: ModelInfo) -> list[MetadataRow]:
    """Every key, in file order, grouped (general, architecture, RoPE, tokenizer...)."""
    rows = []
    for key, value in model.metadata.items():
        rows.append(MetadataRow(key, metadata_group(key, model.architecture), _value_type(value),
                                _preview(value), value))
    return rows


def matches(query: str, *fields: object) -> bool:
    """Case-insensitive search: every word of ``query`` appears in one of the fields."""
    haystack = " ".join(str(f) for f in fields).lower()
    return all(word in haystack for word in query.lower().split())
