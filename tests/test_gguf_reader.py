"""The lazy GGUF header reader: agreement with the ``gguf`` package, and bad input.

Every bad file must give one :class:`GGUFError` whose message names the file and says what
is wrong, through :func:`read_header`, :func:`open_model` and ``apex-studio inspect`` (exit 2,
one line on stderr, no traceback), quickly and without allocating what a header claims.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from apex_gui.cli import main as cli_main
from apex_gui.core.gguf.model import open_model
from apex_gui.core.gguf.reader import (
    MAX_ARRAY_DEPTH, GGUFError, LazyArray, read_header, read_lazy_array,
)
from apex_gui.core.gguf.types import tensor_bytes

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# A minimal GGUF writer, independent of the reader under test, with knobs to break things.
# --------------------------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
        BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}


def gstr(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def gvalue(value_type: int, value: object) -> bytes:
    """Encode a value; arrays are ``(item_type, [items])``."""
    if value_type in _FMT:
        return struct.pack(_FMT[value_type], value)
    if value_type == STR:
        return gstr(value)  # type: ignore[arg-type]
    item_type, items = value  # type: ignore[misc]
    body = b"".join(gvalue(item_type, item) for item in items)
    return struct.pack("<IQ", item_type, len(items)) + body


def gkv(key: str, value_type: int, value: object) -> bytes:
    return gstr(key) + struct.pack("<I", value_type) + gvalue(value_type, value)


def gtensor(name: str, shape: tuple[int, ...], type_id: int, offset: int) -> bytes:
    return (gstr(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
            + struct.pack("<IQ", type_id, offset))


def build_gguf(kvs: list[bytes] | None = None,
               tensors: list[tuple[str, tuple[int, ...], int]] | None = None, *,
               version: int = 3, n_kv: int | None = None, n_tensors: int | None = None,
               data: bool = True) -> bytes:
    """A GGUF file: ``tensors`` are (name, shape, type id), laid out with 32-byte alignment."""
    kvs = kvs if kvs is not None else [gkv("general.architecture", STR, "llama")]
    tensors = tensors if tensors is not None else [("output_norm.weight", (64,), 0)]
    infos = b""
    offset = 0
    sizes = []
    names = {0: "F32", 1: "F16", 8: "Q8_0", 12: "Q4_K"}
    for name, shape, type_id in tensors:
        infos += gtensor(name, shape, type_id, offset)
        size = tensor_bytes(names.get(type_id, "F32"), shape)
        sizes.append(size)
        offset += -(-size // 32) * 32
    head = (b"GGUF" + struct.pack("<IQQ", version,
                                  len(tensors) if n_tensors is None else n_tensors,
                                  len(kvs) if n_kv is None else n_kv)
            + b"".join(kvs) + infos)
    head += bytes(-len(head) % 32)
    return head + (bytes(offset) if data else b"")


def write(tmp_path: Path, content: bytes, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


# Page faults, not seconds, show that a read stayed in the header: the data region of these
# sparse files is hundreds of GiB, so touching it costs millions of faults.
FEW_PAGES = 2048


def page_faults() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt


def assert_clean_failure(path: Path, *phrases: str) -> GGUFError:
    """read_header, open_model and the CLI all fail cleanly, naming the file and the problem."""
    with pytest.raises(GGUFError) as caught:
        read_header(path)
    with pytest.raises(GGUFError):
        open_model(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    for phrase in phrases:
        assert phrase in message, message
    assert_cli_failure(path, *phrases)
    return caught.value


def assert_cli_failure(path: Path, *phrases: str) -> None:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["inspect", str(path)])
    lines = err.getvalue().splitlines()
    assert code == 2
    assert len(lines) == 1, err.getvalue()
    assert lines[0].startswith("apex-studio inspect: error: ")
    assert str(path) in lines[0]
    for phrase in phrases:
        assert phrase in lines[0]
    assert out.getvalue() == ""


# --------------------------------------------------------------------------------------------
# agreement with the gguf package on real files
# --------------------------------------------------------------------------------------------


def _reader_fields(reader: GGUFReader) -> dict[str, object]:
    values = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        value = field.contents()
        if isinstance(value, float):
            value = float(np.float32(value))
        values[name] = value
    return values


@pytest.mark.parametrize("fixture", ["tiny_qwen2moe", "tiny_qwen3moe"])
def test_header_matches_gguf_package(fixture: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    ours = read_header(path)
    theirs = GGUFReader(path)

    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors):
        assert mine.shape == tuple(int(d) for d in ref.shape)
        assert mine.type_id == int(ref.tensor_type)
        assert mine.nbytes == int(ref.n_bytes)
        assert ours.data_offset + mine.offset == int(ref.data_offset)
    expected = _reader_fields(theirs)
    assert set(ours.metadata) == set(expected)
    for key, value in expected.items():
        mine_value = ours.array(key) if isinstance(ours.get(key), LazyArray) else ours.get(key)
        if isinstance(value, list) and value and isinstance(value[0], float):
            assert mine_value == pytest.approx(value)
        else:
            assert mine_value == value, key
    # The file ends where the last tensor's data ends.
    last = ours.tensors[-1]
    assert ours.data_offset + last.offset + last.nbytes == ours.file_size


def test_long_arrays_stay_lazy_and_decode_on_demand(tmp_path: Path) -> None:
    tokens = [f"t{i}" for i in range(3000)]
    path = write(tmp_path, build_gguf([
        gkv("general.architecture", STR, "llama"),
        gkv("tokenizer.ggml.tokens", ARR, (STR, tokens)),
        gkv("tokenizer.ggml.scores", ARR, (F32, [0.5] * 3000)),
        gkv("short", ARR, (I32, [1, -2, 3])),
        gkv("after", U32, 7),
    ]))
    header = read_header(path)
    lazy = header.get("tokenizer.ggml.tokens")
    assert isinstance(lazy, LazyArray) and len(lazy) == 3000
    assert header.get("short") == [1, -2, 3]
    assert header.get("after") == 7  # the walk over the lazy arrays ended in the right place
    assert header.array("tokenizer.ggml.tokens") == tokens
    assert lazy.decode() == tokens
    assert read_lazy_array(path, header.get("tokenizer.ggml.scores")) == [0.5] * 3000
    assert open_model(path).vocab_size == 3000


def test_nested_arrays_are_walked_not_built(tmp_path: Path) -> None:
    nested = (ARR, [(U8, [1, 2]), (STR, ["a", "b"])])
    path = write(tmp_path, build_gguf([gkv("nested", ARR, nested), gkv("after", U32, 9)]))
    header = read_header(path)
    assert header.get("after") == 9
    assert header.array("nested") == [[1, 2], ["a", "b"]]


def test_a_string_array_of_big_strings_stays_lazy(tmp_path: Path) -> None:
    big = ["x" * (600 << 10), "y" * (600 << 10)]  # two entries, 1.2 MB: over the eager budget
    path = write(tmp_path, build_gguf([gkv("general.architecture", STR, "llama"),
                                       gkv("blobs", ARR, (STR, big))]))
    header = read_header(path)
    assert isinstance(header.get("blobs"), LazyArray)
    assert header.array("blobs") == big


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = write(tmp_path, b"This is a README, not a model.\n" * 4, "notes.gguf")
    assert_clean_failure(path, "not a GGUF file")


def test_empty_file(tmp_path: Path) -> None:
    assert_clean_failure(write(tmp_path, b""), "empty file")


def test_folder(tmp_path: Path) -> None:
    folder = tmp_path / "model.gguf"
    folder.mkdir()
    assert_clean_failure(folder, "is a folder")


def test_missing_path(tmp_path: Path) -> None:
    assert_clean_failure(tmp_path / "nowhere.gguf", "no such file")


def test_named_pipe_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    # Opening a FIFO blocks until a writer comes: the reader must refuse it from stat() alone,
    # so a regression shows up as this test never finishing.
    assert_clean_failure(fifo, "not a regular file")


@pytest.mark.parametrize("cut", [4, 10, 23])
def test_truncated_inside_the_fixed_header(tmp_path: Path, cut: int) -> None:
    path = write(tmp_path, build_gguf()[:cut])
    assert_clean_failure(path, "truncated file")


def test_truncated_inside_metadata_and_tensor_table(tmp_path: Path) -> None:
    content = build_gguf([gkv("general.architecture", STR, "llama"),
                          gkv("general.name", STR, "a model with a long name" * 4)])
    for cut in (30, 60, 100, 150):
        path = write(tmp_path, content[:cut], f"cut{cut}.gguf")
        assert_clean_failure(path, "truncated")


def test_tensor_data_past_end_of_file(tmp_path: Path) -> None:
    content = build_gguf(tensors=[("token_embd.weight", (64, 32), 0)])
    path = write(tmp_path, content[:-100])
    error = assert_clean_failure(path, "token_embd.weight", "past the end of the file")
    assert "download it again" in error.problem


@pytest.mark.parametrize("version", [1, 4, 0x7FFFFFFF])
def test_unsupported_version(tmp_path: Path, version: int) -> None:
    path = write(tmp_path, build_gguf(version=version))
    assert_clean_failure(path, f"unsupported GGUF version {version}")


def test_big_endian_file(tmp_path: Path) -> None:
    content = bytearray(build_gguf())
    content[4:8] = struct.pack(">I", 3)
    assert_clean_failure(write(tmp_path, bytes(content)), "big-endian")


@pytest.mark.parametrize("field", ["n_tensors", "n_kv"])
@pytest.mark.parametrize("count", [2**60, 2**64 - 1, 999_999])
def test_absurd_counts(tmp_path: Path, field: str, count: int) -> None:
    path = write(tmp_path, build_gguf(**{field: count}))
    tracemalloc.start()
    try:
        assert_clean_failure(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20  # a claimed count allocates nothing


@pytest.mark.parametrize("item_type", [U8, U32, F64, STR, ARR])
def test_absurd_array_length(tmp_path: Path, item_type: int) -> None:
    kv = gstr("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARR, item_type, 2**60)
    path = write(tmp_path, build_gguf([kv]))
    tracemalloc.start()
    try:
        assert_clean_failure(path, "tokenizer.ggml.tokens")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20


@pytest.mark.parametrize("length", [2**62, 2**64 - 1, 1 << 31])
def test_absurd_string_lengths(tmp_path: Path, length: int) -> None:
    key = struct.pack("<Q", length) + b"general.name"
    assert_clean_failure(write(tmp_path, build_gguf([key]), "key.gguf"), "length")
    value = gstr("general.name") + struct.pack("<IQ", STR, length) + b"x" * 8
    assert_clean_failure(write(tmp_path, build_gguf([value]), "value.gguf"), "general.name")
    name = struct.pack("<Q", length) + b"output.weight" + bytes(64)
    content = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + name
    assert_clean_failure(write(tmp_path, content, "tensor.gguf"), "tensor #0 name length")


def test_a_count_over_a_sparse_hole_is_bounded(tmp_path: Path) -> None:
    """A hole reads as zeros: empty strings without end unless the walk has a budget."""
    # 2^36 strings of at least 8 bytes each fit in 1 TiB: only the walk budget stops it.
    kv = gstr("tokenizer.ggml.merges") + struct.pack("<IIQ", ARR, STR, 2**36)
    path = write(tmp_path, build_gguf([kv]))
    with open(path, "r+b") as handle:
        handle.truncate(1 << 40)  # 1 TiB of hole, nothing on disk
    before = page_faults()
    assert_clean_failure(path, "tokenizer.ggml.merges", "more than")
    # Walking the hole would fault in page after page of zeros; the budget refuses it first.
    assert page_faults() - before < FEW_PAGES


@pytest.mark.parametrize("n_dims", [0, 5, 2**32 - 1])
def test_bad_dimension_count(tmp_path: Path, n_dims: int) -> None:
    content = build_gguf(tensors=[("output_norm.weight", (64,), 0)])
    bad = content.replace(gstr("output_norm.weight") + struct.pack("<I", 1),
                          gstr("output_norm.weight") + struct.pack("<I", n_dims))
    assert_clean_failure(write(tmp_path, bad), "output_norm.weight", f"{n_dims} dimensions")


@pytest.mark.parametrize("type_id", [4, 5, 31, 43, 2**32 - 1])
def test_unknown_tensor_type(tmp_path: Path, type_id: int) -> None:
    path = write(tmp_path, build_gguf(tensors=[("output_norm.weight", (64,), type_id)]))
    assert_clean_failure(path, "output_norm.weight", f"unknown ggml type id {type_id}")


@pytest.mark.parametrize("value_type", [13, 99, 2**32 - 1])
def test_unknown_metadata_value_type(tmp_path: Path, value_type: int) -> None:
    kv = gstr("general.name") + struct.pack("<I", value_type) + b"\0" * 8
    assert_clean_failure(write(tmp_path, build_gguf([kv])), "general.name",
                         f"unknown metadata value type {value_type}")


def test_unknown_array_item_type(tmp_path: Path) -> None:
    kv = gstr("tokenizer.ggml.tokens") + struct.pack("<IIQ", ARR, 77, 1) + b"\0" * 8
    assert_clean_failure(write(tmp_path, build_gguf([kv])), "unknown array item type 77")


def test_deeply_nested_arrays(tmp_path: Path) -> None:
    kv = gstr("nest") + struct.pack("<I", ARR) + struct.pack("<IQ", ARR, 1) * 5000
    kv += struct.pack("<IQ", U8, 0)
    assert_clean_failure(write(tmp_path, build_gguf([kv])), "nest",
                         f"more than {MAX_ARRAY_DEPTH} deep")


@pytest.mark.parametrize("shape", [(64, 0), (2**41,), (64, 2**63)])
def test_invalid_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = write(tmp_path, build_gguf(tensors=[("token_embd.weight", shape, 0)], data=False))
    assert_clean_failure(path, "token_embd.weight", "invalid shape")


def test_row_length_not_a_multiple_of_the_block(tmp_path: Path) -> None:
    path = write(tmp_path, build_gguf(tensors=[("blk.0.attn_q.weight", (100, 4), 12)]))
    assert_clean_failure(path, "blk.0.attn_q.weight", "block size 256")


def test_duplicate_tensor_names_and_keys(tmp_path: Path) -> None:
    tensors = [("output_norm.weight", (64,), 0), ("output_norm.weight", (64,), 0)]
    assert_clean_failure(write(tmp_path, build_gguf(tensors=tensors), "t.gguf"),
                         "duplicate tensor name output_norm.weight")
    kvs = [gkv("general.name", STR, "a"), gkv("general.name", STR, "b")]
    assert_clean_failure(write(tmp_path, build_gguf(kvs), "k.gguf"),
                         "duplicate metadata key general.name")


def test_alignment_not_a_power_of_two(tmp_path: Path) -> None:
    path = write(tmp_path, build_gguf([gkv("general.alignment", U32, 24)]))
    assert_clean_failure(path, "general.alignment 24")


def test_control_characters_in_names_stay_on_one_line(tmp_path: Path) -> None:
    name = "blk.0.attn_q\n.weight\r\x1b[31m"
    path = write(tmp_path, build_gguf(tensors=[(name, (64,), 77)]))
    error = assert_clean_failure(path, "unknown ggml type id 77")
    assert "\\n" in str(error) and "\x1b" not in str(error)


def test_unreadable_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = write(tmp_path, build_gguf())
    path.chmod(0)
    assert_clean_failure(path, "permission denied")


def test_cli_subprocess_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, build_gguf()[:20], "cut.gguf")
    result = subprocess.run([sys.executable, "-m", "apex_gui", "inspect", str(path)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert str(path) in result.stderr and "truncated file" in result.stderr
    assert "Traceback" not in result.stderr


def test_reading_a_header_never_touches_tensor_data(tmp_path: Path) -> None:
    """A 1 TiB sparse file opens at once: only the header pages are read."""
    content = build_gguf(tensors=[("token_embd.weight", (4096, 2**26), 1)], data=False)
    path = write(tmp_path, content)
    with open(path, "r+b") as handle:
        handle.truncate(len(content) + 4096 * 2**26 * 2)
    before = page_faults()
    header = read_header(path)
    assert page_faults() - before < FEW_PAGES  # the 512 GiB of tensor data is never touched
    assert header.tensors[0].nbytes == 4096 * 2**26 * 2
