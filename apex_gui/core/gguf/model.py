"""A GGUF model as the app sees it: summary, layers and every tensor with its role.

:func:`open_model` reads headers only (see :mod:`gguf_reader`), follows split shards from
any one of them, and recognises the companion files that sit beside models: vision
projectors (``clip``) and importance matrices (``general.type = imatrix``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from apex_gui.core.gguf.reader import (
    GGUFError, GGUFHeader, LazyArray, printable, read_header, read_lazy_array,
)
from apex_gui.core.gguf.roles import TensorRole, classify_kind, kind_sort_key, split_name
from apex_gui.core.gguf.shards import check_shards_belong_together, shard_paths
from apex_gui.core.gguf.types import FILE_TYPE_NAMES, IMATRIX_REQUIRED


#: Far above any real model (llama.cpp's own limit is 512 blocks); a larger block count or
#: layer index is corruption, and would otherwise cost a LayerInfo per bogus layer.
MAX_LAYERS = 4096

# Integer hyper-parameters the model layer reads; checked once at open so that a corrupt
# value fails there with the file's name instead of deep inside a property.
_COUNT_HPARAMS = (
    "block_count", "nextn_predict_layers", "expert_count", "expert_used_count",
    "expert_shared_count", "leading_dense_block_count", "context_length", "embedding_length",
    "vocab_size", "attention.key_length", "attention.value_length", "attention.q_lora_rank",
    "attention.kv_lora_rank", "attention.sliding_window",
)
_PER_LAYER_HPARAMS = ("attention.head_count", "attention.head_count_kv",
                      "attention.sliding_window_pattern")
_MAX_COUNT = 1 << 40


class FileKind(Enum):
    MODEL = "model"
    VISION_PROJECTOR = "vision projector (mmproj)"
    IMATRIX = "importance matrix"


class MixerKind(Enum):
    """What mixes tokens in a layer."""

    FULL_ATTENTION = "full attention"
    SLIDING_WINDOW = "sliding-window attention"
    MLA = "multi-head latent attention"
    LINEAR_ATTENTION = "linear attention / SSM"
    SHORT_CONV = "short convolution"
    NONE = "none"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: where it sits, what it is for, and what it costs."""

    name: str
    layer: int | None
    kind: str  # name without "blk.N." and ".weight", e.g. "ffn_down_exps"
    role: TensorRole
    shape: tuple[int, ...]  # ggml order, row length first
    type_name: str
    nbytes: int
    shard: int = 0

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def row_length(self) -> int:
        return self.shape[0]

    @property
    def bits_per_weight(self) -> float:
        return self.nbytes * 8 / self.n_elements if self.n_elements else 0.0

    @property
    def is_weight(self) -> bool:
        return self.name.endswith("weight")


@dataclass(frozen=True)
class LayerInfo:
    index: int
    is_mtp: bool
    mixer: MixerKind
    has_routed_experts: bool
    has_shared_experts: bool
    has_dense_ffn: bool

    @property
    def label(self) -> str:
        return f"MTP {self.index}" if self.is_mtp else str(self.index)


@dataclass(frozen=True)
class ImatrixInfo:
    datasets: tuple[str, ...]
    chunk_count: int | None
    chunk_size: int | None
    covered_tensors: tuple[str, ...]


#: ``file_type`` of a full-precision source (see :attr:`ModelInfo.is_full_precision`).
FULL_PRECISION_FILE_TYPES = frozenset({"F32", "F16", "BF16", "unknown"})


