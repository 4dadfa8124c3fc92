"""Fuzzing the GGUF header reader: mutated real headers fail only with ``GGUFError``.

Bases are real headers: a tiny synthetic model written by the ``gguf`` package and small
shape twins (qwen35moe with linear attention and an MTP block, lfm2moe with a per-layer
KV-head array, mistral4 with MLA) written by :mod:`apex_gui.core.fixtures.twins`. Every case
mutates one header (byte and bit flips, truncation at field boundaries and in the data
region, counts and lengths set to huge values, dimension counts 0/5, unknown type ids,
inserted and deleted bytes) and then runs everything ``apex-studio inspect`` runs on it.

The test runs a few thousand cases with a fixed seed. For a long campaign:

    .venv/bin/python tests/test_fuzz_reader.py --cases 50000 [--seed N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import resource
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

if __name__ == "__main__":  # script mode: make the package importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apex_gui.cli import main as cli_main
from apex_gui.commands.inspect import layer_rows, render_text
from apex_gui.core.gguf.summary import summary_dict
from apex_gui.core.gguf.reader import GGUFError, LazyArray, read_header
from apex_gui.core.gguf.model import open_model
from apex_gui.core.gguf.types import TYPES_BY_ID
from apex_gui.core.fixtures.twin_layouts import TWIN_LAYOUTS
from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.fixtures.synthetic import TINY_QWEN2MOE, write_synthetic_model

TEST_CASES = 3000
TEST_SEED = 20240611
# Cases whose outcome is also checked through the real CLI entry point (it is slower).
CLI_EVERY = 25

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_U64_KINDS = ("n_tensors", "n_kv", "strlen", "arr_count", "dim", "toffset")
_U32_KINDS = ("version", "vtype", "itemtype", "ndims", "ttype")
# Value types of each width: retyping a value in place keeps the header walkable.
_TYPES_OF_WIDTH = {1: (0, 1, 7), 2: (2, 3), 4: (4, 5, 6), 8: (10, 11, 12)}


@dataclass(frozen=True)
class Base:
    """One real header to mutate: its bytes up to the data section, the file size, its fields."""

    name: str
    header: bytes
    size: int
    fields: dict[str, list[tuple[int, int]]]  # kind -> [(offset, width)]


def field_map(data: bytes) -> dict[str, list[tuple[int, int]]]:
    """Offsets of every header field by kind; an independent walk of the GGUF layout."""
    fields: dict[str, list[tuple[int, int]]] = {}

    def add(kind: str, offset: int, width: int) -> None:
        fields.setdefault(kind, []).append((offset, width))

    add("magic", 0, 4)
    add("version", 4, 4)
    add("n_tensors", 8, 8)
    add("n_kv", 16, 8)
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def string(kind: str = "strlen", record: bool = True) -> int:
        nonlocal pos
        if record:
            add(kind, pos, 8)
        (length,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + length
        return length

    def value(value_type: int) -> None:
        nonlocal pos
        if value_type in _SCALAR_SIZES:
            pos += _SCALAR_SIZES[value_type]
        elif value_type == 8:
            string()
        elif value_type == 9:
            add("itemtype", pos, 4)
            (item_type,) = struct.unpack_from("<I", data, pos)
            add("arr_count", pos + 4, 8)
            (count,) = struct.unpack_from("<Q", data, pos + 4)
            pos += 12
            if item_type == 8:
                for index in range(count):  # a vocabulary: record a few lengths, skip the rest
                    string(record=index < 4 or index == count - 1)
            elif item_type == 9:
                for _ in range(count):
                    value(9)
            else:
                pos += _SCALAR_SIZES[item_type] * count
        else:
            raise ValueError(f"unknown value type {value_type} at {pos}")

    for _ in range(n_kv):
        string()
        add("vtype", pos, 4)
        (value_type,) = struct.unpack_from("<I", data, pos)
        if value_type in _SCALAR_SIZES:  # hyper-parameters: values and same-width retyping
            width = _SCALAR_SIZES[value_type]
            add(f"retype{width}", pos, 4)
            add("scalar", pos + 4, width)
        pos += 4
        value(value_type)
    for _ in range(n_tensors):
        string()
        add("ndims", pos, 4)
        (n_dims,) = struct.unpack_from("<I", data, pos)
        pos += 4
        for _ in range(n_dims):
            add("dim", pos, 8)
            pos += 8
        add("ttype", pos, 4)
        add("toffset", pos + 4, 8)
        pos += 12
    add("end", pos, 0)
    return fields


def _base_from_file(name: str, path: Path) -> Base:
    header = read_header(path)
    with open(path, "rb") as handle:
        data = handle.read(header.data_offset)
    return Base(name, data, header.file_size, field_map(data))


def build_bases(folder: Path) -> list[Base]:
    """Write the seed files into ``folder`` and map their headers."""
    folder.mkdir(parents=True, exist_ok=True)
    bases = [_base_from_file("tiny-qwen2moe",
                             write_synthetic_model(folder / "tiny.gguf", TINY_QWEN2MOE))]
    # Small but structurally faithful twins: few layers, short vocabularies (the qwen35moe one
    # is longer than the reader's eager limit, so the lazy string-walk path is fuzzed too).
    twins = {
        "qwen35moe": replace(TWIN_LAYOUTS["qwen3.5-35b-a3b"], name="fuzz-qwen35", n_layer=8,
                             n_vocab=1500),
        "lfm2moe": replace(TWIN_LAYOUTS["lfm2.5-8b-a1b"], name="fuzz-lfm2", n_layer=8,
                           n_vocab=300, attention_layers=(2, 6)),
        "mistral4": replace(TWIN_LAYOUTS["mistral-small-4-119b"], name="fuzz-mla", n_layer=4,
                            n_vocab=300, n_dense_lead=1),
    }
    for name, layout in twins.items():
        (path,) = write_shape_twin(folder / f"{name}.gguf", layout)
        bases.append(_base_from_file(name, path))
    return bases


def _special_u64(rng: random.Random, original: int) -> int:
    return rng.choice([
        0, 1, 2, 2**63, 2**64 - 1, 2**60, 2**32, 2**32 - 1, 2**40, 2**40 + 1,
        original + 1, max(original - 1, 0), original * 2, rng.getrandbits(64),
        rng.randrange(0, 1 << 20),
    ])


def _special_u32(rng: random.Random, kind: str, original: int) -> int:
    common = [0, 1, 2, 3, 8, 9, 13, 255, 2**31, 2**32 - 1, rng.getrandbits(32), original + 1]
    if kind == "ndims":
        return rng.choice(common + [0, 5, 0, 5, 4])
    if kind == "ttype":
        unknown = [4, 5, 31, 32, 33, 36, 37, 38, 42, 1000]
        return rng.choice(common + unknown + sorted(TYPES_BY_ID))
    return rng.choice(common)


def mutate(rng: random.Random, base: Base) -> tuple[bytes, int, str]:
    """One mutated copy of ``base``: (header bytes, file size, what was done)."""
    data = bytearray(base.header)
    size = base.size
    strategy = rng.choice(["flip", "bits", "cut_field", "cut", "cut_data", "field", "field",
                           "field", "value", "value", "retype", "insert", "delete", "zero"])
    if strategy == "flip":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif strategy == "bits":
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif strategy == "cut_field":
        kind = rng.choice(sorted(base.fields))
        offset, width = rng.choice(base.fields[kind])
        cut = max(0, offset + rng.choice([0, width, width // 2, -1, 1]))
        return bytes(data[:cut]), cut, f"{strategy} {kind}@{offset} -> {cut}"
    elif strategy == "cut":
        cut = rng.randrange(len(data) + 1)
        return bytes(data[:cut]), cut, f"{strategy} {cut}"
    elif strategy == "cut_data":
        # The header survives, the data does not: tensors run past the end of the file.
        cut = rng.randrange(len(data), size)
        return bytes(data), cut, f"{strategy} {cut}"
    elif strategy == "field":
        kind = rng.choice(sorted(set(base.fields) & set(_U64_KINDS + _U32_KINDS)))
        offset, width = rng.choice(base.fields[kind])
        if width == 8:
            (original,) = struct.unpack_from("<Q", data, offset)
            new = _special_u64(rng, original) % 2**64
            struct.pack_into("<Q", data, offset, new)
        else:
            (original,) = struct.unpack_from("<I", data, offset)
            new = _special_u32(rng, kind, original) % 2**32
            struct.pack_into("<I", data, offset, new)
        return bytes(data), size, f"{strategy} {kind}@{offset} {original} -> {new}"
    elif strategy == "value":
        # A hyper-parameter gets a wild value: block_count 2^32-1, expert_count 0, ...
        offset, width = rng.choice(base.fields["scalar"])
        limit = 1 << (8 * width)
        new = rng.choice([0, 1, limit - 1, limit // 2, limit // 2 - 1, 4097, 65536,
                          rng.randrange(limit)]) % limit
        data[offset:offset + width] = new.to_bytes(width, "little")
        return bytes(data), size, f"{strategy} @{offset} -> {new}"
    elif strategy == "retype":
        # Same width, other type: a count becomes a float, a signed negative, a bool.
        kind = rng.choice([k for k in base.fields if k.startswith("retype")])
        offset, _ = rng.choice(base.fields[kind])
        new = rng.choice(_TYPES_OF_WIDTH[int(kind[len("retype"):])])
        struct.pack_into("<I", data, offset, new)
        return bytes(data), size, f"{strategy} @{offset} -> type {new}"
    elif strategy == "insert":
        at = rng.randrange(len(data))
        chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        data[at:at] = chunk
        size += len(chunk)
        return bytes(data), size, f"{strategy} {len(chunk)}@{at}"
    elif strategy == "delete":
        at = rng.randrange(len(data))
        n = rng.randint(1, 16)
        del data[at:at + n]
        size -= n
        return bytes(data), size, f"{strategy} {n}@{at}"
    else:
        at = rng.randrange(len(data))
        n = rng.randint(1, 64)
        data[at:at + n] = bytes(len(data[at:at + n]))
        return bytes(data), size, f"{strategy} {n}@{at}"
    return bytes(data), size, strategy


def write_case(path: Path, data: bytes, size: int, scrub: int) -> None:
    """The mutated header, zeros up to ``scrub`` bytes, then a hole up to ``size``.

    The file is rewritten in place: truncating a sparse file of many GB to zero and growing
    it again for every case costs more than the parse.
    """
    with open(path, "r+b" if path.exists() else "wb") as handle:
        handle.write(data[:size])
        padding = min(size, scrub) - min(len(data), size)
        if padding > 0:
            handle.write(bytes(padding))
        handle.truncate(size)


def exercise(path: Path) -> str:
    """Everything `inspect` does with a file. Returns "ok" or "error"; other exceptions escape."""
    try:
        header = read_header(path)
        for key, value in header.metadata.items():
            if isinstance(value, LazyArray):
                header.array(key)
        model = open_model(path)
        summary_dict(model)
        render_text(model, with_tensors=True)
        layer_rows(model)
        model.per_layer("attention.head_count_kv")
        _ = (model.kinds, model.active_params, model.n_leading_dense, model.head_dim_k,
             model.n_head_kv, model.looks_imatrix_quantized, model.file_type)
    except GGUFError as error:
        message = str(error)
        if "\n" in message or str(path) not in message:
            raise AssertionError(f"GGUFError message is not one line naming the file: "
                                 f"{message[:300]!r}") from error
        return "error"
    return "ok"


def cli_check(path: Path) -> None:
    """`apex-studio inspect` on the file: exit 0, or exit 2 with one line naming the file."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["inspect", str(path)])
    if code == 0:
        return
    lines = err.getvalue().splitlines()
    if code != 2 or len(lines) != 1 or str(path) not in lines[0]:
        raise AssertionError(f"CLI exit {code}, stderr {err.getvalue()[:300]!r}")


