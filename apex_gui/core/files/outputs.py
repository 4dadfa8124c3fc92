"""Outputs that never clobber a source, an existing file or another run's output.

Every writer (the CLI's plan, card, synth and twin; the job runner's tool outputs) goes
through the same rules:

- an output that is one of the inputs (same path, a symlink, a hard link, ``..``, ``//``)
  is refused, and so is an existing folder, pipe or device;
- an existing file is replaced only when the user asked for it (``--force``);
- the content is written under a temporary name unique to this run
  (``OUT.<pid>-<random>.partial``) while this run holds a lock on the final name, so two
  runs writing one output cannot rename each other's unfinished file into place;
- what is renamed into place is checked complete *and* unchanged since the check (its
  identity and size), and a GGUF may not be longer than its own header describes;
- partial files and locks left by a killed run are removed by the next run that takes the
  lock (a lock held by a live process is never broken).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import signal
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from apex_gui.core.gguf.reader import GGUFError, read_header

try:
    import fcntl
except ImportError:  # Windows: no flock; the unique temporary names still keep runs apart
    fcntl = None  # type: ignore[assignment]

PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
#: Suffixes of temporary files older versions and other writers of ours leave behind.
STALE_SUFFIXES = (PARTIAL_SUFFIX, ".tmp")


class OutputError(ValueError):
    """An output that must not be written; one line naming the file and what to do."""


class OutputBusyError(OutputError):
    """Another live run holds the lock on this output."""


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when ``a`` and ``b`` name one file: equal paths after resolving symlinks,
    ``..`` and ``//``, or (both existing) the same inode, which also catches hard links."""
    first, second = Path(a), Path(b)
    try:
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
    except OSError:
        pass
    try:
        return first.resolve() == second.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return os.path.abspath(first) == os.path.abspath(second)


def refuse_source_as_output(output: str | os.PathLike[str],
                            sources: Iterable[tuple[str | os.PathLike[str] | None, str]],
                            flag: str = "-o") -> None:
    """Raise :class:`OutputError` when ``output`` is one of ``sources`` ((path, what) pairs)."""
    for source, what in sources:
        if source is not None and same_file(output, source):
            raise OutputError(f"{flag} {output} is the {what} {source} (the same file); choose "
                              f"another output name: the {what} is never written")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_output(output: str | os.PathLike[str], *,
                 sources: Iterable[tuple[str | os.PathLike[str] | None, str]] = (),
                 force: bool = False, flag: str = "-o", make_folder: bool = False) -> Path:
    """Refuse an output that would destroy something or cannot be written; returns it.

    Refused: one of ``sources``; an existing folder, pipe or device; an existing file
    unless ``force``; a read-only folder; a missing folder unless ``make_folder`` (then
    the nearest existing folder above it must be writable).
    """
    target = Path(output)
    refuse_source_as_output(target, sources, flag)
    try:
        info = os.stat(target)
    except FileNotFoundError:
        info = None
    except OSError as error:
        raise OutputError(f"{flag} {target} cannot be checked ({error.strerror or error}); "
                          "choose another output") from None
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise OutputError(f"{flag} {target} is {_kind(info.st_mode)}; give a file name "
                          f"(for example {target / 'out'} or another path)"
                          if stat.S_ISDIR(info.st_mode) else
                          f"{flag} {target} is {_kind(info.st_mode)}; give a file name")
    if info is not None and not force:
        raise OutputError(f"{flag} {target} already exists; pass --force to replace it, or "
                          "choose another output name")
    folder = target.parent
    if make_folder:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} (above {flag} {target}) is a file, not a folder; choose "
                          "another output path")
    if not folder.is_dir():
        raise OutputError(f"the folder {folder} of {flag} {target} does not exist; create it "
                          "or choose another output folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to the folder {folder} (of {flag} {target}); choose "
                          "another output folder")
    return target


def temporary_name(output: str | os.PathLike[str]) -> Path:
    """A name next to ``output`` that no other run uses: ``OUT.<pid>-<random>.partial``."""
    target = Path(output)
    return target.with_name(f"{target.name}.{os.getpid()}-{secrets.token_hex(4)}"
                            f"{PARTIAL_SUFFIX}")


