"""Packaging: the wheel carries its resources and runs from a fresh environment; the desktop
files validate; the icons are all there; the frozen (PyInstaller) app passes its smoke test.

Fast tests: desktop/AppStream files (validators run when installed, skipped otherwise), icons,
the spec's resource list, and the wheel's file list (a wheel build takes about 3-6 s).
Slow tests: the wheel installed into a fresh virtual environment, and the frozen app.
"""

from __future__ import annotations

import ast
import configparser
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
RESOURCES = ROOT / "resources"
METAINFO = PACKAGING / "io.github.apex_studio.ApexStudio.metainfo.xml"
DESKTOP = PACKAGING / "apex-studio.desktop"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def resource_files() -> list[str]:
    """Every file under resources/, relative, as the wheel and the frozen app must carry it."""
    return sorted(p.relative_to(RESOURCES).as_posix() for p in RESOURCES.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def _run(argv: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, errors="replace",
                          timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


# ------------------------------------------------------------------- desktop integration


def test_metainfo_validates_with_installed_validators() -> None:
    validators = []
    if shutil.which("appstreamcli"):
        validators.append(["appstreamcli", "validate", "--no-net", "--explain", str(METAINFO)])
    if shutil.which("appstream-util"):
        validators.append(["appstream-util", "validate-relax", "--nonet", str(METAINFO)])
    if not validators:
        pytest.skip("no AppStream validator installed (apt-get install appstream or appstream-util)")
    for argv in validators:
        result = _run(argv, timeout=60)
        assert result.returncode == 0, f"{argv[0]} rejects the metainfo:\n{result.stdout}{result.stderr}"


def test_metainfo_names_the_desktop_file_and_binary() -> None:
    import xml.etree.ElementTree as ET

    component = ET.parse(METAINFO).getroot()
    assert component.get("type") == "desktop-application"
    assert component.findtext("id") == METAINFO.name.removesuffix(".metainfo.xml")
    assert component.findtext("launchable[@type='desktop-id']") == DESKTOP.name
    assert component.findtext("provides/binary") == "apex-studio"
    versions = [r.get("version") for r in component.iter("release")]
    from apex_gui import __version__

    assert __version__ in versions, "add a <release> for the current version to the metainfo"


def test_desktop_file_is_valid() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(DESKTOP, encoding="utf-8")
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application"
    assert entry["Exec"].split()[0] == "apex-studio"
    assert entry["Icon"] == "apex-studio"
    assert entry["Categories"].endswith(";")
    if shutil.which("desktop-file-validate"):
        result = _run(["desktop-file-validate", str(DESKTOP)], timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_icons_are_rendered_at_every_size() -> None:
    assert (RESOURCES / "icons" / "apex-studio.svg").is_file() or \
        (PACKAGING / "icons" / "apex-studio.svg").is_file(), "the icon's SVG source is missing"
    for size in ICON_SIZES:
        png = PACKAGING / "icons" / f"apex-studio-{size}.png"
        assert png.is_file(), f"{png} missing: run packaging/render_icons.py"
        assert _png_size(png.read_bytes()) == (size, size)
    ico = (PACKAGING / "icons" / "apex-studio.ico").read_bytes()
    reserved, kind, count = struct.unpack("<HHH", ico[:6])
    assert (reserved, kind) == (0, 1) and count >= 5
    for i in range(count):
        _w, _h, _c, _r, _p, _b, length, offset = struct.unpack("<BBBBHHII", ico[6 + 16 * i:22 + 16 * i])
        _png_size(ico[offset:offset + length])
    icns = (PACKAGING / "icons" / "apex-studio.icns").read_bytes()
    assert icns[:4] == b"icns" and struct.unpack(">I", icns[4:8])[0] == len(icns)


def test_pyinstaller_spec_lists_every_resource() -> None:
    """The spec lists data explicitly; a new kind of resource must get a pattern there."""
    tree = ast.parse((PACKAGING / "apex-studio.spec").read_text(encoding="utf-8"))
    listed = next(ast.literal_eval(node.value) for node in tree.body
                  if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "RESOURCE_FILES" for t in node.targets))
    uncovered = []
    for rel in resource_files():
        folder, _, name = rel.rpartition("/")
        if not any((folder or ".") == f and any(fnmatch(name, p) for p in pats)
                   for f, pats in listed):
            uncovered.append(rel)
    assert not uncovered, f"add patterns to RESOURCE_FILES in packaging/apex-studio.spec: {uncovered}"


# ------------------------------------------------------------------------------ the wheel


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a clean copy of the sources (no stale build/ folder can leak in)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for path in ROOT.iterdir():
        if path.is_file() and not path.name.startswith("."):
            shutil.copy2(path, source / path.name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in ("apex_gui", "resources"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    out = work / "dist"
    result = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                   str(source)], timeout=600)
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    wheels = list(out.glob("apex_studio-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_carries_resources_and_entry_points(built_wheel: Path) -> None:
    with zipfile.ZipFile(built_wheel) as wheel:
        names = set(wheel.namelist())
        entry_points = next(wheel.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    missing = [rel for rel in resource_files() if f"apex_gui/resources/{rel}" not in names]
    assert not missing, f"resources missing from the wheel: {missing}"
    for kind in ("profiles/quality.toml", "calibration/", "eval/", "icons/apex-studio.svg"):
        assert any(n.startswith(f"apex_gui/resources/{kind}") for n in names), kind
    assert "apex_gui/cli.py" in names and "apex_gui/core/jobs/tools.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "apex-studio = apex_gui.cli:main" in entry_points


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_fresh_environment(built_wheel: Path, tmp_path: Path) -> None:
    """Install the wheel into a new venv (dependencies borrowed from ours through a .pth file,
    so PySide6 is not downloaded again) and run the installed ``apex-studio``."""
    import site

    venv = tmp_path / "venv"
    result = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    assert result.returncode == 0, result.stderr
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
                        ).stdout.strip())
    # Appended after the venv's own site-packages: the installed wheel wins over our editable
    # install (whose finder a plain path entry does not activate).
    (purelib / "zz_apex_borrowed_deps.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n", encoding="utf-8")
    result = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                   "-q", str(built_wheel)], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    exe = bindir / "apex-studio"
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"

    def apex(*args: str, timeout: float = 120) -> str:
        proc = _run([str(exe), *args], timeout=timeout, cwd=work, env=env)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Traceback" not in output, \
            f"apex-studio {' '.join(args)} failed ({proc.returncode}):\n{output[-4000:]}"
        return output

    where = _run([str(python), "-c",
                  "import apex_gui, importlib.resources as r; print(apex_gui.__file__); "
                  "print(r.files('apex_gui.resources') / 'profiles')"], cwd=work, env=env)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).resolve().is_relative_to(venv.resolve()), \
            f"imported from outside the fresh environment: {line}"

    from apex_gui import __version__

    assert apex("--version").strip() == f"apex-studio {__version__}"
    apex("synth", "tiny-qwen2moe", "-o", "tiny.gguf")
    assert "qwen2moe" in apex("inspect", "tiny.gguf")
    apex("plan", "tiny.gguf", "--profile", "i-quality", "-o", "plan.txt")
    assert (work / "plan.txt").is_file()
    app_source = (ROOT / "apex_gui" / "app.py")
    if app_source.is_file() and "--screenshot" in app_source.read_text(encoding="utf-8"):
        shots = work / "shots"
        apex("--screenshot", str(shots), timeout=400)
        assert list(shots.glob("*.png")), "--screenshot wrote no PNG"


# ------------------------------------------------------------------------- the frozen app


@pytest.mark.slow
def test_frozen_app_smoke(tmp_path: Path) -> None:
    """Build the one-folder app with PyInstaller (about a minute) and run the smoke test.

    ``APEX_FROZEN_APP=dist/apex-studio`` tests an existing build instead of building one.
    """
    sys.path.insert(0, str(PACKAGING))
    try:
        import smoke_test
    finally:
        sys.path.remove(str(PACKAGING))
    existing = os.environ.get("APEX_FROZEN_APP")
    if existing:
        app = Path(existing)
    else:
        pytest.importorskip("PyInstaller", reason="pip install -e '.[package]' to build the frozen app")
        result = _run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
                       "--distpath", str(tmp_path / "dist"), "--workpath", str(tmp_path / "build"),
                       str(PACKAGING / "apex-studio.spec")], timeout=1200, cwd=ROOT)
        assert result.returncode == 0, f"PyInstaller failed:\n{result.stdout[-3000:]}{result.stderr[-5000:]}"
        app = tmp_path / "dist" / "apex-studio"
    log = smoke_test.smoke(app)
    print("\n".join(log))
