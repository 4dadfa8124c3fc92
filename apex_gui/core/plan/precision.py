"""Precision plans: a ggml type for every tensor of a model, editable cell by cell.

A :class:`PrecisionPlan` pins every tensor llama-quantize would quantize, so its type
choice never reaches llama-quantize's own mixture rules: what the plan says is what the
file gets (after the row-length fallback, which the plan predicts too). The plan's size is
the exact size of the file llama-quantize writes: header plus every tensor's bytes,
each padded to the file's alignment.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.gguf.roles import TensorRole
from apex_gui.core.gguf.types import (
    FTYPE_DEFAULT_TYPE, IMATRIX_REQUIRED, TYPES, UnknownTypeError, effective_type, ggml_type,
)
from apex_gui.core.plan.bands import cell_band, has_tied_embeddings, profile_type_for
from apex_gui.core.plan.profiles import Profile
from apex_gui.core.plan.size import PlanSize

Cell = tuple[int | None, str]  # (layer or None for non-layer tensors, kind)


# Substrings that llama-quantize's tensor_allows_quantization rejects (bar arch-specific ones).
_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight",
    "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight",
    "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight",
    "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight",
    ".position_embd", ".rel_pos", ".patch_embd", ".patch_merger", "sam.pos_embd", "sam.neck.",
    "sam.net_", "a.rvq.codebook", "mm.a.code_embd",
)


def n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing dimensions of 1 do not count."""
    dims = len(shape)
    while dims > 1 and shape[dims - 1] == 1:
        dims -= 1
    return dims


def is_quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """Whether llama-quantize would quantize this tensor at all (its own rules, mirrored)."""
    if n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    if name in ("token_types.weight", "position_embd.weight"):
        return False
    return not any(fragment in name for fragment in _NEVER_QUANTIZED)


@dataclass(frozen=True)
class PlanProblem:
    """Something the user should know about a planned type."""

    kind: str  # "fallback", "needs-imatrix", "unknown-type"
    tensor: str
    message: str
    planned: str
    effective: str


@dataclass(frozen=True)
class PlanName:
    """What a plan is called: in the window (``origin``), in file names (``file_label``) and,
    in a sentence, what it is (``note``; empty: the profile's description says it)."""

    origin: str
    file_label: str
    note: str = ""


@dataclass(frozen=True)
class PlanChange:
    """One edit (or undo/redo of it): tensor name -> (old type, new type); an edit that makes
    the plan another one (the optimizer's) also renames it: (name before, name after)."""

    changes: dict[str, tuple[str, str]]
    description: str
    rename: tuple[PlanName, PlanName] | None = None


