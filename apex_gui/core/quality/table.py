"""The sensitivity table: what each candidate type does to each tensor, as a publishable file.

A table holds, per quantizable tensor, the weighted squared error of each measured type (see
:mod:`apex_gui.core.quality.readback`), and the calibration that turns errors into mean KL
divergence (:mod:`apex_gui.core.quality.calibration`):

    damage(tensor, type) = scale[kind] * (error[tensor][type] + floor[vec_dot(type)] * energy[tensor])

``scale`` is KL divergence per unit error for the tensor's kind. The floor term is the noise
llama.cpp's CPU kernels add by quantizing the *activations* a quantized weight is multiplied
with (to Q8_K for K-quants and IQ types, Q8_0 / Q8_1 for the legacy types, nothing for F16):
it does not shrink as the weight type grows, and it is why a uniform Q8_0 quant is never
free. ``energy`` is the tensor's summed squared weights, what that noise is multiplied by.
The sum over a plan's tensors is the predicted mean KLD; ``response`` maps it onto what
whole-model probes measured (errors of different tensors do not add up exactly).

The file carries the source model's content fingerprint; loading it for another model is
refused with one line. Every number is checked on load: a table is input from strangers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apex_gui.core.files.inputs import read_bounded_bytes
from apex_gui.core.gguf.model import ModelInfo
from apex_gui.core.gguf.roles import split_name
from apex_gui.core.gguf.types import TYPES
from apex_gui.core.units import MiB

#: Bump when the file format or the measurement changes: older files are refused by name.
SENSITIVITY_VERSION = 2
#: A 400B model's table is a few hundred KB; anything this big is not a table.
TABLE_CAP_BYTES = 32 * MiB
#: Bytes hashed from each sample point of the content fingerprint.
_FINGERPRINT_SAMPLE = 1 << 16
#: What llama.cpp's CPU kernels quantize the activations to for each weight type.
_VEC_DOT_Q8_0 = frozenset({"Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "MXFP4"})
_VEC_DOT_Q8_1 = frozenset({"Q4_1", "Q5_1"})
#: Tensors that are looked up rather than multiplied: no activation is quantized for them.
LOOKUP_KINDS = frozenset({"token_embd", "per_layer_token_embd"})


class SensitivityFileError(ValueError):
    """A sensitivity table that cannot be used; one line naming the file and the fix."""


def tensor_kind(name: str) -> str:
    """The calibration class of a tensor: its name without layer index and suffix."""
    return split_name(name)[1]


def vec_dot_class(type_name: str) -> str | None:
    """What the activations are quantized to when multiplied with ``type_name`` weights
    (None: not quantized, F16 / BF16 / F32 weights)."""
    kind = TYPES.get(type_name)
    if kind is None or not kind.quantized:
        return None
    if type_name in _VEC_DOT_Q8_0:
        return "q8_0"
    if type_name in _VEC_DOT_Q8_1:
        return "q8_1"
    return "q8_K"


def model_fingerprint(model: ModelInfo) -> str:
    """Content fingerprint: each shard's size, its first MiB (the header) and 64 evenly
    spaced 64 KiB samples of its data. Reads a few MiB even of a 400 GB model; a copy or a
    re-download of the same file has the same fingerprint."""
    digest = hashlib.sha256()
    for path in model.paths:
        size = path.stat().st_size
        digest.update(str(size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            for index in range(64):
                handle.seek(size * index // 64)
                digest.update(handle.read(_FINGERPRINT_SAMPLE))
    return digest.hexdigest()


@dataclass(frozen=True)
class Prediction:
    """A plan's predicted mean KLD and which of its types were estimated, not measured."""

    kld: float
    #: effective type -> (tensors at it, the measured types it was estimated between)
    estimated: dict[str, tuple[int, str]] = field(default_factory=dict)

    def note(self) -> str:
        """"" when every type was measured, else one line saying what was estimated how."""
        if not self.estimated:
            return ""
        parts = [f"{kind} on {count} tensor{'s' if count != 1 else ''} {how}"
                 for kind, (count, how) in sorted(self.estimated.items())]
        return "estimated: " + "; ".join(parts)


