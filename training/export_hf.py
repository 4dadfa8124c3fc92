"""Export a qwen2moe or qwen3moe GGUF of this project (the bundled trained demo, a synthetic
model) as a Hugging Face checkpoint.

Writes what ``transformers`` writes for Qwen2-MoE: ``config.json``, ``generation_config.json``,
``model.safetensors`` (per-expert ``mlp.experts.N.{gate,up,down}_proj`` tensors, the layout of
the Qwen1.5/Qwen2 MoE repositories), and tokenizer files. The weights are copied bit for bit
(F16 stays F16, the F32 norms and biases stay F32), so converting the folder back with
llama.cpp's converter must give the same tensors.

The demo's vocabulary is 259 tokens: <unk>, <s>, </s> and the 256 bytes (id = byte + 3).
llama.cpp's Qwen2-MoE converter always writes a GPT-2 style byte-level BPE vocabulary, so the
export writes that form of it: ``tokenizer.json`` with the 256 byte symbols at the same ids.
Two things follow from llama.cpp, not from the model: a BPE vocabulary needs at least one
merge, so the unknown-token slot (id 0, never produced) is the merge of two 0xFF bytes, which
UTF-8 text never contains; and the converter does not know this tokenizer's pre-tokenizer
(it has no merges that could fire, so any name tokenizes alike), so converting it needs
``--pre-tokenizer gpt-2``. The byte ids agree with the demo's SPM vocabulary on every byte;
SPM writes a space as U+2581, so on text whose spaces are written that way both models see
the same tokens.

    python training/export_hf.py resources/demo/apex-demo-trained-qwen2moe-f16.gguf -o DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader

N_SPECIAL = 3  # <unk>, <s>, </s>
UNK_SLOT = "\u00ff\u00ff"  # two 0xFF bytes in the byte-level alphabet


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (as transformers has it)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
                 + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _field(reader: GGUFReader, key: str) -> object:
    value = reader.fields[key].contents()
    return value


#: transformers' names of the architectures this exports.
HF_ARCHITECTURES = {"qwen2moe": ("Qwen2MoeForCausalLM", "qwen2_moe"),
                    "qwen3moe": ("Qwen3MoeForCausalLM", "qwen3_moe")}


def hf_config(reader: GGUFReader, arch: str) -> dict:
    get = lambda name: _field(reader, f"{arch}.{name}")  # noqa: E731
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    architecture, model_type = HF_ARCHITECTURES[arch]
    config = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": int(get("embedding_length")),
        "intermediate_size": int(get("feed_forward_length")),
        "moe_intermediate_size": int(get("expert_feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": int(get("attention.head_count")),
        "num_key_value_heads": int(get("attention.head_count_kv")),
        "num_experts": int(get("expert_count")),
        "num_experts_per_tok": int(get("expert_used_count")),
        "norm_topk_prob": False,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "hidden_act": "silu",
        "max_position_embeddings": int(get("context_length")),
        "max_window_layers": int(get("block_count")),
        "rms_norm_eps": float(np.float32(get("attention.layer_norm_rms_epsilon"))),
        "rope_theta": float(get("rope.freq_base")),
        "use_sliding_window": False,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "use_cache": True,
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id")),
        "torch_dtype": "float16",
    }
    if arch == "qwen2moe":
        config["shared_expert_intermediate_size"] = int(get("expert_shared_feed_forward_length"))
    else:  # Qwen3-MoE: explicit head size, no biases, normalised top-k weights
        config.update(head_dim=int(get("attention.key_length")), attention_bias=False,
                      norm_topk_prob=True)
    return config


def hf_tensors(reader: GGUFReader) -> dict[str, np.ndarray]:
    """GGUF tensors under their transformers names (gguf-py's arrays are in PyTorch order)."""
    names = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
             "output_norm.weight": "model.norm.weight"}
    per_layer = {
        "attn_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
        "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
        "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
        "attn_output.weight": "self_attn.o_proj.weight",
        "attn_q_norm.weight": "self_attn.q_norm.weight",
        "attn_k_norm.weight": "self_attn.k_norm.weight",
        "ffn_gate_inp.weight": "mlp.gate.weight",
        "ffn_gate_inp_shexp.weight": "mlp.shared_expert_gate.weight",
        "ffn_gate_shexp.weight": "mlp.shared_expert.gate_proj.weight",
        "ffn_up_shexp.weight": "mlp.shared_expert.up_proj.weight",
        "ffn_down_shexp.weight": "mlp.shared_expert.down_proj.weight",
    }
    experts = {"ffn_gate_exps.weight": "gate_proj", "ffn_up_exps.weight": "up_proj",
               "ffn_down_exps.weight": "down_proj"}
    out: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        data = np.array(tensor.data)
        if tensor.name in names:
            out[names[tensor.name]] = data
            continue
        _, layer, role = tensor.name.split(".", 2)
        prefix = f"model.layers.{layer}."
        if role in experts:
            for expert in range(data.shape[0]):
                out[f"{prefix}mlp.experts.{expert}.{experts[role]}.weight"] = data[expert]
        elif role == "ffn_gate_inp_shexp.weight":
            out[prefix + per_layer[role]] = data.reshape(1, -1)  # nn.Linear(hidden, 1)
        elif role in per_layer:
            out[prefix + per_layer[role]] = data
        else:
            raise SystemExit(f"tensor {tensor.name} has no transformers name here")
    return out


def tokenizer_files(reader: GGUFReader) -> dict[str, object]:
    """tokenizer.json and its companions for the demo's byte vocabulary (see the docstring)."""
    byte_chars = bytes_to_unicode()
    vocab = {UNK_SLOT: 0, "<s>": 1, "</s>": 2}
    vocab.update({byte_chars[b]: b + N_SPECIAL for b in range(256)})
    special = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True} for t, i in (("<s>", 1), ("</s>", 2))]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [[byte_chars[255], byte_chars[255]]]},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
              "eos_token": "</s>", "add_bos_token": True, "add_eos_token": False,
              "model_max_length": int(_field(reader, f"{_field(reader, 'general.architecture')}"
                                               ".context_length")),
              "clean_up_tokenization_spaces": False}
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config,
            "special_tokens_map.json": {"bos_token": "<s>", "eos_token": "</s>"}}


def export(gguf_path: Path, folder: Path) -> Path:
    from safetensors.numpy import save_file

    reader = GGUFReader(gguf_path)
    arch = str(_field(reader, "general.architecture"))
    if arch not in HF_ARCHITECTURES:
        raise SystemExit(f"{gguf_path} is {arch}; this exports {', '.join(HF_ARCHITECTURES)}")
    folder.mkdir(parents=True, exist_ok=True)
    config = hf_config(reader, arch)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]},
        indent=2) + "\n")
    for name, content in tokenizer_files(reader).items():
        (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    tensors = {k: np.ascontiguousarray(v) for k, v in hf_tensors(reader).items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True, help="checkpoint folder")
    args = parser.parse_args(argv)
    print(export(args.gguf, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
