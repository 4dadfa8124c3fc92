"""Calibration text for importance matrices, and the bundled quick-evaluation text.

The bundled calibration set mirrors the APEX mix (about 50k tokens, no Wikipedia): the four
files are concatenated in :data:`BUNDLED_ORDER` - multi-turn chat (~30%), code (~25%),
step-by-step reasoning (~25%), tool calling with JSON function calls (~20%). The order is
fixed so the combined file, and every cache key derived from it, is reproducible.
Combined files are content-addressed under ``cache_dir()/calibration``: the same inputs give
the same path, so an importance matrix computed from them can be found again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from apex_gui.core.files.inputs import TEXT_CAP_BYTES, InputFileError, read_bounded_bytes
from apex_gui.core.settings import cache_dir, data_dir

#: Bundled calibration files, in the order they are concatenated.
BUNDLED_ORDER: tuple[str, ...] = ("chat_multiturn.txt", "code.txt", "reasoning.txt",
                                  "tool_calls.txt")
QUICK_EVAL_NAME = "quick_eval.txt"
#: Between two files: a blank line keeps the last sentence of one from running into the next.
SEPARATOR = "\n\n"


class CalibrationError(FileNotFoundError):
    """A calibration or evaluation file that cannot be used; the message says what to do."""


def _resource_dir(name: str) -> Traversable:
    return resources.files("apex_gui.resources") / name


def bundled_calibration_files() -> list[Traversable]:
    """The bundled calibration files in :data:`BUNDLED_ORDER`; an error names any missing."""
    folder = _resource_dir("calibration")
    found = [folder / name for name in BUNDLED_ORDER]
    missing = [name for name, item in zip(BUNDLED_ORDER, found) if not item.is_file()]
    if missing:
        raise CalibrationError(
            f"the bundled calibration set is incomplete (missing {', '.join(missing)} in "
            "apex_gui.resources/calibration); reinstall APEX Studio or give your own text with "
            "--calibration FILE")
    return found


def quick_eval_text() -> Path:
    """The bundled evaluation text (for perplexity and KL divergence) as a real file path."""
    item = _resource_dir("eval") / QUICK_EVAL_NAME
    if not item.is_file():
        raise CalibrationError(
            f"the bundled evaluation text eval/{QUICK_EVAL_NAME} is missing; reinstall APEX "
            "Studio or give a text with --ppl FILE")
    return materialize(item.read_bytes(), "eval", QUICK_EVAL_NAME)


def materialize(data: bytes, folder: str, name: str) -> Path:
    """A real file with ``data`` under the cache dir, named by content (zip installs have no
    file path for a resource, and the tools need one)."""
    digest = hashlib.sha256(data).hexdigest()[:16]
    stem, _, suffix = name.rpartition(".")
    target = cache_dir() / folder / f"{stem or name}-{digest}.{suffix or 'txt'}"
    if target.is_file() and target.stat().st_size == len(data):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)
    return target


def combine_calibration(files: Sequence[str | os.PathLike[str] | Traversable] | None = None) -> Path:
    """One text file from ``files`` (default: the bundled set), in the given order.

    Each file must be UTF-8 text; an unreadable or empty one is an error naming it.
    """
    items: list[str | os.PathLike[str] | Traversable] = (
        list(files) if files else list(bundled_calibration_files()))
    parts: list[str] = []
    for item in items:
        path = item if isinstance(item, Traversable) else Path(item)
        try:
            if isinstance(path, Path):
                # Bounded: a FIFO or /dev/zero chosen as calibration must not hang or fill
                # memory (regular files only, under a size cap).
                try:
                    data = read_bounded_bytes(path, "calibration file", TEXT_CAP_BYTES)
                except InputFileError as error:
                    raise CalibrationError(str(error)) from None
            else:
                data = path.read_bytes()
            text = data.decode("utf-8")
        except CalibrationError:
            raise  # a FileNotFoundError too: keep its own message
        except FileNotFoundError:
            raise CalibrationError(f"calibration file {path} does not exist; check the path") from None
        except UnicodeDecodeError as error:
            raise CalibrationError(f"calibration file {path} is not UTF-8 text ({error}); "
                                   "convert it (iconv -t utf-8)") from None
        except OSError as error:
            raise CalibrationError(f"calibration file {path} cannot be read ({error})") from None
        if not text.strip():
            raise CalibrationError(f"calibration file {path} is empty; give a file with text")
        parts.append(text.rstrip("\n"))
    combined = SEPARATOR.join(parts) + "\n"
    return materialize(combined.encode("utf-8"), "calibration", "calibration.txt")


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content, read in blocks (calibration and evaluation texts key caches)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imatrix_cache_path(model: str | os.PathLike[str], calibration: str | os.PathLike[str],
                       context: int, chunks: int | None) -> Path:
    """Where ``--imatrix auto`` keeps the importance matrix for a model and calibration text.

    The key covers the model file's identity (path, size, modification time), the text's
    content, the context and the chunk count: any change computes a new one.
    """
    model_path = Path(model)
    stat = model_path.stat()
    key = "|".join([str(model_path.resolve()), str(stat.st_size), str(stat.st_mtime_ns),
                    file_digest(Path(calibration)), str(context), str(chunks)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return data_dir() / "imatrix" / f"{model_path.stem}-c{context}-{digest}.imatrix.gguf"
