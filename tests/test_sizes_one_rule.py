"""One rule for sizes: every command and widget that takes a size reads the same text as the
same bytes and refuses the same text in the same words; one formatter writes them.

"16" used to mean 16 GB in ``recommend --vram``, 16 bytes in Fit to budget and an unknown
card in the device field; a row of nines gave a traceback (issue 20, #10).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from window_fixtures import demo_with_panels  # noqa: F401 - a fixture

import apex_gui
from apex_gui.cli import main as cli_main
from apex_gui.core.fit.device_spec import parse_device_spec
from apex_gui.core.fixtures.bundled_demo import TRAINED_DEMO_SENSITIVITY, demo_model
from apex_gui.core.units import format_size, parse_size, size_unit

#: Text -> bytes, as every entry point must read it. Each is more than the demo's smallest
#: plan, so the optimizer takes it as a budget too.
SIZES: dict[str, int] = {
    "24GB": 24 * 10**9,
    "24 GiB": 24 * 2**30,
    "15.5MB": 15_500_000,
    "15500000B": 15_500_000,
    "512 MiB": 512 * 2**20,
    "1.5TB": 1_500_000_000_000,
    "0.02gb": 20_000_000,
}
#: Text -> the words of its refusal, the same everywhere.
REFUSED: dict[str, str] = {
    "16": "has no unit: write 16GB",
    "24G": "write 24GB (powers of 1000) or 24GiB",
    "9" * 400 + "GB": "is more than 1000 TB",
    "0GB": "give more than zero",
}


def test_the_parser_reads_each_unit_and_refuses_the_rest() -> None:
    for text, nbytes in SIZES.items():
        assert parse_size(text) == nbytes, text
    for text, words in REFUSED.items():
        with pytest.raises(ValueError, match=re.escape(words)):
            parse_size(text)
    with pytest.raises(ValueError, match="cannot read 'lots' as a size"):
        parse_size("lots")
    with pytest.raises(ValueError, match="cannot read '-5GB'"):
        parse_size("-5GB")


def test_the_formatter_keeps_units_apart_and_small_files_readable() -> None:
    assert format_size(11_400_288) == "11.4 MB"
    assert format_size(21_300_000_000) == "21.3 GB"
    assert format_size(24 * 2**30, binary=True) == "24.0 GiB"
    assert format_size(512) == "512 B"
    # Four demo tiers of 3.0-3.5 MB used to read "3 MB" each.
    assert len({format_size(n) for n in (3_049_000, 3_180_000, 3_310_000, 3_499_648)}) == 4
    assert format_size(12_345, like=3_499_648) == "0.0123 MB"
    assert size_unit(5_150_000) == ("MB", 10**6)
    assert size_unit(None) == ("GB", 10**9)


def test_no_second_formatter_or_unit_table_outside_units() -> None:
    """A size written with ``{x / 1e9:.1f} GB``, a unit table or a constant of its own,
    anywhere but core/units.py, fails here."""
    root = Path(apex_gui.__file__).parent
    scale_names = {"kB", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"}
    scale_values = {10**3, 10**6, 10**9, 10**12, 2**10, 2**20, 2**30, 2**40}

    def is_scale(node: ast.AST, least: int = 1) -> bool:
        if isinstance(node, ast.Name):
            return node.id in scale_names
        try:
            value = ast.literal_eval(node)  # 1e9, 1024**3, 2**30, 10**9 ...
        except ValueError:
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
                try:
                    value = ast.literal_eval(node.left) ** ast.literal_eval(node.right)
                except ValueError:
                    return False
            else:
                return False
        return isinstance(value, (int, float)) and value in scale_values and value >= least

    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "core" / "units.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(root)
        for node in ast.walk(tree):
            if isinstance(node, ast.FormattedValue):
                for inner in ast.walk(node.value):
                    # "// 1000" and "// 1024" also count versions and tokens ("8k"), not bytes.
                    if isinstance(inner, ast.BinOp) and (
                            isinstance(inner.op, ast.Div) and is_scale(inner.right)
                            or isinstance(inner.op, ast.FloorDiv) and is_scale(inner.right, 10**6)):
                        found.append(f"{where}:{node.lineno}: a size formatted inline")
            elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id in scale_names for t in node.targets):
                found.append(f"{where}:{node.lineno}: a unit constant of its own")
            elif isinstance(node, ast.Dict) and sum(
                    isinstance(k, ast.Constant) and str(k.value).lower() in
                    {n.lower() for n in scale_names} for k in node.keys) >= 2:
                found.append(f"{where}:{node.lineno}: a unit table of its own")
            elif isinstance(node, ast.FunctionDef) and re.search(
                    r"(format|readable|human)_?\w*(size|bytes|gb|mb|gib)", node.name.lower()):
                found.append(f"{where}:{node.lineno}: a size formatter {node.name}()")
    assert not found, "sizes belong to apex_gui/core/units.py:\n" + "\n".join(found)


# --------------------------------------------------------------------------- every entry point


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    made = demo_model(tmp_path_factory.mktemp("demo-cache"))
    assert made.trained
    return made.path, made.path.with_name(TRAINED_DEMO_SENSITIVITY)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_entry_points(demo: tuple[Path, Path]) -> dict[str, Callable[[str], list[str]]]:
    model, table = demo
    return {
        "recommend --vram": lambda s: ["recommend", str(model), "--vram", s, "--ram", "64GB",
                                       "--json"],
        "recommend --gpu": lambda s: ["recommend", str(model), "--gpu", s, "--ram", "64GB",
                                      "--json"],
        "recommend --ram": lambda s: ["recommend", str(model), "--vram", "8GB", "--ram", s,
                                      "--json"],
        "optimize --budget": lambda s: ["optimize", str(model), "--budget", s,
                                        "--sensitivity", str(table), "--json"],
    }


def cli_bytes(name: str, out: str) -> int:
    data = json.loads(out)
    if name == "recommend --ram":
        return int(data["ram_available"])
    if name == "optimize --budget":
        return int(data["budget"])
    return int(data["gpus"][0]["free_bytes"])


def test_every_command_reads_and_refuses_sizes_alike(capsys: pytest.CaptureFixture[str],
                                                      demo: tuple[Path, Path]) -> None:
    for name, argv in cli_entry_points(demo).items():
        for text, nbytes in SIZES.items():
            code, out, err = run_cli(capsys, *argv(text))
            assert code == 0, f"{name} {text}: {err}"
            assert cli_bytes(name, out) == nbytes, f"{name} {text}"
        for text, words in REFUSED.items():
            code, out, err = run_cli(capsys, *argv(text))
            assert code == 2 and "Traceback" not in err, f"{name} {text[:20]}: {err}"
            lines = err.strip().splitlines()
            assert len(lines) == 1 and words in lines[0], f"{name} {text[:20]}: {err}"
            assert "9" * 40 not in lines[0], f"{name}: the refusal repeats the whole input"
    assert parse_device_spec("24GB")[0].total_bytes == SIZES["24GB"]


def test_the_margin_overflows_to_one_line(capsys: pytest.CaptureFixture[str],
                                          demo: tuple[Path, Path]) -> None:
    model, table = demo
    for argv in (["recommend", str(model), "--margin", "1e999"],
                 ["optimize", str(model), "--vram", "24GB", "--margin", "1e999",
                  "--sensitivity", str(table)]):
        code, _out, err = run_cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "--margin inf is out of range" in err


def test_every_widget_reads_and_refuses_sizes_alike(qtbot, demo_with_panels) -> None:  # type: ignore[no-untyped-def]
    window, panels = demo_with_panels
    hardware, plan_panel = panels.hardware, window.plan_panel

    def fit_dialog(text: str) -> tuple[int | None, str]:
        dialog = window.open_fit_dialog()
        dialog.size_edit.setText(text)
        result: list[object] = []
        dialog.fitted.connect(lambda r: result.append(r))
        dialog.failed.connect(lambda m: result.append(m))
        dialog.fit_button.click()
        qtbot.waitUntil(lambda: bool(result), timeout=30_000)
        if isinstance(result[0], str):  # the refusal is shown whole, not cut to one line
            layout = dialog.layout()
            qtbot.waitUntil(lambda: dialog.height() >= layout.totalHeightForWidth(
                dialog.width()), timeout=3000)
        while window.current_plan.can_undo():
            window.current_plan.undo()
        dialog.reject()
        got = result[0]
        return (None, got) if isinstance(got, str) else (got.budget, "")  # type: ignore[attr-defined]

    def manual_field(text: str) -> tuple[int | None, str]:
        hardware.manual_edit.setText(text)
        devices = hardware.manual_devices()
        return (devices[0].total_bytes if devices else None,
                hardware.manual_status.toolTip() or hardware.manual_status.text())

    def plan_devices(text: str) -> tuple[int | None, str]:
        plan_panel.device_edit.setText(text)
        plan_panel.device_edit.editingFinished.emit()
        devices = plan_panel._manual_devices
        return (devices[0].total_bytes if devices else None,
                plan_panel.device_error.text() if plan_panel.device_error.isVisibleTo(plan_panel)
                else "")

    entry_points = {"Fit to budget": fit_dialog, "Hardware & tiers devices": manual_field,
                    "Plan panel devices": plan_devices}
    for name, enter in entry_points.items():
        for text, nbytes in SIZES.items():
            assert enter(text)[0] == nbytes, f"{name} {text}"
        for text, words in REFUSED.items():
            got, message = enter(text)
            assert got is None and words in message, f"{name} {text[:20]}: {message!r}"
