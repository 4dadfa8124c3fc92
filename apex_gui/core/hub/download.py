"""Hugging Face Hub access: list a repository's GGUF files with sizes, download into the cache.

Every call checks that the Hub can be reached first, with a short timeout, so a machine
without network gets "no network" in seconds instead of a long wait on retries. Files land
in huggingface_hub's standard cache (shared with every other tool that uses it), and a split
model's shards are downloaded together.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3.0
#: Longest wait for any one answer of the Hub (a listing, a search, the next bytes of a
#: download): a server that accepts the connection and then says nothing fails the call
#: instead of stalling it. ``APEX_HUB_TIMEOUT_S`` changes it (a slow proxy; tests).
API_TIMEOUT_S = float(os.environ.get("APEX_HUB_TIMEOUT_S") or 20.0)


def api_timeout_s() -> float:
    """The timeout in force, read at each call: every Hub call and its message use this one
    value (a name imported elsewhere would be a copy, fixed at import)."""
    return API_TIMEOUT_S

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHARD = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


class HubError(Exception):
    """A Hub problem the user can act on; the message says what to do."""


class HubUnreachable(HubError):
    """No network (or offline mode): nothing can be listed or downloaded."""


class DownloadCancelled(Exception):
    """The user stopped a download; the partial file stays in the cache for a resume."""


@dataclass(frozen=True)
class RemoteFile:
    """One GGUF file of a repository (``shards`` > 1: the first shard of a split model)."""

    name: str
    size: int | None
    shards: tuple[str, ...] = ()


def _bounded_client() -> Any:
    """huggingface_hub's own HTTP client, with a timeout on every request.

    Its default client has none, and it passes ``timeout=None`` (no limit) on searches and
    listings; a stalled answer becomes :class:`HubStalled`, which huggingface_hub does not
    retry five times over (a stalled search would otherwise take minutes to fail).
    """
    # start-up: huggingface_hub and its HTTP client load only when the Hub is used
    import httpx2
    from huggingface_hub.utils._http import hf_request_event_hook

    class HubStalled(httpx2.TransportError):
        """The Hub accepted the request and did not answer in time."""

    class BoundedClient(httpx2.Client):
        def send(self, request: Any, **kwargs: Any) -> Any:
            limits = request.extensions.get("timeout") or {}
            if limits.get("read") is None:
                request.extensions["timeout"] = self.timeout.as_dict()
            try:
                return super().send(request, **kwargs)
            except httpx2.TimeoutException as error:
                raise HubStalled(str(error) or "timed out", request=request) from error

    return BoundedClient(event_hooks={"request": [hf_request_event_hook]},
                         follow_redirects=True,
                         timeout=httpx2.Timeout(API_TIMEOUT_S, connect=CONNECT_TIMEOUT_S * 2))


_bounded = False


def bound_http_timeouts() -> None:
    """Make every huggingface_hub request of this process time out (searches too)."""
    global _bounded
    if _bounded:
        return
    # start-up: huggingface_hub loads only when the Hub is used
    from huggingface_hub import close_session, set_client_factory

    set_client_factory(_bounded_client)
    close_session()
    _bounded = True


def transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures of huggingface_hub's HTTP client (they are not OSErrors)."""
    # start-up: the Hub's HTTP client loads only when the Hub is used
    import httpx2

    return (OSError, httpx2.TransportError)


def unanswered(what: str, error: BaseException) -> HubUnreachable:
    """The one line for a Hub call that failed on the network (no answer, reset, timeout)."""
    # start-up: the Hub's HTTP client loads only when the Hub is used
    import httpx2

    host = urlparse(endpoint()).hostname or endpoint()
    if isinstance(error, httpx2.TimeoutException) or type(error).__name__ == "HubStalled":
        return HubUnreachable(f"{host} did not answer {what} within {API_TIMEOUT_S:g} s: the "
                              "Hub or a proxy is stalled; try again later (or set "
                              "APEX_HUB_TIMEOUT_S for a slow link)")
    return HubUnreachable(f"No network: {what} failed ({type(error).__name__}: {error})")


def endpoint() -> str:
    # start-up: huggingface_hub loads only when the Hub is used
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def token_status() -> str:
    """Whether a Hugging Face token is configured (read locally; never touches the network)."""
    # start-up: huggingface_hub loads only when the Hub is used
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        return "no token: public repositories only (run `hf auth login` or set HF_TOKEN for gated ones)"
    source = "HF_TOKEN" if os.environ.get("HF_TOKEN") else "saved login"
    return f"token found ({source}, ends in ...{token[-4:]})"


