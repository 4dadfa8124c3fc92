"""The fault campaign (benchmarks/fault_campaign.py): a slice of its start-up cases in the
default run, the surfaces that pass on this branch at quick sizes in the slow run, and its
harness judging what it is meant to judge."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_campaign.py"
#: Groups that still find something, with what (each goes when its finding is fixed).
OPEN_FINDINGS: dict[str, str] = {}


@pytest.fixture(scope="module")
def campaign() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fault_campaign", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_campaign"] = module
    spec.loader.exec_module(module)
    return module


def test_a_slice_of_the_start_up_cases_finds_nothing(campaign: ModuleType,
                                                     tmp_path: Path) -> None:
    """A settings.json that is a FIFO, a folder or 2 MB, through `tools` and the window."""
    run = campaign.Campaign(tmp_path, full=False)
    tallies = run.run_all(["settings_file_kinds"])
    print(campaign.table(tallies, "test"))
    whole = campaign.total(tallies)
    assert whole.cases == 6
    assert whole.failures == 0, "\n".join(whole.notes)


def test_the_harness_counts_a_traceback_a_hang_a_leftover_and_a_wrong_exit(
        campaign: ModuleType, tmp_path: Path) -> None:
    run = campaign.Campaign(tmp_path, full=False)
    run.surface = "harness"
    folder = run.folder()
    run.run_python("raises", "raise SystemExit(__import__('json').loads('{'))", folder)
    # Grows to 200 MB, then never ends: a hang, and the memory sampled before the kill.
    run.run_python("grows, then waits for good",
                   "import threading\nx = bytearray(200 << 20)\nx[::4096] = b'1' * len(x[::4096])"
                   "\nthreading.Event().wait()", folder, deadline=10)
    run.run_python("leaves a scratch folder",
                   "import tempfile; tempfile.mkdtemp(prefix='apex-left-')", folder, expect=0)
    run.run_python("exits 0 where 2 was due", "pass", folder)
    tally = run.tallies["harness"]
    assert (tally.cases, tally.tracebacks, tally.hangs, tally.leftovers, tally.wrong_exit) == \
        (4, 1, 1, 1, 2), tally.notes
    assert tally.peak_mb >= 200
    assert not run.tmp_entries()  # the leftover was counted once and cleared


def test_every_sub_command_has_a_case(campaign: ModuleType, tmp_path: Path) -> None:
    """The campaign's own check, on the names its groups run (read, not run)."""
    text = "".join(path.read_text() for path in (SCRIPT.parent / "faults").glob("*.py"))
    from apex_gui.cli import build_parser

    registered = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert [name for name in registered if f'"{name}"' not in text] == []


@pytest.mark.slow
def test_the_campaign_finds_nothing(campaign: ModuleType, tmp_path: Path) -> None:
    """Every surface whose fixes are here, at quick sizes (several minutes)."""
    run = campaign.Campaign(tmp_path, full=False)
    groups = [g for g in campaign.groups_of(campaign.surfaces()) if g not in OPEN_FINDINGS]
    tallies = run.run_all(groups)
    print(campaign.table(tallies, "test"))
    whole = campaign.total(tallies)
    assert whole.cases > 500
    assert whole.failures == 0, "\n".join(whole.notes)
