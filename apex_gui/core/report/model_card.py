"""The README a Hugging Face repository of APEX quants gets, in the style of the APEX cards.

The published APEX cards (Qwen3.5-35B-A3B, Trinity-Large, Mistral-Small-4, LFM2.5) share a
shape: title, what APEX is, the model's architecture, a files table (size, "best for"), one
paragraph per configuration saying how it was built, benchmark tables, how to run the files
(llama.cpp, Ollama, LocalAI), hardware guidance and how to reproduce them. This module writes
that card from what APEX Studio knows for certain: the files produced, the profiles that made
them, the numbers in the run history and the memory check's verdicts. It says nothing it does
not know: benchmark rows come only from measured runs, and differences within the
measurement error are called noise.

Qt-free: :func:`render_model_card` is a pure function of :class:`CardInputs`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from apex_gui.core.report.card_facts import (
    BEST_FOR, CardFile, CardInputs, ModelFacts, QuantRecipe, RECIPES_FOLDER, SensitivitySummary,
    display_text_name, card_file_name, describe_profile,
)
from apex_gui.core.report.results import QuantResult, compare_ppl, results_to_markdown
from apex_gui.core.units import format_params, format_size

if TYPE_CHECKING:
    from apex_gui.core.plan.profiles import Profile
    from apex_gui.core.fit.placement import FitResult

__all__ = [
    "BEST_FOR",
    "CardFile",
    "CardInputs",
    "ModelFacts",
    "QuantRecipe",
    "RECIPES_FOLDER",
    "SensitivitySummary",
    "card_file_name",
    "build_card_inputs",
    "card_files",
    "describe_profile",
    "recipe_files",
    "render_model_card",
    "renamed_results",
]


# --- rendering ------------------------------------------------------------------------------

_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _front_matter(inputs: CardInputs) -> list[str]:
    lines = ["---"]
    if inputs.base_model and _HF_ID.match(inputs.base_model):
        lines += ["base_model:", f"- {inputs.base_model}"]
    license_ = inputs.facts.license if inputs.facts else ""
    if license_ and re.fullmatch(r"[a-z0-9.-]+", license_):
        lines.append(f"license: {license_}")
    lines += ["library_name: gguf", "pipeline_tag: text-generation", "tags:", "- gguf",
              "- apex", "- quantized", "- mixture-of-experts", "- llama.cpp", "---", ""]
    return lines


def _params(count: int) -> str:
    return f"~{format_params(count)}"


def _architecture(facts: ModelFacts) -> list[str]:
    experts = f"{facts.n_expert} routed"
    if facts.n_expert_shared:
        experts += f" + {facts.n_expert_shared} shared"
    experts += f" per layer, {facts.n_expert_used} routed active per token"
    layers = str(facts.n_layer)
    if facts.n_leading_dense:
        layers += f" ({facts.n_leading_dense} leading dense + {facts.n_layer - facts.n_leading_dense} MoE)"
    lines = ["## Architecture", "",
             f"- Architecture: `{facts.architecture}`",
             f"- Layers: {layers}",
             f"- Experts: {experts}",
             f"- Total parameters: {_params(facts.total_params)}",
             f"- Active parameters: {_params(facts.active_params)} per token"]
    if facts.mixers:
        mix = ", ".join(f"{count} {name}" for name, count in facts.mixers)
        lines.append(f"- Layer mix: {mix}")
    if facts.n_mtp_layers:
        lines.append(f"- MTP / next-token prediction layers: {facts.n_mtp_layers} "
                     "(quantized like an edge layer)")
    if facts.context_length:
        lines.append(f"- Training context: {facts.context_length:,} tokens")
    return lines + [""]


def _result_for(inputs: CardInputs, file: CardFile) -> QuantResult | None:
    for row in inputs.results:
        if row.measured and row.file_name == file.file_name:
            return row
    for row in inputs.results:  # a row named after the profile (file renamed for upload)
        if row.measured and file.profile_key and row.profile == file.profile_key:
            return row
    return None


def _files_table(inputs: CardInputs) -> list[str]:
    measured = {f.file_name: _result_for(inputs, f) for f in inputs.files}
    show_ppl = any(r is not None and r.ppl is not None for r in measured.values())
    tg_tests = sorted({t for r in measured.values() if r is not None
                       for t in r.speed if t.startswith("tg") and "+" not in t})
    tg = tg_tests[0] if tg_tests else None
    header = ["File", "Configuration", "Size"]
    if show_ppl:
        header.append("PPL")
    if tg:
        header.append(f"Speed ({tg})")
    header.append("Best for")
    lines = ["## Available Files", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for file in inputs.files:
        row = measured[file.file_name]
        cells = [f"`{file.file_name}`", file.label, format_size(file.size_bytes)]
        if show_ppl:
            cells.append(f"{row.ppl.value:.3f}" if row and row.ppl else "--")
        if tg:
            speed = row.speed.get(tg) if row else None
            cells.append(f"{speed.value:.1f} t/s" if speed else "--")
        cells.append(file.best_for or BEST_FOR.get(file.profile_key, "")
                     or ("Required for vision / multimodal input" if file.is_mmproj else ""))
        lines.append("| " + " | ".join(cells) + " |")
    imatrix_pairs = [f for f in inputs.files if f.profile_key.startswith("i-")
                     and any(g.profile_key == f.profile_key[2:] for g in inputs.files)]
    if imatrix_pairs:
        lines += ["", "I-variants use the same per-tensor plan as their base profile plus an "
                      "importance matrix, so each pair has the same size."]
    return lines + [""]


def _methods(inputs: CardInputs) -> list[str]:
    lines = ["## How each file was made", ""]
    for file in inputs.files:
        profile = inputs.profiles.get(file.profile_key) if file.profile_key else None
        if profile is None:
            continue
        lines += [describe_profile(profile, inputs.facts, inputs.calibration), ""]
    return lines if len(lines) > 2 else []


def _honesty_notes(rows: Sequence[QuantResult]) -> list[str]:
    reference = next((r for r in rows if r.kind == "reference" and r.ppl is not None), None)
    notes: list[str] = []
    by_label = {r.label: r for r in rows if r.measured}
    for row in rows:
        if row.kind == "reference" or not row.measured or row.ppl is None:
            continue
        if reference is not None:
            notes.append(compare_ppl(row.ppl, reference.ppl).describe(  # type: ignore[arg-type]
                row.label, reference.label) + ".")
        if row.label.startswith("APEX I-"):
            base = by_label.get("APEX " + row.label.removeprefix("APEX I-"))
            if base is not None and base.ppl is not None:
                notes.append(compare_ppl(row.ppl, base.ppl).describe(row.label, base.label) + ".")
    return [f"- {n}" for n in notes]


def _benchmarks(inputs: CardInputs) -> list[str]:
    rows = [r for r in inputs.results if r.measured and r.has_measurements]
    if not rows:
        return ["## Benchmark Results", "",
                "Benchmarks coming soon: these files have not been evaluated yet.", ""]
    texts = sorted({display_text_name(r.eval_text) for r in rows if r.eval_text})
    contexts = sorted({r.eval_context for r in rows if r.eval_context})
    reference = next((r for r in rows if r.kind == "reference"), None)
    where = f" on {inputs.measured_on}" if inputs.measured_on else ""
    intro = f"Measured with APEX Studio and llama.cpp{where}."
    if texts:
        ctx = f", context {', '.join(map(str, contexts))}" if contexts else ""
        intro += f" Perplexity and KL divergence on `{'`, `'.join(texts)}`{ctx}"
        if reference is not None:
            intro += f"; KL divergence against the {reference.label} model's logits"
        intro += "."
    if any("quick_eval" in t for t in texts):
        intro += (" That text is a short quick check, not wikitext-2: compare these files with "
                  "each other, not with perplexities published elsewhere.")
    lines = ["## Benchmark Results", "", intro, "", "### Core Metrics", "",
             results_to_markdown(rows).rstrip("\n"), "",
             "PPL and KL mean are shown with llama.cpp's ± error. Lower is better for PPL and KL; "
             "KL divergence measures how far each quant's predictions drift from the original "
             "model and is more sensitive than perplexity.", ""]
    notes = _honesty_notes(rows)
    if notes:
        lines += ["### Reading the numbers", "", *notes, ""]
    size_only = [r for r in inputs.results if not r.measured and r.size_bytes]
    if size_only:
        sizes = ", ".join(f"{r.label} {format_size(r.size_bytes)}" for r in size_only)
        lines += [f"For scale, uniform quants of this model would weigh: {sizes} (sizes from "
                  "`llama-quantize --dry-run`; not measured).", ""]
    return lines


def _recommended_flags(inputs: CardInputs, file: CardFile) -> tuple[str, str]:
    """(placement flags, note) for a file: from the memory check when there is one."""
    fit = inputs.fits.get(file.file_name)
    if fit is not None and fit.flags not in ("-", ""):
        on = f" for {inputs.hardware}" if inputs.hardware else ""
        verdict = fit.verdict.value
        if inputs.hardware.lower().startswith(verdict.lower()):
            # "for CPU only, 24 GB RAM available: CPU only" said it twice.
            return fit.flags, f"flags from APEX Studio's memory check{on}"
        return fit.flags, f"flags from APEX Studio's memory check{on}: {verdict}"
    return "-ngl 99", ("all layers on the GPU; if it does not fit, add `--n-cpu-moe N` to keep "
                       "the routed experts of the first N layers in system RAM")


def _run_commands(inputs: CardInputs) -> list[str]:
    quants = [f for f in inputs.files if not f.is_mmproj]
    if not quants:
        return []
    mmproj = next((f for f in inputs.files if f.is_mmproj), None)
    main = next((f for f in quants if f.file_name in inputs.fits
                 and inputs.fits[f.file_name].verdict.name == "FULL_GPU"), None) \
        or next((f for f in quants if f.profile_key in ("i-balanced", "balanced")), quants[0])
    flags, note = _recommended_flags(inputs, main)
    repo = inputs.repo_id
    name = main.file_name
    vision = f" --mmproj {mmproj.file_name}" if mmproj else ""
    download = f"hf download {repo} {name} --local-dir ."
    if mmproj:
        download += f"\nhf download {repo} {mmproj.file_name} --local-dir ."
    lines = ["## How to Download and Use", "", "### With llama.cpp", "", "```bash",
             "# Download", download, "",
             f"# Serve an OpenAI-compatible API on http://localhost:8080 ({note})",
             f"llama-server -m {name} -c {inputs.context} {flags}{vision}", "",
             "# Chat in the terminal",
             f"llama-cli -m {name} -c {inputs.context} {flags}{vision}", "```", ""]
    if mmproj:
        lines += [f"`--mmproj {mmproj.file_name}` enables image input; leave it out for text "
                  "only.", ""]
    ollama_name = re.sub(r"[^a-z0-9._-]", "-", Path(name).stem.lower())
    tag = name.removesuffix(".gguf").rsplit("-APEX-", 1)[-1]
    lines += ["### With Ollama", "", "```bash",
              f"ollama run hf.co/{repo}:{tag}", "```", "",
              "Or from the downloaded file, with a Modelfile:", "", "```bash",
              f"echo 'FROM ./{name}' > Modelfile",
              f"ollama create {ollama_name} -f Modelfile",
              f"ollama run {ollama_name}", "```", "",
              "### With LocalAI", "", "```bash", f"local-ai run {repo}@{name}", "```", ""]
    return lines


def _hardware(inputs: CardInputs) -> list[str]:
    rows = [(f, inputs.fits[f.file_name]) for f in inputs.files if f.file_name in inputs.fits]
    if not rows:
        return []
    on = f" on {inputs.hardware}" if inputs.hardware else ""
    lines = ["## Hardware Requirements", "",
             f"Checked by APEX Studio's memory model{on} at a context of {inputs.context} "
             "tokens (weights, KV cache and compute buffers per device, with a 1 GiB margin):",
             "", "| File | Size | Verdict | Headroom | Max context | Flags |",
             "|---|---|---|---|---|---|"]
    for file, fit in rows:
        headroom = (f"{format_size(fit.headroom_bytes)} ({fit.headroom.value})"
                    if fit.verdict.name != "DOES_NOT_FIT" else "--")
        max_ctx = f"{fit.max_context:,}" if fit.max_context else "--"
        lines.append(f"| `{file.file_name}` | {format_size(file.size_bytes)} | "
                     f"{fit.verdict.value} | {headroom} | {max_ctx} | `{fit.flags}` |")
    lines += ["", "Routed experts tolerate system RAM well (only a few fire per token): "
                  "`--n-cpu-moe N` keeps those of the first N layers on the CPU while attention, "
                  "shared experts and the KV cache stay on the GPU.", ""]
    return lines


def _reproduction(inputs: CardInputs) -> list[str]:
    files = [f for f in inputs.files if f.recipe is not None]
    if not files:
        return []
    lines = ["## Reproduction", "",
             "Every file was made with stock `llama-quantize` and the tensor-type file in "
             f"`{RECIPES_FOLDER}/` (one `pattern=type` line per tensor):", "", "```bash"]
    for file in files:
        recipe = file.recipe
        assert recipe is not None
        argv = ["llama-quantize"]
        if recipe.tensor_type_file:
            argv += ["--tensor-type-file", file.recipe_name]
        if recipe.token_embedding_type:
            argv += ["--token-embedding-type", recipe.token_embedding_type]
        if recipe.output_tensor_type:
            argv += ["--output-tensor-type", recipe.output_tensor_type]
        if recipe.imatrix:
            argv += ["--imatrix", Path(recipe.imatrix).name]
        source = Path(recipe.source).name if recipe.source else f"{inputs.model_name}-F16.gguf"
        argv += [source, file.file_name, recipe.base_type]
        lines.append(shlex.join(argv))
    lines += ["```", ""]
    if any(f.recipe and f.recipe.imatrix for f in files):
        lines += [f"The importance matrix was computed with `llama-imatrix` on "
                  f"{inputs.calibration}.", ""]
    return lines


def _sensitivity(inputs: CardInputs) -> list[str]:
    table = inputs.sensitivity
    if table is None:
        return []
    repo = inputs.repo_id
    lines = ["## Sensitivity Table", "",
             f"`{table.file_name}` is the measured sensitivity of the source model: the damage "
             "each candidate type does to each tensor, weighed by llama-quantize's own error "
             "and calibrated to mean KL divergence with real probes"
             + (f" ({table.probe_tokens:,} tokens of {display_text_name(table.probe_text)} "
                "each)" if table.probe_tokens and table.probe_text else "")
             + ". With it anyone can fit a plan to another size or GPU without measuring "
             "again; it is refused for any other model (source fingerprint "
             f"`{table.fingerprint[:16]}`):", "", "```bash",
             f"apex-studio optimize {inputs.model_name}-F16.gguf --budget 20GB \\",
             f"    --sensitivity hf://{repo}/{table.file_name} -o plan.txt", "```", "",
             "Predicted mean KLD if one kind of tensor alone were at each type (all layers; "
             "the rest as in the source):", "",
             "| Tensor kind | Tensors | " + " | ".join(table.candidates) + " |",
             "|---|---:|" + "---:|" * len(table.candidates)]
    for kind, count, values in table.kinds:
        cells = ["-" if v is None else f"{v:.2g}" for v in values]
        lines.append(f"| `{kind}` | {count} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def render_model_card(inputs: CardInputs) -> str:
    """The README.md text."""
    quants = [f for f in inputs.files if not f.is_mmproj]
    has_mmproj = any(f.is_mmproj for f in inputs.files)
    source = f"[{inputs.base_model}](https://huggingface.co/{inputs.base_model})" \
        if inputs.base_model and _HF_ID.match(inputs.base_model) else f"`{inputs.model_name}`"
    count = f"{len(quants)} APEX GGUF file{'s' if len(quants) != 1 else ''}"
    lines = [*_front_matter(inputs),
             f"# {inputs.model_name} APEX GGUF -- MoE-Aware Mixed-Precision Quantization", "",
             f"APEX (Adaptive Precision for EXpert Models) quantizations of {source}, made with "
             "APEX Studio and stock llama.cpp.", "",
             "## What is APEX?", "",
             "APEX is a quantization strategy for Mixture-of-Experts models. Instead of one "
             "precision for every tensor, it classifies each tensor by role -- routed expert, "
             "shared expert, attention -- and applies a layer-wise precision gradient: the edge "
             "layers, which shape input processing and output generation, get higher precision "
             "and the redundant middle layers are compressed harder. Routed experts hold most of "
             "the bytes and only a few fire per token, so they tolerate low precision; shared "
             "experts fire for every token and stay high. I-variants add an importance matrix "
             "from a diverse calibration set (chat, code, reasoning, tool calling). The files "
             "run on stock llama.cpp with no code changes.", "",
             f"This repository contains {count}"
             + (" plus a vision projector (mmproj)." if has_mmproj else "."), ""]
    if inputs.facts is not None:
        lines += _architecture(inputs.facts)
    lines += _files_table(inputs)
    lines += _methods(inputs)
    lines += _benchmarks(inputs)
    lines += _sensitivity(inputs)
    lines += _run_commands(inputs)
    lines += _hardware(inputs)
    lines += _reproduction(inputs)
    lines += ["## Credits", "",
              "The APEX method is by the LocalAI team ([apex-quant](https://github.com/mudler/"
              "apex-quant), MIT). Quantized and evaluated with APEX Studio on llama.cpp"
              + (f" ({inputs.llama_cpp_version})" if inputs.llama_cpp_version else "") + ".", ""]
    return "\n".join(lines)


def card_files(results: Iterable[QuantResult], recipes: Mapping[str, QuantRecipe],
               model_name: str, profiles: Mapping[str, Profile],
               mmproj: tuple[str, int] | None = None) -> list[CardFile]:
    """Card entries for measured APEX quants, named ``<Model>-APEX-<Label>.gguf`` in the repo."""
    files: list[CardFile] = []
    for row in results:
        if row.kind != "apex" or not row.path:
            continue
        profile = profiles.get(row.profile)
        label = profile.label if profile else row.label.removeprefix("APEX ")
        files.append(CardFile(
            file_name=card_file_name(model_name, label), label=f"APEX {label}",
            size_bytes=row.size_bytes or 0, profile_key=row.profile,
            recipe=recipes.get(row.path)))
    if mmproj is not None:
        files.append(CardFile(file_name=Path(mmproj[0]).name, label="Vision projector",
                              size_bytes=mmproj[1], is_mmproj=True))
    return files


def renamed_results(results: Sequence[QuantResult],
                    names: Mapping[str, str]) -> tuple[QuantResult, ...]:
    """Rows whose ``path`` points at the name the file gets in the repository (for the card)."""
    return tuple(replace(r, path=names.get(r.path, r.path)) for r in results)


def build_card_inputs(rows: Sequence[QuantResult], recipes: Mapping[str, QuantRecipe], *,
                      repo_id: str, model_name: str, profiles: Mapping[str, Profile],
                      selected: Iterable[str] | None = None, facts: ModelFacts | None = None,
                      base_model: str = "", fits_by_profile: Mapping[str, FitResult] | None = None,
                      hardware: str = "", measured_on: str = "", context: int = 8192,
                      mmproj: tuple[str, int] | None = None,
                      sensitivity: SensitivitySummary | None = None,
                      ) -> tuple[CardInputs, dict[str, str]]:
    """The card's inputs for the APEX quants in ``rows`` (only ``selected`` local paths, if
    given) and the local path -> repository name map the upload uses."""
    chosen = set(selected) if selected is not None else None
    apex = [r for r in rows if r.kind == "apex" and (chosen is None or r.path in chosen)]
    # A recipe whose tensor-type file is gone cannot be published: no reproduction line
    # would be better than one naming a file the repository lacks.
    recipes = {path: recipe for path, recipe in recipes.items()
               if not recipe.tensor_type_file or Path(recipe.tensor_type_file).is_file()}
    files = card_files(apex, recipes, model_name, profiles, mmproj)
    names = {row.path: file.file_name for row, file in zip(apex, files)}
    fits: dict[str, FitResult] = {}
    for row, file in zip(apex, files):
        fit = (fits_by_profile or {}).get(row.profile)
        if fit is not None:
            fits[file.file_name] = fit
    kept = [r for r in rows if r.kind != "apex" or r.path in names]
    used = {r.profile: profiles[r.profile] for r in apex if r.profile in profiles}
    inputs = CardInputs(repo_id=repo_id, model_name=model_name, files=tuple(files), facts=facts,
                        base_model=base_model, profiles=used,
                        results=renamed_results(kept, names), fits=fits, hardware=hardware,
                        measured_on=measured_on, context=context, sensitivity=sensitivity)
    if sensitivity is not None:
        names[sensitivity.local_path] = sensitivity.file_name
    return inputs, names


def recipe_files(inputs: CardInputs) -> dict[str, str]:
    """Repository path -> local tensor-type file, for the files whose recipe still exists."""
    found: dict[str, str] = {}
    for file in inputs.files:
        if file.recipe and file.recipe.tensor_type_file and Path(file.recipe.tensor_type_file).is_file():
            found[file.recipe_name] = file.recipe.tensor_type_file
    return found