def check_reachable(timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`HubUnreachable` unless a TCP connection to the Hub opens within ``timeout``."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise HubUnreachable("Hugging Face offline mode is on (HF_HUB_OFFLINE is set): unset it "
                             "to list or download files.")
    url = urlparse(endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise HubUnreachable(
            f"No network: cannot reach {host} ({reason}). Connect this machine to the internet "
            "(or set HTTPS_PROXY), or download the .gguf elsewhere and open it with File > Open."
        ) from None


def validate_repo_id(repo_id: str) -> str:
    repo_id = repo_id.strip().removeprefix("https://huggingface.co/").strip("/")
    if not _REPO_ID.match(repo_id):
        raise HubError(f"{repo_id!r} is not a repository id; write OWNER/NAME, e.g. "
                       "mudler/Qwen3.5-35B-A3B-APEX-GGUF")
    return repo_id


def group_gguf_files(files: list[tuple[str, int | None]]) -> list[RemoteFile]:
    """GGUF files of a listing; the shards of a split model become one entry (sizes summed)."""
    singles: list[RemoteFile] = []
    split: dict[str, list[tuple[str, int | None]]] = {}
    for name, size in files:
        if not name.lower().endswith(".gguf"):
            continue
        match = _SHARD.match(name)
        if match:
            split.setdefault(f"{match.group('stem')}|{match.group('count')}", []).append((name, size))
        else:
            singles.append(RemoteFile(name, size))
    for parts in split.values():
        parts.sort()
        sizes = [s for _, s in parts]
        total = sum(s for s in sizes if s is not None) if all(s is not None for s in sizes) else None
        singles.append(RemoteFile(parts[0][0], total, tuple(n for n, _ in parts)))
    return sorted(singles, key=lambda f: f.name.lower())


def list_gguf_files(repo_id: str, token: str | None = None) -> list[RemoteFile]:
    """The GGUF files of a model repository with their sizes."""
    # start-up: huggingface_hub loads only when the Hub is used
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    repo_id = validate_repo_id(repo_id)
    check_reachable()
    bound_http_timeouts()
    try:
        info = HfApi(endpoint=endpoint()).model_info(repo_id, files_metadata=True, timeout=API_TIMEOUT_S, token=token)
    except GatedRepoError:
        raise HubError(f"{repo_id} is gated: accept its terms on huggingface.co and log in "
                       "(`hf auth login`) so the token is found") from None
    except RepositoryNotFoundError:
        raise HubError(f"{repo_id} was not found (or is private: log in with `hf auth login`)") from None
    except HfHubHTTPError as error:
        raise HubError(f"the Hub answered an error for {repo_id}: {error}") from None
    except transport_errors() as error:
        raise unanswered(f"the listing of {repo_id}", error) from None
    siblings = info.siblings or []
    return group_gguf_files([(s.rfilename, s.size) for s in siblings])


def progress_class(cancelled: Callable[[], bool],
                    progress: Callable[[int, int | None], None]) -> type:
    """A tqdm class that forwards byte counts and stops the download when cancelled."""
    # start-up: tqdm (huggingface_hub's) loads only for a download
    from tqdm.auto import tqdm

    class _Progress(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True  # no console output from a window
            super().__init__(*args, **kwargs)
            self._seen = 0

        def update(self, n: float | None = 1) -> bool | None:
            if cancelled():
                raise DownloadCancelled()
            self._seen += int(n or 0)
            progress(self._seen, self.total)
            return None

    return _Progress


def download_gguf(repo_id: str, remote: RemoteFile, token: str | None = None,
                  cancelled: Callable[[], bool] = lambda: False,
                  progress: Callable[[str, int, int | None], None] = lambda *_: None) -> Path:
    """Download a GGUF (every shard of a split one) into the Hub cache; returns the first path."""
    # start-up: huggingface_hub loads only when the Hub is used
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    repo_id = validate_repo_id(repo_id)
    check_reachable()
    bound_http_timeouts()
    paths: list[Path] = []
    for name in remote.shards or (remote.name,):
        try:
            local = hf_hub_download(
                repo_id, name, token=token, etag_timeout=API_TIMEOUT_S, endpoint=endpoint(),
                tqdm_class=progress_class(cancelled, lambda done, total, n=name: progress(n, done, total)))
        except HfHubHTTPError as error:
            raise HubError(f"downloading {name} from {repo_id} failed: {error}") from None
        except transport_errors() as error:
            if not isinstance(error, OSError):
                raise unanswered(f"the download of {name}", error) from None
            raise HubError(f"downloading {name} from {repo_id} failed: {error}. Check the "
                           "network and the free disk space of the Hugging Face cache "
                           "(HF_HOME)") from None
        paths.append(Path(str(local)))
    return paths[0]