class PrecisionPlan(PlanSize):
    """Tensor name -> ggml type for one model, with exact size accounting and undo."""

    def __init__(self, model: ModelInfo, types: Mapping[str, str], base_type: str,
                 profile: Profile | None = None, origin: str = "") -> None:
        if base_type.upper() not in FTYPE_DEFAULT_TYPE:
            raise ValueError(f"unknown llama-quantize type {base_type!r}")
        self.model = model
        self.base_type = base_type.upper()
        self.profile = profile
        self.origin = origin or (profile.label if profile else "custom")
        self.file_label = profile.label if profile else "Custom"
        self.note = ""
        self.imatrix: str | None = None  # path of the importance matrix to quantize with
        self.types: dict[str, str] = {}
        self.quantizable = {t.name for t in model.tensors if is_quantizable(t.name, t.shape)}
        self._alignment = int(model.metadata.get("general.alignment", 32) or 32)
        self._undo: list[PlanChange] = []
        self._redo: list[PlanChange] = []
        self._listeners: list[Callable[[PlanChange], None]] = []
        self._cells: dict[Cell, list[str]] = {}
        for tensor in model.tensors:
            planned = types.get(tensor.name, tensor.type_name)
            self.types[tensor.name] = planned if tensor.name in self.quantizable else tensor.type_name
            if tensor.is_weight and tensor.role is not TensorRole.NORM:
                self._cells.setdefault((tensor.layer, tensor.kind), []).append(tensor.name)
        self._bytes: dict[str, int] = {name: self._compute_bytes(name) for name in self.types}
        self._data_bytes = sum(self._padded(b) for b in self._bytes.values())

    # --- types and sizes ---------------------------------------------------------------
    def is_quantizable(self, name: str) -> bool:
        return name in self.quantizable

    def planned_type(self, name: str) -> str:
        return self.types[name]

    def effective_type(self, name: str) -> str:
        """The type llama-quantize really writes: the plan's, after the row-length fallback."""
        planned = self.types[name]
        if name not in self.quantizable or planned not in TYPES:
            return planned
        return effective_type(planned, self.model.tensor(name).row_length)


    # --- cells ------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        return list(self._cells)

    def cell_tensors(self, layer: int | None, kind: str) -> list[str]:
        return list(self._cells.get((layer, kind), ()))

    def cell_type(self, layer: int | None, kind: str) -> str | None:
        """The planned type of a cell (None when the model has no such tensor)."""
        names = self._cells.get((layer, kind))
        return self.types[names[0]] if names else None

    def cell_effective_type(self, layer: int | None, kind: str) -> str | None:
        names = self._cells.get((layer, kind))
        return self.effective_type(names[0]) if names else None

    def cell_bytes(self, layer: int | None, kind: str) -> int:
        return sum(self._bytes[n] for n in self._cells.get((layer, kind), ()))

    def cell_editable(self, layer: int | None, kind: str) -> bool:
        return any(n in self.quantizable for n in self._cells.get((layer, kind), ()))

    # --- edits ------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[PlanChange], None]) -> Callable[[], None]:
        """Call ``callback`` after every edit, undo and redo; returns the unsubscribe function."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def set_cells(self, cells: Iterable[Cell], type_name: str, description: str = "") -> PlanChange | None:
        """Set every quantizable tensor of the given cells to ``type_name`` (one undo step)."""
        new_type = ggml_type(type_name).name
        changes: dict[str, tuple[str, str]] = {}
        for layer, kind in cells:
            for name in self._cells.get((layer, kind), ()):
                if name in self.quantizable and self.types[name] != new_type:
                    changes[name] = (self.types[name], new_type)
        if not changes:
            return None
        return self._commit(changes, description or f"set {len(changes)} tensors to {new_type}")

    def set_tensor_types(self, types: Mapping[str, str], description: str = "",
                         rename: PlanName | None = None) -> PlanChange | None:
        """Set individual tensors (one undo step); ``rename``: the plan becomes another one
        (the optimizer's), named so until the step is undone."""
        changes = {}
        for name, type_name in types.items():
            new_type = ggml_type(type_name).name
            if name in self.quantizable and self.types[name] != new_type:
                changes[name] = (self.types[name], new_type)
        if not changes:
            return None
        return self._commit(changes, description or f"set {len(changes)} tensors", rename)

    @property
    def name(self) -> PlanName:
        return PlanName(self.origin, self.file_label, self.note)

    def edits_since_named(self) -> int:
        """Edits on top of what the plan's name says (a profile, or the optimizer's plan)."""
        for count, change in enumerate(reversed(self._undo)):
            if change.rename is not None:
                return count
        return len(self._undo)

    def output_label(self) -> str:
        """The label of the file this plan makes (``Quality``, ``Quality-edited``,
        ``Optimized-3.50MB``): what the name says, and whether it was edited since."""
        return self.file_label + ("-edited" if self.edits_since_named() else "")

    @property
    def profile_key(self) -> str:
        """The profile's key while the plan is exactly that profile's, else what the plan is
        called: a quant of an edited or optimized plan is not a measurement of the profile."""
        if self.profile is not None and not self._undo:
            return self.profile.key
        return self.origin

    def _commit(self, changes: dict[str, tuple[str, str]], description: str,
                rename: PlanName | None = None) -> PlanChange:
        """Check, apply and file the changes as one undo step, then tell the listeners."""
        self._check_writable(changes)
        change = PlanChange(changes, description,
                            (self.name, rename) if rename is not None else None)
        self._apply(change, forward=True)
        self._undo.append(change)
        self._redo.clear()
        self._notify(change)
        return change

    def _check_writable(self, changes: Mapping[str, tuple[str, str]]) -> None:
        """Refuse, before anything changes, a type llama-quantize cannot write for a tensor
        (a wide-block type with no fallback, such as Q1_0, on rows it does not divide)."""
        for name, (_, new_type) in changes.items():
            row = self.model.tensor(name).row_length
            try:
                effective_type(new_type, row)
            except UnknownTypeError:
                raise UnknownTypeError(
                    f"{name}: rows of {row} weights do not divide {new_type}'s block of "
                    f"{ggml_type(new_type).block_size} and llama-quantize has no fallback for "
                    f"{new_type}; pick another type for this tensor") from None

    def row_cells(self, layer: int | None) -> list[Cell]:
        return [cell for cell in self._cells if cell[0] == layer]

    def column_cells(self, kind: str) -> list[Cell]:
        return [cell for cell in self._cells if cell[1] == kind and cell[0] is not None]

    def rectangle_cells(self, layers: Iterable[int], kinds: Iterable[str]) -> list[Cell]:
        wanted_layers, wanted_kinds = set(layers), set(kinds)
        return [c for c in self._cells if c[0] in wanted_layers and c[1] in wanted_kinds]

    def band_cells(self, group: str, band_index: int) -> list[Cell]:
        """Cells of one role group in one band of the plan's profile (0 = outermost)."""
        if self.profile is None:
            return []
        n_layer = self.model.n_layer
        return [cell for cell in self._cells
                if cell_band(self.profile, n_layer, *cell) == (group, band_index)]

    def can_undo(self) -> bool:
        return bool(self._undo)

    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> PlanChange | None:
        if not self._undo:
            return None
        change = self._undo.pop()
        self._apply(change, forward=False)
        self._redo.append(change)
        self._notify(change)
        return change

    def redo(self) -> PlanChange | None:
        if not self._redo:
            return None
        change = self._redo.pop()
        self._apply(change, forward=True)
        self._undo.append(change)
        self._notify(change)
        return change

    def _apply(self, change: PlanChange, forward: bool) -> None:
        if change.rename is not None:
            name = change.rename[1 if forward else 0]
            self.origin, self.file_label, self.note = name.origin, name.file_label, name.note
        for name, (old, new) in change.changes.items():
            self.types[name] = new if forward else old
            before = self._bytes[name]
            after = self._compute_bytes(name)
            self._bytes[name] = after
            self._data_bytes += self._padded(after) - self._padded(before)

    def _notify(self, change: PlanChange) -> None:
        # After the undo/redo stacks are updated, so listeners see can_undo()/can_redo() right.
        for listener in list(self._listeners):
            listener(change)

    # --- checks -----------------------------------------------------------------------
    def needs_imatrix(self) -> bool:
        return any(self._needs_imatrix(name) for name in self.quantizable)

    def _needs_imatrix(self, name: str) -> bool:
        role = self.model.tensor(name).role
        if role in (TensorRole.EMBEDDING, TensorRole.OUTPUT):
            return False
        actual = self.effective_type(name)
        # llama-quantize's tensor_requires_imatrix: Q2_K needs one only in a Q2_K_S file.
        return actual in IMATRIX_REQUIRED or (actual == "Q2_K" and self.base_type == "Q2_K_S")

    def problems(self, have_imatrix: bool | None = None) -> list[PlanProblem]:
        """Fallbacks, types that need an imatrix when none is given, unknown types."""
        with_imatrix = bool(self.imatrix) if have_imatrix is None else have_imatrix
        found = []
        for name in self.model.by_name:
            planned = self.types[name]
            if planned not in TYPES:
                found.append(PlanProblem("unknown-type", name, f"{name}: unknown type {planned}",
                                         planned, planned))
                continue
            if name not in self.quantizable:
                continue
            actual = self.effective_type(name)
            if actual != planned:
                row = self.model.tensor(name).row_length
                found.append(PlanProblem(
                    "fallback", name, f"{name}: rows of {row} weights do not divide {planned}'s "
                    f"block of {ggml_type(planned).block_size}; llama-quantize writes {actual}",
                    planned, actual))
            if not with_imatrix and self._needs_imatrix(name):
                found.append(PlanProblem(
                    "needs-imatrix", name, f"{name}: {actual} needs an importance matrix; "
                    "compute one (apex-studio imatrix) or pick a K-quant", planned, actual))
        return found

    def diff(self, other: "PrecisionPlan") -> dict[str, tuple[str, str]]:
        """Tensors whose effective type differs: name -> (this plan's, other's)."""
        return {name: (self.effective_type(name), other.effective_type(name))
                for name in self.types if name in other.types
                and self.effective_type(name) != other.effective_type(name)}

    def differing_bytes_share(self, other: "PrecisionPlan") -> float:
        differing = self.diff(other)
        total = sum(self._bytes.values())
        return sum(self._bytes[n] for n in differing) / total if total else 0.0

    # --- export -----------------------------------------------------------------------
    def pinned_types(self) -> dict[str, str]:
        """Every quantizable tensor except token_embd/output (they go by their own flags)."""
        return {name: self.types[name] for name in self.model.by_name
                if name in self.quantizable and self.model.tensor(name).role
                not in (TensorRole.EMBEDDING, TensorRole.OUTPUT)}

    def special_types(self) -> tuple[str | None, str | None]:
        """(token embedding type, output type) as the plan fixes them, fallback applied.

        llama-quantize takes ``--token-embedding-type``/``--output-tensor-type`` as given, with
        no fallback, so the plan passes the type that fits the row length.
        """
        embedding = output = None
        for name in self.quantizable:
            role = self.model.tensor(name).role
            if role is TensorRole.EMBEDDING and name == "token_embd.weight":
                embedding = self.effective_type(name)
            elif role is TensorRole.OUTPUT:
                output = self.effective_type(name)
        return embedding, output

    def tensor_type_file_text(self) -> str:
        """Anchored ``^name$=TYPE`` lines, one per quantizable tensor, in file order.

        token_embd/output are listed too so the file alone re-imports to this plan;
        llama-quantize takes their types from the flags, which the plan sets to the same.
        """
        pinned = self.pinned_types()
        lines = [f"^{re.escape(name)}$="
                 f"{(pinned[name] if name in pinned else self.effective_type(name)).lower()}"
                 for name in self.model.by_name if name in self.quantizable]
        return "\n".join(lines) + "\n"

    def write_tensor_type_file(self, path: str | Path) -> Path:
        target = Path(path)
        temporary = target.with_name(target.name + ".tmp")
        try:
            temporary.write_text(self.tensor_type_file_text(), encoding="utf-8")
            temporary.replace(target)
        except BaseException:
            temporary.unlink(missing_ok=True)  # a full disk left an empty .tmp behind
            raise
        return target

    def requantizes(self) -> bool:
        """A tensor to quantize is stored quantized already (llama-quantize wants
        --allow-requantize); the argv itself is built by core/jobs/quantize.py."""
        return any(t.type_name not in ("F32", "F16", "BF16") for t in self.model.tensors
                   if t.name in self.quantizable)


def plan_from_profile(model: ModelInfo, profile: Profile) -> PrecisionPlan:
    """Every quantizable tensor gets its role's type for its band; the rest keep theirs."""
    default = profile.default_type
    layers = {layer.index: layer for layer in model.layers}
    tied = has_tied_embeddings(model)
    types: dict[str, str] = {}
    for tensor in model.tensors:
        if not is_quantizable(tensor.name, tensor.shape):
            continue
        layer = layers.get(tensor.layer) if tensor.layer is not None else None
        if tied and tensor.name == "token_embd.weight":
            # Without output.weight the embedding is also the output head, and llama-quantize's
            # base rules give it the output type (LFM2, Granite): so does the plan.
            types[tensor.name] = profile.output_tensor_type
            continue
        chosen = profile_type_for(profile, model, layer, tensor.role)
        types[tensor.name] = chosen or default
    return PrecisionPlan(model, types, profile.base_type, profile)


def plan_from_gguf(model: ModelInfo) -> PrecisionPlan:
    """The types the file really has."""
    base = model.file_type if model.file_type in FTYPE_DEFAULT_TYPE else "Q8_0"
    return PrecisionPlan(model, {t.name: t.type_name for t in model.tensors}, base,
                         origin=f"as stored in {model.path.name}")
