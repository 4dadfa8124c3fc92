"""Stand-in llama.cpp tools: small scripts that behave like a tool on a CPU where it crashes.

They replay recorded real output (tests/logs/) so the real job engine parses, judges and
renames exactly as it does for the real tools; only the crash is staged. Tests that use
them do not depend on the CPU they run on.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

LOGS = Path(__file__).parent / "logs"

_PERPLEXITY = '''#!{python}
import os, signal, sys
from pathlib import Path
here = Path(os.path.realpath(sys.argv[0])).parent
variants = sorted(p.name[len("libggml-cpu-"):-3] for p in here.glob("libggml-cpu-*.so"))
best = {best}
loaded = best if best in variants else (variants[-1] if variants else None)
if loaded:
    print(f"load_backend: loaded CPU backend from {{here}}/libggml-cpu-{{loaded}}.so", flush=True)
print("cmn          init: llama threadpool init, n_threads = 2", flush=True)
with open({calls!r}, "a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\\n")
if {mode!r} == "always" or ({mode!r} == "repack" and "--no-repack" not in sys.argv) \\
        or ({mode!r} == "variant" and loaded == best):
    os.kill(os.getpid(), signal.{signal})
sys.stdout.write(Path({log!r}).read_text())
sys.stdout.flush()
'''

_QUANTIZE = '''#!{python}
import shutil, sys
from pathlib import Path
positional = [a for a in sys.argv[1:] if not a.startswith("-")]
source, output = positional[0], positional[1]
shutil.copyfile(source, output)
sys.stderr.write(Path({log!r}).read_text())
'''


def _write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def crashing_perplexity(folder: Path, mode: str = "repack", signal: str = "SIGSEGV",
                        variants: tuple[str, ...] = (), best: str = "sapphirerapids") -> Path:
    """A ``llama-perplexity`` in ``folder`` that dies by ``signal``:

    - ``mode="repack"``: unless ``--no-repack`` is given (the AMX crash);
    - ``mode="variant"``: whenever the ``best`` CPU variant is beside it (a variant whose
      code crashes on this CPU), whatever the flags;
    - ``mode="always"``: every time.
    ``variants``: empty ``libggml-cpu-NAME.so`` files to lay beside it, as a portable build
    has. Each call's arguments are appended to ``folder/calls.txt``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in variants:
        (folder / f"libggml-cpu-{name}.so").write_bytes(b"")
    return _write_script(folder / "llama-perplexity", _PERPLEXITY.format(
        python=sys.executable, best=repr(best), calls=str(folder / "calls.txt"), mode=mode,
        signal=signal, log=str(LOGS / "perplexity.log")))


def copying_quantize(folder: Path) -> Path:
    """A ``llama-quantize`` in ``folder`` that copies its input and prints a real log."""
    folder.mkdir(parents=True, exist_ok=True)
    return _write_script(folder / "llama-quantize", _QUANTIZE.format(
        python=sys.executable, log=str(LOGS / "quantize_q4km.log")))


def calls(folder: Path) -> list[str]:
    """The argument lines the stand-in perplexity was called with, in order."""
    path = folder / "calls.txt"
    return path.read_text().splitlines() if path.is_file() else []
