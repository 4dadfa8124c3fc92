"""Quantization error read back from files the real llama-quantize wrote.

A quantized file and its source are read tensor by tensor with the ``gguf`` package's
dequantizers, and the error is weighted by the importance matrix where one is given (per
expert for ``*_exps``): for a row ``w`` and its quantized ``q`` the output error is about
``sum_j imatrix_j * (w_j - q_j)^2``. Only one matrix (one expert of a merged expert tensor)
is in memory at a time, resident pages included.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable
from pathlib import Path
import numpy as np

from apex_gui.core.gguf.reader import TensorEntry, read_header
from apex_gui.core.quality.scratch import stop_if_cancelled


def read_imatrix(path: Path) -> dict[str, np.ndarray]:
    """Tensor name -> mean squared activation per input column, shape (n_mat, n_per_row).

    Reads the GGUF format (``NAME.in_sum2`` / ``NAME.counts``, normalised per expert as
    llama-quantize does) and the legacy ``.dat`` format.
    """
    # start-up: gguf loads only when an imatrix is read
    import gguf

    try:
        reader = gguf.GGUFReader(path, "r")
    except (ValueError, OSError):
        return _read_legacy_imatrix(path)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        if tensor.name.endswith(".in_sum2"):
            sums[tensor.name[: -len(".in_sum2")]] = np.asarray(tensor.data, dtype=np.float32)
        elif tensor.name.endswith(".counts"):
            counts[tensor.name[: -len(".counts")]] = np.asarray(tensor.data, dtype=np.float32)
    out: dict[str, np.ndarray] = {}
    for name, values in sums.items():
        n_mat = counts[name].size if name in counts else 1
        per = values.reshape(n_mat, -1)
        count = counts.get(name, np.ones(n_mat, np.float32)).reshape(n_mat, 1)
        # An expert that saw no token gets weight 1, as llama-quantize gives it.
        out[name] = np.where(count > 0, per / np.maximum(count, 1e-30), 1.0).astype(np.float32)
    return out


def _read_legacy_imatrix(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    try:
        with open(path, "rb") as handle:
            (entries,) = struct.unpack("<i", handle.read(4))
            for _ in range(entries):
                (name_len,) = struct.unpack("<i", handle.read(4))
                name = handle.read(name_len).decode()
                ncall, n_values = struct.unpack("<ii", handle.read(8))
                values = np.frombuffer(handle.read(4 * n_values), dtype=np.float32)
                out[name] = (values / ncall if ncall > 0 else values).reshape(1, -1)
    except (struct.error, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: not an importance matrix (GGUF or legacy .dat): {error}; "
                         "compute one with apex-studio imatrix MODEL -o FILE") from None
    return out


def dequantized_slices(path: Path, entry: TensorEntry, data_offset: int) -> Iterable[np.ndarray]:
    """A tensor of a GGUF file as float32, one 2-D matrix (one expert) at a time.

    Each matrix is read with one positioned read: memory (resident too) stays at one matrix,
    where a memory map of the file would keep every page it touched resident."""
    # start-up: gguf loads only when a quant is read back
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    rows = entry.shape[1] if len(entry.shape) > 1 else 1
    matrices = 1
    for dim in entry.shape[2:]:
        matrices *= dim
    matrix_bytes = entry.nbytes // matrices
    qtype = GGMLQuantizationType(entry.type_id)
    with open(path, "rb") as handle:
        for index in range(matrices):
            raw = np.fromfile(handle, dtype=np.uint8, count=matrix_bytes,
                              offset=data_offset + entry.offset + index * matrix_bytes
                              - handle.tell())
            part = raw.reshape(rows, matrix_bytes // rows)
            if qtype.name == "F32":
                yield part.view(np.float32)
            elif qtype.name == "F16":
                yield part.view(np.float16).astype(np.float32)
            else:
                yield dequantize(part, qtype).astype(np.float32, copy=False)


def _tensors(path: Path) -> tuple[dict[str, TensorEntry], int]:
    header = read_header(path)
    return {t.name: t for t in header.tensors}, header.data_offset


def _column_weights(weights: np.ndarray | None, index: int, width: int) -> np.ndarray | None:
    if weights is None or weights.shape[-1] != width:
        return None
    return weights[min(index, weights.shape[0] - 1)]


def weighted_errors(source: Path, quantized: Path, names: Iterable[str],
                    imatrix: dict[str, np.ndarray] | None,
                    cancel: threading.Event | None = None) -> dict[str, float]:
    """Sum over rows of ``sum_j imatrix_j (w_j - q_j)^2`` for each named tensor."""
    src, src_start = _tensors(source)
    qnt, qnt_start = _tensors(quantized)
    out: dict[str, float] = {}
    for name in names:
        stop_if_cancelled(cancel)
        weights = imatrix.get(name) if imatrix else None
        total = 0.0
        for index, (w, q) in enumerate(zip(dequantized_slices(source, src[name], src_start),
                                           dequantized_slices(quantized, qnt[name], qnt_start),
                                           strict=True)):
            diff2 = np.square(w - q, dtype=np.float32)
            column = _column_weights(weights, index, diff2.shape[-1])
            if column is not None:
                total += float(diff2.reshape(-1, diff2.shape[-1]).sum(0) @ column)
            else:
                total += float(diff2.sum())
        out[name] = total
    return out


def weight_energy(source: Path, names: Iterable[str], imatrix: dict[str, np.ndarray] | None,
                  cancel: threading.Event | None = None) -> dict[str, float]:
    """Summed squared weights of each named tensor, times the mean importance of its
    columns where an imatrix is given: what the activation-quantization noise of a
    quantized weight is multiplied by (in the units of :func:`weighted_errors`)."""
    src, src_start = _tensors(source)
    out: dict[str, float] = {}
    for name in names:
        stop_if_cancelled(cancel)
        weights = imatrix.get(name) if imatrix else None
        total = 0.0
        for index, w in enumerate(dequantized_slices(source, src[name], src_start)):
            energy = float(np.square(w, dtype=np.float32).sum())
            column = _column_weights(weights, index, w.shape[-1])
            total += energy * (float(column.mean()) if column is not None else 1.0)
        out[name] = total
    return out
