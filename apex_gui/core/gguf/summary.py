"""A model's summary as plain data (inspect --json, the model info panel)."""

from __future__ import annotations

from typing import Any

from apex_gui.core.gguf.model import FileKind, ModelInfo, type_histogram


def summary_dict(model: ModelInfo) -> dict[str, Any]:
    """The summary as plain data (the JSON output, the window's info panel)."""
    base: dict[str, Any] = {
        "path": str(model.path),
        "shards": [str(p) for p in model.paths],
        "file_kind": model.file_kind.value,
        "architecture": model.architecture,
        "name": model.name,
        "file_size": model.file_size,
        "tensor_count": len(model.tensors),
    }
    if model.file_kind is FileKind.IMATRIX and model.imatrix is not None:
        base["imatrix"] = {"datasets": list(model.imatrix.datasets),
                           "chunk_count": model.imatrix.chunk_count,
                           "chunk_size": model.imatrix.chunk_size,
                           "covered_tensors": len(model.imatrix.covered_tensors)}
        return base
    if model.file_kind is FileKind.VISION_PROJECTOR:
        base["tensor_bytes"] = model.tensor_bytes
        return base
    mixers: dict[str, int] = {}
    for layer in model.layers:
        if not layer.is_mtp:
            mixers[layer.mixer.value] = mixers.get(layer.mixer.value, 0) + 1
    base.update({
        "block_count": model.block_count,
        "layers": model.n_layer,
        "mtp_layers": model.n_mtp_layers,
        "experts": model.n_expert,
        "experts_used": model.n_expert_used,
        "shared_experts": model.n_expert_shared,
        "leading_dense_layers": model.n_leading_dense,
        "mixers": mixers,
        "heads": model.n_head,
        "kv_heads": model.n_head_kv,
        "head_dim_k": model.head_dim_k,
        "head_dim_v": model.head_dim_v,
        "q_lora_rank": model.q_lora_rank,
        "kv_lora_rank": model.kv_lora_rank,
        "sliding_window": model.sliding_window,
        "context_length": model.context_length,
        "vocab_size": model.vocab_size,
        "total_params": model.total_params,
        "active_params": model.active_params,
        "file_type": model.file_type,
        "bits_per_weight": round(model.bits_per_weight, 4),
        "imatrix_quantized": model.looks_imatrix_quantized,
        "types": type_histogram(model),
    })
    return base
