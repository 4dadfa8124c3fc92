"""Search the Hugging Face Hub for GGUF repositories and judge each file's fit before a
download (LM Studio's badge), offline-aware.

Kept beside :mod:`apex_gui.core.hub` (``core/hub.py`` blocks a ``core/hub/`` package until
the architecture step moves it). ``search_repos`` takes the listing as a callable so the
search works, and is tested, without a network; the default asks the Hub and says at once
when it cannot be reached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from apex_gui.core.hub.download import (HubError, bound_http_timeouts,
                                        check_reachable, endpoint, transport_errors,
                                        unanswered)
from apex_gui.core.units import GiB, format_size

#: kept free on a GPU beside the weights (KV cache and compute of a short context)
GPU_MARGIN = 1 * GiB


@dataclass(frozen=True)
class RepoHit:
    """One repository of a search."""

    repo_id: str
    downloads: int = 0
    likes: int = 0


#: (query, limit) -> repositories; the Hub's listing or, in tests, a fixed one
Listing = Callable[[str, int], Iterable[RepoHit]]


def hub_listing(query: str, limit: int) -> list[RepoHit]:
    """The Hub's GGUF repositories matching ``query``, most downloaded first."""
    # start-up: huggingface_hub loads only when the Hub is searched
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_reachable()
    bound_http_timeouts()
    try:
        models = HfApi(endpoint=endpoint()).list_models(search=query, filter="gguf", sort="downloads", limit=limit)
        return [RepoHit(m.id, int(getattr(m, "downloads", 0) or 0), int(getattr(m, "likes", 0) or 0))
                for m in models]
    except HfHubHTTPError as error:
        raise HubError(f"the Hub answered an error for the search {query!r}: {error}") from None
    except transport_errors() as error:
        raise unanswered(f"the search {query!r}", error) from None


def search_repos(query: str, listing: Listing = hub_listing, limit: int = 30) -> list[RepoHit]:
    """Repositories for ``query`` (words must all appear in the id), most downloaded first."""
    words = query.lower().split()
    if not words:
        raise HubError("type what to search for, e.g. \"qwen3 30b gguf\" or \"APEX\"")
    hits = [h for h in listing(query, limit) if all(w in h.repo_id.lower() for w in words)]
    return sorted(hits, key=lambda h: (-h.downloads, h.repo_id.lower()))[:limit]


def fit_badge(file_bytes: int | None, gpu_free: Iterable[int], ram_available: int) -> tuple[str, str]:
    """(badge, why) for a remote file on this machine, judged on its weights alone.

    "GPU": the weights and a 1 GiB margin fit the GPUs' free memory; "GPU + RAM": together
    with system RAM (experts in RAM); "RAM": no GPU, fits RAM; "too big"; "?" size unknown.
    The Hardware & tiers panel gives the full estimate (context, KV cache) once opened.
    """
    if file_bytes is None:
        return "?", "the Hub did not give the file's size"
    vram = sum(gpu_free)
    if vram and file_bytes + GPU_MARGIN <= vram:
        return "GPU", f"{format_size(file_bytes)} of weights fit the {format_size(vram)} free on the GPU(s)"
    if vram and file_bytes + GPU_MARGIN <= vram + ram_available:
        return "GPU + RAM", (f"{format_size(file_bytes)}: more than the GPU's {format_size(vram)} free; "
                             "runs with experts in RAM (--n-cpu-moe)")
    if file_bytes + GPU_MARGIN <= ram_available:
        return "RAM", f"{format_size(file_bytes)} fit the {format_size(ram_available)} of RAM (CPU only)"
    return "too big", (f"{format_size(file_bytes)}: more than this machine's "
                       f"{format_size(vram + ram_available)} of GPU and RAM")
