"""A lazy GGUF header reader: metadata and tensor table, never tensor data.

The ``gguf`` package's reader materialises every array (a 248k-entry vocabulary becomes
248k numpy views), which takes seconds and hundreds of MB on big models. This reader maps
the file, decodes scalars and short arrays, and records long arrays as (offset, count) so
they are decoded only when asked for. Every count and length is checked against the bytes
that remain, so a corrupt or hostile file fails fast with :class:`GGUFError`.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apex_gui.core.gguf.types import UnknownTypeError, tensor_bytes, type_by_id

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
GGML_MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32

# Sanity bounds: far above any real model, low enough that a corrupt count fails at once.
MAX_TENSORS = 1_000_000
MAX_KV = 1_000_000
MAX_STRING_BYTES = 64 << 20  # one string (chat templates run to tens of KB)
MAX_DECODED_BYTES = 256 << 20  # all strings decoded while reading one header
MAX_WALK_ITEMS = 4_000_000  # strings walked one by one in one header (vocab + merges: ~0.5M)
EAGER_STRING_BYTES = 1 << 20  # a short string array larger than this stays lazy too
MAX_NAME_BYTES = 1 << 16  # keys and tensor names (llama.cpp caps tensor names at 64 bytes)
MAX_ARRAY_DEPTH = 8  # llama.cpp reads no nested arrays at all; a deep nest is corruption
EAGER_ARRAY_LIMIT = 1024  # longer arrays stay lazy until read

# GGUF value types
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, \
    _UINT64, _INT64, _FLOAT64 = range(13)

_SCALAR_FORMATS: dict[int, str] = {
    _UINT8: "<B", _INT8: "<b", _UINT16: "<H", _INT16: "<h", _UINT32: "<I", _INT32: "<i",
    _FLOAT32: "<f", _BOOL: "<?", _UINT64: "<Q", _INT64: "<q", _FLOAT64: "<d",
}
_SCALAR_SIZES = {k: struct.calcsize(v) for k, v in _SCALAR_FORMATS.items()}


def printable(text: str, limit: int = 96) -> str:
    """``text`` safe for a one-line message: control characters escaped, long text cut."""
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class GGUFError(ValueError):
    """The file is not a GGUF we can read; ``str()`` names the file and the problem.

    The message is always one line: names read from a corrupt file may hold newlines.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{printable(self.path, 4096)}: {printable(problem, 4096)}")


@dataclass(frozen=True)
class LazyArray:
    """A metadata array left undecoded in the mapped file (``path``: the file it lies in)."""

    item_type: int
    count: int
    offset: int
    path: Path | None = None

    def __len__(self) -> int:
        return self.count

    def decode(self, what: str = "array") -> list[Any]:
        """Read the items from the file (cheap for short arrays, slow for a vocabulary)."""
        if self.path is None:
            raise ValueError("this LazyArray does not know its file")
        return read_lazy_array(self.path, self, what)


def read_lazy_array(path: str | os.PathLike[str], value: LazyArray,
                    what: str = "array") -> list[Any]:
    """Decode a :class:`LazyArray` recorded by :func:`read_header` for ``path``."""
    file_path = Path(path)
    try:
        with open(file_path, "rb") as handle:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                cursor = _Cursor(file_path, view, value.offset, len(view))
                if value.item_type == _ARRAY:
                    return [cursor.array(what) for _ in range(value.count)]
                return [cursor.value(value.item_type, what) for _ in range(value.count)]
    except OSError as error:
        raise GGUFError(file_path, f"cannot read metadata {what} again: "
                                   f"{error.strerror or error}") from None


@dataclass(frozen=True)
class TensorEntry:
    """One row of the tensor table."""

    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (row length) first
    type_id: int
    offset: int  # relative to the data section
    nbytes: int

    @property
    def type_name(self) -> str:
        return type_by_id(self.type_id).name

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


