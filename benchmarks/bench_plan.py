"""Plan speed on a 400B-parameter, 60-layer, 256-expert shape twin.

Targets (issue 3): building a plan from a profile < 50 ms; re-estimating the total after a
single-cell edit < 5 ms. Prints medians over repeated runs.

    .venv/bin/python benchmarks/bench_plan.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apex_gui.core.gguf.model import open_model  # noqa: E402
from apex_gui.core.plan.precision import plan_from_profile  # noqa: E402
from apex_gui.core.plan.profiles import get_profile  # noqa: E402
from apex_gui.core.fixtures.twins import write_shape_twin  # noqa: E402


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        twin = write_shape_twin(Path(folder) / "trinity.gguf", "trinity-large-399b")[0]
        model = open_model(twin)
        print(f"model: {model.name} ({model.architecture}), {model.n_layer} layers, "
              f"{model.n_expert} experts, {len(model.tensors)} tensors, "
              f"{model.total_params / 1e9:.0f}B parameters")
        profile = get_profile("quality")
        build = []
        for _ in range(30):
            started = time.perf_counter()
            plan = plan_from_profile(model, profile)
            build.append(time.perf_counter() - started)
        edit = []
        cells = [c for c in plan.cells() if c[0] is not None and plan.cell_editable(*c)]
        for index in range(400):
            cell = cells[index % len(cells)]
            # Alternate the type per pass over the grid so every edit really changes a cell.
            type_name = "Q8_0" if (index // len(cells)) % 2 else "Q2_K"
            started = time.perf_counter()
            change = plan.set_cells([cell], type_name)
            plan.total_bytes()
            edit.append(time.perf_counter() - started)
            assert change is not None, cell
        undo = []
        for _ in range(200):
            started = time.perf_counter()
            plan.undo()
            plan.total_bytes()
            undo.append(time.perf_counter() - started)
    print(f"plan from profile:        median {median_ms(build):7.3f} ms  (target < 50 ms)")
    print(f"single-cell edit + total: median {median_ms(edit) * 1000:7.1f} us, "
          f"max {max(edit) * 1e6:.1f} us  (target < 5 ms)")
    print(f"undo + total:             median {median_ms(undo) * 1000:7.1f} us")
    ok = median_ms(build) < 50 and median_ms(edit) < 5
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
