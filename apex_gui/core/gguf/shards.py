"""Split models: the shards of one model, found from any one of them and checked to belong
together (``NAME-0000i-of-0000N.gguf``, as llama-gguf-split and llama-quantize write them)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from apex_gui.core.gguf.reader import GGUFError, GGUFHeader, printable

__all__ = ["check_shards_belong_together", "shard_paths"]

_SHARD_NAME = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def shard_paths(path: str | os.PathLike[str]) -> list[Path]:
    """All shards of a split model given any one of them, in order; ``[path]`` if not split."""
    file_path = Path(path)
    match = _SHARD_NAME.match(file_path.name)
    if not match:
        return [file_path]
    count = int(match.group("count"))
    number = int(match.group("no"))
    if count < 1 or not 1 <= number <= count:
        raise GGUFError(file_path, f"the name says shard {number} of {count}, which cannot be; "
                                   "rename the shards as NAME-0000i-of-0000N.gguf")
    stem = match.group("stem")
    shards = [file_path.with_name(f"{stem}-{index:05d}-of-{count:05d}.gguf")
              for index in range(1, count + 1)]
    missing = [s.name for s in shards if not s.exists()]
    if missing:
        raise GGUFError(file_path, f"split model is missing shard(s) {', '.join(missing)}; "
                                   "put all shards in the same folder")
    return shards


def check_shards_belong_together(shards: list[Path], headers: list[GGUFHeader]) -> None:
    """Every shard is the one its name says, of one split: a :class:`GGUFError` naming the
    shard that is not.

    llama-gguf-split and llama-quantize write ``split.no`` (0-based), ``split.count`` and
    ``split.tensors.count`` (the whole model's) into each shard; llama.cpp checks the number
    and the total when it loads. A shard of another model put in the folder under the right
    name otherwise opens as one model with layers missing.
    """
    count = len(headers)
    fix = ("put the shards of one model together: this one belongs to another model or "
           "another split of it")
    for index, (shard, header) in enumerate(zip(shards, headers)):
        number, declared = header.get("split.no"), header.get("split.count")
        if number is None and declared is None:
            raise GGUFError(shard, f"has no split.no / split.count keys: it is not a shard of "
                                   f"a split model, but its name says shard {index + 1} of "
                                   f"{count}; {fix}")
        if number != index or declared != count:
            raise GGUFError(shard, f"says it is shard {_shown_number(number)} of "
                                   f"{printable(repr(declared), 16)} (split.no counts from 0), "
                                   f"its name says {index + 1} of {count}; {fix}")
    totals = [header.get("split.tensors.count") for header in headers]
    # The total most shards agree on (the first shard's on a tie) is the split's own.
    agreed = max(totals, key=lambda total: (totals.count(total), total == totals[0]))
    for shard, total in zip(shards, totals):
        if total != agreed:
            raise GGUFError(shard, f"belongs to a split of {printable(repr(total), 16)} tensors, "
                                   f"the other shards to one of {agreed}; {fix}")
    found = sum(len(header.tensors) for header in headers)
    seen: dict[str, int] = {}
    for index, header in enumerate(headers):
        for entry in header.tensors:
            if entry.name in seen:
                raise GGUFError(shards[index], f"holds tensor {printable(entry.name)}, which "
                                               f"{shards[seen[entry.name]].name} holds too; {fix}")
            seen[entry.name] = index
    if isinstance(agreed, int) and found != agreed:
        raise GGUFError(shards[0], f"the split declares {agreed} tensors (split.tensors.count) "
                                   f"but its {count} shards hold {found}; one of them belongs "
                                   "to another model or another split of it: download the "
                                   "shards again")


def _shown_number(number: Any) -> str:
    return str(number + 1) if isinstance(number, int) and not isinstance(number, bool) \
        else printable(repr(number), 16)
