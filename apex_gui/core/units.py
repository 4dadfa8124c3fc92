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


def format_gb_figure(size_bytes: int | None) -> str:
    """Decimal GB as the model cards quote sizes; small test files get more digits."""
    return format_size_figure(size_bytes, 1e9)


def size_unit(largest_bytes: float | None) -> tuple[str, float]:
    """("GB", 1e9) where the largest file is a gigabyte or more, else ("MB", 1e6): one unit
    for a whole table or plot, and a 5 MB demo quant reads 5.15 rather than 0.0052."""
    if largest_bytes is not None and abs(largest_bytes) < GB:
        return "MB", 1e6
    return "GB", 1e9


def format_size_figure(size_bytes: int | None, unit_bytes: float = 1e9) -> str:
    """A size in ``unit_bytes`` (see :func:`size_unit`) with the digits it needs."""
    if size_bytes is None:
        return "--"
    value = size_bytes / unit_bytes
    if value >= 10:
        return f"{value:.1f}"
    if value >= 0.1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def format_gb_or_mb(nbytes: float) -> str:
    """Decimal GB as the cards quote sizes; MB below 1 GB (small and synthetic models)."""
    if abs(nbytes) < 1e9:
        return f"{nbytes / 1e6:.0f} MB"
    return f"{nbytes / 1e9:.1f} GB"


def readable_size(nbytes: int, digits: int = 2, like: int | None = None) -> str:
    """Decimal GB (``digits`` decimals), or MB below 1 GB: on a small (demo) model
    "0.02 GB" would hide every edit's effect. ``like``: pick the unit by this size instead
    (a change is shown in the unit of the file it changes)."""
    if abs(nbytes if like is None else like) >= GB:
        return format_gb(nbytes, digits)
    return f"{nbytes / 1e6:.2f} MB"
