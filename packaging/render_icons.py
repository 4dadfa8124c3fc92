"""Render the app icon from its SVG source into the PNG, ICO and ICNS files packaging uses.

    .venv/bin/python packaging/render_icons.py          # writes packaging/icons/
    .venv/bin/python packaging/render_icons.py --check  # exit 1 if a committed file is stale

The source is ``resources/icons/apex-studio.svg`` (the icon the window uses), else
``packaging/icons/apex-studio.svg``. Rendering uses Qt's own SVG renderer, so no other image
library is needed; the ICO and ICNS containers are written here with PNG payloads (both
formats accept PNG entries: Windows Vista+ and macOS 10.7+).

Outputs, under ``packaging/icons/``:
- ``apex-studio-{16,24,32,48,64,128,256,512}.png`` (also installed as
  ``share/icons/hicolor/NxN/apps/apex-studio.png`` by Linux packages),
- ``apex-studio.ico`` (16..256, the Windows executable icon),
- ``apex-studio.icns`` (16..512 + 512@2x, the macOS bundle icon).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "packaging" / "icons"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
# ICNS element types holding PNG data, by pixel size.
ICNS_TYPES = ((b"icp4", 16), (b"icp5", 32), (b"icp6", 64), (b"ic07", 128), (b"ic08", 256),
              (b"ic09", 512), (b"ic10", 1024))


def source_svg() -> Path:
    for candidate in (ROOT / "resources" / "icons" / "apex-studio.svg",
                      OUT_DIR / "apex-studio.svg"):
        if candidate.is_file():
            return candidate
    raise SystemExit("no icon source: expected resources/icons/apex-studio.svg")


def render_png(svg: bytes, size: int) -> bytes:
    """The SVG rendered at size x size, antialiased, transparent background, as PNG bytes."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QRectF, Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(QByteArray(svg))
    if not renderer.isValid():
        raise SystemExit("the icon SVG does not parse")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter, QRectF(0, 0, size, size))
    painter.end()
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    buffer.close()
    return bytes(data.data())


def ico_bytes(pngs: dict[int, bytes]) -> bytes:
    """An ICO container of PNG images (ICONDIR + ICONDIRENTRYs + payloads)."""
    entries = [(size, pngs[size]) for size in ICO_SIZES]
    header = struct.pack("<HHH", 0, 1, len(entries))
    offset = len(header) + 16 * len(entries)
    directory, payload = b"", b""
    for size, png in entries:
        dim = 0 if size >= 256 else size  # 0 means 256
        directory += struct.pack("<BBBBHHII", dim, dim, 0, 0, 1, 32, len(png), offset)
        payload += png
        offset += len(png)
    return header + directory + payload


def icns_bytes(pngs: dict[int, bytes]) -> bytes:
    """An ICNS container of PNG images."""
    body = b""
    for kind, size in ICNS_TYPES:
        png = pngs[size]
        body += kind + struct.pack(">I", 8 + len(png)) + png
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def outputs(svg: bytes) -> dict[str, bytes]:
    pngs = {size: render_png(svg, size) for size in (*SIZES, 1024)}
    files = {f"apex-studio-{size}.png": pngs[size] for size in SIZES}
    files["apex-studio.ico"] = ico_bytes(pngs)
    files["apex-studio.icns"] = icns_bytes(pngs)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when a committed icon differs from a fresh render")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    args = parser.parse_args(argv)

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841
    svg_path = source_svg()
    files = outputs(svg_path.read_bytes())
    if args.check:
        stale = [name for name, data in files.items()
                 if not (args.out / name).is_file() or (args.out / name).read_bytes() != data]
        for name in stale:
            print(f"stale: {args.out / name} (run packaging/render_icons.py)")
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
        print(f"{args.out / name}: {len(data)} bytes")
    print(f"rendered from {svg_path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
