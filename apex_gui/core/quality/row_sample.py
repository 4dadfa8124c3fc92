"""A row sample of a model: each quantizable matrix cut to a few evenly spaced rows.

llama.cpp quantizes every row on its own (an importance matrix weighs columns, and a row
sample keeps every column), so a tensor's quantization error summed over all its rows is
estimated without bias by the error of its sampled rows times ``rows / sampled rows``. The
sample is a GGUF that llama-quantize reads like the model itself: the same metadata, tensor
names, row lengths and expert counts, only fewer rows per matrix. Measuring the candidate
types on it costs a fraction of one pass over the model instead of one pass per type, and
the fraction shrinks as models grow (rows per tensor are capped).

Tensors that are not quantized (norms, biases, routers) are copied whole: llama-quantize
expects every tensor of the architecture.
"""

from __future__ import annotations

import math
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.gguf.reader import GGUF_MAGIC, metadata_spans, read_header
from apex_gui.core.gguf.types import ggml_type, tensor_bytes
from apex_gui.core.plan.precision import is_quantizable
from apex_gui.core.quality.probe_models import copy_range
from apex_gui.core.quality.scratch import stop_if_cancelled

#: Share of each matrix's rows sampled on models of ordinary size.
SAMPLE_SHARE = 1 / 16
#: Rows kept from each matrix at least (all of them when it has fewer): fewer would leave the
#: per-tensor estimate noisy on small models, where a full pass is cheap anyway.
MIN_ROWS_PER_MATRIX = 32
#: Rows kept from one tensor at most, over all its experts: the estimate of the tensor's
#: summed error is then within about 1-2 % however large the model is, and the sample of a
#: 400B model stays a few GB.
MAX_ROWS_PER_TENSOR = 4096
#: Rows kept per expert at least, when the cap above divides the rows among many experts.
MIN_ROWS_PER_EXPERT = 4


@dataclass(frozen=True)
class SampledTensor:
    """How one tensor was sampled: rows kept per matrix out of the rows it has."""

    name: str
    rows: int  # rows per matrix in the model (ne1)
    kept: int  # rows per matrix in the sample

    @property
    def scale(self) -> float:
        """Multiplier from the sample's summed error to the whole tensor's."""
        return self.rows / self.kept


def sampled_rows(rows: int, matrices: int) -> int:
    """Rows kept per matrix of a tensor with ``matrices`` matrices of ``rows`` rows."""
    wanted = max(MIN_ROWS_PER_MATRIX, math.ceil(rows * SAMPLE_SHARE))
    cap = max(MIN_ROWS_PER_EXPERT, MAX_ROWS_PER_TENSOR // max(1, matrices))
    return max(1, min(rows, wanted, cap))


def row_indices(rows: int, kept: int) -> list[int]:
    """``kept`` evenly spaced rows out of ``rows`` (centred in their stretch)."""
    return [min(rows - 1, (2 * i + 1) * rows // (2 * kept)) for i in range(kept)]


def plan_sample(model: ModelInfo) -> dict[str, SampledTensor]:
    """The sampling of every quantizable tensor (unsampled tensors are copied whole)."""
    plan: dict[str, SampledTensor] = {}
    for tensor in model.tensors:
        if not is_quantizable(tensor.name, tensor.shape) or len(tensor.shape) < 2:
            continue
        rows = tensor.shape[1]
        matrices = math.prod(tensor.shape[2:]) if len(tensor.shape) > 2 else 1
        plan[tensor.name] = SampledTensor(tensor.name, rows, sampled_rows(rows, matrices))
    return plan


def sample_bytes(model: ModelInfo, plan: dict[str, SampledTensor]) -> int:
    """Bytes of tensor data the sample holds (what each candidate type quantizes)."""
    total = 0
    for tensor in model.tensors:
        entry = plan.get(tensor.name)
        total += tensor.nbytes if entry is None else tensor.nbytes // entry.rows * entry.kept
    return total


def _gguf_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def write_row_sample(model: ModelInfo, target: Path,
                     plan: dict[str, SampledTensor] | None = None,
                     cancel: threading.Event | None = None) -> dict[str, SampledTensor]:
    """Write the row sample of ``model`` to ``target`` (one file, also for a split model).

    Memory stays at one copy chunk; metadata is copied byte for byte (``split.*`` keys
    dropped: the sample is one file).
    """
    plan = plan if plan is not None else plan_sample(model)
    headers = [read_header(path) for path in model.paths]
    first = headers[0]
    spans = [s for s in metadata_spans(first.path) if not s[0].startswith("split.")]
    alignment = first.alignment
    entries = []  # (tensor entry, sampled shape, shard, offset in the sample, sampling)
    offset = 0
    for index, header in enumerate(headers):
        for entry in header.tensors:
            sampled = plan.get(entry.name)
            shape = entry.shape if sampled is None else (
                entry.shape[0], sampled.kept, *entry.shape[2:])
            nbytes = tensor_bytes(ggml_type(entry.type_name).name, shape)
            entries.append((entry, shape, index, offset, sampled))
            offset += -(-nbytes // alignment) * alignment
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    descriptors = [os.open(path, os.O_RDONLY) for path in model.paths]
    try:
        with open(tmp, "wb") as out:
            out.write(GGUF_MAGIC + struct.pack("<IQQ", 3, len(entries), len(spans)))
            out.write(b"".join(os.pread(descriptors[0], end - start, start)
                               for _key, start, end in spans))
            for entry, shape, _index, data_offset, _sampled in entries:
                out.write(_gguf_string(entry.name) + struct.pack("<I", len(shape))
                          + struct.pack("<" + "Q" * len(shape), *shape)
                          + struct.pack("<IQ", entry.type_id, data_offset))
            out.write(b"\0" * (-out.tell() % alignment))
            data_start = out.tell()
            for entry, shape, index, data_offset, sampled in entries:
                stop_if_cancelled(cancel)
                out.write(b"\0" * (data_start + data_offset - out.tell()))
                base = headers[index].data_offset + entry.offset
                if sampled is None:
                    copy_range(descriptors[index], out, base, entry.nbytes)
                    continue
                matrices = math.prod(entry.shape[2:])
                row_bytes = entry.nbytes // (sampled.rows * matrices)
                picks = row_indices(sampled.rows, sampled.kept)
                for matrix in range(matrices):
                    start = base + matrix * sampled.rows * row_bytes
                    out.write(b"".join(os.pread(descriptors[index], row_bytes,
                                                start + row * row_bytes) for row in picks))
            out.write(b"\0" * (-out.tell() % alignment))
        os.replace(tmp, target)
    finally:
        for descriptor in descriptors:
            os.close(descriptor)
        tmp.unlink(missing_ok=True)
    return plan