@dataclass
class SensitivityTable:
    """Weighted squared error per (tensor, effective type) and its calibration to KLD."""

    model: str
    fingerprint: str
    imatrix: str | None
    candidates: tuple[str, ...]
    source_types: dict[str, str]
    errors: dict[str, dict[str, float]]  # tensor -> effective type -> weighted squared error
    kind_scale: dict[str, float] = field(default_factory=dict)  # kind -> KLD per unit error
    probes: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    energy: dict[str, float] = field(default_factory=dict)  # tensor -> sum of squared weights
    floor: dict[str, float] = field(default_factory=dict)  # vec_dot class -> noise per energy
    #: (summed damage, measured KLD) of whole-model probes, increasing: the response curve.
    response: list[tuple[float, float]] = field(default_factory=list)
    #: How it was measured (text, context, chunks, sample share, tools): for the reader.
    settings: dict[str, Any] = field(default_factory=dict)

    # --- damage ------------------------------------------------------------------------

    def _floor(self, tensor: str, effective: str) -> float:
        if not self.floor or tensor_kind(tensor) in LOOKUP_KINDS:
            return 0.0
        vec_dot = vec_dot_class(effective)
        if vec_dot is None:
            return 0.0
        return self.floor.get(vec_dot, 0.0) * self.energy.get(tensor, 0.0)

    def damage(self, tensor: str, effective: str) -> float:
        """Damage (summed scale) this tensor adds at this (effective) type; KeyError when
        that type was not measured for it."""
        if effective == self.source_types.get(tensor):
            return 0.0
        try:
            error = self.errors[tensor][effective]
        except KeyError:
            raise KeyError(f"no measured sensitivity for {tensor} at {effective}; measure "
                           f"with that type among the candidates") from None
        return self.kind_scale.get(tensor_kind(tensor), 0.0) * (
            error + self._floor(tensor, effective))

    def known(self, tensor: str, effective: str) -> bool:
        return effective == self.source_types.get(tensor) or effective in self.errors.get(tensor, {})

    def estimated_error(self, tensor: str, effective: str) -> tuple[float, str]:
        """An unmeasured type's error from the tensor's measured ones: log-linear in bits
        per weight between the nearest measured types below and above (or along the last
        two at either end), and how it was done."""
        measured = sorted((TYPES[t].bits_per_weight, math.log(max(e, 1e-30)), t)
                          for t, e in self.errors.get(tensor, {}).items() if t in TYPES)
        if effective not in TYPES or not measured:
            raise KeyError(f"no measured type to estimate {effective} for {tensor} from")
        bits = TYPES[effective].bits_per_weight
        if len(measured) == 1:
            return math.exp(measured[0][1]), f"taken from {measured[0][2]}"
        below = [m for m in measured if m[0] <= bits]
        above = [m for m in measured if m[0] > bits]
        if below and above:
            a, b = below[-1], above[0]
            how = f"between {a[2]} and {b[2]}"
        elif above:
            a, b = above[0], above[1]
            how = f"extrapolated from {a[2]} and {b[2]}"
        else:
            a, b = below[-2], below[-1]
            how = f"extrapolated from {a[2]} and {b[2]}"
        if b[0] == a[0]:
            return math.exp(a[1]), how
        value = a[1] + (b[1] - a[1]) * (bits - a[0]) / (b[0] - a[0])
        return math.exp(value), how

    def damage_or_estimate(self, tensor: str, effective: str) -> tuple[float, str]:
        """Damage at this type, and "" when measured or how it was estimated."""
        if self.known(tensor, effective):
            return self.damage(tensor, effective), ""
        error, how = self.estimated_error(tensor, effective)
        return self.kind_scale.get(tensor_kind(tensor), 0.0) * (
            error + self._floor(tensor, effective)), how

    def respond(self, summed: float) -> float:
        """Predicted mean KLD for a summed damage (see :func:`respond`)."""
        return respond(self.response, summed)

    def predict(self, types: dict[str, str]) -> Prediction:
        """Predicted mean KLD for these effective types (tensors left out stay as stored);
        unmeasured types are estimated and named in the result."""
        total = 0.0
        estimated: dict[str, tuple[int, set[str]]] = {}
        for name in self.errors:
            effective = types.get(name, self.source_types.get(name, ""))
            value, how = self.damage_or_estimate(name, effective)
            total += value
            if how:
                count, hows = estimated.get(effective, (0, set()))
                estimated[effective] = (count + 1, hows | {how})
        return Prediction(self.respond(total), {
            kind: (count, "/".join(sorted(hows))) for kind, (count, hows) in estimated.items()})

    def predict_kld(self, plan: Any) -> float:
        """Predicted mean KL divergence of a plan (KeyError when it uses an unmeasured type:
        :meth:`predict` estimates those instead)."""
        total = sum(self.damage(name, plan.effective_type(name)) for name in self.errors)
        return self.respond(total)

    def calibration_basis(self) -> str:
        """What the predictions hold for. Mean KL divergence depends on the text and the
        context (on a model trained on 128-token windows, probes at 512 read 3-7x more), so
        a prediction is for text like the probes' at their context."""
        context = self.settings.get("context")
        text = str(self.settings.get("text") or "")
        kind = ("the bundled mix of chat, code, reasoning and tool calls"
                if text.startswith("sensitivity-probe-") else text or "the probe text")
        at = f" at a context of {context} tokens" if isinstance(context, int) else ""
        return f"for text like {kind}{at}"

    def predict_plan(self, plan: Any) -> Prediction:
        return self.predict({name: plan.effective_type(name) for name in self.errors})

    # --- files -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"version": SENSITIVITY_VERSION, "model": self.model,
                "fingerprint": self.fingerprint, "imatrix": self.imatrix,
                "candidates": list(self.candidates), "source_types": self.source_types,
                "errors": self.errors, "kind_scale": self.kind_scale, "energy": self.energy,
                "floor": self.floor, "response": [list(p) for p in self.response],
                "probes": self.probes, "timings": self.timings, "settings": self.settings}

    @classmethod
    def from_json(cls, data: Any, source: str = "sensitivity file") -> SensitivityTable:
        """A table from parsed JSON; every field checked (SensitivityFileError, one line)."""
        return _parse_table(data, source)

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n",
                           encoding="utf-8")
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str],
             model: ModelInfo | None = None) -> SensitivityTable:
        """Read and check a table; with ``model``, refuse one measured on another model."""
        table = _parse_table(_read_json(Path(path)), str(path))
        if model is not None:
            check_table_matches(table, model, str(path))
        return table


