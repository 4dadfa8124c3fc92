"""Checks run before the window opens, so a first run never ends in a Qt plugin error."""

from __future__ import annotations

import ctypes.util
import os
import sys

# Debian/Ubuntu packages Qt's xcb platform plugin needs beyond a minimal desktop.
XCB_PACKAGES = {
    "xcb-cursor": "libxcb-cursor0",
    "xkbcommon-x11": "libxkbcommon-x11-0",
    "xcb-icccm": "libxcb-icccm4",
    "xcb-keysyms": "libxcb-keysyms1",
    "xcb-shape": "libxcb-shape0",
    "xcb-render-util": "libxcb-render-util0",
    "xcb-image": "libxcb-image0",
    "xcb-xkb": "libxcb-xkb1",
    "xcb-randr": "libxcb-randr0",
    "EGL": "libegl1",
    "fontconfig": "libfontconfig1",
}


def missing_gui_packages() -> list[str]:
    """Debian package names of the shared libraries the xcb plugin needs and cannot find."""
    return [pkg for lib, pkg in XCB_PACKAGES.items() if ctypes.util.find_library(lib) is None]


def check_gui() -> int:
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform.startswith(("offscreen", "minimal", "wayland")) or not sys.platform.startswith("linux"):
        return 0
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        print("No display found (DISPLAY is not set). Run on a desktop, under `xvfb-run make run`, "
              "or set QT_QPA_PLATFORM=offscreen for a window without a screen.", file=sys.stderr)
        return 1
    missing = missing_gui_packages()
    if missing:
        print("Qt needs these system libraries to open a window:\n"
              f"  sudo apt-get install {' '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(check_gui() if sys.argv[1:] == ["gui"] else 0)
