"""What a model file is, by its content: caches keyed by it survive a copy, a move or a touch
of the file, and miss when the file is re-converted."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

#: Bytes read at the start (the GGUF header and tensor table of most models).
HEAD_BYTES = 1 << 20
#: Evenly spaced samples of the rest, and their size: a few MiB even of a 400 GB file.
SAMPLES = 16
SAMPLE_BYTES = 64 << 10


def content_fingerprint(paths: Sequence[Path]) -> str:
    """Each file's size, its first MiB and evenly spaced samples of its data, hashed."""
    digest = hashlib.sha256()
    for path in paths:
        size = path.stat().st_size
        digest.update(str(size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(HEAD_BYTES))
            for index in range(SAMPLES):
                handle.seek(size * index // SAMPLES)
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()
