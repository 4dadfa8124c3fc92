"""Devices typed by hand ("2 x RTX 3090", "24GB", "unified 128GB") and the common-card table."""

from __future__ import annotations

import re
from dataclasses import replace

from apex_gui.core.fit.hardware import GpuDevice
from apex_gui.core.units import GB, GiB, canonical_unit, format_size, parse_size


def _card(name: str, gib: int, unified: bool = False) -> GpuDevice:
    return _manual_device(0, name, gib * GiB, unified)


def _manual_device(index: int, name: str, total_bytes: int, unified: bool) -> GpuDevice:
    return GpuDevice(
        index=index,
        name=name,
        uuid=None,
        pci_bus_id=None,
        total_bytes=total_bytes,
        free_bytes=total_bytes,
        used_bytes=0,
        driver_version=None,
        cuda_version=None,
        is_mig=False,
        parent_uuid=None,
        unified_memory=unified,
        source="manual",
    )


# Nominal sizes, stored in GiB: memory chips come in powers of two, so a card sold as "24GB"
# has 24 GiB (25.8e9 bytes). Drivers report a little less (an H100 80GB shows ~79.6 GiB) and the
# CUDA context takes more; planners keep their margin. Apple's GPU may use only part of the
# unified pool (its recommended working set), which the planner has to apply.
COMMON_CARDS: tuple[GpuDevice, ...] = (
    _card("RTX 3060 12GB", 12),
    _card("RTX 3090 24GB", 24),
    _card("RTX 3090 Ti 24GB", 24),
    _card("RTX 4060 Ti 8GB", 8),
    _card("RTX 4060 Ti 16GB", 16),
    _card("RTX 4070 12GB", 12),
    _card("RTX 4070 Ti Super 16GB", 16),
    _card("RTX 4080 16GB", 16),
    _card("RTX 4090 24GB", 24),
    _card("RTX 5080 16GB", 16),
    _card("RTX 5090 32GB", 32),
    _card("RTX A6000 48GB", 48),
    _card("RTX 6000 Ada 48GB", 48),
    _card("L40S 48GB", 48),
    _card("A100 40GB", 40),
    _card("A100 80GB", 80),
    _card("H100 80GB", 80),
    _card("H200 141GB", 141),
    _card("RX 7900 XTX 24GB", 24),
    _card("Apple M-series 64GB unified", 64, unified=True),
    _card("Apple M-series 128GB unified", 128, unified=True),
    _card("Apple M-series 192GB unified", 192, unified=True),
    _card("DGX Spark 128GB unified", 128, unified=True),
)

# Other names people use for a listed card (normalised keys, see _card_key).
_CARD_ALIASES: dict[str, str] = {
    "gb10": "DGX Spark 128GB unified",
    "gb10128gb": "DGX Spark 128GB unified",
    "dgxspark": "DGX Spark 128GB unified",
}

# "x" followed by a letter is part of a name ("7900 XTX"), not a count.
_COUNT_RE = re.compile(r"^\s*(\d+)\s*[x×*](?![a-z])\s*", re.IGNORECASE)
# A size ends the item: "24GB", "RTX 3090 20 GiB"; a unit letter alone ("24G") is caught too,
# to be refused with the two units it could mean.
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)\s*$", re.IGNORECASE)
_NUMBER_RE = re.compile(r"^\s*\d+(?:\.\d*)?\s*$")
_UNIFIED_RE = re.compile(r"\bunified(?:\s+memory)?\b", re.IGNORECASE)
_VENDOR_WORDS_RE = re.compile(r"\b(?:nvidia|geforce|amd|radeon|tesla)\b", re.IGNORECASE)
_MAX_COUNT = 64

_ACCEPTED_FORMS = (
    'accepted forms: "24GB", "80GiB", "2 x 24 GB", "RTX 4060 Ti 16 GB", "H100 80GB", '
    '"2x RTX 3090", "128 GB unified"; separate several devices with "," or "+". '
    "GB/MB/TB are decimal (10^9...), GiB/MiB/TiB binary (2^30...)."
)


def _card_key(text: str) -> str:
    """Lookup key: no vendor words, units or punctuation ("GeForce RTX 4060-Ti" -> rtx4060ti)."""
    text = _UNIFIED_RE.sub(" ", _VENDOR_WORDS_RE.sub(" ", text.lower()))
    text = re.sub(r"(\d)\s*gib\b", r"\1gb", text)
    return re.sub(r"[^a-z0-9]", "", text)


def _base_name(card: GpuDevice) -> str:
    """A listed card's name without its size, e.g. "RTX 3090" for "RTX 3090 24GB"."""
    name = _UNIFIED_RE.sub("", card.name).strip()
    return _SIZE_RE.sub("", name).strip()


