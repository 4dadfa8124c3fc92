"""Helpers for the Hugging Face round-trip and kill-and-resume tests: the exported demo
checkpoint served by the local Hub, the pipeline CLI run as a user runs it, and gated copies
of the tools (a gated tool waits at its start until the test lets it go or kills the run)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_GGUF = REPO / "resources" / "demo" / "apex-demo-trained-qwen2moe-f16.gguf"
HUB_REPO = "apex-tests/demo-qwen2moe"
#: The same small run everywhere: one I-profile (imatrix + quantize), KL divergence.
PIPELINE_ARGS = ["--profiles", "i-mini", "--eval", "--kld", "--pre-tokenizer", "gpt-2",
                 "--imatrix-ctx", "128", "--imatrix-chunks", "2", "--ctx", "128",
                 "--chunks", "2", "-t", "2"]
LLAMA_TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-bench",
               "llama-gguf-split", "llama-completion", "llama-tokenize", "llama-fit-params")

GATE_SCRIPT = '''
import os, runpy, sys, time
from pathlib import Path
real, gates = sys.argv[1], Path(os.environ["APEX_TEST_GATES"])
name = Path(real).name
gate = gates / name
if gate.exists():
    needed = gate.read_text().strip()
    if not needed or needed in sys.argv[2:]:
        (gates / (name + ".waiting")).write_text(str(os.getpid()))
        while gate.exists():
            time.sleep(0.05)
if real.endswith(".py"):
    sys.argv = [real, *sys.argv[2:]]
    sys.path[0] = str(Path(real).parent)
    runpy.run_path(real, run_name="__main__")
else:
    os.execv(real, [real, *sys.argv[2:]])
'''


def export_demo(folder: Path) -> Path:
    """The bundled demo as a Hugging Face checkpoint (training/export_hf.py)."""
    subprocess.run([sys.executable, str(REPO / "training" / "export_hf.py"), str(DEMO_GGUF),
                    "-o", str(folder)], check=True, capture_output=True, timeout=300)
    return folder


def gated_tools(folder: Path, tools_bin: Path, converter: Path) -> Path:
    """A llama.cpp folder whose tools and converter wait at ``$APEX_TEST_GATES/NAME``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gate.py").write_text(GATE_SCRIPT)
    for tool in LLAMA_TOOLS:
        wrapper = folder / tool
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{folder / "gate.py"}" '
                           f'"{tools_bin / tool}" "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    (folder / "convert_hf_to_gguf.py").write_text(
        "import runpy, sys\n"
        f"sys.argv = [{str(folder / 'gate.py')!r}, {str(converter / 'convert_hf_to_gguf.py')!r},"
        " *sys.argv[1:]]\n"
        f"runpy.run_path({str(folder / 'gate.py')!r}, run_name='__main__')\n")
    for part in ("conversion", "gguf-py"):
        (folder / part).symlink_to(converter / part, target_is_directory=True)
    return folder


def cli_env(home: Path, hub_url: str, gates: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_ARG_", "HF_"))}
    for name in ("CONFIG", "DATA", "CACHE"):
        (home / name.lower()).mkdir(parents=True, exist_ok=True)
        env[f"APEX_STUDIO_{name}_DIR"] = str(home / name.lower())
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(home / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONUNBUFFERED="1")
    if gates is not None:
        env["APEX_TEST_GATES"] = str(gates)
    return env


def start_pipeline(work: Path, env: dict[str, str], extra: list[str] = ()) -> subprocess.Popen:
    command = [sys.executable, "-m", "apex_gui", "pipeline", f"hf://{HUB_REPO}",
               "--output-dir", str(work), *PIPELINE_ARGS, *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)


def wait_for(condition, process: subprocess.Popen, what: str, limit: float = 300.0) -> None:
    """Wait until ``condition()`` holds; fail with the CLI's output if the run ends first."""
    deadline = time.monotonic() + limit
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the pipeline ended before {what}:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {what} within {limit:.0f} s")
        time.sleep(0.05)