def respond(points: list[tuple[float, float]], summed: float) -> float:
    """The response curve at ``summed``: log-log linear between its points, proportional
    beyond them (the identity with no points)."""
    usable = [(s, m) for s, m in points if s > 0 and m > 0]
    if summed <= 0 or not usable:
        return max(summed, 0.0)
    if summed <= usable[0][0]:
        return summed * usable[0][1] / usable[0][0]
    if summed >= usable[-1][0]:
        return summed * usable[-1][1] / usable[-1][0]
    for (s0, m0), (s1, m1) in zip(usable, usable[1:]):
        if s0 <= summed <= s1:
            t = (math.log(summed) - math.log(s0)) / (math.log(s1) - math.log(s0))
            return math.exp(math.log(m0) + t * (math.log(m1) - math.log(m0)))
    return summed


def check_table_matches(table: SensitivityTable, model: ModelInfo, source: str) -> None:
    """SensitivityFileError unless ``table`` was measured on ``model`` (same content)."""
    if table.fingerprint != model_fingerprint(model):
        raise SensitivityFileError(
            f"{source} was measured on another model ({table.model}), not on "
            f"{model.path.name}: measure this one with apex-studio sensitivity "
            f"{model.path.name} -o {model.path.stem}.sensitivity.json")
    # The fingerprint says whose it was; the tensors must still be that model's (a table
    # edited by hand, or another model's errors under this model's fingerprint).
    names = {tensor.name for tensor in model.tensors}
    foreign = sorted(set(table.errors) - names)
    if foreign:
        raise SensitivityFileError(
            f"{source} names {len(foreign)} tensor{'s' if len(foreign) != 1 else ''} "
            f"{model.path.name} does not have ({foreign[0]}{', ...' if len(foreign) > 1 else ''}):"
            f" it was edited or written for another model; measure this one with apex-studio "
            f"sensitivity {model.path.name} -o {model.path.stem}.sensitivity.json")


