"""Byte and count formatting shared by the CLI, reports and the window."""

from __future__ import annotations

import re

GB = 1000**3
GiB = 1024**3
MiB = 1024**2


def format_gb(nbytes: int | float, digits: int = 2) -> str:
    """Decimal gigabytes, as the model cards quote sizes (``21.3 GB``)."""
    return f"{nbytes / GB:.{digits}f} GB"


def format_gib(nbytes: int | float, digits: int = 2) -> str:
    return f"{nbytes / GiB:.{digits}f} GiB"


def format_size(nbytes: int | float) -> str:
    """A size a person reads at a glance: B, KiB, MiB or GiB."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_params(count: int) -> str:
    """``35.1B``, ``3.0B``, ``850M``."""
    if count >= 1e9:
        return f"{count / 1e9:.1f}B"
    if count >= 1e6:
        return f"{count / 1e6:.0f}M"
    return f"{count / 1e3:.0f}K"


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(b|kb|kib|mb|mib|gb|gib|tb|tib)?\s*$", re.IGNORECASE)
_FACTORS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": MiB, "gb": GB, "gib": GiB,
            "tb": 1000**4, "tib": 1024**4}


def parse_size(text: str) -> int:
    """``24GB`` -> 24e9, ``80GiB`` -> 80*2^30; a bare number means GB."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 24GB, 80GiB or 16")
    unit = (match.group(2) or "gb").lower()
    return int(float(match.group(1)) * _FACTORS[unit])
