"""Importance-matrix files (GGUF and the legacy .dat format): what llama-quantize stores of them."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from apex_gui.core.gguf.reader import GGUFError, LazyArray, read_header, read_lazy_array


# llama-quantize copies override strings into a 128-byte buffer (strncpy 127 + NUL).
OVERRIDE_STRING_BYTES = 127
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


def imatrix_stamp(path: str) -> ImatrixStamp:
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
        min(len(first.encode()), OVERRIDE_STRING_BYTES) if isinstance(first, str) else None,
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
    return ImatrixStamp(min(len(name), OVERRIDE_STRING_BYTES), chunks > 0)