def _read_json(path: Path) -> Any:
    data = read_bounded_bytes(path, "sensitivity table", TABLE_CAP_BYTES)
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:
        raise SensitivityFileError(f"{path} is not a sensitivity table (it nests deeper than "
                                   "any table does); write one with apex-studio sensitivity "
                                   "MODEL -o FILE") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
        raise SensitivityFileError(f"{path} is not a sensitivity table ({error}); write one "
                                   "with apex-studio sensitivity MODEL -o FILE") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a table can hold")


def _number(value: Any, where: str, source: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SensitivityFileError(f"{source}: {where} is {json.dumps(value)[:40]}, not a "
                                   "number; measure the table again")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise SensitivityFileError(f"{source}: {where} is {number}, which no measurement "
                                   "gives (a damage is finite and not negative); measure "
                                   "the table again")
    return number


def _mapping(value: Any, where: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SensitivityFileError(f"{source}: {where} is not a JSON object; this is not a "
                                   "sensitivity table (write one with apex-studio "
                                   "sensitivity MODEL -o FILE)")
    return value


def _text(value: Any, where: str, source: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise SensitivityFileError(f"{source}: {where} is not text; measure the table again")
    return value


def _parse_table(data: Any, source: str) -> SensitivityTable:
    top = _mapping(data, "the file", source)
    if top.get("version") != SENSITIVITY_VERSION:
        raise SensitivityFileError(
            f"{source}: sensitivity format {json.dumps(top.get('version'))[:20]}, this version "
            f"reads {SENSITIVITY_VERSION}; measure again (apex-studio sensitivity MODEL -o FILE)")
    candidates = top.get("candidates")
    if not isinstance(candidates, list) or not all(isinstance(c, str) and c in TYPES
                                                   for c in candidates):
        raise SensitivityFileError(f"{source}: candidates must list ggml type names; measure "
                                   "the table again")
    source_types = {_text(k, "a tensor name", source) or "": _type_name(v, k, source)
                    for k, v in _mapping(top.get("source_types"), "source_types", source).items()}
    errors: dict[str, dict[str, float]] = {}
    for name, by_type in _mapping(top.get("errors"), "errors", source).items():
        errors[name] = {_type_name(t, name, source): _number(v, f"the error of {name} at {t}",
                                                            source)
                        for t, v in _mapping(by_type, f"errors of {name}", source).items()}
    if not errors:
        raise SensitivityFileError(f"{source} measures no tensor; measure the table again")
    response = top.get("response", [])
    if not isinstance(response, list) or not all(
            isinstance(p, list) and len(p) == 2 for p in response):
        raise SensitivityFileError(f"{source}: response must be a list of [damage, KLD] "
                                   "pairs; measure the table again")
    points = [(_number(p[0], "a response point", source),
               _number(p[1], "a response point", source)) for p in response]
    probes = top.get("probes", [])
    timings = top.get("timings", {})
    settings = top.get("settings", {})
    if not isinstance(probes, list) or not all(isinstance(p, dict) for p in probes):
        raise SensitivityFileError(f"{source}: probes must be a list of objects")
    return SensitivityTable(
        model=_text(top.get("model"), "model", source) or "",
        fingerprint=_text(top.get("fingerprint"), "fingerprint", source) or "",
        imatrix=_text(top.get("imatrix"), "imatrix", source, optional=True),
        candidates=tuple(candidates), source_types=source_types, errors=errors,
        kind_scale={k: _number(v, f"the scale of {k}", source)
                    for k, v in _mapping(top.get("kind_scale", {}), "kind_scale", source).items()},
        energy={k: _number(v, f"the energy of {k}", source)
                for k, v in _mapping(top.get("energy", {}), "energy", source).items()},
        floor={k: _number(v, f"the floor of {k}", source)
               for k, v in _mapping(top.get("floor", {}), "floor", source).items()},
        response=sorted(points), probes=list(probes),
        timings={k: _number(v, f"timing {k}", source)
                 for k, v in _mapping(timings, "timings", source).items()},
        settings=dict(_mapping(settings, "settings", source)))


def _type_name(value: Any, tensor: str, source: str) -> str:
    if not isinstance(value, str) or value not in TYPES:
        raise SensitivityFileError(f"{source}: {json.dumps(value)[:20]} for {tensor} is not a "
                                   "ggml type; measure the table again")
    return value
