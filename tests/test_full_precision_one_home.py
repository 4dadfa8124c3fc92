"""Which files are sources to quantize (F32, F16, BF16, or no general.file_type) is decided
by the model, once: ``ModelInfo.is_full_precision``. Five views used to spell it out each."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import apex_gui
from apex_gui.core.fixtures.twins import write_shape_twin
from apex_gui.core.gguf.model import FULL_PRECISION_FILE_TYPES, open_model


def test_full_precision_is_a_property_of_the_model(tiny_qwen2moe: Path, tmp_path: Path) -> None:
    assert open_model(tiny_qwen2moe).is_full_precision  # F16
    quant = write_shape_twin(tmp_path / "olmoe-q4.gguf", "olmoe-1b-7b",
                             tensor_types={"output.weight": "Q6_K"}, file_type=15)[0]
    model = open_model(quant)
    assert model.file_type == "Q4_K_M" and not model.is_full_precision
    # No general.file_type at all (many converted files): llama-quantize takes it as a source.
    source = open_model(tiny_qwen2moe)
    bare = replace(source, metadata={k: v for k, v in source.metadata.items()
                                     if k != "general.file_type"})
    assert bare.file_type == "unknown" and bare.is_full_precision


def test_the_full_precision_rule_has_one_home() -> None:
    """A second spelling of the rule anywhere in the package fails here: a collection of
    file types with "unknown" in it, or a getattr of ``file_type`` with a default."""
    root = Path(apex_gui.__file__).parent
    home = root / "core" / "gguf" / "model.py"
    names = {"F32", "F16", "BF16"}
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.Set, ast.List)):
                values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if "unknown" in values and values & names and path != home:
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id == "getattr" and len(node.args) == 3
                  and isinstance(node.args[1], ast.Constant)
                  and node.args[1].value == "file_type"):
                found.append(f"{path.relative_to(root)}:{node.lineno} (getattr file_type)")
    assert not found, ("ask the model (ModelInfo.is_full_precision) instead of listing file "
                       "types: " + ", ".join(found))
    assert FULL_PRECISION_FILE_TYPES == {"F32", "F16", "BF16", "unknown"}
