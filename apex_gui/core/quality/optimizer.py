"""The best plan for a byte budget: a multiple-choice knapsack over tensors.

Each quantizable tensor is an item; each type it may take is an option with its exact bytes
(the size model of :class:`PrecisionPlan`: the type after llama-quantize's row-length
fallback, padded to the file's alignment) and its predicted damage (mean KL divergence, from
a :class:`SensitivityTable`). Minimising the summed damage under the byte budget:

1. per tensor, drop options that cost more bytes for no less damage;
2. Lagrangian sweep: walk every tensor's lower convex hull in order of damage saved per
   byte (which is what bisecting the multiplier converges to), taking steps while they fit;
3. greedy repair: spend the bytes left on the best remaining upgrade (any option, hull or
   not) until none fits, then trade (one tensor down, another up) while the total improves;
4. for small instances the exact Pareto frontier is computed and wins when it is better, so
   small cases are solved to optimality.

Deterministic (ties broken by tensor order and type name) and linear in the number of
tensor x type options: well under a second on a 400B-parameter model.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from apex_gui.core.fit.context_memory import ModelGeometry
from apex_gui.core.fit.placement import Candidate, Verdict
from apex_gui.core.fit.recommend import evaluate
from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.gguf.roles import TensorRole, classify
from apex_gui.core.gguf.types import IMATRIX_REQUIRED, TYPES, effective_type, tensor_bytes
from apex_gui.core.plan.precision import PrecisionPlan, is_quantizable
from apex_gui.core.quality.sensitivity import SensitivityTable

#: Frontier states kept by the exact pass before it gives up (the heuristic result stands).
EXACT_STATE_LIMIT = 20_000
#: Instances up to this many tensors also get the exact pass.
EXACT_MAX_ITEMS = 64

#: The llama-quantize file type named after a tensor type (the header's general.file_type);
#: every tensor is pinned, so it decides nothing else.
_FTYPE_FOR: dict[str, str] = {
    "Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q6_K": "Q6_K",
    "Q8_0": "Q8_0", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
    "IQ4_XS": "IQ4_XS", "IQ4_NL": "IQ4_NL", "IQ3_S": "IQ3_S", "IQ3_XXS": "IQ3_XXS",
    "IQ2_S": "IQ2_M", "IQ2_XS": "IQ2_XS", "IQ2_XXS": "IQ2_XXS", "F16": "F16", "BF16": "BF16",
}


class BudgetTooSmall(ValueError):
    """Not even the smallest allowed type of every tensor fits the budget."""


@dataclass(frozen=True)
class Option:
    type_name: str  # effective type (what llama-quantize writes)
    nbytes: int  # padded bytes in the file
    damage: float  # predicted mean KL divergence contributed


# --- the knapsack --------------------------------------------------------------------------


def _pareto(options: Sequence[Option]) -> list[int]:
    """Indices of the undominated options, by increasing bytes (and decreasing damage)."""
    order = sorted(range(len(options)),
                   key=lambda i: (options[i].nbytes, options[i].damage, options[i].type_name))
    kept: list[int] = []
    for i in order:
        if not kept or options[i].damage < options[kept[-1]].damage:
            if kept and options[i].nbytes == options[kept[-1]].nbytes:
                kept[-1] = i
            else:
                kept.append(i)
    return kept


def _hull(options: Sequence[Option], front: list[int]) -> list[int]:
    """The lower convex hull of the Pareto front (damage against bytes)."""
    hull: list[int] = []
    for i in front:
        while len(hull) >= 2:
            a, b = options[hull[-2]], options[hull[-1]]
            c = options[i]
            # b lies on or above the segment a-c: it is never the Lagrangian choice.
            if (b.damage - a.damage) * (c.nbytes - a.nbytes) >= (c.damage - a.damage) * (b.nbytes - a.nbytes):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def solve(items: Sequence[Sequence[Option]], capacity: int) -> list[int]:
    """An option index per item minimising total damage with total bytes <= capacity."""
    fronts = [_pareto(opts) for opts in items]
    choice = [front[0] for front in fronts]
    used = sum(items[k][c].nbytes for k, c in enumerate(choice))
    if used > capacity:
        raise BudgetTooSmall(f"the smallest allowed types need {used} bytes, {used - capacity} "
                             "more than the budget")
    # Lagrangian sweep: hull steps by damage saved per byte, best first.
    steps: list[tuple[float, int, int, int]] = []
    for k, opts in enumerate(items):
        hull = _hull(opts, fronts[k])
        for position in range(1, len(hull)):
            a, b = opts[hull[position - 1]], opts[hull[position]]
            rate = (a.damage - b.damage) / (b.nbytes - a.nbytes)
            steps.append((-rate, k, position, hull[position]))
    steps.sort()
    reached = [0] * len(items)
    blocked = [False] * len(items)
    for _, k, position, option in steps:
        if blocked[k] or position != reached[k] + 1:
            continue
        extra = items[k][option].nbytes - items[k][choice[k]].nbytes
        if used + extra <= capacity:
            used += extra
            choice[k] = option
            reached[k] = position
        else:
            blocked[k] = True  # later hull steps of this item build on this one
    choice, used = _repair(items, fronts, choice, used, capacity)
    exact = None
    if len(items) <= EXACT_MAX_ITEMS:
        exact = _exact(items, fronts, capacity,
                       sum(items[k][c].damage for k, c in enumerate(choice)))
    return exact if exact is not None else choice


def _repair(items: Sequence[Sequence[Option]], fronts: list[list[int]], choice: list[int],
            used: int, capacity: int) -> tuple[list[int], int]:
    """Spend leftover bytes on the best upgrades, then trade down/up pairs while it pays."""
    while True:
        best: tuple[float, int, int] | None = None
        for k, front in enumerate(fronts):
            now = items[k][choice[k]]
            for i in front:
                opt = items[k][i]
                extra = opt.nbytes - now.nbytes
                if opt.damage < now.damage and used + extra <= capacity:
                    gain = now.damage - opt.damage
                    if best is None or gain > best[0]:
                        best = (gain, k, i)
        if best is not None:
            _, k, i = best
            used += items[k][i].nbytes - items[k][choice[k]].nbytes
            choice[k] = i
            continue
        # One tensor a step down frees bytes for another one up: for each step down, the
        # best step up within the bytes it frees (sorted by extra bytes, running best gain).
        ups = sorted((items[k][i].nbytes - items[k][choice[k]].nbytes,
                      items[k][choice[k]].damage - items[k][i].damage, k, i)
                     for k, front in enumerate(fronts) for i in front
                     if items[k][i].damage < items[k][choice[k]].damage)
        extras = [u[0] for u in ups]
        best_prefix: list[int] = []  # index into ups of the best gain among ups[:j+1]
        for j, up in enumerate(ups):
            if not best_prefix or up[1] > ups[best_prefix[-1]][1]:
                best_prefix.append(j)
            else:
                best_prefix.append(best_prefix[-1])
        trade: tuple[float, int, int, int, int] | None = None
        for k_down, front in enumerate(fronts):
            position = front.index(choice[k_down])
            if position == 0:
                continue
            lower = front[position - 1]
            freed = items[k_down][choice[k_down]].nbytes - items[k_down][lower].nbytes
            lost = items[k_down][lower].damage - items[k_down][choice[k_down]].damage
            reach = bisect.bisect_right(extras, capacity - used + freed) - 1
            # The best up may be the same tensor: then look at the best of the others.
            while reach >= 0:
                j = best_prefix[reach]
                if ups[j][2] != k_down:
                    break
                reach = j - 1
            if reach < 0:
                continue
            _, gain, k_up, upper = ups[best_prefix[reach]]
            if gain - lost > 1e-18 and (trade is None or gain - lost > trade[0]):
                trade = (gain - lost, k_down, lower, k_up, upper)
        if trade is None:
            return choice, used
        _, k_down, lower, k_up, upper = trade
        used += items[k_down][lower].nbytes - items[k_down][choice[k_down]].nbytes
        choice[k_down] = lower
        used += items[k_up][upper].nbytes - items[k_up][choice[k_up]].nbytes
        choice[k_up] = upper


def _exact(items: Sequence[Sequence[Option]], fronts: list[list[int]], capacity: int,
           incumbent: float) -> list[int] | None:
    """The optimum by a Pareto-frontier sweep, or None when the frontier grows too large."""
    min_rest = [0] * (len(items) + 1)
    for k in range(len(items) - 1, -1, -1):
        min_rest[k] = min_rest[k + 1] + items[k][fronts[k][0]].nbytes
    states: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for k, front in enumerate(fronts):
        grown = []
        for nbytes, damage, picks in states:
            for i in front:
                total = nbytes + items[k][i].nbytes
                if total + min_rest[k + 1] <= capacity:
                    grown.append((total, damage + items[k][i].damage, picks + (i,)))
        grown.sort(key=lambda s: (s[0], s[1]))
        states = []
        for state in grown:  # keep states that beat every cheaper one
            if not states or state[1] < states[-1][1]:
                states.append(state)
        if len(states) > EXACT_STATE_LIMIT:
            return None
    best = min(states, key=lambda s: s[1], default=None)
    if best is None or best[1] >= incumbent - 1e-15:
        return None
    return list(best[2])


# --- plans ---------------------------------------------------------------------------------


@dataclass
class OptimizedPlan:
    """The optimizer's plan with its exact size, predicted damage and a reason per tensor."""

    plan: PrecisionPlan
    budget: int
    predicted_kld: float
    reasons: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"base_type": self.plan.base_type, "bytes": self.plan.total_bytes(),
                "budget": self.budget, "predicted_kld": self.predicted_kld,
                "bits_per_weight": self.plan.bits_per_weight(), "seconds": self.seconds,
                "types": {n: self.plan.effective_type(n) for n in self.reasons},
                "reasons": self.reasons}


