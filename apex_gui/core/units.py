"""Sizes in bytes: the one parser and the one formatter of every command and widget.

Decimal units (kB, MB, GB, TB: powers of 1000, as the model cards and disk makers count) and
binary units (KiB, MiB, GiB, TiB: powers of 1024, as memory chips come) are kept apart: "24GB"
is 24 x 10^9 bytes, "24GiB" 24 x 2^30. A bare number is refused, because "16" meant 16 GB to
one command and 16 bytes to a dialog.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

kB = 1000
MB = 1000**2
GB = 1000**3
TB = 1000**4
KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

#: Canonical spelling -> bytes.
UNIT_BYTES: dict[str, int] = {"B": 1, "kB": kB, "MB": MB, "GB": GB, "TB": TB,
                              "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB}
_BY_LOWER = {unit.lower(): unit for unit in UNIT_BYTES}
ACCEPTED_UNITS = "kB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB (powers of 1024) or B"
#: Larger than any machine or file: a longer number is a typo (a row of nines overflowed).
MAX_SIZE_BYTES = 1000 * TB

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def canonical_unit(unit: str) -> str:
    """``gib`` -> ``GiB``; ValueError for anything else."""
    found = _BY_LOWER.get(unit.strip().lower())
    if found is None:
        raise ValueError(f"unknown size unit {unit!r}; use {ACCEPTED_UNITS}")
    return found


def _shown(text: str) -> str:
    """The user's text in a message, shortened when it is a screenful of digits."""
    text = text.strip()
    return repr(text if len(text) <= 32 else f"{text[:16]}…{text[-8:]}")


def parse_size(text: str, what: str = "") -> int:
    """Bytes from ``24GB``, ``80 GiB``, ``15.5MB`` or ``512B``: one line naming the problem
    otherwise (no unit, an unknown or ambiguous unit, zero, or more than 1000 TB).

    ``what`` names the field or flag in the message (``--vram``).
    """
    where = f"{what}: " if what else ""
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"{where}give a size with its unit, e.g. 24GB or 24GiB "
                         f"(units: {ACCEPTED_UNITS})")
    match = _SIZE_RE.match(stripped)
    if not match:
        raise ValueError(f"{where}cannot read {_shown(stripped)} as a size; write it like "
                         f"24GB, 80GiB or 15.5MB (units: {ACCEPTED_UNITS})")
    number, unit = match.group(1), match.group(2)
    if not unit:
        raise ValueError(f"{where}{_shown(stripped)} has no unit: write {number}GB "
                         f"({number} x 10^9 bytes) or {number}GiB ({number} x 2^30 bytes); "
                         f"units: {ACCEPTED_UNITS}")
    if unit.lower() not in _BY_LOWER:
        letter = unit[:1].upper()
        hint = (f"write {number}{letter}B (powers of 1000) or {number}{letter}iB (powers of "
                f"1024)" if letter in "KMGT" else f"use {ACCEPTED_UNITS}")
        raise ValueError(f"{where}{_shown(stripped)}: {unit!r} is not a size unit; {hint}")
    try:
        value = Decimal(number) * UNIT_BYTES[_BY_LOWER[unit.lower()]]
    except InvalidOperation:
        raise ValueError(f"{where}cannot read {_shown(stripped)} as a size") from None
    if value > MAX_SIZE_BYTES:
        raise ValueError(f"{where}{_shown(stripped)} is more than "
                         f"{format_size(MAX_SIZE_BYTES)}; check the number")
    nbytes = int(value.to_integral_value())
    if nbytes <= 0:
        raise ValueError(f"{where}{_shown(stripped)} is no memory at all; give more than zero")
    return nbytes


def _figure(value: float) -> str:
    """Three significant digits (two decimals at most below 1): ``3.50``, ``19.4``, ``219``."""
    magnitude = abs(value)
    if magnitude == 0 or not math.isfinite(magnitude):
        return f"{value:.0f}"
    digits = min(4, max(0, 2 - math.floor(math.log10(magnitude))))
    return f"{value:.{digits}f}"


def size_unit(largest_bytes: float | None, binary: bool = False) -> tuple[str, int]:
    """The unit for sizes up to ``largest_bytes`` (``("MB", 10**6)``): one unit for a whole
    table or plot, and a 5 MB demo quant reads 5.15 MB, never 0.00 GB."""
    steps = ("B", "KiB", "MiB", "GiB", "TiB") if binary else ("B", "kB", "MB", "GB", "TB")
    base = 1024 if binary else 1000
    if largest_bytes is None:
        return steps[3], base**3  # nothing to show yet: the unit of real models
    magnitude = abs(largest_bytes)
    index = 0
    while index < len(steps) - 1 and magnitude >= base ** (index + 1):
        index += 1
    return steps[index], base**index


def format_size_figure(nbytes: float | None, unit_bytes: int) -> str:
    """A size as a number of ``unit_bytes`` (see :func:`size_unit`), for a column whose header
    names the unit; ``--`` when unknown."""
    if nbytes is None:
        return "--"
    return str(int(nbytes)) if unit_bytes == 1 else _figure(nbytes / unit_bytes)


def format_size(nbytes: float, *, like: float | None = None, binary: bool = False) -> str:
    """A size a person reads at a glance: ``11.4 MB``, ``19.4 GB``, ``512 B`` (``binary``:
    ``24.0 GiB``). ``like``: take the unit of this size instead (a change is shown in the
    unit of the file it changes)."""
    unit, unit_bytes = size_unit(nbytes if like is None else like, binary)
    return f"{format_size_figure(nbytes, unit_bytes)} {unit}"


def in_unit(nbytes: float, unit: str) -> float:
    """The number of ``unit`` in ``nbytes`` (for machine-readable fields and plot axes)."""
    return nbytes / UNIT_BYTES[canonical_unit(unit)]


def format_params(count: int) -> str:
    """``35.1B``, ``3.0B``, ``850M``."""
    if count >= 1e9:
        return f"{count / 1e9:.1f}B"
    if count >= 1e6:
        return f"{count / 1e6:.0f}M"
    return f"{count / 1e3:.0f}K"
