"""A split model whose shards do not belong together is refused, naming the shard (issue 20,
finding 16): llama.cpp's split.no / split.count / split.tensors.count keys are checked in every
shard, and ``eval`` opens the model (a missing shard is named before a tool starts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.model import open_model
from apex_gui.core.gguf.reader import GGUFError
from apex_gui.core.plan.precision import plan_from_profile
from apex_gui.core.plan.profiles import get_profile
from fakes import refused


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    folder = tmp_path_factory.mktemp("splits")
    qwen = write_shape_twin(folder / "qwen" / "qwen35.gguf", "qwen3.5-35b-a3b", n_splits=3)
    olmoe = write_shape_twin(folder / "olmoe" / "olmoe.gguf", "olmoe-1b-7b", n_splits=3)
    four = write_shape_twin(folder / "four" / "qwen35.gguf", "qwen3.5-35b-a3b", n_splits=4)
    single = write_shape_twin(folder / "single" / "qwen35.gguf", "qwen3.5-35b-a3b")
    model = open_model(single[0])
    compact = plan_from_profile(model, get_profile("compact"))
    quant = write_shape_twin(folder / "quant" / "qwen35.gguf", "qwen3.5-35b-a3b", n_splits=3,
                             tensor_types={n: compact.effective_type(n) for n in compact.types})
    return {"qwen": qwen, "olmoe": olmoe, "four": four, "single": single, "quant": quant}


def mixed(folder: Path, shards: list[Path], stranger: Path, at: int = 1) -> list[Path]:
    """The shards linked into ``folder`` with shard ``at`` (0-based) replaced by ``stranger``
    under its name (twins are sparse: links, never copies)."""
    folder.mkdir()
    paths = []
    for index, shard in enumerate(shards):
        target = folder / shard.name
        os.link(stranger if index == at else shard, target)
        paths.append(target)
    return paths


@pytest.mark.parametrize("stranger,says", [
    (lambda t: t["olmoe"][1], "belongs to a split of"),
    (lambda t: t["four"][1], "says it is shard 2 of 4"),
    (lambda t: t["qwen"][2], "says it is shard 3 of 3"),
    (lambda t: t["single"][0], "has no split.no / split.count keys"),
])
def test_a_shard_of_another_model_or_split_is_named(twins, tmp_path: Path, stranger,  # type: ignore[no-untyped-def]
                                                    says: str) -> None:
    shards = mixed(tmp_path / "mixed", twins["qwen"], stranger(twins))
    for given in shards:  # whichever shard is opened
        with pytest.raises(GGUFError) as caught:
            open_model(given)
        assert str(shards[1]) in str(caught.value) and says in str(caught.value)


def test_a_shard_cut_at_other_points_is_named(twins, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same model split at other tensors: same counts and names, so the tensors
    themselves show it (held twice, or missing)."""
    shards = mixed(tmp_path / "mixed", twins["qwen"], twins["quant"][1])
    with pytest.raises(GGUFError, match="holds tensor|shards hold"):
        open_model(shards[0])


def test_inspect_and_recommend_refuse_the_mixed_split_in_one_line(
        twins, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    shards = mixed(tmp_path / "mixed", twins["qwen"], twins["olmoe"][1])
    refused(capsys, ["inspect", str(shards[0])], shards[1].name, "another model")
    refused(capsys, ["recommend", str(shards[0]), "--vram", "24GB"], shards[1].name)


def test_the_shards_of_one_split_open_as_before(twins) -> None:  # type: ignore[no-untyped-def]
    model = open_model(twins["qwen"][1])
    assert model.paths == tuple(twins["qwen"])
    assert len(model.tensors) == len(open_model(twins["single"][0]).tensors)
    assert all(layer.index is not None for layer in model.layers)


def test_eval_names_a_missing_shard_before_any_tool_starts(
        twins, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "gap"
    folder.mkdir()
    for shard in (twins["qwen"][0], twins["qwen"][2]):
        os.link(shard, folder / shard.name)
    first = folder / twins["qwen"][0].name
    refused(capsys, ["eval", str(first), "--bench"], twins["qwen"][1].name, "missing")
    refused(capsys, ["eval", str(twins["single"][0]), "--reference", str(first), "--kld"],
            twins["qwen"][1].name, "missing")
