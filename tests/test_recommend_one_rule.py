"""One rule stars a tier, the same in the CLI and the window (issue 22, #3, #4, #9):

* more memory never gives a worse tier for the same fit (8 GB gave Balanced with experts in
  RAM, 12 GB an I-Nano nobody could build);
* a tier whose types need an importance matrix is starred only when nothing else loads, and
  then the recommendation says so;
* the published KL figures (Qwen3.5-35B-A3B) rank tiers only of that model;
* "24 GB" typed by hand is not a card sold as 24GB, and the answer says why it may differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apex_gui.cli import main as cli_main
from apex_gui.core.fit.context_memory import ContextSettings, ModelGeometry
from apex_gui.core.fit.device_spec import parse_device_spec
from apex_gui.core.fit.placement import MachineMemory
from apex_gui.core.fit.recommend import RULE, recommend, tier_candidates
from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.model import ModelInfo, open_model
from apex_gui.core.quality.figures import quality_figures
from apex_gui.core.units import GB

RAM = 64 * GB


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rule-twins")
    return {name: write_shape_twin(folder / f"{name}-BF16.gguf", name)[0]
            for name in ("qwen3-30b-a3b", "qwen3.5-35b-a3b")}


def star(model: ModelInfo, machine: MachineMemory):  # type: ignore[no-untyped-def]
    candidates = tier_candidates(model)
    figures = quality_figures(model, [c.key for c in candidates])
    return recommend(ModelGeometry.from_model(model), candidates, machine,
                     ContextSettings(n_ctx=8192), quality=figures)


def gpu(size: str) -> MachineMemory:
    return MachineMemory(tuple(parse_device_spec(size)), RAM)


@pytest.mark.slow  # 48 recommendations of nine tiers
def test_more_memory_never_gives_a_worse_tier_for_the_same_fit(twins: dict[str, Path]) -> None:
    for path in twins.values():
        model = open_model(path)
        order = [c.key for c in tier_candidates(model)]
        best_by_fit: dict[str, tuple[float, int, str]] = {}
        for gigabytes in range(4, 50, 2):
            rec = star(model, gpu(f"{gigabytes}GB"))
            chosen = rec.recommended
            assert chosen is not None, f"{path.name} at {gigabytes} GB"
            key = chosen.candidate.key
            figure = rec.quality.get(key)
            # Worse = a higher KL divergence, or later in tier order when none is known.
            badness = (figure.kld if figure is not None else float("inf"), order.index(key))
            fit = chosen.verdict.name
            if fit in best_by_fit:
                before = best_by_fit[fit]
                assert badness <= before[:2], (
                    f"{path.name}: {gigabytes} GB stars {key}, worse than {before[2]} with "
                    "less memory and the same fit")
            best_by_fit[fit] = (*badness, f"{key} at {gigabytes} GB")
            assert not chosen.candidate.needs_imatrix, f"{key} at {gigabytes} GB"
            assert rec.rule == RULE


def test_a_tier_that_needs_an_imatrix_is_starred_only_when_nothing_else_loads(
        twins: dict[str, Path]) -> None:
    model = open_model(twins["qwen3-30b-a3b"])
    at_8, at_12 = star(model, gpu("8GB")), star(model, gpu("12GB"))
    nano_12 = next(r for r in at_12.results if r.candidate.key == "i-nano")
    assert nano_12.candidate.needs_imatrix and nano_12.verdict.name == "FULL_GPU"
    # 12 GB fits I-Nano fully on the GPU, yet its IQ types need a matrix nobody made yet:
    # the star stays on a tier without one, no worse than the 8 GB answer.
    assert at_12.recommended.candidate.key == at_8.recommended.candidate.key == "quality"
    # CPU only with 12 GB of RAM: only the IQ tiers load; one is starred, and said to need it.
    small = star(model, MachineMemory((), 12 * GB))
    assert small.recommended is not None and small.recommended.candidate.needs_imatrix
    assert any("needs an importance matrix" in note for note in small.notes)


def test_published_figures_rank_only_the_model_they_were_measured_on(
        twins: dict[str, Path], tmp_path: Path) -> None:
    other = star(open_model(twins["qwen3-30b-a3b"]), gpu("24GiB"))
    assert not any(f.basis == "published" for f in other.quality.values())
    assert other.quality_note is None
    same = star(open_model(twins["qwen3.5-35b-a3b"]), gpu("24GiB"))
    assert {k for k, f in same.quality.items() if f.basis == "published"} >= {"quality",
                                                                              "balanced"}
    assert "Qwen3.5-35B-A3B" in (same.quality_note or "")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return code, out


def test_24gb_typed_is_not_a_card_sold_as_24gb(twins: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = str(twins["qwen3.5-35b-a3b"])
    _, typed = run_cli(capsys, "recommend", path, "--vram", "24GB", "--ram", "64GB", "--json")
    _, card = run_cli(capsys, "recommend", path, "--gpu", "RTX 4090 24GB", "--ram", "64GB",
                      "--json")
    _, binary = run_cli(capsys, "recommend", path, "--vram", "24GiB", "--ram", "64GB", "--json")
    typed_data, card_data = json.loads(typed), json.loads(card)
    assert typed_data["gpus"][0]["free_bytes"] == 24 * 10**9
    assert card_data["gpus"][0]["free_bytes"] == 24 * 2**30
    assert json.loads(binary)["recommended"] == card_data["recommended"]
    note = next(n for n in typed_data["notes"] if "cards sold as" in n)
    assert "24 GB is 22.4 GiB" in note and "RTX 4090 24GB" in note and "24GiB" in note
    assert not any("cards sold as" in n for n in card_data["notes"])
    _, text = run_cli(capsys, "recommend", path, "--vram", "12GB", "--ram", "64GB")
    assert "* = among the tiers that need no importance matrix" in text
    assert "I-Nano (needs imatrix)" in text
