"""What a Hugging Face checkpoint folder holds, read without loading a weight.

``config.json`` names the architecture and dtype; each ``*.safetensors`` file starts with a
JSON header listing its tensors (dtype, shape, byte range), so the dtypes, the parameter
count and the size are known from a few kilobytes per file. A multimodal checkpoint (a
``vision_config`` or audio tower) also gets a projector file (mmproj) of its own.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: A safetensors header larger than this is not a header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000
#: Output types the converter writes that keep full precision.
OUTPUT_TYPES = ("bf16", "f16")
#: Config keys of the towers llama.cpp's converter writes as a separate mmproj file.
PROJECTOR_CONFIG_KEYS = ("vision_config", "audio_config")
#: Files a checkpoint needs besides its weights for the converter to write a vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")


class CheckpointError(Exception):
    """The folder is not a checkpoint the converter can read; the message says what is wrong."""


@dataclass(frozen=True)
class Checkpoint:
    """A Hugging Face model folder: its architecture, weights and what the conversion writes."""

    folder: Path
    architectures: tuple[str, ...]
    model_type: str
    config_dtype: str  # "bfloat16", "float16", "float32" or "" when config.json names none
    weight_files: tuple[Path, ...]
    dtype_counts: dict[str, int] = field(default_factory=dict)  # safetensors dtype -> elements
    weight_bytes: int = 0
    has_projector: bool = False

    @property
    def architecture(self) -> str:
        return self.architectures[0] if self.architectures else self.model_type

    @property
    def parameters(self) -> int:
        return sum(self.dtype_counts.values())

    def stored_dtype(self) -> str:
        """The dtype most weights are stored in (``BF16``, ``F16``, ``F32``...)."""
        if self.dtype_counts:
            return max(self.dtype_counts.items(), key=lambda item: item[1])[0]
        return {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}.get(self.config_dtype, "")

    def default_output_type(self) -> str:
        """``bf16`` for a BF16 checkpoint (no rounding), else ``f16``."""
        return "bf16" if self.stored_dtype() == "BF16" else "f16"

    def gguf_bytes(self, output_type: str) -> int:
        """About what the converted GGUF takes on disk (16 bits a parameter)."""
        return self.parameters * 2 if self.parameters else self.weight_bytes


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor table of one safetensors file (``__metadata__`` left out)."""
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise CheckpointError(f"{path} is too short to be a safetensors file; download "
                                      "it again")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise CheckpointError(f"{path} is not a safetensors file (header of {length} "
                                      "bytes); download it again")
            raw = handle.read(length)
    except OSError as error:
        raise CheckpointError(f"cannot read {path} ({error.strerror or error})") from None
    if len(raw) != length:
        raise CheckpointError(f"{path} is truncated (its header is cut off); download it again")
    try:
        table = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has a damaged header; download it again") from None
    if not isinstance(table, dict):
        raise CheckpointError(f"{path} has a damaged header; download it again")
    table.pop("__metadata__", None)
    return table


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is incomplete (shorter than its header says), or None."""
    try:
        table = read_safetensors_header(path)
    except CheckpointError as error:
        return str(error)
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
    end = max((int(t["data_offsets"][1]) for t in table.values()
               if isinstance(t, dict) and "data_offsets" in t), default=0)
    actual = path.stat().st_size
    if actual < 8 + length + end:
        return (f"{path.name} is incomplete ({actual:,} of {8 + length + end:,} bytes); "
                "download it again")
    return None


def open_checkpoint(folder: Path) -> Checkpoint:
    """Read a checkpoint folder's config and weight headers; CheckpointError names what is off."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; give the folder that holds the "
                              "model's config.json and *.safetensors files")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no config.json: it is not a Hugging Face model "
                              "folder (download the whole repository)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config_path} cannot be read as JSON ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} is not a JSON object")
    weights = tuple(sorted(folder.glob("*.safetensors")))
    if not weights:
        found = sorted(p.name for p in folder.glob("*.bin"))
        hint = (" (only PyTorch .bin files: convert them to safetensors first)" if found
                else "")
        raise CheckpointError(f"{folder} has no *.safetensors weights{hint}")
    counts: Counter[str] = Counter()
    total = 0
    for path in weights:
        for tensor in read_safetensors_header(path).values():
            if not isinstance(tensor, dict):
                continue
            elements = 1
            for dim in tensor.get("shape", []):
                elements *= int(dim)
            counts[str(tensor.get("dtype", "?"))] += elements
        total += path.stat().st_size
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    dtype = str(config.get("torch_dtype") or config.get("dtype") or text.get("torch_dtype")
                or text.get("dtype") or "")
    architectures = tuple(str(a) for a in config.get("architectures") or ())
    return Checkpoint(
        folder=folder, architectures=architectures, model_type=str(config.get("model_type", "")),
        config_dtype=dtype, weight_files=weights, dtype_counts=dict(counts), weight_bytes=total,
        has_projector=any(isinstance(config.get(k), dict) for k in PROJECTOR_CONFIG_KEYS))


def missing_tokenizer(folder: Path) -> str | None:
    """A message when the folder has no tokenizer file the converter reads, else None."""
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    return (f"{folder} has no tokenizer ({', '.join(TOKENIZER_FILES)}): download the model's "
            "tokenizer files too")