def allowed_types(table: SensitivityTable, name: str, row_length: int,
                  have_imatrix: bool) -> list[str]:
    """Effective types a tensor may take: measured, writable, and imatrix-free if need be."""
    found: list[str] = []
    source = table.source_types.get(name)
    for candidate in (*table.candidates, *([source] if source else [])):
        if candidate not in TYPES:
            continue
        actual = effective_type(candidate, row_length)
        if not have_imatrix and actual in IMATRIX_REQUIRED:
            continue
        if actual not in found and table.known(name, actual):
            found.append(actual)
    return found


def optimize(model: ModelInfo, table: SensitivityTable, budget: int,
             imatrix: str | None = None,
             keep: Callable[[str], bool] | None = None) -> OptimizedPlan:
    """The plan of least predicted KL divergence whose file is at most ``budget`` bytes.

    ``keep(name)`` true: the tensor stays as stored. Tensors the table does not cover (a
    different model) raise, naming the first.
    """
    started = time.perf_counter()
    names = [t.name for t in model.tensors if is_quantizable(t.name, t.shape)]
    missing = [n for n in names if n not in table.errors]
    if missing:
        raise ValueError(f"the sensitivity table ({table.model}) has no {missing[0]} "
                         f"(and {len(missing) - 1} more): it was measured on another model; "
                         "measure this one with apex-studio sensitivity MODEL")
    probe = PrecisionPlan(model, {}, "Q8_0")
    probe.imatrix = imatrix
    alignment = int(model.metadata.get("general.alignment", 32) or 32)

    def padded(n: int) -> int:
        return -(-n // alignment) * alignment

    planned = set(names)
    fixed = probe.header_bytes() + sum(padded(t.nbytes) for t in model.tensors
                                       if t.name not in planned)
    items: list[list[Option]] = []
    for name in names:
        tensor = model.tensor(name)
        kinds = ([tensor.type_name] if keep is not None and keep(name) else
                 allowed_types(table, name, tensor.row_length, bool(imatrix)))
        if not kinds:
            raise ValueError(f"{name}: no measured type is allowed for it; measure more "
                             "candidate types (apex-studio sensitivity --types)")
        items.append([Option(k, padded(tensor_bytes(k, tensor.shape)), table.damage(name, k))
                      for k in sorted(kinds)])
    try:
        picks = solve(items, budget - fixed)
    except BudgetTooSmall as error:
        smallest = fixed + sum(min(o.nbytes for o in opts) for opts in items)
        raise BudgetTooSmall(f"a budget of {budget} bytes is too small for {model.path.name}: "
                             f"the smallest plan allowed is {smallest} bytes ({error})") from None
    types = {name: items[k][picks[k]].type_name for k, name in enumerate(names)}
    by_type: dict[str, int] = {}
    for k, opts in enumerate(items):
        by_type[opts[picks[k]].type_name] = by_type.get(opts[picks[k]].type_name, 0) + opts[picks[k]].nbytes
    # llama-quantize with an F16/BF16 file type copies every tensor and ignores the pinned
    # types: the file type must name a quantized type.
    quantized = sorted(t for t in by_type if TYPES[t].quantized)
    main = max(quantized, key=lambda t: by_type[t]) if quantized else "Q8_0"
    plan = PrecisionPlan(model, types, _FTYPE_FOR.get(main, "Q8_0"),
                         origin=f"optimized for {budget} bytes")
    plan.imatrix = imatrix
    result = OptimizedPlan(plan, budget,
                           table.respond(sum(items[k][p].damage for k, p in enumerate(picks))))
    result.reasons = _reasons(names, items, picks)
    result.seconds = time.perf_counter() - started
    return result


def _reasons(names: list[str], items: list[list[Option]], picks: list[int]) -> dict[str, str]:
    """Why each tensor got its type: its damage per byte against the next type up and down."""
    rates: list[tuple[float, int]] = []
    for k, opts in enumerate(items):
        chosen = opts[picks[k]]
        up = [o for o in opts if o.nbytes > chosen.nbytes and o.damage < chosen.damage]
        rate = max(((chosen.damage - o.damage) / (o.nbytes - chosen.nbytes) for o in up),
                   default=0.0)
        rates.append((rate, k))
    ranking = {k: position + 1 for position, (_, k) in enumerate(sorted(rates, reverse=True))}
    out: dict[str, str] = {}
    for k, name in enumerate(names):
        opts, chosen = items[k], items[k][picks[k]]
        up = min((o for o in opts if o.nbytes > chosen.nbytes), key=lambda o: o.nbytes,
                 default=None)
        down = max((o for o in opts if o.nbytes < chosen.nbytes), key=lambda o: o.nbytes,
                   default=None)
        parts = [f"{chosen.type_name}: predicted KLD {chosen.damage:.3g}"]
        if up is not None:
            parts.append(f"{up.type_name} would save {chosen.damage - up.damage:.3g} for "
                         f"{up.nbytes - chosen.nbytes} more bytes")
        if down is not None:
            parts.append(f"{down.type_name} would cost {down.damage - chosen.damage:.3g} to "
                         f"save {chosen.nbytes - down.nbytes} bytes")
        parts.append(f"upgrade value ranks {ranking[k]} of {len(names)}")
        out[name] = "; ".join(parts)
    return out


def predicted_kld(table: SensitivityTable, plan: PrecisionPlan) -> float:
    """Predicted mean KL divergence of any plan whose types the table measured."""
    return table.predict_kld(plan)


def smallest_plan_bytes(model: ModelInfo, table: SensitivityTable,
                        imatrix: str | None = None) -> int:
    """Bytes of the smallest plan the optimizer may write (every tensor at its cheapest)."""
    probe = PrecisionPlan(model, {}, "Q8_0")
    probe.imatrix = imatrix
    alignment = int(model.metadata.get("general.alignment", 32) or 32)
    total = probe.header_bytes()
    for tensor in model.tensors:
        if not is_quantizable(tensor.name, tensor.shape):
            total += -(-tensor.nbytes // alignment) * alignment
            continue
        kinds = allowed_types(table, tensor.name, tensor.row_length, bool(imatrix))
        total += min(-(-tensor_bytes(k, tensor.shape) // alignment) * alignment for k in kinds)
    return total


def smallest_possible_bytes(model: ModelInfo, candidates: Sequence[str],
                           imatrix: str | None = None) -> int:
    """Bytes of the smallest plan any table of these candidate types could allow: checked
    before a measurement, so a budget no plan can meet is refused before hours of work."""
    probe = PrecisionPlan(model, {}, "Q8_0")
    probe.imatrix = imatrix
    alignment = int(model.metadata.get("general.alignment", 32) or 32)
    total = probe.header_bytes()
    for tensor in model.tensors:
        sizes = [tensor.nbytes]
        if is_quantizable(tensor.name, tensor.shape):
            for candidate in candidates:
                actual = effective_type(candidate, tensor.row_length)
                if imatrix or actual not in IMATRIX_REQUIRED:
                    sizes.append(tensor_bytes(actual, tensor.shape))
        total += -(-min(sizes) // alignment) * alignment
    return total


def optimize_for_fit(model: ModelInfo, table: SensitivityTable, machine: Any, ctx: Any, *,
                     margin: int, imatrix: str | None = None,
                     experts_in_ram: bool = False) -> tuple[OptimizedPlan, Any]:
    """The best plan that loads fully on the GPUs (or in RAM without GPUs) at this context.

    The memory model (KV cache, compute buffers, placement) decides; the byte budget is
    bisected to the largest whose optimized plan still gets that verdict. With
    ``experts_in_ram`` the routed experts get the machine's available RAM (less ``margin``)
    as their own budget and the bisection is over what stays on the GPUs (``--cpu-moe``).
    """
    geom = ModelGeometry.from_model(model)
    if experts_in_ram and not machine.gpus:
        raise ValueError("routed experts in RAM needs GPUs for the rest: give --gpu or --vram")
    target = (Verdict.EXPERTS_IN_RAM if experts_in_ram else
              Verdict.FULL_GPU if machine.gpus else Verdict.CPU_ONLY)
    ram_budget = max(0, int(machine.ram_available) - margin)

    def attempt(budget: int) -> tuple[OptimizedPlan, Any]:
        result = (optimize_experts_in_ram(model, table, budget, ram_budget, imatrix)
                  if experts_in_ram else optimize(model, table, budget, imatrix))
        candidate = Candidate(key="optimized", label="optimized",
                              tensor_bytes=result.plan.tensor_bytes_map(),
                              file_bytes=result.plan.total_bytes(), path=str(model.path))
        return result, evaluate(geom, candidate, machine, ctx, margin=margin)

    def reached(fit: Any) -> bool:
        return fit.verdict.rank <= target.rank if experts_in_ram else fit.verdict is target

    smallest = smallest_plan_bytes(model, table, imatrix)
    if experts_in_ram:
        experts = routed_expert_names(model)
        smallest -= sum(min(tensor_bytes(k, model.tensor(n).shape) for k in allowed_types(
            table, n, model.tensor(n).row_length, bool(imatrix))) for n in experts)
    low = smallest
    best = attempt(low)
    if not reached(best[1]):
        raise BudgetTooSmall(f"even the smallest plan ({low} bytes) does not load with "
                             f"{target.value} here ({best[1].verdict.value}); choose a shorter "
                             "context (--ctx), more memory, or a byte budget (--budget)")
    high = sum(machine.capacities) if machine.gpus else machine.ram_available
    high = max(high, low)
    for _ in range(40):
        if high - low <= max(1, low // 100_000):
            break
        middle = (low + high) // 2
        found = attempt(middle)
        if reached(found[1]):
            best, low = found, middle
        else:
            high = middle
    return best


# --- routed experts in system RAM: two budgets ------------------------------------------------


def routed_expert_names(model: ModelInfo) -> set[str]:
    """Quantizable tensors that ``--cpu-moe`` keeps in system RAM (the routed experts)."""
    return {t.name for t in model.tensors
            if is_quantizable(t.name, t.shape) and classify(t.name) is TensorRole.ROUTED_EXPERT}


def optimize_experts_in_ram(model: ModelInfo, table: SensitivityTable, vram_budget: int,
                            ram_budget: int, imatrix: str | None = None) -> OptimizedPlan:
    """The plan of least predicted KLD when routed experts live in RAM and the rest on GPUs.

    The file's bytes outside the routed experts (header, attention, shared experts, norms,
    embeddings) must fit ``vram_budget``; the routed experts ``ram_budget``. No tensor draws
    on both budgets, so the two knapsacks are independent and solving each alone gives the
    joint optimum. Each part is solved by :func:`optimize` with the other part held as stored,
    its stored bytes added to that call's budget.
    """
    started = time.perf_counter()
    experts = routed_expert_names(model)
    if not experts:
        raise ValueError(f"{model.path.name} has no routed experts to keep in RAM; give one "
                         "budget (--budget) or a full-GPU fit target")
    stored = {t.name: t for t in model.tensors}
    alignment = int(model.metadata.get("general.alignment", 32) or 32)

    def stored_bytes(names: set[str]) -> int:
        return sum(-(-stored[n].nbytes // alignment) * alignment for n in names)

    others = {t.name for t in model.tensors if is_quantizable(t.name, t.shape)} - experts
    probe = PrecisionPlan(model, {}, "Q8_0")
    probe.imatrix = imatrix  # the quant's header carries the imatrix keys
    header_and_fixed = (probe.header_bytes()
                        + stored_bytes({t.name for t in model.tensors} - experts - others))
    gpu_part = optimize(model, table, vram_budget + stored_bytes(experts), imatrix,
                        keep=lambda name: name in experts)
    try:
        ram_part = optimize(model, table, ram_budget + header_and_fixed + stored_bytes(others),
                            imatrix, keep=lambda name: name not in experts)
    except BudgetTooSmall:
        least = sum(min(tensor_bytes(k, stored[n].shape) for k in allowed_types(
            table, n, stored[n].row_length, bool(imatrix))) for n in experts)
        raise BudgetTooSmall(f"the routed experts of {model.path.name} need at least {least} "
                             f"bytes of RAM at the smallest types allowed, but {ram_budget} "
                             "are given for them: more RAM (--ram), a smaller margin, or GPUs "
                             "for everything") from None
    types = {name: (ram_part if name in experts else gpu_part).plan.types[name]
             for name in experts | others}
    by_type: dict[str, int] = {}
    for name, kind in types.items():
        by_type[kind] = by_type.get(kind, 0) + tensor_bytes(kind, stored[name].shape)
    quantized = sorted(t for t in by_type if TYPES[t].quantized)
    main = max(quantized, key=lambda t: by_type[t]) if quantized else "Q8_0"
    plan = PrecisionPlan(model, types, _FTYPE_FOR.get(main, "Q8_0"),
                         origin=f"optimized for {vram_budget} bytes on GPUs + {ram_budget} "
                                "bytes of routed experts in RAM")
    plan.imatrix = imatrix
    damage = sum(table.damage(name, kind) for name, kind in types.items())
    result = OptimizedPlan(plan, vram_budget + ram_budget, table.respond(damage))
    result.reasons = {name: (ram_part if name in experts else gpu_part).reasons[name]
                      for name in types}
    result.seconds = time.perf_counter() - started
    return result


def split_bytes(plan: PrecisionPlan) -> tuple[int, int]:
    """(bytes outside the routed experts, bytes of the routed experts) of a plan's file."""
    experts = routed_expert_names(plan.model)
    sizes = plan.tensor_bytes_map()
    expert_bytes = sum(size for name, size in sizes.items() if name in experts)
    return plan.total_bytes() - expert_bytes, expert_bytes
