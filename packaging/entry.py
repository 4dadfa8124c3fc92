"""Entry script of the frozen app (PyInstaller): the same as the ``apex-studio`` command.

In a frozen app ``sys.executable`` is the app itself, so code that re-launches Python with
``[sys.executable, "-m", "apex_gui.something", ...]`` (the window's 200% screenshot child does)
would hand ``-m`` to the command line parser. ``apex-studio -m apex_gui.MODULE ARGS`` is
therefore run like ``python -m apex_gui.MODULE ARGS``; only the app's own modules are allowed.
"""

import multiprocessing
import runpy
import sys


def _run_module_flag() -> bool:
    if len(sys.argv) >= 3 and sys.argv[1] == "-m" and sys.argv[2].split(".")[0] == "apex_gui":
        module = sys.argv[2]
        sys.argv = [sys.argv[0], *sys.argv[3:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return True
    return False


if __name__ == "__main__":
    multiprocessing.freeze_support()  # a no-op unless a child process is a frozen re-launch
    if not _run_module_flag():
        from apex_gui.cli import main

        raise SystemExit(main())
