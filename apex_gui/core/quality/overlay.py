"""What a heatmap cell costs in quality: measured damage per cell, per candidate type, and
the cost and saving of one step up or down. Pure (no Qt): the heatmap's sensitivity overlay
(:mod:`apex_gui.views.heatmap.sensitivity_overlay`) colours and explains cells with it.

A cell (layer x kind) holds one or more tensors; its damage at a type is the sum of its
tensors' predicted KL divergence at that type after llama-quantize's row-length fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from apex_gui.core.gguf.types import TYPES, effective_type, tensor_bytes
from apex_gui.core.plan.precision import Cell, PrecisionPlan
from apex_gui.core.quality.sensitivity import SensitivityTable

#: What the colour shows: the cell's damage, or its damage per byte it occupies.
MODES = ("damage", "damage per byte")


@dataclass(frozen=True)
class CellOption:
    """One type a cell could take: predicted KL divergence and bytes at that type."""

    type_name: str
    damage: float
    nbytes: int


@dataclass(frozen=True)
class CellStep:
    """One step to the next larger (up) or smaller (down) measured type."""

    option: CellOption
    bytes_delta: int  # > 0: bytes it costs (up); < 0: bytes it saves (down)
    damage_delta: float  # < 0: damage it removes (up); > 0: damage it adds (down)


def _alignment(plan: PrecisionPlan) -> int:
    return int(plan.model.metadata.get("general.alignment", 32) or 32)


def cell_options(table: SensitivityTable, plan: PrecisionPlan, cell: Cell) -> list[CellOption]:
    """Every type the table measured for all of the cell's tensors, smallest first."""
    names = plan.cell_tensors(*cell)
    if not names or not all(n in table.errors for n in names):
        return []
    align = _alignment(plan)
    wanted = list(table.candidates) + [table.source_types.get(names[0], "")]
    seen: dict[str, CellOption] = {}
    for candidate in wanted:
        if candidate not in TYPES:
            continue
        damage = 0.0
        nbytes = 0
        label = None
        for name in names:
            tensor = plan.model.tensor(name)
            actual = effective_type(candidate, tensor.row_length)
            if not table.known(name, actual):
                break
            label = label or actual
            damage += table.damage(name, actual)
            nbytes += -(-tensor_bytes(actual, tensor.shape) // align) * align
        else:
            if label is not None and label not in seen:
                seen[label] = CellOption(label, damage, nbytes)
    return sorted(seen.values(), key=lambda o: (o.nbytes, o.damage))


def cell_damage(table: SensitivityTable, plan: PrecisionPlan, cell: Cell,
                type_name: str | None = None) -> float | None:
    """Predicted KL divergence the cell adds at its type (or ``type_name``); None when the
    table did not measure it."""
    total = 0.0
    for name in plan.cell_tensors(*cell):
        if name not in table.errors:
            return None
        tensor = plan.model.tensor(name)
        actual = (effective_type(type_name, tensor.row_length) if type_name
                  else plan.effective_type(name))
        if not table.known(name, actual):
            return None
        total += table.damage(name, actual)
    return total


def steps(table: SensitivityTable, plan: PrecisionPlan,
          cell: Cell) -> tuple[CellStep | None, CellStep | None]:
    """The next measured type up (more bytes, less damage) and down (fewer bytes)."""
    options = cell_options(table, plan, cell)
    now_damage = cell_damage(table, plan, cell)
    if not options or now_damage is None:
        return None, None
    now_bytes = plan.cell_bytes(*cell)
    up = min((o for o in options if o.nbytes > now_bytes and o.damage < now_damage),
             key=lambda o: o.nbytes, default=None)
    down = max((o for o in options if o.nbytes < now_bytes), key=lambda o: o.nbytes,
               default=None)
    return (CellStep(up, up.nbytes - now_bytes, up.damage - now_damage) if up else None,
            CellStep(down, down.nbytes - now_bytes, down.damage - now_damage) if down else None)


def cell_value(table: SensitivityTable, plan: PrecisionPlan, cell: Cell, mode: str,
               type_name: str | None = None) -> float | None:
    """The number the overlay colours by, for the cell at its type (or ``type_name``)."""
    damage = cell_damage(table, plan, cell, type_name)
    if damage is None:
        return None
    if mode == "damage per byte":
        if type_name is None:
            nbytes = plan.cell_bytes(*cell)
        else:
            align = _alignment(plan)
            nbytes = sum(-(-tensor_bytes(effective_type(type_name, t.row_length), t.shape)
                           // align) * align
                         for t in (plan.model.tensor(n) for n in plan.cell_tensors(*cell)))
        return damage / nbytes if nbytes else None
    return damage


@dataclass(frozen=True)
class DamageScale:
    """A logarithmic scale over the values the overlay shows (positions 0..1)."""

    low: float
    high: float
    mode: str

    @classmethod
    def for_plan(cls, table: SensitivityTable, plan: PrecisionPlan, mode: str) -> DamageScale:
        """Spans every measured value of every cell over every type the table holds, so the
        colours stay put while painting (a cell painted lower visibly darkens)."""
        values: list[float] = []
        for cell in plan.cells():
            for option in cell_options(table, plan, cell):
                if option.damage > 0:
                    values.append(option.damage if mode == "damage"
                                  else option.damage / max(option.nbytes, 1))
        if not values:
            return cls(1e-9, 1e-8, mode)
        low, high = min(values), max(values)
        return cls(low, high if high > low else low * 10, mode)

    def position(self, value: float) -> float:
        if value <= 0:
            return 0.0
        span = math.log(self.high) - math.log(self.low)
        return min(1.0, max(0.0, (math.log(value) - math.log(self.low)) / span))

    def value_at(self, position: float) -> float:
        return self.low * (self.high / self.low) ** position
