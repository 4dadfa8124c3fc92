"""Calibration probe models without a full copy of the model per probe.

A probe is the source model with one group of tensors (one kind) lowered to the probe
type. Writing each probe as a whole file costs a model-sized write per probe. Instead the
model is written once as a split GGUF (llama.cpp loads ``NAME-0000i-of-0000N.gguf`` sets):
a base shard with the metadata and the tensors no probe lowers, then one shard per group,
once at source precision and once at the probe type (copied from one llama-quantize run of
the whole model). A probe is a folder of symbolic links picking each group's shard: one
group low, the others as stored; "all low" is a probe too. Disk: the model once, its
probe-type quant once; each probe costs nothing but its evaluation.
"""

from __future__ import annotations

import math
import os
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from apex_gui.core.gguf.reader import GGUF_MAGIC, GGUFHeader, metadata_spans, read_header
from apex_gui.core.quality.scratch import stop_if_cancelled

#: Copied per read while writing a shard (bounds memory for any tensor size).
_COPY_CHUNK = 16 << 20
_GGUF_UINT16, _GGUF_INT32 = 2, 5
SHARD_PREFIX = "probe"


def shard_name(index: int, count: int) -> str:
    """llama.cpp's split naming (``llama_split_path``), 1-based."""
    return f"{SHARD_PREFIX}-{index:05d}-of-{count:05d}.gguf"


def _kv(key: str, value_type: int, value: int) -> bytes:
    raw = key.encode()
    fmt = {_GGUF_UINT16: "<H", _GGUF_INT32: "<i"}[value_type]
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<I", value_type) + struct.pack(fmt, value)


def _gguf_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


@dataclass(frozen=True)
class _Located:
    """Where one tensor's bytes are: a file, its header and the tensor's entry."""

    header: GGUFHeader
    index: int  # position in header.tensors


class TensorSource:
    """Tensor name -> location, over the files of one model (a source or a quant)."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.located: dict[str, _Located] = {}
        for path in paths:
            header = read_header(path)
            for index, entry in enumerate(header.tensors):
                self.located[entry.name] = _Located(header, index)


def copy_range(source: int, out: BinaryIO, offset: int, nbytes: int) -> None:
    """Copy ``nbytes`` at ``offset`` of the file ``source`` (a descriptor) to ``out``: in the
    kernel where it can (no copy in this process's memory), else in bounded reads."""
    out.flush()
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < nbytes:
                step = os.copy_file_range(source, out.fileno(), nbytes - done, offset + done)
                if step <= 0:
                    break
                done += step
        except OSError:
            pass  # another file system, an old kernel: copy it ourselves
        out.seek(0, os.SEEK_END)
    while done < nbytes:
        chunk = os.pread(source, min(_COPY_CHUNK, nbytes - done), offset + done)
        if not chunk:
            raise OSError(f"unexpected end of file after {offset + done} bytes")
        out.write(chunk)
        done += len(chunk)


def write_shard(target: Path, kv_blob: bytes, kv_count: int, names: Sequence[str],
                source: TensorSource, alignment: int,
                cancel: threading.Event | None = None) -> None:
    """One GGUF file holding ``names`` (copied byte for byte from ``source``)."""
    entries = [source.located[name] for name in names]
    tmp = target.with_name(f".{target.name}.part")
    descriptors: dict[Path, int] = {}
    try:
        with open(tmp, "wb") as out:
            out.write(GGUF_MAGIC + struct.pack("<IQQ", 3, len(entries), kv_count))
            out.write(kv_blob)
            offset = 0
            offsets = []
            for located in entries:
                entry = located.header.tensors[located.index]
                out.write(_gguf_string(entry.name) + struct.pack("<I", len(entry.shape))
                          + struct.pack("<" + "Q" * len(entry.shape), *entry.shape)
                          + struct.pack("<IQ", entry.type_id, offset))
                offsets.append(offset)
                offset += -(-entry.nbytes // alignment) * alignment
            out.write(b"\0" * (-out.tell() % alignment))
            data_start = out.tell()
            for located, at in zip(entries, offsets):
                stop_if_cancelled(cancel)
                header = located.header
                entry = header.tensors[located.index]
                if header.path not in descriptors:
                    descriptors[header.path] = os.open(header.path, os.O_RDONLY)
                out.write(b"\0" * (data_start + at - out.tell()))
                copy_range(descriptors[header.path], out, header.data_offset + entry.offset,
                           entry.nbytes)
            out.write(b"\0" * (-out.tell() % alignment))
        os.replace(tmp, target)
    finally:
        for descriptor in descriptors.values():
            os.close(descriptor)
        tmp.unlink(missing_ok=True)


@dataclass
class ProbeShards:
    """The shards written for the probes: the base, and per group a high and a low file."""

    folder: Path
    count: int
    groups: list[str]
    base: Path
    high: dict[str, Path]
    low: dict[str, Path]

    def assemble(self, name: str, lowered: Iterable[str]) -> Path:
        """A probe model (a folder of links) with ``lowered`` groups at the probe type;
        returns the path of its first shard, what llama.cpp is given."""
        low = set(lowered)
        folder = self.folder / name
        folder.mkdir(exist_ok=True)
        picks = [self.base] + [self.low[g] if g in low else self.high[g] for g in self.groups]
        for index, pick in enumerate(picks, start=1):
            link = folder / shard_name(index, self.count)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(pick)
        return folder / shard_name(1, self.count)


def write_probe_shards(source_paths: Sequence[Path], low_path: Path,
                       groups: Mapping[str, Sequence[str]], folder: Path,
                       cancel: threading.Event | None = None) -> ProbeShards:
    """Split the model into a base shard and one shard per group, each group written from
    the source (high) and from the quant at the probe type (low)."""
    folder.mkdir(parents=True, exist_ok=True)
    first = read_header(source_paths[0])
    spans = [s for s in metadata_spans(first.path) if not s[0].startswith("split.")]
    with open(first.path, "rb") as handle:
        metadata = b"".join(os.pread(handle.fileno(), end - start, start)
                            for _key, start, end in spans)
    high_source = TensorSource(source_paths)
    low_source = TensorSource([low_path])
    in_groups = {name for members in groups.values() for name in members}
    base_names = [name for name in high_source.located if name not in in_groups]
    order = list(groups)
    count = len(order) + 1
    total = len(high_source.located)
    alignment = first.alignment

    def split_keys(number: int) -> bytes:
        return (_kv("split.no", _GGUF_UINT16, number) + _kv("split.count", _GGUF_UINT16, count)
                + _kv("split.tensors.count", _GGUF_INT32, total))

    base = folder / "base.gguf"
    write_shard(base, metadata + split_keys(0), len(spans) + 3, base_names, high_source,
                alignment, cancel)
    high: dict[str, Path] = {}
    low: dict[str, Path] = {}
    for number, group in enumerate(order, start=1):
        members = list(groups[group])
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in group)
        high[group] = folder / f"high-{number:03d}-{safe}.gguf"
        low[group] = folder / f"low-{number:03d}-{safe}.gguf"
        write_shard(high[group], split_keys(number), 3, members, high_source, alignment, cancel)
        write_shard(low[group], split_keys(number), 3, members, low_source, alignment, cancel)
    return ProbeShards(folder, count, order, base, high, low)


def shard_bytes(model_bytes: int, low_bytes: int) -> int:
    """Disk the probe shards take: the model once and its probe-type quant once."""
    return model_bytes + low_bytes + math.ceil(0.001 * model_bytes)
