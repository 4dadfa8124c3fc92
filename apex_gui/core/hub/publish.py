"""Publishing quants to the Hugging Face Hub: what would be sent, where, and sending it.

:func:`upload_plan` decides the list of files an upload sends (GGUFs under their published
names, split shards complete, the tensor-type recipes, the README last) and everything that
is wrong with it before a byte leaves the machine. :func:`check_online` answers within a few
seconds whether the Hub can be reached at all, so the window says "offline" at once instead
of after a long library timeout. :func:`upload` does the sending with
``huggingface_hub`` and the user's standard login (``hf auth login`` / ``HF_TOKEN``).

Qt-free; nothing here touches the network except :func:`check_online`, :func:`hub_account`
and :func:`upload`.
"""

from __future__ import annotations

import io
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from apex_gui.core.units import format_size

__all__ = [
    "HF_MAX_FILE_BYTES",
    "Account",
    "Connectivity",
    "PublishError",
    "UploadCancelled",
    "UploadItem",
    "UploadPlan",
    "check_online",
    "hub_account",
    "repo_name_for",
    "upload",
    "upload_plan",
    "validate_repo_id",
]

#: The Hub refuses single files above 50 GB; bigger GGUFs must be split (llama-gguf-split).
HF_MAX_FILE_BYTES = 50 * 10**9
HUB_HOST = "huggingface.co"
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PublishError(RuntimeError):
    """An upload that cannot go ahead; the message says what to do."""


class UploadCancelled(Exception):
    """The user stopped the upload."""


