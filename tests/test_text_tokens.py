"""A text's length is judged in the model's own tokens, not guessed from its characters."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from apex_gui.core.jobs.evaluations import PerplexityJob, ReferenceLogitsJob
from apex_gui.core.jobs.quantize import ImatrixJob
from apex_gui.core.jobs.specs import JobError
from apex_gui.core.jobs.text_tokens import count_tokens, tokens_at_most
from apex_gui.core.jobs.tools import LlamaTools

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "resources" / "demo" / "apex-demo-trained-qwen2moe-f16.gguf"


def prose(characters: int, seed: int = 1) -> str:
    words = "the model routes each token through two of its experts and a shared one".split()
    chosen = random.Random(seed)
    text = " ".join(chosen.choice(words) for _ in range(characters))
    return text[:characters] + "\n"


def test_six_thousand_characters_are_accepted_for_the_byte_level_demo(tmp_path, llama_tools,
                                                                      capsys):
    """The issue's case: refused as "about 1000 tokens ... needs at least 1024" when the demo
    (one token per byte, three per space) makes thousands of tokens of it."""
    from apex_gui.cli import main

    text = tmp_path / "six-thousand.txt"
    text.write_text(prose(6000))
    counted = count_tokens(llama_tools, DEMO, text.read_bytes())
    assert counted is not None and counted > 6000
    PerplexityJob(model=DEMO, text=text, context=512).check((), llama_tools)  # no JobError
    code = main(["eval", str(DEMO), "--ppl", str(text), "--chunks", "1", "-t", "2", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and rows[0]["status"] == "succeeded", rows[0]["message"]


def test_a_short_text_is_refused_with_the_count_of_the_models_vocabulary(tmp_path,
                                                                          llama_tools):
    text = tmp_path / "short.txt"
    text.write_text(prose(300))
    exact = count_tokens(llama_tools, DEMO, text.read_bytes())
    assert exact is not None and exact < 1024
    for job in (PerplexityJob(model=DEMO, text=text, context=512),
                ReferenceLogitsJob(model=DEMO, text=text, context=512,
                                   output_path=tmp_path / "ref.kld")):
        with pytest.raises(JobError) as refused:
            job.check((), llama_tools)
        message = str(refused.value)
        assert f"{exact} tokens for {DEMO.name} (counted with its vocabulary)" in message
        assert "needs at least 1024" in message and f"--ctx {exact // 2} would fit" in message
    imatrix = ImatrixJob(model=DEMO, calibration=text, context=512,
                         output_path=tmp_path / "i.gguf")
    with pytest.raises(JobError, match=r"too short: \d+ tokens .* for an importance matrix "
                                        r"needs at least 1024.*--imatrix-ctx"):
        imatrix.check((), llama_tools)


def test_without_the_model_only_a_text_no_vocabulary_could_stretch_is_refused(tmp_path):
    tools = LlamaTools()  # llama-tokenize is there, the model is not yet
    text = tmp_path / "t.txt"
    text.write_text("x" * 400)  # at most 1202 tokens whatever the vocabulary
    assert tokens_at_most(text.read_bytes()) == 1202
    produced = [tmp_path / "q.gguf"]  # the quant an earlier step writes
    PerplexityJob(model=produced[0], text=text, context=512).check(produced, tools)
    text.write_text("x" * 300)  # at most 902
    with pytest.raises(JobError, match=r"300 bytes are at most 902 tokens for any model, but "
                                        r"a context of 512 needs at least 1024"):
        PerplexityJob(model=produced[0], text=text, context=512).check(produced, tools)
