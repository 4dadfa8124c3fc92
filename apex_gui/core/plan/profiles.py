"""APEX profiles: which ggml type each tensor role gets in each layer band.

Profiles are data (TOML): the built-in ones ship in ``resources/profiles``, a user's own
live in ``config_dir()/profiles``. A role group lists bands measured from both edges of
the model's ordinary blocks (``depth = 5``: layers 0-4 and L-5..L-1) and a middle type, so
any band layout (the reference 5/10 and 3 widths, the Trinity card's five bands, an
asymmetric one with ``first``/``last``) is expressible for any layer count.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from apex_gui.core.files.inputs import PROFILE_CAP_BYTES, InputFileError, read_bounded_text
from apex_gui.core.gguf.types import FTYPE_DEFAULT_TYPE, UnknownTypeError, ggml_type
from apex_gui.core.settings import config_dir

ROLE_GROUPS = ("routed_experts", "shared_experts", "attention", "dense_ffn")
BUILTIN_ORDER = ("quality", "i-quality", "balanced", "i-balanced", "compact", "i-compact",
                 "mini", "i-mini", "nano", "i-nano", "micro", "i-micro")


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Band:
    """Layers ``i < first`` or ``i >= L - last`` (counted among ordinary blocks)."""

    first: int
    last: int
    type_name: str

    def contains(self, layer: int, n_layer: int) -> bool:
        return layer < self.first or layer >= n_layer - self.last


@dataclass(frozen=True)
class BandedType:
    """The type of one role group by layer position: first matching band, else middle."""

    bands: tuple[Band, ...]
    middle: str

    def type_for(self, layer: int, n_layer: int) -> str:
        for band in self.bands:
            if band.contains(layer, n_layer):
                return band.type_name
        return self.middle

    def band_index(self, layer: int, n_layer: int) -> int:
        """0 for the outermost band, len(bands) for the middle."""
        for index, band in enumerate(self.bands):
            if band.contains(layer, n_layer):
                return index
        return len(self.bands)

    @property
    def edge(self) -> str:
        return self.bands[0].type_name if self.bands else self.middle


@dataclass(frozen=True)
class Profile:
    key: str
    label: str
    description: str
    base_type: str  # llama-quantize's positional TYPE
    uses_imatrix: bool
    token_embedding_type: str
    output_tensor_type: str
    routed_experts: BandedType
    shared_experts: BandedType
    attention: BandedType
    dense_ffn: BandedType | None = None  # None: the shared experts' edge type
    mtp: str = "edge"  # "edge" (one more edge layer) or a type name
    builtin: bool = True
    #: An APEX tier ranked on Hardware & tiers and by ``recommend``; false for variants
    #: offered only as plans (the Trinity card's gradient).
    tier: bool = True
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def default_type(self) -> str:
        """The tensor type llama-quantize's base TYPE stands for."""
        return FTYPE_DEFAULT_TYPE[self.base_type]

    def group(self, name: str) -> BandedType:
        if name == "dense_ffn":
            return self.dense_ffn or BandedType((), self.shared_experts.edge)
        return getattr(self, name)

    @property
    def is_imatrix_variant(self) -> bool:
        return self.key.startswith("i-")


