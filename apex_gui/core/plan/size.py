"""The exact size model: what llama-quantize will write, header and data, byte for byte."""

from __future__ import annotations

from pathlib import Path

from apex_gui.core.gguf.imatrix_file import OVERRIDE_STRING_BYTES, imatrix_stamp
from apex_gui.core.gguf.roles import TensorRole
from apex_gui.core.gguf.types import TYPES, tensor_bytes


def _kv_bytes(key: str, value_bytes: int) -> int:
    """Bytes of one metadata entry: key length (u64) + key + value type (u32) + value."""
    return 8 + len(key.encode()) + 4 + value_bytes


class PlanSize:
    """The exact size model: what llama-quantize will write, header and data, byte for byte: a part of PrecisionPlan, which derives from it."""

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
        return self.header_bytes_for(self.imatrix)

    def header_bytes_for(self, imatrix: str | Path | None) -> int:
        """:meth:`header_bytes` of the quant made with ``imatrix`` (the plan is not changed)."""
        metadata = self.model.metadata
        extra = 0
        for key in ("general.quantization_version", "general.file_type"):
            if key not in metadata:
                extra += _kv_bytes(key, 4)
        if imatrix:
            # llama-quantize stamps the imatrix it used: file name and first dataset (each cut
            # to 127 bytes), entry count, and chunk count when the imatrix records one. Keys
            # the source already has (a requantized quant) are replaced, not added.
            stamp = imatrix_stamp(str(imatrix))
            path_bytes = min(len(str(imatrix).encode()), OVERRIDE_STRING_BYTES)
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

    def total_bytes_for(self, imatrix: str | Path | None) -> int:
        """Predicted size of the quant made with ``imatrix`` (its header names the file)."""
        return self.header_bytes_for(imatrix) + self._data_bytes

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
