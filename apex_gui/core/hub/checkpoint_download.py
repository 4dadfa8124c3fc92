"""Download a model repository's checkpoint (safetensors, config, tokenizer) for conversion.

The file list comes from the Hub (names, sizes, the commit), so the free disk is checked
before a byte moves and every file is fetched at that one commit (a repository updated
between a download and its resume never mixes two versions). Files go into a folder of their
own through huggingface_hub's HTTP client; an unfinished file's bytes stay in
``.apex-download/`` and a later run asks only for the rest (a range request). Each file is checked when it lands: the size the Hub listed, and for
weights a complete safetensors header and data. The token is passed to huggingface_hub and
never printed: messages name the repository, not the request.
"""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from apex_gui.core.convert.checkpoint import safetensors_problem
from apex_gui.core.hub.download import (api_timeout_s, DownloadCancelled, HubError,
                                        progress_class, bound_http_timeouts, check_reachable,
                                        endpoint, transport_errors, unanswered,
                                        validate_repo_id)
from apex_gui.core.units import format_size

HF_SCHEME = "hf://"
#: What a conversion reads: weights, configs, tokenizer and chat template files.
WANTED = ("*.safetensors", "*.json", "*.model", "*.tiktoken", "tiktoken.model", "merges.txt",
          "vocab.txt", "*.jinja", "*.py")
#: Never fetched: other weight formats and sub-folders of originals or quantized copies.
SKIPPED_FOLDERS = ("original/", "onnx/", "gguf/", "coreml/", "openvino/")
#: Kept free beyond the download itself (the filesystem's own needs, logs).
DISK_MARGIN = 256 * 1024 * 1024


@dataclass(frozen=True)
class RepoFile:
    """One file of a repository: its name, size and (for LFS files) content hash."""

    name: str
    size: int
    sha256: str | None = None


@dataclass(frozen=True)
class RepoListing:
    """A repository at one commit: the files a conversion needs."""

    repo_id: str
    commit: str
    files: tuple[RepoFile, ...]
    gated: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def parse_source(text: str) -> tuple[str, str]:
    """``("hub", OWNER/NAME)`` for ``hf://OWNER/NAME``, else ``("folder", path)``."""
    if text.startswith(HF_SCHEME):
        return "hub", validate_repo_id(text[len(HF_SCHEME):])
    return "folder", text


def wanted(name: str) -> bool:
    if any(name.startswith(folder) for folder in SKIPPED_FOLDERS):
        return False
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(base, pattern) for pattern in WANTED)


def _gated_message(repo_id: str) -> str:
    return (f"{repo_id} is gated: open https://huggingface.co/{repo_id} while logged in and "
            "accept its licence, then give this machine your token (`hf auth login`, or the "
            "HF_TOKEN variable); the token is never shown or stored by APEX Studio")


