"""A stand-in ``llama-quantize`` for tests of the job engine's file handling.

It is a real child process with llama-quantize's argument layout (``... SOURCE OUT TYPE
[THREADS]``) that copies the source to the output it is given and prints llama-quantize's
size lines. Two environment variables make its timing controllable without sleeping:
``APEX_STANDIN_STARTED`` (a FIFO: it writes its pid there once half the file is written)
and ``APEX_STANDIN_GO`` (a FIFO: it waits for a writer to close it before finishing).
``APEX_STANDIN_ARGV`` (a file) records the argument list it was given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

STAND_IN_QUANTIZE = '''#!{python}
import json, os, sys
args = sys.argv[1:]
if os.environ.get("APEX_STANDIN_ARGV"):
    with open(os.environ["APEX_STANDIN_ARGV"], "w") as handle:
        json.dump(sys.argv, handle)
outputs = [i for i, a in enumerate(args) if a.endswith(".partial")]
if not outputs:
    print("usage: llama-quantize [options] model-f32.gguf [model-quant.gguf] type [nthreads]")
    sys.exit(1)
out = args[outputs[-1]]
source = args[outputs[-1] - 1]
data = open(source, "rb").read()
half = len(data) // 2
try:
    with open(out, "wb") as handle:
        handle.write(data[:half])
        handle.flush()
        if os.environ.get("APEX_STANDIN_STARTED"):
            with open(os.environ["APEX_STANDIN_STARTED"], "w") as started:
                started.write(f"{{os.getpid()}}\\n")
        if os.environ.get("APEX_STANDIN_GO"):
            with open(os.environ["APEX_STANDIN_GO"]) as go:
                go.read()
        handle.write(data[half:])
except OSError as error:  # as llama-quantize: one line, exit 1 (a full disk)
    print(f"llama_model_quantize: failed to quantize: {{error.strerror}}")
    sys.exit(1)
mib = len(data) / 2**20
print(f"llama_model_quantize_impl: model size  = {{mib:8.2f}} MiB (16.02 BPW)")
print(f"llama_model_quantize_impl: quant size  = {{mib:8.2f}} MiB (16.02 BPW)")
'''


def make_stand_in_tools(folder: Path) -> Path:
    """A folder holding the stand-in ``llama-quantize``; pass it as ``--llama-cpp-dir``."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "llama-quantize"
    tool.write_text(STAND_IN_QUANTIZE.format(python=sys.executable))
    tool.chmod(0o755)
    return folder


def cli(*args: str) -> list[str]:
    """The argument list that runs ``apex-studio ARGS`` in a fresh interpreter."""
    return [sys.executable, "-m", "apex_gui.cli", *args]


def types_file(folder: Path) -> Path:
    """A one-line tensor-type file every synthetic MoE model matches."""
    path = folder / "types.txt"
    path.write_text("ffn_down_exps=q8_0\n")
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path
