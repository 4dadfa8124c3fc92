"""Stand-in llama.cpp tools: small scripts that behave like a tool on a CPU where it crashes.

They replay recorded real output (tests/logs/) so the real job engine parses, judges and
renames exactly as it does for the real tools; only the crash is staged. Tests that use
them do not depend on the CPU they run on.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import pynvml

from apex_gui.core.fit import hardware
from apex_gui.core.fit.hardware import NvmlMemory
from apex_gui.core.jobs.run_store import RunStore
from apex_gui.core.plan.profiles import builtin_profiles
from apex_gui.core.report.card_facts import CardInputs, ModelFacts, card_file_name, quant_recipes
from apex_gui.core.report.model_card import card_files
from apex_gui.core.report.results import collect_results
from apex_gui.core.units import GiB

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
log = {log!r}
if "--kl-divergence" in sys.argv:
    log = {kld_log!r}
elif "--kl-divergence-base" in sys.argv:
    # Reference logits: a file as long as its header promises (n_ctx 128, a byte
    # vocabulary, one chunk), as the runner checks before keeping it.
    import struct
    n_ctx, n_vocab, n_chunk = 128, 259, 1
    values = 2 * ((n_vocab + 1) // 2) + 4
    size = n_chunk * n_ctx * 4 + n_chunk * (n_ctx - 1 - n_ctx // 2) * values * 2
    base = sys.argv[sys.argv.index("--kl-divergence-base") + 1]
    Path(base).write_bytes(b"_logits_" + struct.pack("<iii", n_ctx, n_vocab, n_chunk)
                           + bytes(size))
sys.stdout.write(Path(log).read_text())
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
    Otherwise it prints a recorded perplexity log; with ``--kl-divergence`` a recorded KL
    divergence log; with ``--kl-divergence-base FILE`` alone it also writes FILE (reference
    logits of a complete size). ``variants``: empty ``libggml-cpu-NAME.so`` files to lay
    beside it, as a portable build has. Each call's arguments are appended to
    ``folder/calls.txt``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in variants:
        (folder / f"libggml-cpu-{name}.so").write_bytes(b"")
    return _write_script(folder / "llama-perplexity", _PERPLEXITY.format(
        python=sys.executable, best=repr(best), calls=str(folder / "calls.txt"), mode=mode,
        signal=signal, log=str(LOGS / "perplexity.log"), kld_log=str(LOGS / "kld.log")))


def copying_quantize(folder: Path) -> Path:
    """A ``llama-quantize`` in ``folder`` that copies its input and prints a real log."""
    folder.mkdir(parents=True, exist_ok=True)
    return _write_script(folder / "llama-quantize", _QUANTIZE.format(
        python=sys.executable, log=str(LOGS / "quantize_q4km.log")))


def calls(folder: Path) -> list[str]:
    """The argument lines the stand-in perplexity was called with, in order."""
    path = folder / "calls.txt"
    return path.read_text().splitlines() if path.is_file() else []


def nvml_error(code: int) -> pynvml.NVMLError:
    """The exception pynvml itself raises for ``code`` (a code-specific subclass)."""
    return pynvml.NVMLError(code)


@dataclass
class FakeGpu:
    """One device as the fake NVML sees it; ``memory`` may be an error to raise."""

    name: str
    uuid: str
    pci_bus_id: str = "00000000:01:00.0"
    memory: NvmlMemory | Exception = NvmlMemory(24 * GiB, 20 * GiB, 4 * GiB)
    # Consumer cards answer NOT_SUPPORTED for MIG mode.
    mig_mode: tuple[int, int] | Exception = field(
        default_factory=lambda: nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
    )
    # MIG slots; None is an empty slot (NVML answers NOT_FOUND).
    mig_slots: list[FakeGpu | None] = field(default_factory=list)
    name_error: Exception | None = None


class FakeNvml:
    """An in-memory NvmlBackend: handles are the FakeGpu objects themselves."""

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        init_error: BaseException | None = None,
        driver: str = "550.54.15",
        cuda: int = 12040,
    ) -> None:
        self.gpus = gpus or []
        self.init_error = init_error
        self.driver = driver
        self.cuda = cuda
        self.initialized = False
        self.shutdown_calls = 0

    def _check(self) -> None:
        if not self.initialized:
            raise nvml_error(pynvml.NVML_ERROR_UNINITIALIZED)

    def init(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.initialized = True

    def shutdown(self) -> None:
        self._check()
        self.initialized = False
        self.shutdown_calls += 1

    def device_count(self) -> int:
        self._check()
        return len(self.gpus)

    def handle_by_index(self, index: int) -> object:
        self._check()
        if not 0 <= index < len(self.gpus):
            raise nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[index]

    def name(self, handle: object) -> str:
        assert isinstance(handle, FakeGpu)
        if handle.name_error is not None:
            raise handle.name_error
        return handle.name

    def uuid(self, handle: object) -> str:
        assert isinstance(handle, FakeGpu)
        return handle.uuid

    def pci_bus_id(self, handle: object) -> str:
        assert isinstance(handle, FakeGpu)
        if handle.uuid.startswith("MIG-"):
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return handle.pci_bus_id

    def memory_info(self, handle: object) -> NvmlMemory:
        assert isinstance(handle, FakeGpu)
        if isinstance(handle.memory, Exception):
            raise handle.memory
        return handle.memory

    def driver_version(self) -> str:
        self._check()
        return self.driver

    def cuda_driver_version(self) -> int:
        self._check()
        return self.cuda

    def mig_mode(self, handle: object) -> tuple[int, int]:
        assert isinstance(handle, FakeGpu)
        if isinstance(handle.mig_mode, Exception):
            raise handle.mig_mode
        return handle.mig_mode

    def max_mig_device_count(self, handle: object) -> int:
        assert isinstance(handle, FakeGpu)
        return len(handle.mig_slots)

    def mig_device_handle_by_index(self, handle: object, index: int) -> object:
        assert isinstance(handle, FakeGpu)
        slot = handle.mig_slots[index]
        if slot is None:
            raise nvml_error(pynvml.NVML_ERROR_NOT_FOUND)
        return slot


FACTS = ModelFacts(name="Qwen3.5-35B-A3B", architecture="qwen35moe", n_layer=40,
                   n_leading_dense=0, n_expert=256, n_expert_used=8, n_expert_shared=1,
                   total_params=35_000_000_000, active_params=3_000_000_000,
                   context_length=262_144, mixers=(("linear attention / SSM", 30),
                                                   ("full attention", 10)), license="apache-2.0")


def record(store: RunStore, kind: str, spec: dict, results: dict, output: str | None = None) -> int:
    run_id = store.start(kind, f"{kind} run", {"kind": kind, **spec}, ["tool"], output)
    store.finish(run_id, "succeeded", 0, "ok", "log", results)
    return run_id


def inputs_from(store: RunStore, tmp_path: Path) -> CardInputs:
    profiles = builtin_profiles()
    rows = collect_results(store, reference=tmp_path / "qwen-f16.gguf")
    files = card_files(rows, quant_recipes(store), "Qwen3.5-35B-A3B", profiles,
                       mmproj=("mmproj-F16.gguf", 899_000_000))
    names = {r.path: card_file_name("Qwen3.5-35B-A3B", profiles[r.profile].label)
             for r in rows if r.kind == "apex"}
    from apex_gui.core.report.model_card import renamed_results

    return CardInputs(repo_id="alice/Qwen3.5-35B-A3B-APEX-GGUF", model_name="Qwen3.5-35B-A3B",
                      files=tuple(files), facts=FACTS, base_model="Qwen/Qwen3.5-35B-A3B",
                      profiles={k: profiles[k] for k in ("quality", "i-quality", "compact")},
                      results=renamed_results(rows, names), context=8192,
                      measured_on="CPU (2 threads)")


def fake_snapshot(free_gib: float = 22, total_gib: float = 24) -> hardware.HardwareSnapshot:
    """A snapshot through the fake NVML backend of tests/test_hardware.py."""
    gpu = FakeGpu("NVIDIA GeForce RTX 4090", "GPU-aaaa",
                  memory=NvmlMemory(int(total_gib * GiB), int(free_gib * GiB),
                                    int((total_gib - free_gib) * GiB)))
    return hardware.snapshot(backend=FakeNvml([gpu]))


_COMPLETION = '''#!{python}
import os, signal, sys
if "--no-repack" not in sys.argv:
    os.kill(os.getpid(), signal.SIGSEGV)
sys.stdout.write(" of abstraction, recursion and caching.")
sys.stdout.flush()
sys.stderr.write("common_perf_print: prompt eval time =      10.00 ms /    10 tokens (    1.00 ms "
                 "per token,  1000.00 tokens per second)\\n")
sys.stderr.write("common_perf_print:        eval time =      40.00 ms /     4 runs   (   10.00 ms "
                 "per token,   100.00 tokens per second)\\n")
'''


def crashing_completion(folder: Path) -> Path:
    """A ``llama-completion`` that dies by SIGSEGV unless ``--no-repack`` is given."""
    folder.mkdir(parents=True, exist_ok=True)
    return _write_script(folder / "llama-completion", _COMPLETION.format(python=sys.executable))


_SILENT_COMPLETION = '''#!{python}
import pathlib, sys
# Counts its runs in a file beside it; writes its text only from run {speaks_on} on, as
# llama-completion does when its logger drops the text at exit (llama.cpp issue 22142).
count = pathlib.Path(sys.argv[0]).with_suffix(".runs")
runs = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(runs))
if runs >= {speaks_on}:
    sys.stdout.write(" of abstraction, recursion and caching.")
'''


def silent_completion(folder: Path, speaks_on: int) -> Path:
    """A ``llama-completion`` that exits 0 with no text until its ``speaks_on``-th run."""
    folder.mkdir(parents=True, exist_ok=True)
    return _write_script(folder / "llama-completion",
                         _SILENT_COMPLETION.format(python=sys.executable, speaks_on=speaks_on))


# --- a controllable llama-quantize (file handling, locks, kills) ------------------------------
#
# A stand-in ``llama-quantize`` for tests of the job engine's file handling.
# 
# It is a real child process with llama-quantize's argument layout (``... SOURCE OUT TYPE
# [THREADS]``) that copies the source to the output it is given and prints llama-quantize's
# size lines. Two environment variables make its timing controllable without sleeping:
# ``APEX_STANDIN_STARTED`` (a FIFO: it writes its pid there once half the file is written)
# and ``APEX_STANDIN_GO`` (a FIFO: it waits for a writer to close it before finishing).
# ``APEX_STANDIN_ARGV`` (a file) records the argument list it was given.




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


#: Resets SIGINT to its default, then becomes the CLI: a test run started in the background
#: (CI, ``make test &``) ignores SIGINT, every child inherits that, and the CLI rightly keeps
#: an ignored SIGINT ignored; a user's Ctrl-C in a terminal is what these tests mean.
_AS_FROM_A_TERMINAL = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                       "os.execv(sys.executable, [sys.executable, '-m', 'apex_gui.cli', "
                       "*sys.argv[1:]])")


def cli_from_a_terminal(*args: str) -> list[str]:
    """As :func:`cli`, with SIGINT delivered as in a terminal whatever this process ignores."""
    return [sys.executable, "-c", _AS_FROM_A_TERMINAL, *args]


def types_file(folder: Path) -> Path:
    """A one-line tensor-type file every synthetic MoE model matches."""
    path = folder / "types.txt"
    path.write_text("ffn_down_exps=q8_0\n")
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def refused(capsys: pytest.CaptureFixture[str], args: list[str], *words: str) -> str:
    """Run ``apex-studio ARGS``: exit 2 with one line, no traceback, naming each of ``words``."""
    from apex_gui.cli import main

    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], err
    return lines[0]


# --- hostile tools: hung, endless, aborting, behind a shell wrapper ---------------------------

_HUNG = '''#!{python}
import os, time
from pathlib import Path
Path({pid_file!r}).write_text(str(os.getpid()))
print("{name}: loading the model", flush=True)
while True:  # a tool stuck for good (a deadlock, a dead network share)
    time.sleep(3600)
'''

_ENDLESS = '''#!{python}
import os
from pathlib import Path
Path({pid_file!r}).write_text(str(os.getpid()))
piece = b"llama_model_loader: - kv  12: endless output of a tool gone wrong " * 16
piece += b"\\n" if {newline!r} else b""
while True:
    os.write(1, piece)
'''

_ABORTING = '''#!{python}
import os, sys
from pathlib import Path
with open({calls!r}, "a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\\n")
sys.stdout.write(Path({log!r}).read_text())
sys.stdout.flush()
os.abort()
'''


def pid_file(folder: Path, name: str) -> Path:
    """Where the stand-in ``name`` in ``folder`` writes its process id once it runs."""
    return folder / f"{name}.pid"


def hung_tool(folder: Path, name: str = "llama-quantize") -> Path:
    """A tool that prints one line and then never ends (its pid in :func:`pid_file`)."""
    folder.mkdir(parents=True, exist_ok=True)
    return _write_script(folder / name, _HUNG.format(
        python=sys.executable, pid_file=str(pid_file(folder, name)), name=name))


def endless_tool(folder: Path, name: str = "llama-perplexity", newline: bool = True) -> Path:
    """A tool that prints without end (with or without line breaks)."""
    folder.mkdir(parents=True, exist_ok=True)
    return _write_script(folder / name, _ENDLESS.format(
        python=sys.executable, pid_file=str(pid_file(folder, name)), newline=newline))


def shell_wrapped(tool: Path) -> Path:
    """Put ``tool`` behind a shell script of its name that runs it as a child (no exec), as
    distributions and module systems wrap binaries; the real tool moves to ``.real-NAME``."""
    real = tool.with_name(f".real-{tool.name}")
    tool.rename(real)
    return _write_script(tool, f'#!/bin/sh\n"{real}" "$@"\necho "wrapper: done"\n')


def aborting_tool(folder: Path, name: str = "llama-perplexity",
                  log: str = "ggml_assert_layers.log",
                  variants: tuple[str, ...] = ()) -> Path:
    """A tool that prints a recorded llama.cpp abort (a failed GGML_ASSERT) and dies by
    SIGABRT, as the real one does on a model with 1,000 layers (llama.cpp caps at 512).
    ``variants``: empty CPU-variant libraries beside it; calls go to ``folder/calls.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        (folder / f"libggml-cpu-{variant}.so").write_bytes(b"")
    return _write_script(folder / name, _ABORTING.format(
        python=sys.executable, calls=str(folder / "calls.txt"), log=str(LOGS / log)))


_LOSING_KLD = '''#!{python}
import sys
from pathlib import Path
with open({calls!r}, "a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\\n")
log = Path({log!r}).read_text()
# llama.cpp's logger dropped the closing statistics at exit (issue 22142).
sys.stdout.write(log[:log.index("====== Perplexity statistics")])
'''


def statistics_losing_perplexity(folder: Path) -> Path:
    """A ``llama-perplexity --kl-divergence`` whose closing statistics are lost on every run
    (the per-chunk table arrives whole); calls go to ``folder/calls.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    return _write_script(folder / "llama-perplexity", _LOSING_KLD.format(
        python=sys.executable, calls=str(folder / "calls.txt"), log=str(LOGS / "kld.log")))
