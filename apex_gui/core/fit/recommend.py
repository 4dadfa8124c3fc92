"""Which APEX tier fits this machine, how, and with which llama-server flags.

For each candidate (a profile's plan, or any per-tensor byte table) the ladder is:

(a) full GPU offload fits every device with its margin;
(b) else routed experts in system RAM: the smallest ``--n-cpu-moe N`` that fits (attention,
    shared experts, KV cache and the output stay on the GPUs);
(c) else partial offload: the largest ``-ngl`` that fits;
(d) else it does not fit (suggest a smaller tier, a shorter context or a quantized KV cache).

Without a GPU the check is against system RAM alone (CPU only). Unified-memory devices
(DGX Spark, Apple) share one pool with the host, so host allocations count against it.

One rule picks the recommended tier (:data:`RULE`, printed with every table): the best
outcome, (a) before (b) before (c) before CPU only, among the tiers whose types need no
importance matrix; tiers that do (IQ1/IQ2 experts: Mini, Nano, Micro) only when no other tier
loads at all. Among the tiers with that outcome, the lowest KL divergence known for this model
wins (measured, predicted, or the published figures when this is the model they were measured
on: :mod:`apex_gui.core.fit.quality_rank`), else the first in tier order; where headroom is
the whole story (full GPU, CPU only) a tight fit competes only as the first in tier order,
while a tight (b) or (c) takes one more layer off the GPU to loosen. More memory only adds
tiers to an outcome, so the answer for an outcome never gets worse.
Headroom is the smallest free space left on any GPU (or in RAM for CPU only):
comfortable at >= 10 % of that device, tight below, none when it does not fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from apex_gui.core.fit.buildable import buildable_profiles
from apex_gui.core.fit.cluster import explicit_split, machines_needed
from apex_gui.core.fit.context_memory import (
    DEFAULT_MARGIN, DEFAULT_UBATCH, ContextSettings, ModelGeometry, Placement, pad256,
)
from apex_gui.core.fit.memory import MemoryEstimate, weight_table
from apex_gui.core.fit.placement import (
    ALL_LAYERS, COMFORTABLE_SHARE, Candidate, FitInputs, FitResult, Headroom, MachineMemory,
    Verdict, best_outcome, expert_layer_count, fits_machine, gpu_slack, largest_where,
    verdict_uses_gpu,
)
from apex_gui.core.fit.quality_rank import choose_by_quality, published_applies, published_figures
from apex_gui.core.jobs.run_options import rpc_args
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import builtin_profiles, quant_file_name
from apex_gui.core.units import format_size

if TYPE_CHECKING:
    from apex_gui.core.fit.quality_rank import QualityFigure
    from apex_gui.core.gguf.model import ModelInfo
    from apex_gui.core.plan.profiles import Profile

__all__ = [
    "RULE",
    "RULE_SHORT",
    "Recommendation",
    "evaluate",
    "file_candidate",
    "profile_candidates",
    "recommend",
    "server_command",
    "tier_candidates",
]

#: The rule in one line, for a table with little room (the whole :data:`RULE` on hover).
RULE_SHORT = ("★ = the best fit among the tiers that need no importance matrix, then the "
              "lowest KL divergence known for this model")
#: How the star is chosen, in the words the table shows under it.
RULE = ("★ = among the tiers that need no importance matrix (Mini, Nano and Micro, which do, "
        "only when no other tier loads), those with the best fit (full GPU, then experts in "
        "RAM, partial offload, CPU only); of these the lowest KL divergence known for this "
        "model (a full-GPU fit with tight headroom competes only as the first in tier order), "
        "else the first in tier order. More memory never gives a worse tier for the same fit.")

@dataclass(frozen=True)
class Recommendation:
    results: tuple[FitResult, ...]
    recommended: FitResult | None
    context: ContextSettings
    machine: MachineMemory
    margin: int
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: When nothing fits: how many machines like this one (it plus rpc-server workers) would
    #: hold the smallest candidate; None when something fits or even 16 would not.
    machines_needed: int | None = None
    #: The KL divergence figures the tiers were ranked by (profile key -> figure), which
    #: kind was used ("measured", "predicted", "published"; None: not ranked) and why.
    quality: Mapping[str, QualityFigure] = field(default_factory=dict)
    quality_basis: str | None = None
    quality_note: str | None = None
    rule: str = RULE


def _headroom(estimate: MemoryEstimate, machine: MachineMemory, verdict: Verdict,
              margin: int) -> tuple[int, float, Headroom]:
    if machine.gpus:
        slack = gpu_slack(estimate, machine)
        index = min(range(len(slack)), key=lambda i: slack[i] / max(machine.gpus[i].free_bytes, 1))
        left, capacity = slack[index], machine.gpus[index].free_bytes
    else:
        left, capacity = machine.ram_available - estimate.host.total, machine.ram_available
        margin = 0
    share = left / capacity if capacity > 0 else 0.0
    if verdict is Verdict.DOES_NOT_FIT or left < margin:
        band = Headroom.NONE
    elif share >= COMFORTABLE_SHARE:
        band = Headroom.COMFORTABLE
    else:
        band = Headroom.TIGHT
    return left, share, band


def _headroom_decides(fit: FitResult) -> bool:
    """Full GPU and CPU only: the model is where it is, and headroom is all the room left. With
    experts in RAM or partial offload, one more layer off the GPU buys headroom."""
    return fit.verdict in (Verdict.FULL_GPU, Verdict.CPU_ONLY)


def _max_context(inputs: FitInputs, ctx: ContextSettings, verdict: Verdict,
                 placement: Placement) -> int | None:
    """Largest pad256 context (up to the training context) at which the verdict still holds."""
    if verdict is Verdict.DOES_NOT_FIT:
        return None
    # Capped at the training context, unless the chosen context is already beyond it (the
    # largest context must never read smaller than the one the verdict was made for).
    limit = max(inputs.geom.context_length or 0, ctx.n_ctx_padded)
    top = max(limit // 256, 1)

    def holds(steps: int) -> bool:
        estimate = inputs.estimate(replace(ctx, n_ctx=steps * 256), placement)
        if verdict is Verdict.CPU_ONLY:
            return estimate.host.total <= inputs.machine.ram_available
        return fits_machine(estimate, inputs.machine, inputs.margin)

    steps = largest_where(1, top, holds)
    return None if steps is None else steps * 256


def server_command(path: str, ctx: ContextSettings, verdict: Verdict, placement: Placement,
                   n_expert_layers: int, mmproj: str | None = None,
                   rpc_workers: Sequence[str] = ()) -> tuple[str, ...]:
    """The llama-server command line a verdict assumes (explicit -np: the server's automatic
    choice is 4 slots with a unified cache, which sizes memory differently)."""
    argv = ["llama-server", "-m", path, "-c", str(pad256(ctx.n_ctx))]
    if rpc_workers and verdict_uses_gpu(verdict):
        argv += rpc_args(rpc_workers)
    if verdict is Verdict.CPU_ONLY or not verdict_uses_gpu(verdict):
        argv += ["-ngl", "0"]
    else:
        ngl = placement.n_gpu_layers
        argv += ["-ngl", str(ALL_LAYERS if ngl is None else ngl)]
        if placement.n_cpu_moe:
            if n_expert_layers and placement.n_cpu_moe >= n_expert_layers:
                argv += ["--cpu-moe"]
            else:
                argv += ["--n-cpu-moe", str(placement.n_cpu_moe)]
        if placement.tensor_split is not None:
            argv += ["-ts", ",".join(f"{v:g}" for v in placement.tensor_split)]
    argv += ["-ctk", ctx.type_k, "-ctv", ctx.type_v, "-fa", "on" if ctx.flash_attn else "off",
             "-np", str(ctx.n_seq)]
    if ctx.kv_unified:
        argv += ["--kv-unified"]
    if ctx.swa_full:
        argv += ["--swa-full"]
    if ctx.n_ubatch != DEFAULT_UBATCH:
        argv += ["-ub", str(ctx.n_ubatch)]
    if ctx.use_mtp:
        argv += ["--spec-type", "draft-mtp"]
    if mmproj:
        argv += ["--mmproj", mmproj]
    return tuple(argv)


def evaluate(geom: ModelGeometry, candidate: Candidate, machine: MachineMemory,
             ctx: ContextSettings, *, margin: int = DEFAULT_MARGIN, mmproj_bytes: int = 0,
             mmproj_path: str | None = None) -> FitResult:
    """The best outcome of one candidate: verdict, flags, headroom and the largest context."""
    weights = weight_table(candidate.tensor_bytes, geom)
    inputs = FitInputs(geom, weights, machine, margin, mmproj_bytes)
    verdict, placement = best_outcome(inputs, ctx)
    if machine.rpc_workers and verdict_uses_gpu(verdict):

        placement = explicit_split(geom, machine, placement)
    estimate = inputs.estimate(ctx, placement)
    left, share, band = _headroom(estimate, machine, verdict, margin)
    notes: list[str] = []
    if verdict is Verdict.DOES_NOT_FIT:
        notes.append("try a smaller tier, a shorter context (-c) or a quantized KV cache "
                     "(-ctk q8_0 -ctv q8_0)")
    if verdict is Verdict.EXPERTS_IN_RAM or verdict is Verdict.PARTIAL:
        notes.append(f"{format_size(estimate.host.weights)} of weights stay in system RAM")
    if machine.rpc_workers and verdict_uses_gpu(verdict):
        remote = sum(len(usage.layers) for gpu, usage in zip(machine.gpus, estimate.devices)
                     if gpu.source == "rpc")
        notes.append(f"{remote} of {geom.n_layer_all} blocks on RPC workers "
                     f"({', '.join(machine.rpc_workers)}); start them before the server")
    return FitResult(
        candidate=candidate, verdict=verdict, placement=placement, estimate=estimate,
        headroom_bytes=left, headroom_share=share, headroom=band,
        max_context=_max_context(inputs, ctx, verdict, placement),
        command=server_command(candidate.path, ctx, verdict, placement,
                               expert_layer_count(weights), mmproj_path, machine.rpc_workers),
        notes=tuple(notes))


def recommend(geom: ModelGeometry, candidates: Sequence[Candidate], machine: MachineMemory,
              ctx: ContextSettings, *, margin: int = DEFAULT_MARGIN, mmproj_bytes: int = 0,
              mmproj_path: str | None = None,
              quality: Mapping[str, QualityFigure] | None = None) -> Recommendation:
    """Evaluate every candidate (given in quality order) and pick the recommended one.

    ``quality``: KL divergence per candidate key (measured, predicted or published; see
    :mod:`apex_gui.core.fit.quality_rank`); None ranks by the published KL means.
    """

    results = tuple(evaluate(geom, c, machine, ctx, margin=margin, mmproj_bytes=mmproj_bytes,
                             mmproj_path=mmproj_path) for c in candidates)
    usable = [r for r in results if r.verdict is not Verdict.DOES_NOT_FIT]
    # RULE: tiers that need an importance matrix compete only when no other tier loads; then
    # the best fit class, and in it the lowest KL divergence (else the first in tier order).
    pool = [r for r in usable if not r.candidate.needs_imatrix] or usable
    best_rank = min((r.verdict.rank for r in pool), default=None)
    same = [r for r in pool if r.verdict.rank == best_rank]
    eligible = [r for index, r in enumerate(same)
                if index == 0 or r.headroom is Headroom.COMFORTABLE or not _headroom_decides(r)]
    if quality is None:
        applies = published_applies(geom.architecture, geom.n_layer)
        figures = published_figures(c.key for c in candidates) if applies else {}
    else:
        figures = dict(quality)
    choice = choose_by_quality(eligible, figures)
    best = choice.result
    notes = list(machine.notes)
    if best is not None and best.candidate.needs_imatrix:
        notes.append(f"{best.candidate.label} needs an importance matrix (its IQ types do): "
                     "the Run tab makes one from the bundled calibration set before it "
                     "quantizes, or run `apex-studio imatrix` first.")
    if not machine.gpus:
        notes.append("No GPU: CPU only, checked against available system RAM "
                     f"({format_size(machine.ram_available)}).")
    machines = None
    if best is None and results:

        smallest = min(candidates, key=lambda c: c.file_bytes)
        machines = machines_needed(geom, smallest, machine, ctx, margin=margin)
        more = (f" {machines} machines like this one (this one plus {machines - 1} running "
                f"rpc-server, joined with --rpc) would hold {smallest.label}." if machines
                else "")
        notes.append("Nothing fits: choose a shorter context, a quantized KV cache or more "
                     "memory." + more)
    if 0 < geom.context_length < ctx.n_ctx_padded:
        notes.append(f"Context {ctx.n_ctx_padded} is beyond the model's training context "
                     f"({geom.context_length}): llama.cpp runs it but output quality may "
                     f"degrade; choose {geom.context_length} or less.")
    return Recommendation(results, best, ctx, machine, margin, tuple(notes), machines,
                          dict(figures), choice.basis, choice.note)


# ----------------------------------------------------------------------------- candidates


def profile_candidates(model: ModelInfo, profiles: Iterable[Profile] | None = None,
                       out_dir: str | Path | None = None) -> list[Candidate]:
    """One candidate per profile (exact per-tensor bytes from its plan), in quality order.

    The command names the file the quantize step writes: ``<model stem>-APEX-<Label>.gguf``.
    """
    chosen = list(profiles) if profiles is not None else list(builtin_profiles().values())
    folder = Path(out_dir) if out_dir is not None else model.path.parent
    candidates = []
    for profile in chosen:
        plan = plan_from_profile(model, profile)
        candidates.append(Candidate(
            key=profile.key, label=profile.label, tensor_bytes=plan.tensor_bytes_map(),
            file_bytes=plan.total_bytes(),
            path=str(folder / quant_file_name(model.path, profile.label)),
            needs_imatrix=plan.needs_imatrix()))
    return candidates


def tier_candidates(model: ModelInfo, out_dir: str | Path | None = None) -> list[Candidate]:
    """What Hardware & tiers and ``apex-studio recommend`` rank, the same in both: the APEX
    tiers as they can be built (a plain tier whose types need an importance matrix is its
    I-variant, byte for byte: one row), and an already quantized file first, as it is."""
    tiers = [p for p in builtin_profiles().values() if p.tier]
    candidates = profile_candidates(model, buildable_profiles(model, tiers), out_dir)
    if not model.is_full_precision:
        candidates.insert(0, file_candidate(model))
    return candidates


def file_candidate(model: ModelInfo) -> Candidate:
    """The model file as it is (for a GGUF that is already quantized)."""
    return Candidate(key="as-is", label=model.path.name,
                     tensor_bytes={t.name: t.nbytes for t in model.tensors},
                     file_bytes=model.file_size, path=str(model.path))
