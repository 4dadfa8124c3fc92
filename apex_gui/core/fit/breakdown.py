"""Memory breakdown, gguf-parser style: weights, KV cache, recurrent state and compute
buffers per device and for RAM, at several context sizes side by side.

Pure: the same estimate the fit table uses (:func:`apex_gui.core.fit.memory.estimate_memory`),
laid out as rows (device, component) by columns (context sizes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from apex_gui.core.fit.context_memory import ContextSettings, ModelGeometry, Placement
from apex_gui.core.fit.memory import estimate_memory, weight_table, with_context

#: the context sizes shown side by side (capped at the model's training context)
DEFAULT_CONTEXTS = (4096, 16384, 32768, 131072)
COMPONENTS = ("weights", "KV cache", "recurrent state", "compute", "other", "total")


@dataclass(frozen=True)
class BreakdownRow:
    device: str  # a GPU's name, or "RAM"
    component: str  # one of COMPONENTS
    bytes_per_context: tuple[int, ...]


@dataclass(frozen=True)
class MemoryBreakdown:
    contexts: tuple[int, ...]
    rows: tuple[BreakdownRow, ...]
    capacities: Mapping[str, int]  # free bytes per device name ("RAM": available)

    def value(self, device: str, component: str, n_ctx: int) -> int:
        column = self.contexts.index(n_ctx)
        for row in self.rows:
            if row.device == device and row.component == component:
                return row.bytes_per_context[column]
        raise KeyError(f"no row {device} / {component}")

    def over(self, device: str, n_ctx: int) -> bool:
        """True when the device's total at ``n_ctx`` exceeds what it has free."""
        capacity = self.capacities.get(device)
        return capacity is not None and self.value(device, "total", n_ctx) > capacity


def contexts_for(training_context: int, wanted: Sequence[int] = DEFAULT_CONTEXTS) -> tuple[int, ...]:
    """``wanted`` capped at the training context (which is added when it is smaller)."""
    limit = training_context if training_context > 0 else max(wanted)
    chosen = sorted({min(n, limit) for n in wanted})
    return tuple(chosen)


def memory_breakdown(geom: ModelGeometry, tensor_bytes: Mapping[str, int], ctx: ContextSettings,
                     contexts: Sequence[int], gpus: Sequence[tuple[str, int]],
                     ram_available: int, placement: Placement = Placement()) -> MemoryBreakdown:
    """Rows per GPU (``gpus``: name and free bytes, in CUDA order) and for RAM, one column
    per context size; CPU only when ``gpus`` is empty."""
    weights = weight_table(tensor_bytes, geom)
    free = [f for _name, f in gpus]
    names = [name for name, _f in gpus]
    # Two cards of one model get told apart by their position.
    shown = [f"GPU{i} {name}" if names.count(name) > 1 else name for i, name in enumerate(names)]
    estimates = [estimate_memory(geom, weights, with_context(ctx, n), free,
                                 placement if gpus else Placement(n_gpu_layers=0),
                                 device_names=shown or None)
                 for n in contexts]
    rows: list[BreakdownRow] = []
    for position, device in enumerate([*shown, "RAM"]):
        usages = [e.devices[position] if device != "RAM" else e.host for e in estimates]
        parts = {"weights": [u.weights for u in usages], "KV cache": [u.kv for u in usages],
                 "recurrent state": [u.recurrent for u in usages],
                 "compute": [u.compute for u in usages], "other": [u.extra for u in usages],
                 "total": [u.total for u in usages]}
        for component in COMPONENTS:
            values = parts[component]
            if component in ("recurrent state", "other") and not any(values):
                continue  # rows of zeros say nothing
            rows.append(BreakdownRow(device, component, tuple(values)))
    capacities = dict(zip(shown, free)) | {"RAM": ram_available}
    return MemoryBreakdown(tuple(contexts), tuple(rows), capacities)
