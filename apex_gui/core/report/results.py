"""Measured results per quant file, gathered from the run history, as one comparison table.

The run store records jobs; people compare *files*. :func:`collect_results` folds every
successful run about one GGUF (its quantize, KL divergence, perplexity, accuracy and speed
runs) into one :class:`QuantResult`, newest result winning, and adds the reference model and
the uniform baselines. Baselines that were only sized (``llama-quantize --dry-run``), not
measured, stay in the table as size-only rows so a plot can still place them.

Export is CSV (lossless: :func:`results_from_csv` reads it back) and Markdown (for people and
model cards). Qt-free.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from apex_gui.core.jobs.run_store import RunRecord, RunStore
from apex_gui.core.plan.profiles import BUILTIN_ORDER, all_profiles
from apex_gui.core.units import format_size_figure, size_unit

__all__ = [
    "ACCURACY_LABELS",
    "Measure",
    "PplComparison",
    "QuantResult",
    "ResultKind",
    "collect_results",
    "compare_ppl",
    "results_from_csv",
    "results_to_csv",
    "results_to_markdown",
]

#: Display names of the accuracy benchmarks the job engine records.
ACCURACY_LABELS = {"hellaswag": "HellaSwag", "winogrande": "Winogrande"}

#: Kinds of rows, in the order a table lists them.
ResultKind = str  # "reference" | "apex" | "baseline" | "other"
_KIND_ORDER = {"reference": 0, "apex": 1, "other": 2, "baseline": 3}


@dataclass(frozen=True)
class Measure:
    """A number with its ± error (None where the tool printed none)."""

    value: float
    error: float | None = None

    def format(self, digits: int = 3, suffix: str = "") -> str:
        """``value ± error``, with at least ``digits`` decimals and enough for the error to
        keep two significant digits; an error of 0 (below the tool's printed precision)
        shows the value alone."""
        error = self.error
        if error is None or math.isnan(error):
            return f"{self.value:.{digits}f}{suffix}"
        if error == 0:
            return f"{self.value:.3g}{suffix}"
        digits = min(max(digits, 1 - math.floor(math.log10(error))), 8)
        return f"{self.value:.{digits}f}{suffix} ± {error:.{digits}f}{suffix}"


@dataclass(frozen=True)
class QuantResult:
    """Everything measured about one model file (or only its size, for a sized baseline)."""

    label: str  # "APEX I-Quality", "F16", "Q4_K_M"
    kind: ResultKind
    path: str = ""  # the file the numbers are about ("" for a size-only baseline)
    profile: str = ""  # profile key for APEX quants ("i-quality")
    size_bytes: int | None = None
    measured: bool = True  # False: size only (a baseline sized by --dry-run)
    ppl: Measure | None = None
    kld_mean: Measure | None = None
    kld_max: float | None = None
    kld_p999: float | None = None
    kld_p99: float | None = None
    kld_median: float | None = None
    same_top_p: Measure | None = None  # percent
    accuracy: dict[str, Measure] = field(default_factory=dict)  # "HellaSwag" -> percent
    speed: dict[str, Measure] = field(default_factory=dict)  # "pp512" / "tg128" -> t/s
    eval_text: str = ""  # the text PPL / KL were measured on (file name)
    eval_context: int | None = None
    imatrix: str = ""  # importance matrix the quant was made with ("" for none)
    run_ids: tuple[int, ...] = ()

    @property
    def file_name(self) -> str:
        return Path(self.path).name if self.path else ""

    def speed_of(self, prefix: str) -> tuple[str, Measure] | None:
        """The first speed test whose name starts with ``prefix`` ("pp" or "tg")."""
        for test, value in self.speed.items():
            if test.startswith(prefix) and "+" not in test:
                return test, value
        return None

    @property
    def has_measurements(self) -> bool:
        return any((self.ppl, self.kld_mean, self.accuracy, self.speed))


# --- collecting from the run store ----------------------------------------------------------


def _about(record: RunRecord) -> str | None:
    """The model file a run's results describe."""
    spec = record.spec
    if record.kind == "quantize":
        return spec.get("output_path")
    return spec.get("model")


def _measure(results: dict[str, Any], key: str, error_key: str | None = None) -> Measure | None:
    value = results.get(key)
    if not isinstance(value, (int, float)) or math.isnan(float(value)):
        return None
    error = results.get(error_key) if error_key else None
    return Measure(float(value), float(error) if isinstance(error, (int, float)) else None)


def _number(results: dict[str, Any], key: str) -> float | None:
    value = results.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _profile_label(key: str) -> str:
    """"APEX I-Quality" for a profile key; other origins ("llama.cpp Q4_K_M") as they are."""
    if not key:
        return ""
    try:
        profiles = all_profiles()
    except Exception:  # noqa: BLE001 - a broken user profile must not hide the results
        profiles = {}
    if key in profiles:
        return f"APEX {profiles[key].label}"
    return key.removeprefix("llama.cpp ").strip()


def _file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


class _Builder:
    """Mutable accumulator for one file's row."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.values: dict[str, Any] = {"accuracy": {}, "speed": {}}
        self.run_ids: list[int] = []
        self.kind: ResultKind = "other"
        self.label = ""
        self.profile = ""

    def add(self, record: RunRecord) -> None:
        r, v = record.results, self.values
        self.run_ids.append(record.id)
        if record.kind == "quantize":
            profile = str(record.spec.get("profile") or "")
            self.label = _profile_label(profile) or Path(self.path).stem
            self.profile = profile
            self.kind = "apex" if self.label.startswith("APEX ") else "other"
            if isinstance(r.get("output_bytes"), int):
                v["size_bytes"] = r["output_bytes"]
            v["imatrix"] = Path(record.spec["imatrix"]).name if record.spec.get("imatrix") else ""
        elif record.kind == "reference-logits":
            self.kind, self.label = "reference", self.label or _reference_label(self.path)
            if (m := _measure(r, "ppl", "ppl_error")) is not None:
                v.setdefault("ppl", m)  # a perplexity run on the same text wins
            self._eval(record)
        elif record.kind == "perplexity":
            if (m := _measure(r, "ppl", "ppl_error")) is not None:
                v["ppl"] = m
            self._eval(record)
        elif record.kind == "kl-divergence":
            if (m := _measure(r, "ppl", "ppl_error")) is not None:
                v.setdefault("ppl", m)
            v["kld_mean"] = _measure(r, "kld_mean", "kld_mean_error")
            v["kld_max"] = _number(r, "kld_max")
            v["kld_p999"] = _number(r, "kld_p999")
            v["kld_p99"] = _number(r, "kld_p99")
            v["kld_median"] = _number(r, "kld_median")
            v["same_top_p"] = _measure(r, "same_top_p", "same_top_p_error")
            self._eval(record)
        elif record.kind in ("hellaswag", "winogrande", "multiple-choice"):
            key = record.kind.replace("-", "_")
            name = ACCURACY_LABELS.get(key)
            if name is None:  # multiple choice: named after its data file (mmlu, arc...)
                name = Path(str(record.spec.get("data", "MC"))).stem
            if (m := _measure(r, key, f"{key}_error")) is not None:
                v["accuracy"][name] = m
        elif record.kind == "bench":
            for test, value in r.items():
                if test.endswith("_stddev") or not isinstance(value, (int, float)):
                    continue
                error = r.get(f"{test}_stddev")
                v["speed"][test] = Measure(float(value), float(error)
                                           if isinstance(error, (int, float)) else None)

    def _eval(self, record: RunRecord) -> None:
        text = record.spec.get("text")
        if text:
            self.values["eval_text"] = Path(text).name
        if isinstance(record.spec.get("context"), int):
            self.values["eval_context"] = record.spec["context"]

    def build(self) -> QuantResult:
        v = self.values
        size = v.get("size_bytes") or _file_size(self.path)
        return QuantResult(
            label=self.label or Path(self.path).stem, kind=self.kind, path=self.path,
            profile=self.profile, size_bytes=size, measured=True, ppl=v.get("ppl"),
            kld_mean=v.get("kld_mean"), kld_max=v.get("kld_max"), kld_p999=v.get("kld_p999"),
            kld_p99=v.get("kld_p99"), kld_median=v.get("kld_median"),
            same_top_p=v.get("same_top_p"), accuracy=dict(v["accuracy"]),
            speed=dict(v["speed"]), eval_text=v.get("eval_text", ""),
            eval_context=v.get("eval_context"), imatrix=v.get("imatrix", ""),
            run_ids=tuple(self.run_ids))


def _reference_label(path: str) -> str:
    stem = Path(path).stem.upper()
    for name in ("BF16", "F16", "F32"):
        if name in stem:
            return name
    return "reference"


def _norm(path: str | os.PathLike[str]) -> str:
    """One spelling per file (runs recorded before paths were stored absolute included)."""
    return os.path.abspath(path) if str(path) else ""


def _family(records: Sequence[RunRecord], reference: str) -> set[str]:
    """Files that belong with ``reference``: itself, quants made from it, and files measured
    against its reference logits (a quant made elsewhere but compared with this model)."""
    members = {reference}
    logits = {_norm(r.spec.get("output_path", "")) for r in records
              if r.kind == "reference-logits" and _norm(r.spec.get("model", "")) == reference}
    for record in records:
        if record.kind == "quantize" and _norm(record.spec.get("source", "")) == reference:
            members.add(_norm(record.spec.get("output_path", "")))
        elif record.kind == "kl-divergence" and \
                _norm(record.spec.get("reference_logits", "")) in logits:
            members.add(_norm(record.spec.get("model", "")))
    return members


def collect_results(store: RunStore, *, reference: str | os.PathLike[str] | None = None,
                    baselines: Iterable[Any] = (), limit: int = 10_000,
                    family_only: bool = False) -> list[QuantResult]:
    """One row per model file with successful runs, plus the reference and size-only baselines.

    ``reference``: the full-precision model (gets a row even without runs, sized from disk).
    ``family_only``: keep only files that belong with ``reference`` (see :func:`_family`), so a
    model card or a comparison is not mixed with runs about other models.
    ``baselines``: :class:`apex_gui.core.jobs.baselines.Baseline` objects (``name``,
    ``total_bytes``); a baseline already measured (a quant with that name) is not repeated.
    """
    builders: dict[str, _Builder] = {}
    records = sorted(store.runs(status="succeeded", limit=limit), key=lambda r: r.id)
    family = _family(records, _norm(reference)) if family_only and reference else None
    for record in records:
        about = _about(record)
        if not about or (family is not None and _norm(about) not in family):
            continue
        key = _norm(about)
        builders.setdefault(key, _Builder(key)).add(record)
    if reference is not None:
        ref_key = _norm(reference)
        builder = builders.setdefault(ref_key, _Builder(ref_key))
        builder.kind = "reference"
        builder.label = builder.label if builder.label and builder.label != Path(ref_key).stem \
            else _reference_label(ref_key)
    # A file evaluated against reference logits is never itself the reference unless a
    # reference-logits run or the caller says so.
    rows = [b.build() for b in builders.values()]
    measured_labels = {row.label.upper() for row in rows}
    for baseline in baselines:
        name = str(getattr(baseline, "name"))
        if name.upper() in measured_labels:
            continue
        rows.append(QuantResult(label=name, kind="baseline", size_bytes=int(baseline.total_bytes),
                                measured=False))
    return sort_results(rows)


def sort_results(rows: Sequence[QuantResult]) -> list[QuantResult]:
    """Reference first, then APEX quants, other quants and baselines, each largest first
    (equal sizes in profile order: Quality before I-Quality)."""
    def profile_rank(row: QuantResult) -> int:
        return BUILTIN_ORDER.index(row.profile) if row.profile in BUILTIN_ORDER else 99

    return sorted(rows, key=lambda r: (_KIND_ORDER.get(r.kind, 9), -(r.size_bytes or 0),
                                       profile_rank(r), r.label))


# --- honest comparison ----------------------------------------------------------------------


@dataclass(frozen=True)
class PplComparison:
    """``a`` minus ``b`` with the errors combined; within noise when |delta| <= the error."""

    delta: float
    combined_error: float | None

    @property
    def within_noise(self) -> bool:
        return self.combined_error is not None and abs(self.delta) <= self.combined_error

    def describe(self, a: str, b: str) -> str:
        if self.combined_error is None:
            return (f"{a} differs from {b} by {self.delta:+.4f} PPL (no error estimate, so "
                    "whether that is noise is unknown)")
        if self.within_noise:
            return (f"{a} and {b} differ by {self.delta:+.4f} PPL, within the measurement error "
                    f"(± {self.combined_error:.4f}): read them as equal, not as one beating "
                    "the other")
        word = "higher" if self.delta > 0 else "lower"
        return (f"{a} has a {word} PPL than {b} by {abs(self.delta):.4f}, beyond the "
                f"measurement error (± {self.combined_error:.4f})")


def compare_ppl(a: Measure, b: Measure) -> PplComparison:
    """Compare two perplexities measured on the same text.

    The errors are combined as independent (root of the sum of squares). Both runs read the
    same tokens, so their errors are correlated and this overstates the noise of the
    difference: a "within noise" verdict is conservative in the honest direction (it never
    lets a tiny difference pass as a win).
    """
    if a.error is None or b.error is None:
        return PplComparison(a.value - b.value, None)
    return PplComparison(a.value - b.value, math.hypot(a.error, b.error))


# --- CSV and Markdown -----------------------------------------------------------------------

_FIXED_COLUMNS = ("label", "kind", "file", "profile", "size_bytes", "measured", "ppl",
                  "ppl_error", "kld_mean", "kld_mean_error", "kld_max", "kld_p999", "kld_p99",
                  "kld_median", "same_top_p", "same_top_p_error", "eval_text", "eval_context",
                  "imatrix", "path")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _accuracy_names(rows: Sequence[QuantResult]) -> list[str]:
    """Every benchmark any row has, in the order first seen."""
    return list(dict.fromkeys(name for row in rows for name in row.accuracy))


def _speed_names(rows: Sequence[QuantResult]) -> list[str]:
    names = dict.fromkeys(name for row in rows for name in row.speed)
    return sorted(names, key=lambda n: (not n.startswith("pp"), n))


def results_to_csv(rows: Sequence[QuantResult]) -> str:
    """Every field of every row; accuracy and speed as ``acc:NAME`` / ``speed:TEST`` columns."""
    accuracy, speed = _accuracy_names(rows), _speed_names(rows)
    header = [*_FIXED_COLUMNS]
    for name in accuracy:
        header += [f"acc:{name}", f"acc:{name}_error"]
    for name in speed:
        header += [f"speed:{name}", f"speed:{name}_stddev"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        cells = [row.label, row.kind, row.file_name, row.profile, row.size_bytes,
                 "yes" if row.measured else "size only",
                 row.ppl.value if row.ppl else None, row.ppl.error if row.ppl else None,
                 row.kld_mean.value if row.kld_mean else None,
                 row.kld_mean.error if row.kld_mean else None,
                 row.kld_max, row.kld_p999, row.kld_p99, row.kld_median,
                 row.same_top_p.value if row.same_top_p else None,
                 row.same_top_p.error if row.same_top_p else None,
                 row.eval_text, row.eval_context, row.imatrix, row.path]
        for name in accuracy:
            m = row.accuracy.get(name)
            cells += [m.value if m else None, m.error if m else None]
        for name in speed:
            m = row.speed.get(name)
            cells += [m.value if m else None, m.error if m else None]
        writer.writerow([_fmt(c) for c in cells])
    return out.getvalue()


def _float(text: str) -> float | None:
    return float(text) if text.strip() else None


def _pair(value: str, error: str) -> Measure | None:
    number = _float(value)
    return Measure(number, _float(error)) if number is not None else None


def results_from_csv(text: str) -> list[QuantResult]:
    """Read rows written by :func:`results_to_csv` (a round trip gives equal rows)."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("label", "kind", "size_bytes") if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"not an APEX Studio results CSV: columns {', '.join(missing)} missing")
    rows: list[QuantResult] = []
    for raw in reader:
        accuracy = {k[4:]: m for k in raw if k.startswith("acc:") and not k.endswith("_error")
                    if (m := _pair(raw[k], raw.get(f"{k}_error", ""))) is not None}
        speed = {k[6:]: m for k in raw if k.startswith("speed:") and not k.endswith("_stddev")
                 if (m := _pair(raw[k], raw.get(f"{k}_stddev", ""))) is not None}
        size = raw.get("size_bytes", "")
        context = raw.get("eval_context", "")
        rows.append(QuantResult(
            label=raw["label"], kind=raw["kind"], path=raw.get("path", ""),
            profile=raw.get("profile", ""), size_bytes=int(size) if size else None,
            measured=raw.get("measured", "yes") == "yes",
            ppl=_pair(raw.get("ppl", ""), raw.get("ppl_error", "")),
            kld_mean=_pair(raw.get("kld_mean", ""), raw.get("kld_mean_error", "")),
            kld_max=_float(raw.get("kld_max", "")), kld_p999=_float(raw.get("kld_p999", "")),
            kld_p99=_float(raw.get("kld_p99", "")), kld_median=_float(raw.get("kld_median", "")),
            same_top_p=_pair(raw.get("same_top_p", ""), raw.get("same_top_p_error", "")),
            accuracy=accuracy, speed=speed, eval_text=raw.get("eval_text", ""),
            eval_context=int(context) if context else None, imatrix=raw.get("imatrix", "")))
    return rows


def _md_measure(m: Measure | None, digits: int, suffix: str = "") -> str:
    return "--" if m is None else m.format(digits, suffix)


def _md_number(value: float | None) -> str:
    return "--" if value is None else f"{value:.4g}"


def results_to_markdown(rows: Sequence[QuantResult], *, with_errors: bool = True) -> str:
    """A Markdown table like the seed cards' "Core Metrics" (size-only rows marked so)."""
    accuracy, speed = _accuracy_names(rows), _speed_names(rows)
    speed = [s for s in speed if "+" not in s]
    unit, unit_bytes = size_unit(max((r.size_bytes for r in rows if r.size_bytes), default=None))
    header = ["Quantization", f"Size ({unit})", "PPL", "KL mean", "KL max", "KL 99.9%",
              *accuracy, *(f"{s} (t/s)" for s in speed)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        label = row.label if row.measured else f"{row.label} (size only)"
        ppl = _md_measure(row.ppl if with_errors or row.ppl is None
                          else replace(row.ppl, error=None), 3)
        kld = _md_measure(row.kld_mean if with_errors or row.kld_mean is None
                          else replace(row.kld_mean, error=None), 4)
        if row.kind == "reference" and row.kld_mean is None:
            kld = "--"
        cells = [label, format_size_figure(row.size_bytes, unit_bytes), ppl, kld, _md_number(row.kld_max),
                 _md_number(row.kld_p999)]
        for name in accuracy:
            m = row.accuracy.get(name)
            cells.append("--" if m is None else f"{m.value:.1f}%")
        for name in speed:
            m = row.speed.get(name)
            cells.append("--" if m is None else f"{m.value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