def repo_name_for(model_name: str) -> str:
    """``<Model>-APEX-GGUF``, the published repositories' naming."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name.strip()).strip("-.") or "model"
    return f"{clean}-APEX-GGUF"


def validate_repo_id(repo_id: str) -> str:
    """``USER/REPO`` as the Hub accepts it; raises ValueError naming the rule broken."""
    parts = repo_id.strip().split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{repo_id!r} is not USER/REPO; write e.g. myname/Model-APEX-GGUF")
    for part in parts:
        if not _REPO_PART.match(part) or part.endswith((".", "-")) or ".." in part \
                or "--" in part or len(part) > 96:
            raise ValueError(
                f"{part!r} in {repo_id!r} is not a valid Hub name: use letters, digits, '-', "
                "'_' and '.', no '--' or '..', not ending in '-' or '.', at most 96 characters")
    return "/".join(parts)


@dataclass(frozen=True)
class UploadItem:
    """One file of an upload: a local file, or generated text (the README)."""

    path_in_repo: str
    size_bytes: int
    local_path: Path | None = None
    content: bytes | None = None

    @property
    def generated(self) -> bool:
        return self.content is not None


@dataclass(frozen=True)
class UploadPlan:
    """What an upload would send and what stops it (an empty ``problems`` means ready)."""

    repo_id: str
    items: tuple[UploadItem, ...]
    problems: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(item.size_bytes for item in self.items)

    @property
    def ready(self) -> bool:
        return not self.problems

    def paths_in_repo(self) -> list[str]:
        return [item.path_in_repo for item in self.items]


def _shards(path: Path) -> list[Path]:
    """All shards of a split GGUF given any one of them; [path] for a single file."""
    match = _SHARD.search(path.name)
    if not match:
        return [path]
    count = int(match.group(2))
    stem = path.name[: match.start()]
    return [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def _shard_name(repo_name: str, shard: Path, count: int) -> str:
    if count == 1:
        return repo_name
    number = _SHARD.search(shard.name)
    assert number is not None
    return f"{repo_name.removesuffix('.gguf')}-{number.group(1)}-of-{number.group(2)}.gguf"


def upload_plan(repo_id: str, files: Sequence[tuple[str | os.PathLike[str], str]],
                readme: str | None = None,
                extras: Mapping[str, str | os.PathLike[str]] | None = None) -> UploadPlan:
    """The files an upload of ``files`` (local path, name in the repo) would send.

    Split models are sent whole (every shard, renamed after the repo name). ``extras`` maps
    repo paths to local files (the tensor-type recipes). The README goes last, so a repository
    never shows a card for files that are not there yet.
    """
    problems: list[str] = []
    try:
        repo_id = validate_repo_id(repo_id)
    except ValueError as error:
        problems.append(str(error))
    items: list[UploadItem] = []
    seen: set[str] = set()

    def add(local: Path, name: str) -> None:
        if name in seen:
            problems.append(f"two files would be uploaded as {name}; rename one")
            return
        seen.add(name)
        try:
            size = local.stat().st_size
        except OSError:
            problems.append(f"{local} does not exist (moved or deleted since it was made); "
                            "quantize it again or remove it from the upload")
            return
        if size > HF_MAX_FILE_BYTES:
            problems.append(
                f"{local.name} is {format_size(size)}; the Hub takes at most "
                f"{format_size(HF_MAX_FILE_BYTES)} per file: split it with `llama-gguf-split "
                "--split --split-max-size 45G` and upload the shards")
        items.append(UploadItem(name, size, local_path=local))

    for local, name in files:
        path = Path(local)
        if not name.endswith(".gguf"):
            problems.append(f"{name}: GGUF files must keep the .gguf extension")
        shards = _shards(path)
        for shard in shards:
            add(shard, _shard_name(name, shard, len(shards)))
    for name, local in (extras or {}).items():
        add(Path(local), name)
    if not any(item.path_in_repo.endswith(".gguf") for item in items) and not problems:
        problems.append("no GGUF file chosen; tick at least one quant to upload")
    if readme is not None:
        data = readme.encode("utf-8")
        items.append(UploadItem("README.md", len(data), content=data))
    return UploadPlan(repo_id, tuple(items), tuple(problems))


# --- network --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connectivity:
    online: bool
    message: str


def _endpoint_host() -> tuple[str, int]:
    """Host and port of the Hub endpoint in use (``HF_ENDPOINT`` mirrors included)."""
    try:
        # start-up: huggingface_hub loads only when publishing
        from huggingface_hub import constants

        url = urlparse(str(constants.ENDPOINT))
    except Exception:  # noqa: BLE001 - fall back to the public Hub
        return HUB_HOST, 443
    return url.hostname or HUB_HOST, url.port or (80 if url.scheme == "http" else 443)


def check_online(host: str | None = None, port: int | None = None,
                 timeout: float = 3.0) -> Connectivity:
    """Whether the Hub answers a TCP connection within ``timeout`` seconds (no HTTP, no token).

    Default host: the huggingface_hub endpoint (``HF_ENDPOINT`` or huggingface.co).
    ``HF_HUB_OFFLINE=1`` counts as offline: the user asked for it.
    """
    default_host, default_port = _endpoint_host()
    host, port = host or default_host, port or default_port
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return Connectivity(False, "HF_HUB_OFFLINE is set: uploads are off; unset it to publish")
    started = time.monotonic()
    try:
        addresses = _resolve(host, port, timeout)
    except socket.gaierror:
        return Connectivity(False, f"offline: {host} cannot be resolved (no network or no DNS); "
                                   "the files and the card can still be saved to a folder")
    except TimeoutError:
        return Connectivity(False, f"offline: the name server did not answer for {host} within "
                                   f"{timeout:.0f} s; the files and the card can still be saved "
                                   "to a folder")
    left = max(timeout - (time.monotonic() - started), 0.5)
    try:
        with socket.create_connection(addresses[0], timeout=left):
            pass
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
        return Connectivity(False, f"offline: cannot reach {host}:{port} ({reason}); the files "
                                   "and the card can still be saved to a folder")
    return Connectivity(True, f"{host} is reachable")


def _resolve(host: str, port: int, timeout: float) -> list[tuple[str, int]]:
    """getaddrinfo with a deadline: it has no timeout of its own and a dead name server can
    hold it for tens of seconds. The lookup thread is a daemon; a late answer is dropped."""
    answer: list[Any] = []

    def lookup() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as error:
            answer.append(error)

    thread = threading.Thread(target=lookup, name="apex-hub-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if not answer:
        raise TimeoutError(f"no DNS answer for {host}")
    if isinstance(answer[0], BaseException):
        raise answer[0]
    return [(info[4][0], info[4][1]) for info in answer[0]] or [(host, port)]


@dataclass(frozen=True)
class Account:
    """Who the upload would be made as."""

    name: str
    token: str = field(repr=False)
    orgs: tuple[str, ...] = ()


def hub_account(token: str | None = None) -> Account:
    """The logged-in Hub user (``hf auth login`` or ``HF_TOKEN``); PublishError if none."""
    # start-up: huggingface_hub loads only when publishing
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise PublishError("not logged in to Hugging Face: run `hf auth login` in a terminal "
                           "(or set HF_TOKEN) with a token that has write access, then retry")
    try:
        info: dict[str, Any] = HfApi().whoami(token=token)
    except Exception as error:  # noqa: BLE001 - network and HTTP errors alike end here
        raise PublishError(f"the Hub did not accept the token ({error}); run `hf auth login` "
                           "again with a write token") from None
    orgs = tuple(str(o.get("name")) for o in info.get("orgs", []) if o.get("name"))
    return Account(str(info.get("name", "")), token, orgs)


ProgressCallback = Callable[[int, int, str], None]  # bytes done, bytes total, what


class _CountingReader(io.RawIOBase):
    """A file whose reads report progress and stop when the upload is cancelled."""

    def __init__(self, path: Path, on_read: Callable[[int], None],
                 stop: Callable[[], bool]) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._on_read = on_read
        self._stop = stop

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def read(self, size: int = -1) -> bytes:
        if self._stop():
            raise UploadCancelled()
        data = self._file.read(size)
        self._on_read(self._file.tell())
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


def upload(plan: UploadPlan, *, token: str | None = None, private: bool = False,
           progress: ProgressCallback | None = None,
           should_stop: Callable[[], bool] = lambda: False) -> str:
    """Create the repository if needed and send every item, one commit per file.

    One commit per file means an interrupted upload keeps what was sent; sending again
    replaces files with the same name. Returns the repository URL.
    """
    if not plan.ready:
        raise PublishError("the upload has problems: " + "; ".join(plan.problems))
    # start-up: huggingface_hub loads only when publishing
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = str(api.create_repo(plan.repo_id, private=private, exist_ok=True, repo_type="model"))
    total = plan.total_bytes
    done_before = 0
    for index, item in enumerate(plan.items, start=1):
        if should_stop():
            raise UploadCancelled()
        what = f"{item.path_in_repo} ({index}/{len(plan.items)})"
        if progress is not None:
            progress(done_before, total, what)
        if item.content is not None:
            source: Any = item.content
        else:
            assert item.local_path is not None
            base = done_before

            def on_read(position: int, base: int = base, size: int = item.size_bytes) -> None:
                # huggingface_hub may read a file twice (hash, then send): the position is
                # what counts, clamped to the file.
                if progress is not None:
                    progress(base + min(position, size), total, what)

            source = _CountingReader(item.local_path, on_read, should_stop)
        try:
            api.upload_file(path_or_fileobj=source, path_in_repo=item.path_in_repo,
                            repo_id=plan.repo_id, repo_type="model",
                            commit_message=f"Upload {item.path_in_repo} with APEX Studio")
        finally:
            if isinstance(source, _CountingReader):
                source.close()
        done_before += item.size_bytes
    if progress is not None:
        progress(total, total, "done")
    return url