class GGUFHeader:
    """Parsed header of one GGUF file. Use :func:`read_header`."""

    def __init__(self, path: Path, version: int, metadata: dict[str, Any],
                 tensors: list[TensorEntry], data_offset: int, file_size: int,
                 metadata_end: int = 0, tensor_info_end: int = 0) -> None:
        self.path = path
        self.version = version
        self.metadata = metadata
        self.tensors = tensors
        self.data_offset = data_offset
        self.file_size = file_size
        self.metadata_end = metadata_end  # byte after the last metadata entry
        self.tensor_info_end = tensor_info_end  # byte after the tensor table (before padding)

    @property
    def alignment(self) -> int:
        value = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        return value if isinstance(value, int) and value > 0 else DEFAULT_ALIGNMENT

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value; lazy arrays come back as :class:`LazyArray` (see :meth:`array`)."""
        return self.metadata.get(key, default)

    def array(self, key: str) -> list[Any]:
        """Decode a metadata array in full (cheap for short ones, slow for a vocabulary)."""
        value = self.metadata.get(key)
        if value is None:
            return []
        if isinstance(value, list):
            return value
        if not isinstance(value, LazyArray):
            raise GGUFError(self.path, f"metadata key {key} is not an array")
        return read_lazy_array(value.path or self.path, value, key)


class _Cursor:
    """Bounds-checked sequential decoding over a mapped buffer.

    Besides the file's end, two budgets bound the work a header can cause: array items walked
    one by one (strings, nested arrays) and string bytes decoded. A sparse file reads as zeros,
    so without them a corrupt count over a hole would walk for hours.
    """

    __slots__ = ("path", "buf", "pos", "end", "walked", "decoded")

    def __init__(self, path: Path, buf: Any, pos: int, end: int) -> None:
        self.path = path
        self.buf = buf
        self.pos = pos
        self.end = end
        self.walked = 0
        self.decoded = 0

    def need(self, size: int, what: str) -> None:
        if size < 0 or self.pos + size > self.end:
            raise GGUFError(self.path, f"truncated file: {what} at byte {self.pos} runs past "
                                       f"the end of the file ({self.end} bytes)")

    def walk(self, count: int, what: str) -> None:
        self.walked += count
        if self.walked > MAX_WALK_ITEMS:
            raise GGUFError(self.path, f"absurd array length {count} for {what}: the header "
                                       f"holds more than {MAX_WALK_ITEMS} strings")

    def scalar(self, value_type: int, what: str = "value") -> Any:
        size = _SCALAR_SIZES[value_type]
        self.need(size, what)
        (value,) = struct.unpack_from(_SCALAR_FORMATS[value_type], self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return self.scalar(_UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(_UINT64, what)

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        length = self.u64(what + " length")
        if length > limit:
            raise GGUFError(self.path, f"absurd {what} length {length} at byte {self.pos - 8}")
        self.need(length, what)
        self.decoded += length
        if self.decoded > MAX_DECODED_BYTES:
            raise GGUFError(self.path, f"the header holds more than {MAX_DECODED_BYTES} bytes "
                                       f"of text (at {what}): the file is corrupt")
        raw = bytes(self.buf[self.pos:self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def value(self, value_type: int, what: str = "value", depth: int = 0) -> Any:
        if value_type in _SCALAR_FORMATS:
            return self.scalar(value_type, what)
        if value_type == _STRING:
            return self.string(what)
        if value_type == _ARRAY:
            return self.array(what, depth + 1)
        raise GGUFError(self.path, f"unknown metadata value type {value_type} for {what}")

    def skip_strings(self, count: int, what: str) -> int:
        """Walk ``count`` strings without decoding them; returns the bytes they span."""
        self.walk(count, what)
        unpack = struct.Struct("<Q").unpack_from
        buf, start, end = self.buf, self.pos, self.end
        pos = start
        for _ in range(count):
            if pos + 8 > end:
                self.pos = pos
                self.need(8, what)
            pos += 8 + unpack(buf, pos)[0]
        if pos > end:
            # An earlier overrun fails at the next length read; the last one fails here.
            raise GGUFError(self.path, f"truncated file: {what} runs past the end of the "
                                       f"file ({end} bytes)")
        self.pos = pos
        return pos - start

    def array(self, what: str, depth: int = 1) -> list[Any] | LazyArray:
        """Short arrays come back decoded; long ones (and nested ones) as a LazyArray."""
        if depth > MAX_ARRAY_DEPTH:
            raise GGUFError(self.path, f"metadata {what} nests arrays more than "
                                       f"{MAX_ARRAY_DEPTH} deep")
        item_type = self.u32(what + " item type")
        count = self.u64(what + " item count")
        start = self.pos
        if item_type in _SCALAR_SIZES:
            size = _SCALAR_SIZES[item_type] * count
            self.need(size, what)
            if count <= EAGER_ARRAY_LIMIT:
                fmt = "<" + _SCALAR_FORMATS[item_type][1] * count
                values = list(struct.unpack_from(fmt, self.buf, self.pos))
                self.pos += size
                return values
            self.pos += size
            return LazyArray(item_type, count, start, self.path)
        if item_type == _STRING:
            # Each string carries its length: walking them is unavoidable, decoding is not.
            if count * 8 > self.end - self.pos:
                raise GGUFError(self.path, f"absurd array length {count} for {what}")
            span = self.skip_strings(count, what)
            if count <= EAGER_ARRAY_LIMIT and span <= EAGER_STRING_BYTES:
                self.pos = start
                return [self.string(what) for _ in range(count)]
            return LazyArray(item_type, count, start, self.path)
        if item_type == _ARRAY:
            # Nested arrays (which llama.cpp does not read) stay lazy: walked, never built.
            if count * 12 > self.end - self.pos:
                raise GGUFError(self.path, f"absurd array length {count} for {what}")
            self.walk(count, what)
            for _ in range(count):
                self.array(what, depth + 1)
            return LazyArray(item_type, count, start, self.path)
        raise GGUFError(self.path, f"unknown array item type {item_type} for {what}")


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Read a GGUF file's metadata and tensor table without touching tensor data."""
    file_path = Path(path)
    try:
        info = os.stat(file_path)
    except FileNotFoundError:
        raise GGUFError(file_path, "no such file; check the path") from None
    except OSError as error:
        raise GGUFError(file_path, f"cannot open: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise GGUFError(file_path, "is a folder, not a GGUF file")
    if not stat.S_ISREG(info.st_mode):
        # Opening a FIFO would block until a writer appears; devices are not models.
        raise GGUFError(file_path, "is not a regular file (a pipe, socket or device)")
    try:
        with open(file_path, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            if file_size < 24:
                start = handle.read(4)
                if start == GGUF_MAGIC:
                    raise GGUFError(file_path, f"truncated file: only {file_size} bytes, "
                                               "less than a GGUF header; download it again")
                if file_size == 0:
                    raise GGUFError(file_path, "empty file (0 bytes), not a GGUF file")
                raise GGUFError(file_path, f"not a GGUF file (only {file_size} bytes)")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                return _parse(file_path, view, file_size)
    except PermissionError:
        raise GGUFError(file_path, "permission denied; check the file's permissions") from None
    except OSError as error:
        raise GGUFError(file_path, f"cannot read: {error.strerror or error}") from None


def _parse(path: Path, view: Any, file_size: int) -> GGUFHeader:
    if view[:4] != GGUF_MAGIC:
        if view[:4] == GGUF_MAGIC[::-1]:
            raise GGUFError(path, "big-endian GGUF files are not supported; use the "
                                  "little-endian file")
        raise GGUFError(path, "not a GGUF file (missing the GGUF magic number)")
    cursor = _Cursor(path, view, 4, file_size)
    version = cursor.u32("version")
    if version not in SUPPORTED_VERSIONS:
        if version >= 1 << 16 and struct.unpack(">I", struct.pack("<I", version))[0] in (
                1, 2, 3):
            raise GGUFError(path, "big-endian GGUF files are not supported; use the "
                                  "little-endian file")
        raise GGUFError(path, f"unsupported GGUF version {version} (this app reads versions "
                              "2 and 3; re-convert the model with a current llama.cpp)")
    n_tensors = cursor.u64("tensor count")
    n_kv = cursor.u64("metadata count")
    if n_tensors > MAX_TENSORS:
        raise GGUFError(path, f"absurd tensor count {n_tensors}")
    if n_kv > MAX_KV:
        raise GGUFError(path, f"absurd metadata count {n_kv}")
    # A key-value pair takes at least 8+4+1 bytes, a tensor info 8+4+8+4+8.
    if n_kv * 13 + n_tensors * 32 > file_size - cursor.pos:
        raise GGUFError(path, f"{n_kv} metadata entries and {n_tensors} tensors cannot fit "
                              f"in {file_size} bytes: the file is truncated or its header "
                              "is corrupt")

    metadata: dict[str, Any] = {}
    for index in range(n_kv):
        key = cursor.string(f"metadata key #{index}", MAX_NAME_BYTES)
        if key in metadata:
            raise GGUFError(path, f"duplicate metadata key {printable(key)}")
        value_type = cursor.u32(f"type of {printable(key)}")
        metadata[key] = cursor.value(value_type, printable(key))

    metadata_end = cursor.pos
    # Each tensor info takes at least 8+4+8+4+8 bytes: a count the file cannot hold is corrupt.
    if n_tensors * 32 > file_size - cursor.pos:
        raise GGUFError(path, f"{n_tensors} tensors cannot fit in the rest of the file: the "
                              "file is truncated or its header is corrupt")
    raw: list[tuple[str, tuple[int, ...], int, int]] = []
    seen: set[str] = set()
    for index in range(n_tensors):
        name = cursor.string(f"tensor #{index} name", MAX_NAME_BYTES)
        shown = printable(name) or f"#{index} (no name)"
        if name in seen:
            raise GGUFError(path, f"duplicate tensor name {shown}")
        seen.add(name)
        n_dims = cursor.u32(f"dimension count of {shown}")
        if n_dims == 0 or n_dims > GGML_MAX_DIMS:
            raise GGUFError(path, f"tensor {shown} has {n_dims} dimensions (1 to 4 allowed)")
        cursor.need(8 * n_dims, f"shape of {shown}")
        shape = struct.unpack_from("<" + "Q" * n_dims, view, cursor.pos)
        cursor.pos += 8 * n_dims
        type_id = cursor.u32(f"type of {shown}")
        offset = cursor.u64(f"offset of {shown}")
        raw.append((name, tuple(shape), type_id, offset))

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0
            or alignment & (alignment - 1)):
        raise GGUFError(path, f"general.alignment {printable(repr(alignment))} is not a "
                              "power of two")
    tensor_info_end = cursor.pos
    data_offset = -(-cursor.pos // alignment) * alignment

    tensors: list[TensorEntry] = []
    for index, (name, shape, type_id, offset) in enumerate(raw):
        shown = printable(name) or f"#{index} (no name)"
        try:
            kind = type_by_id(type_id)
        except UnknownTypeError:
            raise GGUFError(path, f"tensor {shown} has unknown ggml type id {type_id}; "
                                  "update APEX Studio or the tool that wrote the file") from None
        if any(dim <= 0 for dim in shape) or any(dim > 1 << 40 for dim in shape):
            raise GGUFError(path, f"tensor {shown} has an invalid shape {list(shape)}")
        if shape[0] % kind.block_size:
            raise GGUFError(path, f"tensor {shown} has rows of {shape[0]} values, not a "
                                  f"multiple of the {kind.name} block size {kind.block_size}")
        if offset % alignment:
            raise GGUFError(path, f"tensor {shown} data offset {offset} is not a multiple of "
                                  f"the alignment {alignment}")
        nbytes = tensor_bytes(kind.name, shape)
        if data_offset + offset + nbytes > file_size:
            raise GGUFError(path, f"tensor {shown} data ends past the end of the file "
                                  f"({data_offset + offset + nbytes} > {file_size} bytes): "
                                  "the file is truncated; download it again")
        tensors.append(TensorEntry(name, shape, type_id, offset, nbytes))
    return GGUFHeader(path, version, metadata, tensors, data_offset, file_size,
                      metadata_end, tensor_info_end)


def metadata_spans(path: str | os.PathLike[str]) -> list[tuple[str, int, int]]:
    """Each metadata entry's key and byte span ``[start, end)`` in the file, in file order:
    what a writer needs to copy entries verbatim (a vocabulary is copied, never decoded)."""
    file_path = Path(path)
    header = read_header(file_path)
    spans: list[tuple[str, int, int]] = []
    with open(file_path, "rb") as handle, \
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        cursor = _Cursor(file_path, view, 24, header.file_size)  # after magic, version, counts
        for index in range(len(header.metadata)):
            start = cursor.pos
            key = cursor.string(f"metadata key #{index}", MAX_NAME_BYTES)
            cursor.value(cursor.u32(f"type of {printable(key)}"), printable(key))
            spans.append((key, start, cursor.pos))
    return spans