@dataclass
class ModelInfo:
    """Everything the app knows about one GGUF file (or one set of split shards)."""

    paths: tuple[Path, ...]
    file_kind: FileKind
    architecture: str
    name: str
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    layers: list[LayerInfo]
    header_bytes: int  # bytes before the data section, summed over shards
    file_size: int  # all shards together
    vocab_size: int
    imatrix: ImatrixInfo | None = None
    # Unpadded size of the header one merged file would have: first shard's magic, counts
    # and metadata (less split.* keys) plus every shard's tensor table.
    merged_header_bytes: int = 0
    by_name: dict[str, TensorInfo] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.by_name = {t.name: t for t in self.tensors}

    # --- hyper-parameters -------------------------------------------------------------
    def hparam(self, key: str, default: Any = None) -> Any:
        """``{arch}.KEY`` from the metadata."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def path(self) -> Path:
        return self.paths[0]

    @property
    def block_count(self) -> int:
        return int(self.hparam("block_count", 0) or 0)

    @property
    def n_mtp_layers(self) -> int:
        return int(self.hparam("nextn_predict_layers", 0) or 0)

    @property
    def n_layer(self) -> int:
        """Ordinary blocks (MTP/nextn blocks excluded): what APEX's bands count."""
        return max(self.block_count - self.n_mtp_layers, 0)

    @property
    def n_expert(self) -> int:
        return int(self.hparam("expert_count", 0) or 0)

    @property
    def n_expert_used(self) -> int:
        return int(self.hparam("expert_used_count", 0) or 0)

    @property
    def n_expert_shared(self) -> int:
        declared = self.hparam("expert_shared_count")
        if declared is not None:
            return int(declared)
        return 1 if any(t.role is TensorRole.SHARED_EXPERT for t in self.tensors) else 0

    @property
    def n_leading_dense(self) -> int:
        declared = self.hparam("leading_dense_block_count")
        if declared is not None:
            return int(declared)
        count = 0
        for layer in self.layers:
            if layer.is_mtp or layer.has_routed_experts:
                break
            count += 1
        return count if count < self.n_layer else 0

    @property
    def context_length(self) -> int:
        return int(self.hparam("context_length", 0) or 0)

    @property
    def file_type(self) -> str:
        value = self.metadata.get("general.file_type")
        if isinstance(value, int):
            return FILE_TYPE_NAMES.get(value, f"type {value}")
        return "unknown"

    @property
    def is_full_precision(self) -> bool:
        """A source to quantize, not a quant: F32, F16, BF16, or no ``general.file_type``
        at all (many converted files), which llama-quantize takes without
        ``--allow-requantize``."""
        return self.file_type in FULL_PRECISION_FILE_TYPES

    # --- tensors --------------------------------------------------------------------
    def tensor(self, name: str) -> TensorInfo:
        return self.by_name[name]

    def tensors_in_layer(self, layer: int) -> list[TensorInfo]:
        return [t for t in self.tensors if t.layer == layer]

    @property
    def total_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def active_params(self) -> int:
        """Weights touched per token: routed experts count k/N, MTP blocks not at all."""
        n_expert, used = self.n_expert, self.n_expert_used
        mtp_layers = {l.index for l in self.layers if l.is_mtp}
        total = 0
        for tensor in self.tensors:
            if tensor.layer in mtp_layers:
                continue
            if tensor.role is TensorRole.ROUTED_EXPERT and n_expert > 1 and used:
                total += tensor.n_elements * used // n_expert
            else:
                total += tensor.n_elements
        return total

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        params = self.total_params
        return self.tensor_bytes * 8 / params if params else 0.0

    @property
    def looks_imatrix_quantized(self) -> bool:
        """True when the file records an imatrix, or uses types that cannot be made without one."""
        if any(key.startswith("quantize.imatrix.") for key in self.metadata):
            return True
        return any(t.type_name in IMATRIX_REQUIRED and t.role not in
                   (TensorRole.EMBEDDING, TensorRole.OUTPUT) for t in self.tensors)

    @property
    def kinds(self) -> list[str]:
        """Per-layer tensor kinds that hold weights, in heatmap column order."""
        found = {t.kind for t in self.tensors if t.layer is not None and t.is_weight
                 and t.role is not TensorRole.NORM}
        return sorted(found, key=kind_sort_key)

    # --- attention geometry -----------------------------------------------------------
    def per_layer(self, key: str, default: int = 0) -> list[int]:
        """A hyper-parameter that may be stored per layer (an array) or once (a scalar)."""
        value = self.hparam(key, default)
        if isinstance(value, LazyArray):
            value = self._header_array(key)
        full_key = f"{self.architecture}.{key}"
        if isinstance(value, list):
            values = [_as_count(self.path, full_key, v) for v in value]
            return (values + [values[-1] if values else default] * self.block_count)[: self.block_count]
        return [_as_count(self.path, full_key, value or 0)] * self.block_count

    def _header_array(self, key: str) -> list[Any]:
        full_key = f"{self.architecture}.{key}"
        value = self.metadata.get(full_key)
        if isinstance(value, LazyArray):
            return read_lazy_array(value.path or self.path, value, full_key)
        return value if isinstance(value, list) else []

    @property
    def n_head(self) -> int:
        heads = self.per_layer("attention.head_count")
        return max(heads) if heads else 0

    @property
    def n_head_kv(self) -> int:
        heads = self.per_layer("attention.head_count_kv")
        return max(heads) if any(heads) else self.n_head

    @property
    def head_dim_k(self) -> int:
        declared = self.hparam("attention.key_length")
        if declared:
            return int(declared)
        embd = int(self.hparam("embedding_length", 0) or 0)
        return embd // self.n_head if self.n_head else 0

    @property
    def head_dim_v(self) -> int:
        declared = self.hparam("attention.value_length")
        return int(declared) if declared else self.head_dim_k

    @property
    def q_lora_rank(self) -> int:
        return int(self.hparam("attention.q_lora_rank", 0) or 0)

    @property
    def kv_lora_rank(self) -> int:
        return int(self.hparam("attention.kv_lora_rank", 0) or 0)

    @property
    def sliding_window(self) -> int:
        return int(self.hparam("attention.sliding_window", 0) or 0)


