"""Side inputs (calibration text, plan files, profiles, task files) read with bounds.

Model files were already refused unless they are regular files; side inputs were opened
and read whole, so ``--calibration /dev/zero`` grew to gigabytes and a FIFO hung forever.
Here every side input must be a regular file under a size cap, checked on the open file
descriptor (opened non-blocking, so a FIFO swapped in after a check cannot block either).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from apex_gui.core.units import MiB, format_size

#: Calibration and evaluation texts: the bundled set is ~1 MiB, big real ones ~100 MiB.
TEXT_CAP_BYTES = 1024 * MiB
#: Tensor-type files list one pattern per tensor group (a 700-tensor model: ~40 KiB).
PLAN_CAP_BYTES = 16 * MiB
#: A profile is a few dozen lines of TOML.
PROFILE_CAP_BYTES = 1 * MiB
#: Task files (HellaSwag, Winogrande, multiple-choice binaries) are tens of MiB at most.
TASK_CAP_BYTES = 2048 * MiB


class InputFileError(ValueError):
    """A side input that cannot be used; one line naming the file, the flag and the fix."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _label(path: Path, what: str) -> str:
    return f"{what} {path}" if what else str(path)


def check_input_file(path: str | os.PathLike[str], what: str, cap_bytes: int | None = None,
                     hint: str = "give a regular file") -> Path:
    """Refuse a missing, unreadable, non-regular or oversized input without opening it.

    ``what`` names it for the message (``"--calibration"``, ``"profile"``). Returns the path.
    """
    file_path = Path(path)
    label = _label(file_path, what)
    try:
        info = os.stat(file_path)
    except FileNotFoundError:
        raise InputFileError(f"{label} does not exist; check the path") from None
    except OSError as error:
        raise InputFileError(f"{label} cannot be opened ({error.strerror or error})") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(f"{label} is {_kind(info.st_mode)}, not a regular file; {hint}")
    if cap_bytes is not None and info.st_size > cap_bytes:
        raise InputFileError(f"{label} is {format_size(info.st_size)}, more than the "
                             f"{format_size(cap_bytes)} such a file can be; check the path")
    if not os.access(file_path, os.R_OK):
        raise InputFileError(f"{label} is not readable; fix its permissions (chmod +r)")
    return file_path


def read_bounded_bytes(path: str | os.PathLike[str], what: str, cap_bytes: int) -> bytes:
    """The file's bytes; refused when it is not a regular file or is over ``cap_bytes``."""
    file_path = Path(path)
    label = _label(file_path, what)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        fd = os.open(file_path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise InputFileError(f"{label} does not exist; check the path") from None
    except OSError as error:
        if error.errno == errno.EISDIR:
            raise InputFileError(f"{label} is a folder, not a regular file; give a file") from None
        raise InputFileError(f"{label} cannot be opened ({error.strerror or error})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputFileError(f"{label} is {_kind(info.st_mode)}, not a regular file; give "
                                 "a regular file")
        if info.st_size > cap_bytes:
            raise InputFileError(f"{label} is {format_size(info.st_size)}, more than the "
                                 f"{format_size(cap_bytes)} such a file can be; check the path")
        chunks: list[bytes] = []
        total = 0
        while total <= cap_bytes:  # the file may grow while it is read: stop at the cap
            data = os.read(fd, min(8 * MiB, cap_bytes + 1 - total))
            if not data:
                break
            chunks.append(data)
            total += len(data)
        if total > cap_bytes:
            raise InputFileError(f"{label} grew past {format_size(cap_bytes)} while it was "
                                 "read; give a file that is not being written")
        return b"".join(chunks)
    except OSError as error:
        raise InputFileError(f"{label} cannot be read ({error.strerror or error})") from None
    finally:
        os.close(fd)


def read_bounded_text(path: str | os.PathLike[str], what: str, cap_bytes: int) -> str:
    """The file as UTF-8 text; a file that is not UTF-8 is refused naming the byte offset."""
    data = read_bounded_bytes(path, what, cap_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputFileError(f"{_label(Path(path), what)} is not UTF-8 text (byte {error.start} "
                             f"is 0x{data[error.start]:02x}); save it as UTF-8") from None