def lock_path(output: str | os.PathLike[str]) -> Path:
    target = Path(output)
    return target.with_name(target.name + LOCK_SUFFIX)


def stale_files(output: str | os.PathLike[str]) -> list[Path]:
    """Temporary files of ``output`` that a run may have left (``OUT.partial``,
    ``OUT.<tag>.partial``, ``OUT.tmp``...). Only safe to delete while holding its lock."""
    target = Path(output)
    folder = target.parent
    found: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    # Exactly OUT.partial, OUT.tmp or OUT.<pid>-<hex8>.partial: "OUT.v2.gguf.<tag>.partial"
    # belongs to another output and must not go.
    tagged = re.compile(re.escape(target.name) + r"\.\d+-[0-9a-f]{8}" + re.escape(PARTIAL_SUFFIX))
    plain = {target.name + suffix for suffix in STALE_SUFFIXES}
    for entry in entries:
        if entry.name in plain or tagged.fullmatch(entry.name):
            found.append(folder / entry.name)
    return found


class OutputLock:
    """An exclusive, non-blocking lock on an output's final name (``OUT.lock``).

    flock() is released by the kernel when the holder dies, so a killed run never leaves
    a lock that blocks the next one; the lock file itself is removed on release (and a
    file found unlinked after locking is retried, so two runs never hold two files).
    """

    def __init__(self, output: str | os.PathLike[str]) -> None:
        self.output = Path(output)
        self.path = lock_path(self.output)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutputLock:
        if fcntl is None or self._fd is not None:
            return self
        for _ in range(100):  # another run may unlink the file between our open and lock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                             0o644)
            except OSError as error:
                raise OutputError(f"cannot create the lock file {self.path} "
                                  f"({error.strerror or error}); check that the folder is "
                                  "writable") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _read_holder(fd)
                os.close(fd)
                if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    who = f" (process {holder})" if holder else ""
                    raise OutputBusyError(
                        f"another run{who} is writing {self.output}; wait for it to finish "
                        "or choose another output name") from None
                raise OutputError(f"cannot lock {self.path} ({error.strerror or error})") \
                    from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            # The file stays empty: on a nearly full disk even one page for a pid could be the
            # page the tool needs (the holder is found in /proc/locks instead).
            self._fd = fd
            return self
        raise OutputBusyError(f"the lock on {self.output} keeps changing hands; try again")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                os.unlink(self.path)  # while still holding it: see acquire()'s retry
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a caller that never concluded: do not keep the fd open
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def _read_holder(fd: int) -> str:
    """The pid holding a flock on ``fd``'s file, from /proc/locks (Linux), else ""."""
    try:
        info = os.fstat(fd)
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return ""
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 12345 08:01:123456 0 EOF"
        fields = line.split()
        if "FLOCK" in fields and device in fields:
            pid = fields[fields.index(device) - 1]
            if pid.isdigit():
                return pid
    return ""


def claim_output(output: str | os.PathLike[str]) -> OutputLock:
    """Lock ``output`` and delete what dead runs left for it; :class:`OutputBusyError` when
    a live run holds it."""
    lock = OutputLock(output).acquire()
    for stale in stale_files(output):
        with contextlib.suppress(OSError):
            stale.unlink()
    return lock


def clean_abandoned(output: str | os.PathLike[str]) -> list[Path]:
    """Remove ``output``'s temporary files and lock when no live run holds its lock.

    Called for the runs the history finds interrupted (a SIGKILLed CLI); returns what went.
    """
    try:
        lock = OutputLock(output).acquire()
    except OutputError:
        return []  # a live run writes it now: its files are not abandoned
    try:
        removed = []
        for stale in stale_files(output):
            with contextlib.suppress(OSError):
                stale.unlink()
                removed.append(stale)
        return removed
    finally:
        lock.release()


