"""The fault campaign of issue 12 (benchmarks/fault_campaign.py), quick sizes: every count
but the cases tried is zero. Slow (about two minutes): run with ``make test-all``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_campaign.py"


def test_the_whole_campaign_finds_nothing(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("fault_campaign", SCRIPT)
    assert spec is not None and spec.loader is not None
    campaign = importlib.util.module_from_spec(spec)
    sys.modules["fault_campaign"] = campaign
    spec.loader.exec_module(campaign)
    tally = campaign.Campaign(tmp_path, full=False).run_all()
    print(campaign.table(tally, "test"))
    assert tally.tried > 300
    assert (tally.tracebacks, tally.hangs, tally.sources_changed, tally.partials_left,
            tally.wrong_exit) == (0, 0, 0, 0, 0), "\n".join(tally.notes)