def list_checkpoint(repo_id: str, token: str | None = None) -> RepoListing:
    """The repository's commit and the files a conversion needs, with their sizes."""
    # start-up: huggingface_hub loads only when the Hub is used
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    repo_id = validate_repo_id(repo_id)
    check_reachable()
    bound_http_timeouts()
    try:
        info = HfApi(endpoint=endpoint()).model_info(repo_id, files_metadata=True, timeout=api_timeout_s(),
                                  token=token)
    except GatedRepoError:
        raise HubError(_gated_message(repo_id)) from None
    except RepositoryNotFoundError:
        raise HubError(f"{repo_id} was not found on {endpoint()} (a private repository needs "
                       "your token: `hf auth login`)") from None
    except HfHubHTTPError as error:
        raise HubError(f"the Hub answered an error for {repo_id}: "
                       f"{str(error).splitlines()[0]}") from None
    except transport_errors() as error:
        raise unanswered(f"the listing of {repo_id}", error) from None
    files = []
    for sibling in info.siblings or []:
        if not wanted(sibling.rfilename):
            continue
        lfs = getattr(sibling, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None else None
        files.append(RepoFile(sibling.rfilename, int(sibling.size or 0), sha))
    if not any(f.name.endswith(".safetensors") for f in files):
        raise HubError(f"{repo_id} has no safetensors weights to convert (a GGUF repository? "
                       "open it with File > Download from Hugging Face)")
    return RepoListing(repo_id, str(info.sha or "main"), tuple(files),
                       gated=bool(getattr(info, "gated", False)))


def file_problem(folder: Path, remote: RepoFile) -> str | None:
    """Why a downloaded file is not the Hub's (missing, other size, incomplete), or None."""
    path = folder / remote.name
    if not path.is_file():
        return f"{remote.name} is missing"
    size = path.stat().st_size
    if remote.size and size != remote.size:
        return f"{remote.name} has {size:,} bytes where the Hub lists {remote.size:,}"
    if remote.name.endswith(".safetensors"):
        return safetensors_problem(path)
    return None


def bytes_still_needed(folder: Path, listing: RepoListing) -> int:
    """Bytes left to download: files not yet complete, less what their partial files hold."""
    needed = 0
    for remote in listing.files:
        if file_problem(folder, remote) is None:
            continue
        partial = partial_path(folder, remote)
        have = partial.stat().st_size if partial.is_file() else 0
        needed += max(0, remote.size - have)
    return needed


def check_disk_space(folder: Path, needed: int) -> None:
    """HubError when ``folder``'s disk cannot take ``needed`` more bytes (and a margin)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed + DISK_MARGIN > free:
        raise HubError(f"the download needs {format_size(needed)} but {existing} has "
                       f"{format_size(free)} free: free some space or choose another folder")


PARTIAL_FOLDER = ".apex-download"


def partial_path(folder: Path, remote: RepoFile) -> Path:
    """Where a file's bytes collect until it is complete (kept across runs for a resume)."""
    return folder / PARTIAL_FOLDER / f"{remote.name}.partial"


def fetch_file(listing: RepoListing, remote: RepoFile, folder: Path, token: str | None,
               cancelled: Callable[[], bool], report: Callable[[int, int | None], None]) -> None:
    """One file at the listing's commit, continuing a partial one with a range request.

    huggingface_hub's own download starts each process on a fresh temporary file, so a
    killed download would begin again from byte 0; this keeps the bytes of a killed run.
    The finished file is checked against the Hub's size and SHA-256 before it is renamed.
    """
    # start-up: huggingface_hub loads only when the Hub is used
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(listing.repo_id, remote.name, revision=listing.commit, endpoint=endpoint())
    meta = get_hf_file_metadata(url, token=token, timeout=api_timeout_s(), endpoint=endpoint())
    partial = partial_path(folder, remote)
    partial.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.is_file() else 0
    expected = meta.size if meta.size is not None else remote.size
    if expected and have > expected:
        partial.unlink()
        have = 0
    report(have, expected)
    with open(partial, "ab") as out:
        if not expected or have < expected:
            http_get(meta.location, out, resume_size=have, headers=build_hf_headers(token=token),
                     expected_size=expected, tqdm_class=progress_class(
                         cancelled, lambda seen, _total: report(have + seen, expected)))
    if remote.sha256:
        digest = hashlib.sha256()
        with open(partial, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != remote.sha256:
            partial.unlink()
            raise HubError(f"{remote.name} of {listing.repo_id} did not match the Hub's SHA-256 "
                           "after the download (damaged in transit); run again to fetch it anew")
    target = folder / remote.name
    target.parent.mkdir(parents=True, exist_ok=True)
    partial.replace(target)


def download_checkpoint(listing: RepoListing, folder: Path, token: str | None = None,
                        cancelled: Callable[[], bool] = lambda: False,
                        progress: Callable[[int, int], None] = lambda done, total: None) -> Path:
    """Fetch every listed file into ``folder`` (resuming partial ones); returns the folder.

    ``progress(done, total)`` counts bytes over the whole repository.
    """
    # start-up: huggingface_hub loads only when the Hub is used
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    folder.mkdir(parents=True, exist_ok=True)
    check_disk_space(folder, bytes_still_needed(folder, listing))
    check_reachable()
    bound_http_timeouts()
    total = listing.total_bytes
    done = sum(f.size for f in listing.files if file_problem(folder, f) is None)
    progress(done, total)
    for remote in listing.files:
        if file_problem(folder, remote) is None:
            continue
        if cancelled():
            raise DownloadCancelled()
        base = done

        def report(seen: int, _total: int | None, base: int = base) -> None:
            progress(base + seen, total)

        try:
            fetch_file(listing, remote, folder, token, cancelled, report)
        except GatedRepoError:
            raise HubError(_gated_message(listing.repo_id)) from None
        except HfHubHTTPError as error:
            raise HubError(f"downloading {remote.name} from {listing.repo_id} failed: "
                           f"{str(error).splitlines()[0]}") from None
        except transport_errors() as error:
            if isinstance(error, OSError) and not isinstance(error, ConnectionError):
                raise HubError(f"writing {remote.name} into {folder} failed "
                               f"({getattr(error, 'strerror', None) or error})") from None
            raise unanswered(f"the download of {remote.name}", error) from None
        problem = file_problem(folder, remote)
        if problem:
            raise HubError(f"{listing.repo_id}: {problem} after the download; run again to "
                           "fetch it anew")
        done += remote.size
        progress(done, total)
    return folder
