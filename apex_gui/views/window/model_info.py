"""Model summary: what ``apex-studio inspect`` prints, as a readable table."""

from __future__ import annotations

from html import escape

from PySide6.QtWidgets import QTextBrowser, QWidget

from apex_gui.core.gguf.model import FileKind, ModelInfo
from apex_gui.core.gguf.summary import summary_dict
from apex_gui.core.plan.detect import ProfileMatch
from apex_gui.core.units import format_params, format_size


class ModelInfoView(QTextBrowser):
    """Architecture, layers, experts, attention geometry, sizes and the stored types."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("modelInfo")
        self.setOpenLinks(False)
        self.show_model(None)

    def show_model(self, model: ModelInfo | None, matches: list[ProfileMatch] | None = None) -> None:
        if model is None:
            self.setHtml("<p>No model open. Open a GGUF file (Ctrl+O), drop one on the window, "
                         "or download one from Hugging Face (File menu).</p>")
            return
        self.setHtml(render_summary_html(model, matches))


def render_summary_html(model: ModelInfo, matches: list[ProfileMatch] | None = None) -> str:
    info = summary_dict(model)
    rows: list[tuple[str, str]] = [
        ("File", escape(str(model.path)) + (f" (+{len(model.paths) - 1} more shards)"
                                            if len(model.paths) > 1 else "")),
        ("Kind", escape(info["file_kind"])),
        ("Name", escape(model.name)),
        ("Architecture", escape(model.architecture)),
        ("File size", f"{format_size(model.file_size)} ({model.file_size:,} bytes), "
                      f"{len(model.tensors)} tensors"),
    ]
    if model.file_kind is FileKind.MODEL:
        mixers = ", ".join(f"{count} {escape(kind)}" for kind, count in info["mixers"].items())
        layers = str(model.n_layer)
        if model.n_mtp_layers:
            layers += f" + {model.n_mtp_layers} MTP/nextn"
        if model.n_leading_dense:
            layers += f" ({model.n_leading_dense} leading dense)"
        experts = "-"
        if model.n_expert:
            experts = f"{model.n_expert} routed, {model.n_expert_used} active per token"
            if model.n_expert_shared:
                experts += f", {model.n_expert_shared} shared"
        attention = f"{model.n_head} heads, {model.n_head_kv} KV heads, head dim {model.head_dim_k}"
        if model.head_dim_v != model.head_dim_k:
            attention += f"/{model.head_dim_v}"
        if model.kv_lora_rank:
            attention += f"; MLA q_lora {model.q_lora_rank}, kv_lora {model.kv_lora_rank}"
        if model.sliding_window:
            attention += f"; sliding window {model.sliding_window}"
        types = ", ".join(f"{escape(name)} {format_size(nbytes)}"
                          for name, nbytes in list(info["types"].items())[:6])
        rows += [
            ("Layers", layers),
            ("Mixers", mixers or "-"),
            ("Experts", experts),
            ("Attention", attention),
            ("Context", f"{model.context_length:,} tokens; vocabulary {model.vocab_size:,}"),
            ("Parameters", f"{format_params(model.total_params)} total, "
                           f"{format_params(model.active_params)} active"),
            ("Stored as", f"{escape(model.file_type)}, {model.bits_per_weight:.3f} bits per weight"
                          + (", imatrix-quantized" if model.looks_imatrix_quantized else "")),
            ("Types", types),
        ]
        if matches:
            # First thing under the file name: the panel is short and this is what a user
            # opening a quant wants to know (it was the last row, below the fold).
            best = matches[0]
            detected = [("Detected profile", f"<b>{escape(best.describe())}</b>")]
            runner_up = ", ".join(f"{escape(m.profile.label)} {m.differing_share:.1%}"
                                  for m in matches[1:4])
            if runner_up:
                detected.append(("Next closest", f"{runner_up} of bytes differ"))
            rows[1:1] = detected
    elif model.imatrix is not None:
        rows += [("Datasets", escape(", ".join(model.imatrix.datasets) or "-")),
                 ("Chunks", f"{model.imatrix.chunk_count} x {model.imatrix.chunk_size} tokens"),
                 ("Covers", f"{len(model.imatrix.covered_tensors)} tensors")]
    body = "".join(f"<tr><td style='padding:2px 12px 2px 0'><b>{label}</b></td>"
                   f"<td style='padding:2px 0'>{value}</td></tr>" for label, value in rows)
    return f"<table cellspacing='0'>{body}</table>"
