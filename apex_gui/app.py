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
from apex_gui.screenshots.window_shots import SCREENSHOT_VIEWS, take_screenshots
from apex_gui.screenshots.quality_shots import QUALITY_VIEWS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apex-studio", description="APEX Studio window.")
    parser.add_argument("model", nargs="?", help="a .gguf file to open (default: the demo model)")
    parser.add_argument("--screenshot", metavar="DIR",
                        help="render each main view to DIR/*.png and exit")
    parser.add_argument("--only", choices=SCREENSHOT_VIEWS + QUALITY_VIEWS, action="append",
                        help=argparse.SUPPRESS)  # the 200%% scale run in a child process; one view
    parser.add_argument("--theme", choices=("system", "light", "dark"),
                        help="override the theme from the settings for this run")
    return parser


def create_application(argv: Sequence[str] = ()):  # type: ignore[no-untyped-def]
    """The QApplication with name, icon and theme set (reused when one exists: tests)."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

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
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.screenshot and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from apex_gui.preflight import check_gui

    if check_gui() != 0:
        return 1
    from apex_gui.core.settings import load_settings
    from apex_gui.views import style
    from apex_gui.views.window.main_window import MainWindow

    app = create_application()
    settings = load_settings()
    style.apply_theme(app, args.theme or settings.theme)
    if args.screenshot:
        written = take_screenshots(Path(args.screenshot), args.only)
        for path in written:
            print(path)
        return 0
    from apex_gui.views.window.panels import install_panels

    from apex_gui.views.window.tools_banner import install_tools_check

    window = MainWindow(settings)
    panels = install_panels(window)
    install_tools_check(window, panels.queue.tools)  # once per tools build, in the background
    window.show()
    if args.model:
        window.open_model_file(Path(args.model))
    else:
        window.open_demo()
    return int(app.exec())


# --- screenshots --------------------------------------------------------------------------


if __name__ == "__main__":
    raise SystemExit(main())
