"""What a model card states: model facts, quant recipes, profile descriptions, file names."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from apex_gui.core.report.results import QuantResult

if TYPE_CHECKING:
    from apex_gui.core.gguf.model import ModelInfo
    from apex_gui.core.plan.profiles import BandedType, Profile
    from apex_gui.core.fit.placement import FitResult
    from apex_gui.core.jobs.run_store import RunStore


#: Where the tensor-type files that reproduce each quant go in the repository.
RECIPES_FOLDER = "recipes"

#: What each tier is best for, in the published cards' words.
BEST_FOR: dict[str, str] = {
    "quality": "Highest quality without an imatrix, lowest perplexity",
    "i-quality": "Highest quality, best accuracy across benchmarks",
    "balanced": "Interactive use, serving, general purpose",
    # Not "best quality/size ratio": no measurement here backs a ratio claim (issue 15).
    "i-balanced": "Balanced with an importance matrix: lower KL divergence on the published cards",
    "compact": "Consumer GPUs, constrained VRAM",
    "i-compact": "Consumer GPUs, best quality at this size",
    "mini": "Smallest viable",
    "i-mini": "Smallest viable, fastest inference",
    "nano": "Very constrained memory (large quality loss)",
    "i-nano": "Very constrained memory (large quality loss)",
    "micro": "Experimental: smallest size, large quality loss",
    "i-micro": "Experimental: smallest size, large quality loss",
}


# --- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    """The architecture facts a card states, read from the source model."""

    name: str
    architecture: str
    n_layer: int
    n_leading_dense: int
    n_expert: int
    n_expert_used: int
    n_expert_shared: int
    total_params: int
    active_params: int
    context_length: int
    mixers: tuple[tuple[str, int], ...] = ()  # ("full attention", 10), ("linear attention", 30)
    n_mtp_layers: int = 0
    license: str = ""


def model_facts(model: ModelInfo) -> ModelFacts:
    """The facts of ``model`` (its header only)."""
    counts: dict[str, int] = {}
    for layer in model.layers:
        if layer.is_mtp:
            continue
        counts[layer.mixer.value] = counts.get(layer.mixer.value, 0) + 1
    license_ = model.metadata.get("general.license", "")
    return ModelFacts(
        name=model.name, architecture=model.architecture, n_layer=model.n_layer,
        n_leading_dense=model.n_leading_dense, n_expert=model.n_expert,
        n_expert_used=model.n_expert_used, n_expert_shared=model.n_expert_shared,
        total_params=model.total_params, active_params=model.active_params,
        context_length=model.context_length, mixers=tuple(sorted(counts.items(),
                                                                 key=lambda kv: -kv[1])),
        n_mtp_layers=model.n_mtp_layers, license=license_ if isinstance(license_, str) else "")


@dataclass(frozen=True)
class QuantRecipe:
    """How one file was quantized: enough to print a stock llama-quantize command."""

    base_type: str
    tensor_type_file: str = ""  # local path of the tensor-type file ("" if none)
    imatrix: str = ""  # local path of the importance matrix ("" if none)
    token_embedding_type: str = ""
    output_tensor_type: str = ""
    source: str = ""  # the F16/BF16 model it was made from


@dataclass(frozen=True)
class CardFile:
    """One file of the repository as the card lists it."""

    file_name: str  # name in the repository
    label: str  # "APEX I-Quality", "Vision projector"
    size_bytes: int
    best_for: str = ""
    profile_key: str = ""  # "" for files that are not APEX quants (mmproj, baselines)
    is_mmproj: bool = False
    recipe: QuantRecipe | None = None

    @property
    def recipe_name(self) -> str:
        """Path of this file's tensor-type file in the repository."""
        return f"{RECIPES_FOLDER}/{Path(self.file_name).stem}.tensor-types.txt"


@dataclass(frozen=True)
class SensitivitySummary:
    """The measured sensitivity table published beside the quants, as the card shows it."""

    file_name: str  # name in the repository
    local_path: str  # the table on this machine (what an upload sends)
    fingerprint: str  # the source model's content fingerprint
    candidates: tuple[str, ...]
    #: per tensor kind: (kind, tensors, predicted KLD of that kind alone at each candidate)
    kinds: tuple[tuple[str, int, tuple[float | None, ...]], ...]
    probe_text: str = ""
    probe_tokens: int = 0


@dataclass(frozen=True)
class CardInputs:
    """Everything the card is written from."""

    repo_id: str  # "USER/REPO"
    model_name: str  # "Qwen3.5-35B-A3B"
    files: tuple[CardFile, ...]
    facts: ModelFacts | None = None
    base_model: str = ""  # the source model's Hub id ("Qwen/Qwen3.5-35B-A3B"), if known
    profiles: Mapping[str, Profile] = field(default_factory=dict)  # key -> profile used
    results: tuple[QuantResult, ...] = ()  # measured rows (and size-only baselines)
    fits: Mapping[str, FitResult] = field(default_factory=dict)  # file name -> memory verdict
    hardware: str = ""  # the machine the fits were checked for ("RTX 4090 24GB")
    measured_on: str = ""  # where the benchmarks ran ("CPU, 16 threads", "RTX 4090")
    context: int = 8192  # the -c the run commands use
    calibration: str = ("the bundled APEX calibration set (multi-turn chat, code, step-by-step "
                        "reasoning, tool calling; about 50k tokens, no Wikipedia)")
    llama_cpp_version: str = ""
    sensitivity: SensitivitySummary | None = None  # the table, when it was measured


