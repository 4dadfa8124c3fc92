"""Application start-up: ``apex-studio [MODEL.gguf] [--screenshot DIR]``.

Without a model the window opens the bundled demo (a small trained MoE with its measured
sensitivity, copied to the cache on first run) so a newcomer sees a real heatmap and real
quality figures at once. ``--screenshot DIR`` renders
every main view to PNG files and exits: the documentation images and a visual check.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from apex_gui import __version__
from apex_gui.core.jobs.history_recovery import open_history
from apex_gui.core.settings import load_settings, log_warnings, read_settings
from apex_gui.preflight import check_gui
from apex_gui.screenshots.window_shots import SCREENSHOT_VIEWS, take_screenshots
from apex_gui.screenshots.quality_shots import QUALITY_VIEWS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apex-studio", description="APEX Studio window.")
    parser.add_argument("model", nargs="?", help="a .gguf file to open (default: the demo model)")
    parser.add_argument("--screenshot", metavar="DIR",
                        help="render each main view of the bundled demo to DIR/*.png and exit")
    parser.add_argument("--only", choices=SCREENSHOT_VIEWS + QUALITY_VIEWS, action="append",
                        help=argparse.SUPPRESS)  # the 200%% scale run in a child process; one view
    parser.add_argument("--theme", choices=("system", "light", "dark"),
                        help="override the theme from the settings for this run")
    return parser


def create_application(argv: Sequence[str] = ()):  # type: ignore[no-untyped-def]
    """The QApplication with name, icon and theme set (reused when one exists: tests)."""
    # start-up: Qt loads only after main's preflight has checked that it can start here
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    # start-up: these import Qt too
    from apex_gui.qt.gui_thread_gc import pin_garbage_collection_to_gui_thread
    from apex_gui.views import style

    app = QApplication.instance()
    if app is None:
        # Fractional scales (125%, 150%) render at their real size instead of rounding.
        QGuiApplication.setHighDpiScaleFactorRoundingPolicy(
            Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
        app = QApplication(["apex-studio", *argv])
    app.setApplicationName("APEX Studio")
    app.setApplicationVersion(__version__)
    app.setOrganizationName("apex-studio")
    app.setDesktopFileName("apex-studio")
    app.setWindowIcon(style.icon("apex-studio"))
    pin_garbage_collection_to_gui_thread()  # for the application's whole life
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.screenshot and args.model:
        parser.error(f"--screenshot renders the bundled demo model; {args.model} would not be "
                     "used: leave it out (APEX_SCREENSHOT_QUALITY_MODEL=MODEL picks the model "
                     "of the quality views)")
    if args.screenshot and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    if check_gui() != 0:
        return 1
    if args.screenshot:
        # start-up: the views import Qt, only after the preflight
        from apex_gui.views import style

        style.apply_theme(create_application(), args.theme or load_settings().theme)
        written = take_screenshots(Path(args.screenshot), args.only)
        for path in written:
            print(path)
        return 0
    open_window(args.model, args.theme)
    # start-up: at module top Qt would load before the preflight
    from PySide6.QtWidgets import QApplication

    return int(QApplication.exec())


def open_window(model: str | os.PathLike[str] | None = None, theme: str | None = None):  # type: ignore[no-untyped-def]
    """Everything ``apex-studio [MODEL]`` does before the event loop; returns the window.

    Whatever the settings file and the run history hold, the window starts: wrong settings
    fall back to their defaults, a damaged history is moved aside and a locked or read-only
    one is copied into memory (:func:`~apex_gui.core.jobs.history_recovery.open_history`), and a
    banner says what was done and what to do.
    """
    # start-up: the views import Qt, only after the preflight
    from apex_gui.views import style
    from apex_gui.views.window.main_window import MainWindow
    from apex_gui.views.window.panels import install_panels
    from apex_gui.views.window.startup_notice import install_startup_notice
    from apex_gui.views.window.tools_banner import install_tools_check

    app = create_application()
    read = read_settings()
    log_warnings(read.warnings)  # on stderr too, for a window started from a terminal
    style.apply_theme(app, theme or read.settings.theme)
    history = open_history()
    if history.notice:
        print(f"apex-studio: {history.notice}", file=sys.stderr)
    window = MainWindow(read.settings)
    panels = install_panels(window, store=history.store)
    install_tools_check(window, panels.queue.tools)  # once per tools build, in the background
    install_startup_notice(window, [*read.warnings, *([history.notice] if history.notice else [])])
    window.show()
    if model:
        window.open_model_file(Path(model))
    else:
        window.open_demo()
    return window


# --- screenshots --------------------------------------------------------------------------


if __name__ == "__main__":
    raise SystemExit(main())