@dataclass(frozen=True)
class FileIdentity:
    """What a completeness check saw: a later change means another writer touched it."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileIdentity:
        info = os.stat(path)
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def gguf_extent_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a complete-looking GGUF is not what one writer finished: bytes past the end its
    own header describes (another writer appended to it), or an unreadable header."""
    try:
        header = read_header(path)
    except GGUFError as error:
        return error.problem
    end = max((header.data_offset + t.offset + t.nbytes for t in header.tensors),
              default=header.data_offset)
    align = header.alignment
    padded = -(-end // align) * align
    if header.file_size > padded:
        return (f"{header.file_size - padded} bytes more than its header describes "
                "(another program wrote to it)")
    return None


def check_complete(path: Path, problem: Callable[[Path], str | None]) -> tuple[
        str | None, FileIdentity | None]:
    """Run ``problem`` on ``path`` and make sure the file did not change meanwhile.

    Returns (problem or None, the identity the check saw).
    """
    try:
        before = FileIdentity.of(path)
    except OSError:
        return "never written", None
    found = problem(path)
    if found is not None:
        return found, before
    try:
        after = FileIdentity.of(path)
    except OSError:
        return "removed while it was being checked", None
    if after != before:
        return "changed while it was being checked (another program is writing it)", None
    return None, before


def move_into_place(temporary: Path, output: Path, seen: FileIdentity) -> str | None:
    """Rename a checked temporary file to ``output``; a problem when what landed is not the
    file that was checked (None when it is)."""
    try:
        if FileIdentity.of(temporary) != seen:
            return "changed after it was checked (another program is writing it)"
        os.replace(temporary, output)
        landed = FileIdentity.of(output)
    except OSError as error:
        return f"could not be renamed into place ({error.strerror or error})"
    if (landed.device, landed.inode, landed.size) != (seen.device, seen.inode, seen.size):
        return "was replaced right after the rename (another program is writing it)"
    return None


@contextlib.contextmanager
def writing(output: str | os.PathLike[str], *, force: bool = False,
            sources: Iterable[tuple[str | os.PathLike[str] | None, str]] = (),
            flag: str = "-o") -> Iterator[Path]:
    """Write ``output`` atomically: yields a unique temporary path to write; on success it
    is renamed into place (refusing an existing file without ``force``, even one that
    appeared meanwhile); on any failure it is deleted. OSErrors become one-line
    :class:`OutputError`s naming the file."""
    target = check_output(output, sources=list(sources), force=force, flag=flag)
    lock = claim_output(target)
    temporary = temporary_name(target)
    try:
        try:
            yield temporary
            if force:
                os.replace(temporary, target)
            else:
                _publish_without_replacing(temporary, target)
        except FileExistsError:
            raise OutputError(f"{flag} {target} appeared while it was written; pass --force "
                              "to replace it, or choose another output name") from None
        except OSError as error:
            raise OutputError(f"cannot write {flag} {target} ({error.strerror or error}); "
                              "check that the disk has space and the folder is writable") \
                from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
        lock.release()


def _publish_without_replacing(temporary: Path, target: Path) -> None:
    """Give ``temporary`` the name ``target`` unless a file took that name meanwhile."""
    try:
        os.link(temporary, target)  # atomic: fails with EEXIST if a file appeared
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # No hard links here (FAT, some network mounts): we hold the lock on the name, so
        # only a writer that ignores it could slip in between this check and the rename.
        if target.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.replace(temporary, target)
        return
    temporary.unlink()


def write_text_output(output: str | os.PathLike[str], text: str, *, force: bool = False,
                      sources: Iterable[tuple[str | os.PathLike[str] | None, str]] = (),
                      flag: str = "-o") -> Path:
    """:func:`writing` for a text file (a plan, a model card)."""
    with writing(output, force=force, sources=sources, flag=flag) as temporary:
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(output)


# --- child processes --------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1


def child_dies_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when this process dies (Linux).

    Without it a SIGKILLed CLI left llama-imatrix running on for seconds to minutes, writing
    a partial file nobody would rename or delete. Returns None where there is no prctl.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # looked up before the fork
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return set_parent_death_signal