# Architectures whose sliding-window layout is a fixed period when the file gives none
# (llama.cpp's load_swa_pattern default for each): every Nth layer is full attention.
_DEFAULT_SWA_PERIOD = {"afmoe": 4, "gpt-oss": 2, "llama4": 4, "gemma3": 6, "cohere2": 4}


def open_model(path: str | os.PathLike[str]) -> ModelInfo:
    """Read a GGUF (or every shard of a split GGUF) into a :class:`ModelInfo`."""
    shards = shard_paths(path)
    headers = [read_header(shard) for shard in shards]
    first = headers[0]
    declared_count = first.get("split.count")
    if isinstance(declared_count, int) and declared_count != len(headers) and declared_count > 1:
        raise GGUFError(shards[0], f"declares {declared_count} shards but {len(headers)} were "
                                   "found; rename the shards as NAME-0000i-of-0000N.gguf")
    if len(headers) > 1:
        check_shards_belong_together(shards, headers)
    metadata = dict(first.metadata)
    for header in headers[1:]:
        for key, value in header.metadata.items():
            metadata.setdefault(key, value)
    return _build_model(tuple(shards), headers, metadata)


def _file_kind(metadata: dict[str, Any]) -> FileKind:
    if metadata.get("general.type") == "imatrix":
        return FileKind.IMATRIX
    if metadata.get("general.architecture") == "clip" or metadata.get("general.type") == "mmproj":
        return FileKind.VISION_PROJECTOR
    return FileKind.MODEL


