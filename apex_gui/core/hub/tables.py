"""Sensitivity tables from a file or from a Hugging Face repository.

A table measured once can be published beside the GGUF and the imatrix; ``optimize
--sensitivity`` and the window take ``hf://OWNER/REPO/PATH/FILE.json`` as well as a local
path. The file is downloaded through huggingface_hub (its cache, its token, ``HF_ENDPOINT``)
after its size was checked, and is then checked like a local one: format, numbers, and the
model fingerprint (a table of another model is refused with one line).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote
from typing import TYPE_CHECKING

from apex_gui.core.hub.download import (api_timeout_s, HubError, check_reachable, endpoint,
                                        validate_repo_id)
from apex_gui.core.quality.table import TABLE_CAP_BYTES, SensitivityTable
from apex_gui.core.units import format_size

if TYPE_CHECKING:
    from apex_gui.core.gguf.model import ModelInfo

HUB_PREFIX = "hf://"
_HUB_SPEC = re.compile(r"^hf://(?P<repo>[^/]+/[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<file>.+)$")


class TableDownloadError(HubError, ValueError):
    """A table that could not be fetched from the Hub; one line saying what to do."""


def is_hub_spec(spec: str) -> bool:
    return spec.startswith(HUB_PREFIX)


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """(repository id, revision or None, file path in the repository)."""
    match = _HUB_SPEC.match(spec)
    if not match or ".." in match.group("file").split("/"):
        raise TableDownloadError(f"{spec} is not a file on the Hub; write "
                                 "hf://OWNER/REPO/FILE.json (hf://OWNER/REPO@REVISION/FILE.json "
                                 "for another revision)")
    return validate_repo_id(match.group("repo")), match.group("rev"), match.group("file")


def _network_errors() -> tuple[type[BaseException], ...]:
    """What the Hub client raises when the network fails: OSErrors and its HTTP client's
    transport errors (not OSErrors)."""
    try:
        import httpx2  # optional: the HTTP client of huggingface_hub 2.x only
    except ImportError:
        return (OSError,)
    return (OSError, httpx2.TransportError)


def download_table(spec: str, token: str | None = None) -> Path:
    """The table file of ``hf://OWNER/REPO/FILE`` in the Hub cache (downloaded if needed)."""
    # start-up: huggingface_hub loads only when a table is fetched
    from huggingface_hub import get_hf_file_metadata, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        repo_id, revision, name = parse_hub_spec(spec)
        check_reachable()
    except HubError as error:
        raise TableDownloadError(str(error)) from None
    hub = endpoint()  # HF_ENDPOINT, or what the window set: the client's own is fixed at import
    url = (f"{hub.rstrip('/')}/{repo_id}/resolve/{quote(revision or 'main', safe='')}/"
           f"{quote(name)}")
    try:
        meta = get_hf_file_metadata(url, token=token, timeout=api_timeout_s(), endpoint=hub)
        if meta.size is not None and meta.size > TABLE_CAP_BYTES:
            raise TableDownloadError(f"{spec} is {format_size(meta.size)}, more than a "
                                     f"sensitivity table can be ({format_size(TABLE_CAP_BYTES)})"
                                     "; check the file name")
        local = hf_hub_download(repo_id, name, revision=revision, token=token,
                                etag_timeout=api_timeout_s(), endpoint=hub)
    except GatedRepoError:
        raise TableDownloadError(f"{repo_id} is gated: accept its terms on huggingface.co and "
                                 "log in (`hf auth login`) so the token is found") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise TableDownloadError(f"{spec}: the repository {repo_id} was not found (or is "
                                 "private: log in with `hf auth login`)") from None
    except EntryNotFoundError:
        raise TableDownloadError(f"{spec}: {repo_id} has no file {name}; check the path") \
            from None
    except HfHubHTTPError as error:
        raise TableDownloadError(f"{spec}: the Hub answered an error ({error})") from None
    except _network_errors() as error:
        raise TableDownloadError(f"{spec} could not be downloaded "
                                 f"({error or type(error).__name__}); check the network and "
                                 "the free disk space of the Hugging Face cache (HF_HOME)") \
            from None
    return Path(str(local))


def fetch_table(spec: str, model: ModelInfo | None = None,
                token: str | None = None) -> SensitivityTable:
    """A table from a local path or ``hf://...``; with ``model``, checked to be its table.

    Both kinds of refusal are ValueErrors: one line for the command line."""
    path = download_table(spec, token) if is_hub_spec(spec) else Path(spec)
    return SensitivityTable.load(path, model)