@dataclass
class FuzzReport:
    cases: int
    outcomes: Counter
    failures: list[str]
    slowest_s: float
    elapsed_s: float


def run_fuzz(folder: Path, cases: int, seed: int, cli_every: int = CLI_EVERY) -> FuzzReport:
    bases = build_bases(folder / "bases")
    scrub = max(len(base.header) for base in bases) + 64  # beyond: never written, a hole
    rng = random.Random(seed)
    target = folder / "case.gguf"
    outcomes: Counter = Counter()
    failures: list[str] = []
    slowest = 0.0
    started = time.perf_counter()
    for index in range(cases):
        base = bases[index % len(bases)]
        data, size, what = mutate(rng, base)
        write_case(target, data, size, scrub)
        t0 = time.perf_counter()
        try:
            outcomes[exercise(target)] += 1
            if index % cli_every == 0:
                cli_check(target)
        except Exception as error:  # noqa: BLE001 - the point is to catch anything else
            outcomes["crash"] += 1
            failures.append(f"case {index} ({base.name}: {what}): "
                            f"{type(error).__name__}: {str(error)[:200]}")
        slowest = max(slowest, time.perf_counter() - t0)
    return FuzzReport(cases, outcomes, failures, slowest, time.perf_counter() - started)


def test_fuzzed_headers_only_raise_gguf_error(tmp_path: Path) -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = run_fuzz(tmp_path, TEST_CASES, TEST_SEED)
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024

    assert not report.failures, "\n".join(report.failures[:20])
    assert report.outcomes["ok"] + report.outcomes["error"] == TEST_CASES
    # The mutations must reach both outcomes, or the fuzzer tests nothing.
    assert report.outcomes["error"] > TEST_CASES // 4
    assert report.outcomes["ok"] > TEST_CASES // 20
    # The slowest case is reported by the script (`python tests/test_fuzz_reader.py`), not
    # asserted: a timing bound flakes on a busy machine, and a hang fails the run anyway.
    assert rss_growth_mb < 200, f"peak memory grew by {rss_growth_mb:.0f} MB"


def test_field_map_walks_the_whole_header(tmp_path: Path) -> None:
    """The fuzzer's own map must end where the reader says the tensor table ends."""
    for base in build_bases(tmp_path):
        (end, _), = base.fields["end"]
        assert end <= len(base.header) < end + 32 + 1, base.name
        assert len(base.fields["ttype"]) == len(read_header(tmp_path / f"{_file_of(base)}").tensors)


def _file_of(base: Base) -> str:
    return "tiny.gguf" if base.name == "tiny-qwen2moe" else f"{base.name}.gguf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=TEST_SEED)
    parser.add_argument("--cli-every", type=int, default=CLI_EVERY)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="apex-fuzz-") as folder:
        report = run_fuzz(Path(folder), args.cases, args.seed, args.cli_every)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"fuzz cases: {report.cases} (seed {args.seed}) in {report.elapsed_s:.1f} s; "
          f"opened {report.outcomes['ok']}, GGUFError {report.outcomes['error']}, "
          f"other exceptions {report.outcomes['crash']}; slowest case "
          f"{report.slowest_s * 1000:.0f} ms; peak RSS {peak_mb:.0f} MB")
    for line in report.failures[:50]:
        print("  " + line)
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