def _as_count(path: Path, key: str, value: Any) -> int:
    """``value`` as a non-negative integer, or a :class:`GGUFError` naming the key."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_COUNT:
        return value
    if isinstance(value, bool):  # a per-layer on/off flag (sliding_window_pattern)
        return int(value)
    raise GGUFError(path, f"metadata {printable(key)} = {printable(repr(value), 48)} is not a "
                          "valid count; the file is corrupt or was written by a broken tool")


def _check_hparams(path: Path, metadata: dict[str, Any], arch: str) -> None:
    """Fail at open on integer hyper-parameters that a corrupt file got wrong."""
    for key in _COUNT_HPARAMS:
        full_key = f"{arch}.{key}"
        if full_key in metadata:
            _as_count(path, full_key, metadata[full_key])
    for key in _PER_LAYER_HPARAMS:
        full_key = f"{arch}.{key}"
        value = metadata.get(full_key)
        if isinstance(value, list):
            for item in value:
                _as_count(path, full_key, item)
        elif isinstance(value, LazyArray):
            if value.item_type not in range(0, 6) and value.item_type not in (7, 10, 11):
                _as_count(path, full_key, value)  # not an integer array: raises
            if value.count > MAX_LAYERS:
                raise GGUFError(path, f"metadata {full_key} has {value.count} entries, more "
                                      f"than any model has layers ({MAX_LAYERS})")
        elif value is not None:
            _as_count(path, full_key, value)
    blocks = metadata.get(f"{arch}.block_count", 0)
    if blocks > MAX_LAYERS:
        raise GGUFError(path, f"metadata {arch}.block_count = {blocks} is absurd (more than "
                              f"{MAX_LAYERS}); the file is corrupt")
    mtp = metadata.get(f"{arch}.nextn_predict_layers", 0)
    if mtp > blocks:
        raise GGUFError(path, f"metadata {arch}.nextn_predict_layers = {mtp} exceeds "
                              f"{arch}.block_count = {blocks}; the file is corrupt")


def _build_model(paths: tuple[Path, ...], headers: list[GGUFHeader],
                 metadata: dict[str, Any]) -> ModelInfo:
    kind = _file_kind(metadata)
    declared_arch = metadata.get("general.architecture")
    if isinstance(declared_arch, str):
        arch = declared_arch
    else:
        arch = "imatrix" if kind is FileKind.IMATRIX else "unknown"
    _check_hparams(paths[0], metadata, arch)
    tensors: list[TensorInfo] = []
    for shard_index, header in enumerate(headers):
        for entry in header.tensors:
            layer, tensor_kind, _ = split_name(entry.name)
            if layer is not None and layer >= MAX_LAYERS:
                raise GGUFError(header.path, f"tensor {printable(entry.name)} has layer index "
                                             f"{layer}, more than any model has layers")
            role = classify_kind(tensor_kind, layer is not None)
            tensors.append(TensorInfo(entry.name, layer, tensor_kind, role, entry.shape,
                                      entry.type_name, entry.nbytes, shard_index))
    vocab = metadata.get("tokenizer.ggml.tokens")
    vocab_size = len(vocab) if isinstance(vocab, (list, LazyArray)) else int(
        metadata.get(f"{arch}.vocab_size", 0) or 0)
    imatrix = _imatrix_info(paths[0], metadata, tensors) if kind is FileKind.IMATRIX else None
    model = ModelInfo(
        paths=paths, file_kind=kind, architecture=arch,
        name=str(metadata.get("general.name", paths[0].stem)), metadata=metadata,
        tensors=tensors, layers=[], header_bytes=sum(h.data_offset for h in headers),
        file_size=sum(h.file_size for h in headers), vocab_size=vocab_size, imatrix=imatrix,
        merged_header_bytes=_merged_header_bytes(headers))
    if kind is FileKind.MODEL:
        model.layers = _layers(model)
    return model


def _merged_header_bytes(headers: list[GGUFHeader]) -> int:
    first = headers[0]
    split_keys = 0
    if len(headers) > 1:
        # split.no (u16), split.count (u16), split.tensors.count (i32) are dropped on merge.
        split_keys = sum(8 + len(k) + 4 + size for k, size in
                         (("split.no", 2), ("split.count", 2), ("split.tensors.count", 4))
                         if k in first.metadata)
    tables = sum(h.tensor_info_end - h.metadata_end for h in headers)
    return first.metadata_end - split_keys + tables


def _imatrix_info(path: Path, metadata: dict[str, Any],
                  tensors: list[TensorInfo]) -> ImatrixInfo:
    datasets = metadata.get("imatrix.datasets", [])
    if isinstance(datasets, str):
        datasets = [datasets]
    elif isinstance(datasets, LazyArray):
        datasets = read_lazy_array(datasets.path or path, datasets, "imatrix.datasets")
    covered = sorted({t.name[: -len(".in_sum2")] for t in tensors if t.name.endswith(".in_sum2")})
    chunk_count = metadata.get("imatrix.chunk_count")
    chunk_size = metadata.get("imatrix.chunk_size")
    return ImatrixInfo(tuple(str(d) for d in datasets) if isinstance(datasets, list) else (),
                       int(chunk_count) if isinstance(chunk_count, int) else None,
                       int(chunk_size) if isinstance(chunk_size, int) else None,
                       tuple(covered))


def _swa_layers(model: ModelInfo) -> set[int]:
    if model.sliding_window <= 0:
        return set()
    pattern = model.hparam("attention.sliding_window_pattern")
    if isinstance(pattern, LazyArray):
        pattern = model._header_array("attention.sliding_window_pattern")
    if isinstance(pattern, list):
        return {i for i, is_swa in enumerate(pattern) if is_swa}
    period = int(pattern) if isinstance(pattern, int) else _DEFAULT_SWA_PERIOD.get(
        model.architecture, 0)
    if period <= 0:
        return set(range(model.n_layer))
    # llama.cpp's set_swa_pattern: the last layer of each period is full attention.
    return {i for i in range(model.n_layer) if i % period < period - 1}


def _layers(model: ModelInfo) -> list[LayerInfo]:
    by_layer: dict[int, set[TensorRole]] = {}
    kinds_by_layer: dict[int, set[str]] = {}
    for tensor in model.tensors:
        if tensor.layer is None:
            continue
        by_layer.setdefault(tensor.layer, set()).add(tensor.role)
        kinds_by_layer.setdefault(tensor.layer, set()).add(tensor.kind)
    count = max(model.block_count, (max(by_layer) + 1) if by_layer else 0)
    swa = _swa_layers(model)
    mla = model.kv_lora_rank > 0
    layers = []
    for index in range(count):
        roles = by_layer.get(index, set())
        kinds = kinds_by_layer.get(index, set())
        if TensorRole.SHORT_CONV in roles:
            mixer = MixerKind.SHORT_CONV
        elif TensorRole.LINEAR_ATTENTION in roles:
            mixer = MixerKind.LINEAR_ATTENTION
        elif TensorRole.ATTENTION in roles:
            if mla or "attn_kv_a_mqa" in kinds:
                mixer = MixerKind.MLA
            elif index in swa:
                mixer = MixerKind.SLIDING_WINDOW
            else:
                mixer = MixerKind.FULL_ATTENTION
        else:
            mixer = MixerKind.NONE
        layers.append(LayerInfo(
            index=index,
            is_mtp=index >= model.n_layer and model.n_mtp_layers > 0,
            mixer=mixer,
            has_routed_experts=TensorRole.ROUTED_EXPERT in roles,
            has_shared_experts=TensorRole.SHARED_EXPERT in roles,
            has_dense_ffn=TensorRole.DENSE_FFN in roles,
        ))
    return layers


def type_histogram(model: ModelInfo) -> dict[str, int]:
    """Bytes per ggml type over the whole file."""
    totals: dict[str, int] = {}
    for tensor in model.tensors:
        totals[tensor.type_name] = totals.get(tensor.type_name, 0) + tensor.nbytes
    return dict(sorted(totals.items(), key=lambda item: -item[1]))