def find_common_card(name: str) -> GpuDevice | None:
    """The COMMON_CARDS entry called ``name`` (with or without its size), or None.

    Matching ignores case, spaces, punctuation and vendor words (NVIDIA, GeForce, AMD...).
    Raises ValueError when the name fits several sizes (e.g. "A100") and no size is given.
    """
    key = _card_key(name)
    if key in _CARD_ALIASES:
        return next(card for card in COMMON_CARDS if card.name == _CARD_ALIASES[key])
    # "3090" or "7900 XTX 24GB" are common shorthand for the RTX / RX cards.
    keys = {key, f"rtx{key}", f"rx{key}"} if key[:1].isdigit() else {key}
    exact = [card for card in COMMON_CARDS if _card_key(card.name) in keys]
    if exact:
        return exact[0]
    by_base = [card for card in COMMON_CARDS if _card_key(_base_name(card)) in keys]
    if len(by_base) > 1:
        options = ", ".join(card.name for card in by_base)
        raise ValueError(f'"{name.strip()}" comes in several sizes ({options}); add the size.')
    return by_base[0] if by_base else None


def _typed_size_label(number: str, unit: str) -> str:
    return f"{number} {canonical_unit(unit)}"


def _parse_one(item: str, first_index: int) -> list[GpuDevice]:
    text = item.strip()
    unified = bool(_UNIFIED_RE.search(text))
    text = _UNIFIED_RE.sub(" ", text).strip()

    count = 1
    count_match = _COUNT_RE.match(text)
    if count_match:
        count = int(count_match.group(1))
        text = text[count_match.end():].strip()
    if not 1 <= count <= _MAX_COUNT:
        raise ValueError(
            f'"{item.strip()}": the device count must be 1 to {_MAX_COUNT}; {_ACCEPTED_FORMS}'
        )

    size_match = _SIZE_RE.search(text)
    name = text[: size_match.start()].strip() if size_match else text
    name = " ".join(name.split())

    if size_match:
        number, unit = size_match.group(1), size_match.group(2)
        try:
            total = parse_size(size_match.group(0))
        except ValueError as error:
            raise ValueError(f"{error}; {_ACCEPTED_FORMS}") from None
        # A listed card named with its own marketed size ("RTX 4060 Ti 16 GB") is that card,
        # with its real capacity; any other size is taken literally in the stated unit.
        card = find_common_card(f"{name} {number}gb") if name else None
        if card is not None and unit.lower() in ("gb", "gib"):
            template = replace(card, unified_memory=card.unified_memory or unified)
        else:
            label = name or f"Manual {_typed_size_label(number, unit)}"
            if unified and not name:
                label += " unified"
            template = _manual_device(0, label, total, unified)
    elif name:
        card = find_common_card(name)
        if card is None and _NUMBER_RE.match(name):
            try:
                parse_size(name)  # raises: "16" names no card and has no unit
            except ValueError as error:
                raise ValueError(f"{error}; {_ACCEPTED_FORMS}") from None
        if card is None:
            raise ValueError(
                f'Unknown card "{name}": give its memory, e.g. "{name} 24 GB", or use a listed '
                f"card ({', '.join(c.name for c in COMMON_CARDS)}); {_ACCEPTED_FORMS}"
            )
        template = replace(card, unified_memory=card.unified_memory or unified)
    else:
        raise ValueError(f'"{item.strip()}" names no card and no memory size; {_ACCEPTED_FORMS}')

    return [replace(template, index=first_index + n) for n in range(count)]


_DECIMAL_GB_RE = re.compile(r"(?:^|[,;+x×*]\s*)(\d+)\s*GB\s*(?:unified)?\s*(?=$|[,;+])",
                             re.IGNORECASE)


def marketed_size_note(text: str) -> str:
    """A sentence when a size typed in GB is what cards are sold as ("24 GB"): those cards
    have that many GiB, so "24 GB" and "RTX 4090 24GB" are different memories (and may get
    different tiers). Empty otherwise."""
    for match in _DECIMAL_GB_RE.finditer(text):
        number = int(match.group(1))
        cards = [card.name for card in COMMON_CARDS
                 if card.total_bytes == number * GiB and not card.unified_memory]
        if cards:
            listed = ", ".join(cards[:3]) + (", ..." if len(cards) > 3 else "")
            return (f"{number} GB is {format_size(number * GB, binary=True)}; cards sold as "
                    f"\"{number}GB\" ({listed}) have {number} GiB "
                    f"({format_size(number * GiB)}): type {number}GiB or the card's name to "
                    "plan for one.")
    return ""


def parse_device_spec(text: str) -> list[GpuDevice]:
    """Devices described by hand, e.g. "2 x RTX 3090", "H100 80GB", "128 GB unified".

    Forms (case-insensitive): an optional count ``N x``, then a card name and/or a size
    ``<number> <unit>``, and optionally ``unified``. Several devices may be separated by ","
    ";" or "+". Units: ``GB``/``MB``/``TB`` are decimal (1 GB = 10^9 bytes), ``GiB``/``MiB``/
    ``TiB`` binary (1 GiB = 2^30 bytes). A card from :data:`COMMON_CARDS` named with its own
    marketed size, or without a size, gets that card's nominal memory; any other size is taken
    literally. Returned devices have ``source="manual"``, no UUID, ``free == total`` and
    indexes 0..n-1. Raises ValueError saying which forms are accepted.
    """
    items = [part for part in re.split(r"[,;+]", text) if part.strip()]
    if not items:
        raise ValueError(f"No device given; {_ACCEPTED_FORMS}")
    devices: list[GpuDevice] = []
    for item in items:
        devices.extend(_parse_one(item, len(devices)))
    return devices
