"""From weighted errors to mean KL divergence: which probes are run and how they are fitted.

The probes (all short, all against one reference run of the source model on the probe text):

- one per tensor kind: that kind at the probe type (Q3_K), everything else as stored. It
  gives the kind's scale: KL divergence per unit of its weighted error;
- "all low": every kind at the probe type at once. Errors of many tensors do not add up
  exactly (on the trained demo all kinds together score 0.81 of the sum of their probes):
  this point anchors the response curve at the damage of a low-bit quant;
- "all high": every tensor at a high type (Q6_K). Weight errors there are small, and what is
  left is the floor every quantized weight adds by quantizing its activations (Q8_K for
  K-quants); without it, a plan of high types would be predicted far better than it is.

An "all lowest" probe (every tensor at Q2_K) for the curve's upper end was tried: it costs a
slow Q2_K pass over the whole model, and did not bring a weakly trained 24-layer model's
uniform Q2_K (measured 3x above the curve) within reach; left out.

The legacy types quantize activations in blocks of 32 (Q8_0) instead of 256 (Q8_K): their
floor per unit of weight energy is taken as ``Q8_0_FLOOR_SHARE`` of the Q8_K one. For
Gaussian activations the ratio of the expected squared maxima of 32 and of 256 values is 0.67;
real activations have heavier tails, which lowers it (0.45 fits the trained demo's uniform
Q8_0; a weakly trained 24-layer model wanted about 0.2). A probe of its own would cost a pass
and, on the short probe text, read the Q8_0 floor 2.5x higher than a longer text does.

Measured on the trained demo (``benchmarks/bench_optimizer.py``): one probe per kind and no
floor predicted uniform Q8_0 at a tenth of its measured KLD; with the floor and the response
curve, every fixed recipe and optimized plan lands within the factors the README lists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from apex_gui.core.gguf.types import IMATRIX_REQUIRED, TYPES
from apex_gui.core.quality.table import LOOKUP_KINDS, respond, tensor_kind, vec_dot_class

#: The type each kind is lowered to in its probe: low enough to be measured well above
#: noise, high enough that KL divergence is still close to additive across kinds.
PROBE_TYPE = "Q3_K"
#: The high type of the "all high" probe (the activation-quantization floor).
HIGH_PROBE_TYPE = "Q6_K"
#: Floor of the Q8_0 / Q8_1 activation blocks per unit of weight energy, relative to Q8_K's.
Q8_0_FLOOR_SHARE = 0.45
#: Fixed-point rounds of the joint fit (it settles in a handful).
_FIT_ROUNDS = 60


@dataclass(frozen=True)
class Probe:
    """One calibration probe: the groups lowered, to which type."""

    key: str  # "kind:attn_q", "all-low", "all-high"
    type_name: str
    kinds: tuple[str, ...]  # kinds lowered (all of them for the global probes)


def probe_type_for(candidates: Iterable[str]) -> str:
    """PROBE_TYPE when measured, else the measured type with the fewest bits that needs no
    imatrix (the probe's proxy error must come from the same table)."""
    measured = [c for c in candidates if c in TYPES and c not in IMATRIX_REQUIRED]
    if PROBE_TYPE in measured or not measured:
        return PROBE_TYPE
    return min(measured, key=lambda c: (TYPES[c].bits_per_weight, c))


def high_type_for(candidates: Iterable[str]) -> str:
    """HIGH_PROBE_TYPE when measured, else the measured K-quant with the most bits."""
    measured = [c for c in candidates if c in TYPES and c not in IMATRIX_REQUIRED]
    if HIGH_PROBE_TYPE in measured or not measured:
        return HIGH_PROBE_TYPE
    k_quants = [c for c in measured if vec_dot_class(c) == "q8_K"] or measured
    return max(k_quants, key=lambda c: (TYPES[c].bits_per_weight, c))


def plan_probes(kinds: Iterable[str], candidates: Iterable[str]) -> list[Probe]:
    """The probes of a measurement, cheapest information first."""
    chosen = list(candidates)
    low = probe_type_for(chosen)
    ordered = sorted(set(kinds))
    probes = [Probe(f"kind:{kind}", low, (kind,)) for kind in ordered]
    probes.append(Probe("all-low", low, tuple(ordered)))
    high = high_type_for(chosen)
    if high != low:
        probes.append(Probe("all-high", high, tuple(ordered)))
    return probes


@dataclass
class Calibration:
    """The fitted calibration: scales per kind, the floor, the response curve."""

    kind_scale: dict[str, float]
    floor: dict[str, float]
    response: list[tuple[float, float]]


class _Terms:
    """Per kind and probe: summed weighted error and floor energy (by activation class)."""

    def __init__(self, errors: Mapping[str, Mapping[str, float]], energy: Mapping[str, float],
                 effective: Mapping[str, Mapping[str, str]]) -> None:
        self.errors = errors
        self.energy = energy
        self.effective = effective  # probe type -> tensor -> effective type

    def error(self, kind: str, type_name: str) -> float:
        types = self.effective[type_name]
        return sum(self.errors[t].get(types[t], 0.0) for t in types if tensor_kind(t) == kind)

    def energy_by_class(self, kind: str, type_name: str) -> dict[str, float]:
        out: dict[str, float] = {}
        if kind in LOOKUP_KINDS:
            return out
        for tensor, effective in self.effective[type_name].items():
            if tensor_kind(tensor) != kind:
                continue
            vec_dot = vec_dot_class(effective)
            if vec_dot is not None:
                out[vec_dot] = out.get(vec_dot, 0.0) + self.energy.get(tensor, 0.0)
        return out


def _floor_weight(floor_k: float, by_class: Mapping[str, float]) -> float:
    return sum(energy * floor_k * (1.0 if vec_dot == "q8_K" else Q8_0_FLOOR_SHARE)
               for vec_dot, energy in by_class.items())


def _inverse(points: list[tuple[float, float]], measured: float) -> float:
    """The summed damage whose response is ``measured`` (the curve is increasing)."""
    if not points or measured <= 0:
        return measured
    lo, hi = measured * 1e-3, measured * 1e3
    for _ in range(80):
        middle = math.sqrt(lo * hi)
        if respond(points, middle) < measured:
            lo = middle
        else:
            hi = middle
    return math.sqrt(lo * hi)


def fit_calibration(errors: Mapping[str, Mapping[str, float]], energy: Mapping[str, float],
                    effective: Mapping[str, Mapping[str, str]], probes: list[Probe],
                    measured: Mapping[str, float], *, use_floor: bool = True,
                    use_response: bool = True) -> Calibration:
    """Scales, floor and response from the probes' measured mean KLD (``measured`` by key).

    ``effective[type][tensor]`` is the type llama-quantize wrote for that tensor when asked
    for ``type`` (the row-length fallback). Probes that measured nothing above the tool's
    resolution leave their kind at the smallest scale seen. ``use_floor`` / ``use_response``
    off fit the simpler calibrations the benchmark compares against.
    """
    probes = [p for p in probes if (use_floor or p.key != "all-high")
              and (use_response or p.key != "all-low")]
    terms = _Terms(errors, energy, effective)
    per_kind = [p for p in probes if p.key.startswith("kind:")]
    kinds = sorted({p.kinds[0] for p in per_kind})
    low = next((p for p in probes if p.key == "all-low"), None)
    high = next((p for p in probes if p.key == "all-high"), None)
    floor_k = 0.0
    points: list[tuple[float, float]] = []
    scales: dict[str, float] = {}
    for _ in range(_FIT_ROUNDS):
        scales = {}
        for probe in per_kind:
            kind = probe.kinds[0]
            value = measured.get(probe.key, 0.0)
            proxy = terms.error(kind, probe.type_name) + _floor_weight(
                floor_k, terms.energy_by_class(kind, probe.type_name))
            if value > 0 and proxy > 0:
                # A kind alone is measured as it is: the response curve is for many kinds
                # at once (inverting a big kind through it fed the curve its own bend).
                scales[kind] = value / proxy
        smallest = min(scales.values()) if scales else 1.0
        for kind in kinds:
            scales.setdefault(kind, smallest)

        def summed(probe: Probe, floor_value: float) -> float:
            return sum(scales[k] * (terms.error(k, probe.type_name) + _floor_weight(
                floor_value, terms.energy_by_class(k, probe.type_name))) for k in probe.kinds
                if k in scales)

        new_floor = floor_k
        if high is not None and measured.get(high.key, 0.0) > 0:
            base = summed(high, 0.0)
            unit = summed(high, 1.0) - base
            target = _inverse(points, measured[high.key])
            new_floor = max(0.0, (target - base) / unit) if unit > 0 else 0.0
        new_points: list[tuple[float, float]] = []
        # The curve is the identity up to the largest damage measured of one kind alone (a
        # kind's probe is taken as measured) or of every tensor at the high type.
        singles = [summed(high, new_floor)] if high is not None and measured.get(
            high.key, 0.0) > 0 else []
        singles += [scales[p.kinds[0]] * (terms.error(p.kinds[0], p.type_name) + _floor_weight(
            new_floor, terms.energy_by_class(p.kinds[0], p.type_name))) for p in per_kind
            if p.kinds[0] in scales and measured.get(p.key, 0.0) > 0]
        if singles:
            anchor = max(singles)
            new_points.append((anchor, anchor))
        if low is not None and measured.get(low.key, 0.0) > 0:
            total = summed(low, new_floor)
            if not new_points or (total > new_points[-1][0]
                                  and measured[low.key] > new_points[-1][1]):
                new_points.append((total, measured[low.key]))
        settled = abs(new_floor - floor_k) <= 1e-9 * max(new_floor, 1e-30) and len(
            new_points) == len(points) and all(
            abs(a[0] - b[0]) <= 1e-9 * a[0] and abs(a[1] - b[1]) <= 1e-12
            for a, b in zip(new_points, points))
        floor_k, points = new_floor, new_points
        if settled:
            break
    floor = {"q8_K": floor_k, "q8_0": floor_k * Q8_0_FLOOR_SHARE,
             "q8_1": floor_k * Q8_0_FLOOR_SHARE} if floor_k > 0 else {}
    return Calibration(scales, floor, points)
