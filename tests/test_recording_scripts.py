"""The scripts that record the real tool output the parsers are tested on (tests/logs/) still
name modules and names that exist: the house moves of issue 21 had left record.sh importing
two modules that were gone."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

LOGS = Path(__file__).resolve().parent / "logs"
IMPORT = re.compile(r"from (apex_gui(?:\.\w+)+) import ([\w, ]+)")


@pytest.mark.parametrize("script", ["record.sh", "record_eval.py"])
def test_recording_scripts_import_what_exists(script: str) -> None:
    found = IMPORT.findall((LOGS / script).read_text(encoding="utf-8"))
    assert found, f"{script} imports nothing from apex_gui: the check reads nothing"
    for module_name, names in found:
        module = importlib.import_module(module_name)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(module, name), f"{script}: {module_name} has no {name}"
