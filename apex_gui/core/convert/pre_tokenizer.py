"""Run llama.cpp's converter with a pre-tokenizer name for a tokenizer it does not know.

llama.cpp recognises a BPE tokenizer by hashing how it encodes a test string, and refuses a
tokenizer whose hash is not in its table (new models, or a vocabulary made for tests). The
fix llama.cpp documents is adding the hash to its table; this does that for one run: when
the converter's lookup fails, the given name is written as ``tokenizer.ggml.pre``. Known
tokenizers keep the converter's own answer.

Usage (as a script, by :class:`ConvertJob`): python pre_tokenizer.py NAME CONVERTER.py ARGS...
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    name, script, *arguments = argv
    folder = Path(script).resolve().parent
    # The converter's folder replaces this script's (whose module names must not shadow).
    sys.path[0] = str(folder)
    sys.path.insert(1, str(folder / "gguf-py"))
    # optional: the converter's own package, importable once its folder is on sys.path
    from conversion.base import TextModel, logger

    known = TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: TextModel, tokenizer: object) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            logger.warning(f"APEX Studio: pre-tokenizer not in this converter's table; "
                           f"writing {name!r} as asked (--pre-tokenizer)")
            return name

    TextModel.get_vocab_base_pre = get_vocab_base_pre  # type: ignore[method-assign]
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