def _type(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ProfileError(f"{where}: expected a ggml type name, got {value!r}")
    try:
        return ggml_type(value).name
    except UnknownTypeError as error:
        raise ProfileError(f"{where}: {error}") from None


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ProfileError(f"{where}: expected true or false, got {value!r}")
    return value


def _banded(data: Any, where: str) -> BandedType:
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected a table with `bands` and `middle`")
    listed = data.get("bands", [])
    if not isinstance(listed, list):
        raise ProfileError(f"{where}.bands: expected a list like [{{ depth = 2, type = \"Q8_0\" "
                           f"}}], got {listed!r}")
    bands = []
    for index, band in enumerate(listed):
        here = f"{where}.bands[{index}]"
        if not isinstance(band, dict):
            raise ProfileError(f"{here}: expected {{ depth = N, type = \"Q6_K\" }}")
        depth = band.get("depth")
        first = band.get("first", depth)
        last = band.get("last", depth)
        if isinstance(first, bool) or isinstance(last, bool) or not isinstance(first, int) \
                or not isinstance(last, int) or first < 0 or last < 0:
            raise ProfileError(f"{here}: give `depth` (both edges) or `first`/`last` as "
                               "non-negative layer counts")
        bands.append(Band(first, last, _type(band.get("type"), here + ".type")))
    return BandedType(tuple(bands), _type(data.get("middle"), where + ".middle"))


GROUP_LABELS = {"routed_experts": "routed experts", "shared_experts": "shared experts",
                "attention": "attention", "dense_ffn": "dense FFN"}


def unreached_types(profile: Profile, n_layer: int) -> list[tuple[str, str]]:
    """(group, type) pairs the profile names but no layer of an ``n_layer``-block model gets.

    Band depths count layers from each end, as the published recipes do (5 edge layers on a
    40-layer model): on a shallow model the bands meet and the middle type, or an inner band,
    is never used, so two profiles that differ only there give the same plan.
    """
    unreached = []
    for group in ROLE_GROUPS:
        if group == "dense_ffn" and profile.dense_ffn is None:
            continue
        banded = profile.group(group)
        used = {banded.type_for(layer, n_layer) for layer in range(n_layer)}
        named = [band.type_name for band in banded.bands] + [banded.middle]
        for type_name in dict.fromkeys(named):
            if type_name not in used:
                unreached.append((group, type_name))
    return unreached


def shallow_model_note(profile: Profile, n_layer: int) -> str:
    """One sentence for the plan panel when the profile's bands meet on this model, else ''."""
    unreached = unreached_types(profile, n_layer)
    if not unreached or n_layer <= 0:
        return ""
    listed = "; ".join(f"{GROUP_LABELS[group]} never get {type_name}"
                       for group, type_name in unreached)
    return (f"On this {n_layer}-layer model the edge bands meet ({listed}): profiles that "
            "differ only there give the same plan.")


def parse_profile(data: dict[str, Any], source: str, builtin: bool = False) -> Profile:
    """Build a :class:`Profile` from TOML data; errors name ``source`` and the field."""
    def need(key: str) -> Any:
        if key not in data:
            raise ProfileError(f"{source}: missing `{key}`")
        return data[key]

    key = str(need("key")).strip().lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", key):
        raise ProfileError(f"{source}: key {key!r} must be lower-case letters, digits, - _ .")
    base = str(need("base_type")).upper()
    if base not in FTYPE_DEFAULT_TYPE:
        raise ProfileError(f"{source}: base_type {base!r} is not a llama-quantize type; use one "
                           f"of {', '.join(FTYPE_DEFAULT_TYPE)}")
    mtp = str(data.get("mtp", "edge"))
    if mtp != "edge":
        mtp = _type(mtp, f"{source}: mtp")
    return Profile(
        key=key,
        label=str(data.get("label", key)),
        description=str(data.get("description", "")),
        base_type=base,
        uses_imatrix=_flag(data.get("uses_imatrix", False), f"{source}: uses_imatrix"),
        token_embedding_type=_type(need("token_embedding_type"), f"{source}: token_embedding_type"),
        output_tensor_type=_type(need("output_tensor_type"), f"{source}: output_tensor_type"),
        routed_experts=_banded(need("routed_experts"), f"{source}: routed_experts"),
        shared_experts=_banded(need("shared_experts"), f"{source}: shared_experts"),
        attention=_banded(need("attention"), f"{source}: attention"),
        dense_ffn=_banded(data["dense_ffn"], f"{source}: dense_ffn") if "dense_ffn" in data else None,
        mtp=mtp,
        builtin=builtin,
        tier=_flag(data.get("tier", True), f"{source}: tier"),
        source=source,
        raw=data,
    )


def load_profile_file(path: str | Path, builtin: bool = False) -> Profile:
    """Read and check one profile file; every problem is a :class:`ProfileError` naming the
    file (and the key): a FIFO, a huge file, non-UTF-8 bytes and wrong value types included."""
    file_path = Path(path)
    try:
        text = read_bounded_text(file_path, "", PROFILE_CAP_BYTES)
    except InputFileError as error:
        raise ProfileError(str(error)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(f"{file_path}: not valid TOML ({error})") from None
    try:
        return parse_profile(data, str(file_path), builtin)
    except ProfileError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as error:
        # A value of an unexpected type the checks above did not foresee: still one line.
        raise ProfileError(f"{file_path}: a value has the wrong type ({error})") from None


def builtin_profiles() -> dict[str, Profile]:
    """Built-in profiles, highest quality first, then any other bundled layouts."""
    # A copy: callers such as all_profiles() add to the dict they get.
    return dict(_bundled_profiles())


@functools.cache
def _bundled_profiles() -> dict[str, Profile]:
    # Package data cannot change while the app runs, and the window asks for the profiles
    # on every plan edit (the Run tab's list): parse the TOML files once.
    folder = resources.files("apex_gui.resources") / "profiles"
    found: dict[str, Profile] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text(encoding="utf-8"))
            profile = parse_profile(data, f"built-in profile {entry.name}", builtin=True)
            found[profile.key] = profile
    ordered = {key: found.pop(key) for key in BUILTIN_ORDER if key in found}
    ordered.update(sorted(found.items()))
    return ordered


def user_profiles_dir() -> Path:
    return config_dir() / "profiles"


def user_profiles() -> tuple[dict[str, Profile], list[str]]:
    """The user's profiles and one message per file that could not be read."""
    profiles: dict[str, Profile] = {}
    problems: list[str] = []
    folder = user_profiles_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.toml")):
            try:
                profile = load_profile_file(path)
            except ProfileError as error:
                problems.append(str(error))
                continue
            profiles[profile.key] = profile
    return profiles, problems


def all_profiles() -> dict[str, Profile]:
    """Built-in profiles, then the user's (a user profile may not shadow a built-in key)."""
    profiles = builtin_profiles()
    for key, profile in user_profiles()[0].items():
        profiles.setdefault(key, profile)
    return profiles


def get_profile(name: str) -> Profile:
    """A profile by key or label, case-insensitively (``I-Quality``, ``i-quality``)."""
    wanted = name.strip().lower().replace(" ", "-")
    profiles = all_profiles()
    if wanted in profiles:
        return profiles[wanted]
    for profile in profiles.values():
        if profile.label.lower().replace(" ", "-") == wanted:
            return profile
    skipped = user_profiles()[1]
    note = f" (skipped, unreadable: {'; '.join(skipped)})" if skipped else ""
    raise ValueError(f"unknown profile {name!r}; known: {', '.join(profiles)}{note}")


def profile_to_toml(profile: Profile) -> str:
    """Serialise a profile (e.g. an edited copy) in the same TOML form the app reads."""
    # tomli_w escapes what a person types (quotes, backslashes, newlines): a label such as
    # `My "fast" mix` reads back as written.
    def banded(value: BandedType) -> dict[str, Any]:
        bands = [{"depth": b.first, "type": b.type_name} if b.first == b.last
                 else {"first": b.first, "last": b.last, "type": b.type_name} for b in value.bands]
        return {"bands": bands, "middle": value.middle}

    document: dict[str, Any] = {
        "key": profile.key, "label": profile.label, "description": profile.description,
        "base_type": profile.base_type, "uses_imatrix": profile.uses_imatrix,
        "token_embedding_type": profile.token_embedding_type,
        "output_tensor_type": profile.output_tensor_type, "mtp": profile.mtp,
    }
    for group in ("routed_experts", "shared_experts", "attention"):
        document[group] = banded(getattr(profile, group))
    if profile.dense_ffn is not None:
        document["dense_ffn"] = banded(profile.dense_ffn)
    return tomli_w.dumps(document)


def save_user_profile(profile: Profile) -> Path:
    """Write a user profile to the config folder; refuses to shadow a built-in key."""
    if profile.key in builtin_profiles():
        raise ProfileError(f"{profile.key!r} is a built-in profile; save under another key")
    folder = user_profiles_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{profile.key}.toml"
    temporary = path.with_suffix(".toml.tmp")
    temporary.write_text(profile_to_toml(profile), encoding="utf-8")
    temporary.replace(path)
    return path


_PRECISION_SUFFIXES = ("-f16", "-bf16", "-f32", ".f16", ".bf16", ".f32")


def quant_file_name(source: str | Path, label: str) -> str:
    """``<source stem>-APEX-<Label>.gguf``, the published naming (``Model-F16.gguf`` with
    I-Quality -> ``Model-APEX-I-Quality.gguf``)."""
    stem = Path(source).name.removesuffix(".gguf")
    # A quant's own name already says "-APEX-<Label>": another plan of it replaces that
    # label instead of adding a second ("...-APEX-I-Balanced-APEX-Balanced.gguf").
    stem = re.sub(r"-APEX-[A-Za-z0-9.+-]+$", "", stem)
    for suffix in _PRECISION_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}-APEX-{label.replace(' ', '-')}.gguf"