def safe_name(text: str) -> str:
    """A file / repository name part: spaces and shell-hostile characters become "-"."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-.") or "model"


def card_file_name(model_name: str, profile_label: str) -> str:
    """``<Model>-APEX-<Label>.gguf``, the published naming."""
    return f"{safe_name(model_name)}-APEX-{safe_name(profile_label)}.gguf"


def display_text_name(name: str) -> str:
    """``quick_eval.txt`` for the cache copy ``quick_eval-<16 hex digits>.txt``."""
    return re.sub(r"-[0-9a-f]{16}(\.\w+)$", r"\1", name)


def quant_recipes(store: RunStore) -> dict[str, QuantRecipe]:
    """Output path -> recipe of every successful quantize run (newest wins)."""
    recipes: dict[str, QuantRecipe] = {}
    for record in sorted(store.runs(kind="quantize", status="succeeded", limit=10_000),
                         key=lambda r: r.id):
        spec = record.spec
        output = spec.get("output_path")
        if not output:
            continue
        recipes[str(Path(output))] = QuantRecipe(
            base_type=str(spec.get("base_type", "")),
            tensor_type_file=str(spec.get("tensor_type_file") or ""),
            imatrix=str(spec.get("imatrix") or ""),
            token_embedding_type=str(spec.get("token_embedding_type") or ""),
            output_tensor_type=str(spec.get("output_tensor_type") or ""),
            source=str(spec.get("source") or ""))
    return recipes


# --- describing profiles --------------------------------------------------------------------


def _ranges(layers: Sequence[int]) -> str:
    """``0-4, 35-39`` for [0..4, 35..39]."""
    parts: list[str] = []
    start = previous = None
    for layer in layers:
        if start is None:
            start = previous = layer
        elif layer == previous + 1:  # type: ignore[operator]
            previous = layer
        else:
            parts.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = previous = layer
    if start is not None:
        parts.append(f"{start}" if start == previous else f"{start}-{previous}")
    return ", ".join(parts)


def _banded_text(banded: BandedType, layers: Sequence[int], n_layer: int) -> str:
    """``Q6_K (layers 0-4, 35-39), Q5_K (5-9, 30-34), IQ4_XS (10-29)`` or ``Q8_0 in every layer``."""
    by_type: dict[str, list[int]] = {}
    for layer in layers:
        by_type.setdefault(banded.type_for(layer, n_layer), []).append(layer)
    if not by_type:
        return ""
    if len(by_type) == 1:
        return f"{next(iter(by_type))} in every layer"
    pieces = []
    for index, (type_name, members) in enumerate(by_type.items()):
        prefix = "layers " if index == 0 else ""
        pieces.append(f"{type_name} ({prefix}{_ranges(members)})")
    return ", ".join(pieces)


def describe_profile(profile: Profile, facts: ModelFacts | None,
                     calibration: str = "") -> str:
    """One paragraph: which type each role gets in which layers, for this model's layers."""
    name = f"APEX {profile.label}"
    if facts is None or facts.n_layer <= 0:
        text = f"{name}: {profile.description}."
    else:
        n = facts.n_layer
        moe_layers = list(range(facts.n_leading_dense, n))
        all_layers = list(range(n))
        parts = [f"routed experts {_banded_text(profile.routed_experts, moe_layers, n)}"]
        if facts.n_expert_shared:
            parts.append(f"shared experts {_banded_text(profile.shared_experts, moe_layers, n)}")
        mixer_words = "attention" if not facts.mixers or all(
            "attention" in m and "linear" not in m for m, _ in facts.mixers) else \
            "attention and token-mixing tensors"
        parts.append(f"{mixer_words} {_banded_text(profile.attention, all_layers, n)}")
        if facts.n_leading_dense:
            dense = profile.group("dense_ffn")
            parts.append(f"the {facts.n_leading_dense} leading dense FFN layers "
                         f"{_banded_text(dense, list(range(facts.n_leading_dense)), n)}")
        parts.append(f"token embedding {profile.token_embedding_type}, output "
                     f"{profile.output_tensor_type}")
        text = (f"{name} ({n} layers): " + "; ".join(parts)
                + ". The router and norms stay unquantized.")
    if profile.uses_imatrix:
        text += (" Quantized with an importance matrix computed on the full-precision model from "
                 f"{calibration or 'a diverse calibration set'}.")
    return text
