"""Precision plans: a ggml type for every tensor of a model, editable cell by cell.

A :class:`PrecisionPlan` pins every tensor llama-quantize would quantize, so its type
choice never reaches llama-quantize's own mixture rules: what the plan says is what the
file gets (after the row-length fallback, which the plan predicts too). The plan's size is
the exact size of the file llama-quantize writes: header plus every tensor's bytes,
each padded to the file's alignment.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .gguf_reader import GGUFError, LazyArray, read_header, read_lazy_array
from .model import LayerInfo, ModelInfo
from .profiles import Profile, builtin_profiles
from .quant_types import (FTYPE_DEFAULT_TYPE, IMATRIX_REQUIRED, TYPES, UnknownTypeError,
                          effective_type, ggml_type, tensor_bytes)
from .roles import TensorRole

Cell = tuple[int | None, str]  # (layer or None for non-layer tensors, kind)


def _kv_bytes(key: str, value_bytes: int) -> int:
    """Bytes of one metadata entry: key length (u64) + key + value type (u32) + value."""
    return 8 + len(key.encode()) + 4 + value_bytes


# llama-quantize copies override strings into a 128-byte buffer (strncpy 127 + NUL).
_OVERRIDE_STRING_BYTES = 127
# When the imatrix cannot be read yet (it is made later in a queue), a typical dataset name.
_TYPICAL_DATASET_BYTES = 64
# Bounds for walking a legacy .dat imatrix: far above real files, so garbage stops at once.
_MAX_LEGACY_ENTRIES = 1 << 20
_MAX_LEGACY_NAME = 1 << 16


@dataclass(frozen=True)
class ImatrixStamp:
    """What llama-quantize writes into the quant's header about the imatrix it used."""

    dataset_bytes: int | None  # length of quantize.imatrix.dataset; None: key not written
    chunks: bool  # quantize.imatrix.chunks_count is written only for a positive chunk count


def _imatrix_stamp(path: str) -> ImatrixStamp:
    """Read the imatrix (GGUF or legacy .dat) as llama-quantize does; estimate if unreadable."""
    try:
        info = os.stat(path)
    except OSError:
        return ImatrixStamp(_TYPICAL_DATASET_BYTES, True)
    return _imatrix_stamp_cached(path, info.st_size, info.st_mtime_ns)


@lru_cache(maxsize=32)
def _imatrix_stamp_cached(path: str, size: int, mtime_ns: int) -> ImatrixStamp:
    del size, mtime_ns  # part of the cache key only: a rewritten imatrix is read again
    try:
        header = read_header(path)
    except GGUFError:
        return _legacy_imatrix_stamp(path)
    datasets: Any = header.metadata.get("imatrix.datasets")
    if isinstance(datasets, LazyArray):
        try:
            datasets = read_lazy_array(path, datasets, "imatrix.datasets")
        except GGUFError:
            datasets = None
    first = datasets[0] if isinstance(datasets, list) and datasets else None
    chunks = header.metadata.get("imatrix.chunk_count", 0)
    return ImatrixStamp(
        min(len(first.encode()), _OVERRIDE_STRING_BYTES) if isinstance(first, str) else None,
        isinstance(chunks, int) and chunks > 0)


def _legacy_imatrix_stamp(path: str) -> ImatrixStamp:
    """The trailing chunk count and dataset name of a legacy ``.dat`` imatrix, read as
    llama.cpp's loader reads them (the dataset is a C string: it ends at the first NUL)."""
    try:
        with open(path, "rb") as handle:
            (entries,) = struct.unpack("<i", handle.read(4))
            if not 0 < entries <= _MAX_LEGACY_ENTRIES:
                raise ValueError("not a legacy imatrix")
            for _ in range(entries):
                (name_len,) = struct.unpack("<i", handle.read(4))
                if not 0 <= name_len <= _MAX_LEGACY_NAME:
                    raise ValueError("not a legacy imatrix")
                handle.seek(name_len + 4, os.SEEK_CUR)  # name, ncall
                (n_values,) = struct.unpack("<i", handle.read(4))
                if n_values < 1:
                    raise ValueError("not a legacy imatrix")
                handle.seek(4 * n_values, os.SEEK_CUR)
            tail = handle.read(8)
            if len(tail) < 8:
                return ImatrixStamp(None, False)
            chunks, dataset_len = struct.unpack("<ii", tail)
            dataset = handle.read(dataset_len) if 0 < dataset_len <= _MAX_LEGACY_NAME else b""
    except (OSError, struct.error, ValueError):
        return ImatrixStamp(_TYPICAL_DATASET_BYTES, True)
    if len(dataset) < max(dataset_len, 1):  # no name, or cut short: llama.cpp keeps none
        return ImatrixStamp(None, chunks > 0)
    name = dataset.split(b"\0", 1)[0]
    return ImatrixStamp(min(len(name), _OVERRIDE_STRING_BYTES), chunks > 0)


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
class PlanChange:
    """One edit (or undo/redo of it): tensor name -> (old type, new type)."""

    changes: dict[str, tuple[str, str]]
    description: str


class PrecisionPlan:
    """Tensor name -> ggml type for one model, with exact size accounting and undo."""

    def __init__(self, model: ModelInfo, types: Mapping[str, str], base_type: str,
                 profile: Profile | None = None, origin: str = "") -> None:
        if base_type.upper() not in FTYPE_DEFAULT_TYPE:
            raise ValueError(f"unknown llama-quantize type {base_type!r}")
        self.model = model
        self.base_type = base_type.upper()
        self.profile = profile
        self.origin = origin or (profile.label if profile else "custom")
        self.imatrix: str | None = None  # path of the importance matrix to quantize with
        self.types: dict[str, str] = {}
        self._quantizable = {t.name for t in model.tensors if is_quantizable(t.name, t.shape)}
        self._alignment = int(model.metadata.get("general.alignment", 32) or 32)
        self._undo: list[PlanChange] = []
        self._redo: list[PlanChange] = []
        self._listeners: list[Callable[[PlanChange], None]] = []
        self._cells: dict[Cell, list[str]] = {}
        for tensor in model.tensors:
            planned = types.get(tensor.name, tensor.type_name)
            self.types[tensor.name] = planned if tensor.name in self._quantizable else tensor.type_name
            if tensor.is_weight and tensor.role is not TensorRole.NORM:
                self._cells.setdefault((tensor.layer, tensor.kind), []).append(tensor.name)
        self._bytes: dict[str, int] = {name: self._compute_bytes(name) for name in self.types}
        self._data_bytes = sum(self._padded(b) for b in self._bytes.values())

    # --- types and sizes ---------------------------------------------------------------
    def is_quantizable(self, name: str) -> bool:
        return name in self._quantizable

    def planned_type(self, name: str) -> str:
        return self.types[name]

    def effective_type(self, name: str) -> str:
        """The type llama-quantize really writes: the plan's, after the row-length fallback."""
        planned = self.types[name]
        if name not in self._quantizable or planned not in TYPES:
            return planned
        return effective_type(planned, self.model.tensor(name).row_length)

    def _compute_bytes(self, name: str) -> int:
        tensor = self.model.tensor(name)
        kind = self.effective_type(name)
        if kind not in TYPES:
            return tensor.nbytes
        return tensor_bytes(kind, tensor.shape)

    def _padded(self, nbytes: int) -> int:
        return -(-nbytes // self._alignment) * self._alignment

    def tensor_bytes(self, name: str) -> int:
        return self._bytes[name]

    def tensor_bytes_map(self) -> dict[str, int]:
        return dict(self._bytes)

    def header_bytes(self) -> int:
        """Bytes before the tensor data in the output file (one file even for split input)."""
        metadata = self.model.metadata
        extra = 0
        for key in ("general.quantization_version", "general.file_type"):
            if key not in metadata:
                extra += _kv_bytes(key, 4)
        if self.imatrix:
            # llama-quantize stamps the imatrix it used: file name and first dataset (each cut
            # to 127 bytes), entry count, and chunk count when the imatrix records one. Keys
            # the source already has (a requantized quant) are replaced, not added.
            stamp = _imatrix_stamp(str(self.imatrix))
            path_bytes = min(len(str(self.imatrix).encode()), _OVERRIDE_STRING_BYTES)
            written: dict[str, int] = {"quantize.imatrix.file": 8 + path_bytes,
                                       "quantize.imatrix.entries_count": 4}
            if stamp.dataset_bytes is not None:
                written["quantize.imatrix.dataset"] = 8 + stamp.dataset_bytes
            if stamp.chunks:
                written["quantize.imatrix.chunks_count"] = 4
            for key, value_bytes in written.items():
                old = metadata.get(key)
                if old is None:
                    extra += _kv_bytes(key, value_bytes)
                elif isinstance(old, str):
                    extra += value_bytes - (8 + len(old.encode()))
        return self._padded(self.model.merged_header_bytes + extra)

    def data_bytes(self) -> int:
        return self._data_bytes

    def total_bytes(self) -> int:
        """Predicted size of the output file in bytes."""
        return self.header_bytes() + self._data_bytes

    def total_params(self) -> int:
        return self.model.total_params

    def bits_per_weight(self) -> float:
        params = self.model.total_params
        return sum(self._bytes.values()) * 8 / params if params else 0.0

    def bytes_by_role(self) -> dict[TensorRole, int]:
        totals: dict[TensorRole, int] = {}
        for tensor in self.model.tensors:
            totals[tensor.role] = totals.get(tensor.role, 0) + self._bytes[tensor.name]
        return totals

    def bits_per_weight_by_role(self) -> dict[TensorRole, float]:
        params: dict[TensorRole, int] = {}
        for tensor in self.model.tensors:
            params[tensor.role] = params.get(tensor.role, 0) + tensor.n_elements
        return {role: nbytes * 8 / params[role]
                for role, nbytes in self.bytes_by_role().items() if params.get(role)}

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
        return any(n in self._quantizable for n in self._cells.get((layer, kind), ()))

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
                if name in self._quantizable and self.types[name] != new_type:
                    changes[name] = (self.types[name], new_type)
        if not changes:
            return None
        return self._commit(changes, description or f"set {len(changes)} tensors to {new_type}")

    def set_tensor_types(self, types: Mapping[str, str], description: str = "") -> PlanChange | None:
        """Set individual tensors (one undo step)."""
        changes = {}
        for name, type_name in types.items():
            new_type = ggml_type(type_name).name
            if name in self._quantizable and self.types[name] != new_type:
                changes[name] = (self.types[name], new_type)
        if not changes:
            return None
        return self._commit(changes, description or f"set {len(changes)} tensors")

    def _commit(self, changes: dict[str, tuple[str, str]], description: str) -> PlanChange:
        """Check, apply and file the changes as one undo step, then tell the listeners."""
        self._check_writable(changes)
        change = PlanChange(changes, description)
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
        banded = self.profile.group(group)
        n_layer = self.model.n_layer
        roles = _GROUP_ROLES[group]
        cells = []
        for (layer, kind), names in self._cells.items():
            if layer is None or self.model.tensor(names[0]).role not in roles:
                continue
            if layer < n_layer and banded.band_index(layer, n_layer) == band_index:
                cells.append((layer, kind))
        return cells

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
        return any(self._needs_imatrix(name) for name in self._quantizable)

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
        for name in self.model._by_name:
            planned = self.types[name]
            if planned not in TYPES:
                found.append(PlanProblem("unknown-type", name, f"{name}: unknown type {planned}",
                                         planned, planned))
                continue
            if name not in self._quantizable:
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
        return {name: self.types[name] for name in self.model._by_name
                if name in self._quantizable and self.model.tensor(name).role
                not in (TensorRole.EMBEDDING, TensorRole.OUTPUT)}

    def special_types(self) -> tuple[str | None, str | None]:
        """(token embedding type, output type) as the plan fixes them, fallback applied.

        llama-quantize takes ``--token-embedding-type``/``--output-tensor-type`` as given, with
        no fallback, so the plan passes the type that fits the row length.
        """
        embedding = output = None
        for name in self._quantizable:
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
                 for name in self.model._by_name if name in self._quantizable]
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

    def quantize_args(self, tensor_type_file: str | Path, imatrix: str | Path | None = None) -> list[str]:
        """llama-quantize options (before the positional arguments) that apply this plan."""
        args = ["--tensor-type-file", str(tensor_type_file)]
        embedding, output = self.special_types()
        if embedding:
            args += ["--token-embedding-type", embedding.lower()]
        if output:
            args += ["--output-tensor-type", output.lower()]
        if any(t.type_name not in ("F32", "F16", "BF16") for t in self.model.tensors
               if t.name in self._quantizable):
            args.append("--allow-requantize")
        imatrix = imatrix or self.imatrix
        if imatrix:
            args += ["--imatrix", str(imatrix)]
        return args

    def quantize_argv(self, quantize_exe: str | Path, source: str | Path, output: str | Path,
                      tensor_type_file: str | Path, threads: int | None = None,
                      imatrix: str | Path | None = None) -> list[str]:
        """The full llama-quantize argument list for this plan."""
        argv = [str(quantize_exe), *self.quantize_args(tensor_type_file, imatrix),
                str(source), str(output), self.base_type]
        if threads:
            argv.append(str(threads))
        return argv

    def command_line(self, tensor_type_file: str = "plan.txt", output: str = "OUT.gguf") -> str:
        """A copyable shell command (display only; jobs run argument lists, never a shell)."""
        import shlex
        return shlex.join(self.quantize_argv("llama-quantize", self.model.path, output,
                                             tensor_type_file, imatrix=self.imatrix))


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


@dataclass(frozen=True)
class ProfileMatch:
    profile: Profile
    differing_share: float  # share of tensor bytes whose type differs
    differences: dict[str, tuple[str, str]]  # name -> (file's type, profile's type)

    @property
    def exact(self) -> bool:
        return not self.differences

    def describe(self) -> str:
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
                       for name in candidate._quantizable
                       if actual.types[name] != candidate.effective_type(name)}
        share = sum(model.tensor(n).nbytes for n in differences) / total if total else 0.0
        matches.append(ProfileMatch(profile, share, differences))
    matches.sort(key=lambda m: (m.differing_share, len(m.differences)))
    return matches
