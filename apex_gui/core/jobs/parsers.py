"""Pure parsers for the output of llama-quantize, llama-imatrix, llama-perplexity and llama-bench.

Every function here takes text (one line, a partial line, or a whole log) and returns plain
data; nothing runs a process or keeps global state. They are tested against real recorded
logs in ``tests/logs``. The formats are those of llama.cpp build b11434 run with
``--no-log-prefix --log-colors off``; the patterns tolerate the column padding changing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# --- streams -------------------------------------------------------------------------------


class LineSplitter:
    """Cut a stream of decoded text into lines on ``\\n``, ``\\r`` or ``\\r\\n``.

    Progress bars redraw with ``\\r``, and llama.cpp prints chunk results (``[1]8.12,[2]...``)
    without a newline until the end, so the unterminated tail is kept in :attr:`pending` where
    a progress parser can still read it.
    """

    def __init__(self, max_line: int | None = None) -> None:
        self.pending = ""
        self._after_cr = False
        #: A line longer than this is returned in pieces of this length (None: no limit).
        self.max_line = max_line

    def feed(self, text: str) -> list[str]:
        """Add ``text``; return the lines it completed (without their terminators)."""
        if self._after_cr and text.startswith("\n"):
            text = text[1:]  # the \n of a \r\n split across two reads
        self._after_cr = text.endswith("\r")
        parts = re.split(r"\r\n|\r|\n", self.pending + text)
        self.pending = parts.pop()
        if self.max_line is not None and len(self.pending) > self.max_line:
            while len(self.pending) > self.max_line:
                parts.append(self.pending[:self.max_line])
                self.pending = self.pending[self.max_line:]
        return parts

    def flush(self) -> list[str]:
        """At end of stream: the unterminated tail as a last line, if any."""
        tail, self.pending = self.pending, ""
        return [tail] if tail else []


# --- llama-quantize ------------------------------------------------------------------------

_TENSOR_LINE = re.compile(
    r"\[\s*(?P<index>\d+)/\s*(?P<total>\d+)\]\s+(?P<name>\S+)\s+-\s+\[(?P<shape>[^\]]*)\],"
    r"\s*type\s*=\s*(?P<src>\S+),"
    r"(?:\s*converting to (?P<dst>\S+) \.\.)?"
    r"(?:\s*size\s*=\s*(?P<src_mib>[\d.]+) MiB(?:\s*->\s*(?P<dst_mib>[\d.]+) MiB"
    r"(?:\s*\((?P<dry_dst>[^)]+)\))?)?)?")
_QUANTIZE_SIZE = re.compile(
    r"llama_model_quantize_impl: (?P<which>model|quant) size\s*=\s*(?P<mib>[\d.]+) MiB"
    r"\s*\((?P<bpw>[\d.]+) BPW\)")
_FALLBACK_WARNING = re.compile(
    r"warning: (?P<name>\S+)\s+- ncols\s+(?P<ncols>\d+) not divisible by (?P<block>\d+) "
    r"\(required for type\s+(?P<wanted>\S+)\) -> falling back to\s+(?P<used>\S+)")
_FALLBACK_COUNT = re.compile(r"WARNING: (\d+) of (\d+) tensor\(s\) required fallback")
_NEEDS_IMATRIX = re.compile(r"offending tensor:\s*(?P<name>\S+)")
_NEEDS_IMATRIX_TYPE = re.compile(r"target type:\s*(?P<type>\S+)")


@dataclass(frozen=True)
class TensorProgress:
    """One ``[ i/ n] name - [shape], type = f16, converting to q6_K .. size = A MiB -> B MiB``."""

    index: int
    total: int
    name: str
    shape: tuple[int, ...]
    source_type: str
    target_type: str | None  # None while the line is incomplete or for a copied tensor
    source_mib: float | None
    target_mib: float | None

    @property
    def complete(self) -> bool:
        """True once the size column was printed: the tensor is written."""
        return self.source_mib is not None


def parse_tensor_progress(line: str) -> TensorProgress | None:
    """A per-tensor progress line of llama-quantize (also a partial one, or a dry-run line)."""
    match = _TENSOR_LINE.search(line)
    if match is None:
        return None
    shape = tuple(int(d) for d in match["shape"].replace(" ", "").split(",") if d)
    target = match["dst"] or match["dry_dst"]
    source_mib = float(match["src_mib"]) if match["src_mib"] else None
    if match["dst_mib"]:
        target_mib: float | None = float(match["dst_mib"])
    elif source_mib is not None:
        target_mib, target = source_mib, match["src"]  # copied as it is
    else:
        target_mib = None
    return TensorProgress(int(match["index"]), int(match["total"]), match["name"], shape,
                          match["src"], target, source_mib, target_mib)


@dataclass(frozen=True)
class FallbackWarning:
    """llama-quantize swapped a type whose block does not divide the row length."""

    tensor: str
    ncols: int
    wanted: str
    used: str


def parse_fallback_warning(line: str) -> FallbackWarning | None:
    match = _FALLBACK_WARNING.search(line)
    if match is None:
        return None
    return FallbackWarning(match["name"], int(match["ncols"]), match["wanted"], match["used"])


@dataclass(frozen=True)
class QuantizeSummary:
    """The totals llama-quantize prints at the end."""

    model_mib: float | None = None
    model_bpw: float | None = None
    quant_mib: float | None = None
    quant_bpw: float | None = None
    fallback_count: int = 0
    needs_imatrix_tensor: str | None = None  # set when it refused to run without an imatrix
    needs_imatrix_type: str | None = None


def parse_quantize_log(text: str) -> QuantizeSummary:
    """Totals, fallbacks and the missing-imatrix refusal from a whole llama-quantize log."""
    values: dict[str, float] = {}
    for match in _QUANTIZE_SIZE.finditer(text):
        values[f"{match['which']}_mib"] = float(match["mib"])
        values[f"{match['which']}_bpw"] = float(match["bpw"])
    fallbacks = _FALLBACK_COUNT.search(text)
    if fallbacks:
        fallback_count = int(fallbacks.group(1))
    else:
        fallback_count = len(_FALLBACK_WARNING.findall(text))
    needs = _NEEDS_IMATRIX.search(text) if "requires an importance matrix" in text else None
    needs_type = _NEEDS_IMATRIX_TYPE.search(text) if needs else None
    return QuantizeSummary(
        model_mib=values.get("model_mib"), model_bpw=values.get("model_bpw"),
        quant_mib=values.get("quant_mib"), quant_bpw=values.get("quant_bpw"),
        fallback_count=fallback_count,
        needs_imatrix_tensor=needs["name"] if needs else None,
        needs_imatrix_type=needs_type["type"] if needs_type else None,
    )


# --- llama-imatrix and llama-perplexity: chunks ------------------------------------------------

_CHUNK_COUNT = re.compile(r"(?:computing|calculating perplexity) over (\d+) chunks")
_CHUNK_VALUE = re.compile(r"\[(\d+)\](-?[\d.]+|nan|-?inf),")
_FINAL_PPL = re.compile(r"Final estimate: PPL = ([\d.]+|nan|inf) \+/- ([\d.]+|nan|inf)")
_TOO_FEW_TOKENS = re.compile(r"you need at least (\d+) tokens")
_TOKENIZES_TO = re.compile(r"tokenizes to only (\d+) tokens")


def parse_chunk_count(line: str) -> int | None:
    """``N`` from ``computing over N chunks`` (imatrix, KL divergence) or
    ``calculating perplexity over N chunks``."""
    match = _CHUNK_COUNT.search(line)
    return int(match.group(1)) if match else None


def parse_chunk_values(text: str) -> list[tuple[int, float]]:
    """Every ``[i]value,`` pair in ``text`` (the running perplexity after chunk ``i``)."""
    return [(int(i), float(v)) for i, v in _CHUNK_VALUE.findall(text)]


@dataclass(frozen=True)
class PerplexityEstimate:
    ppl: float
    error: float


def parse_final_estimate(text: str) -> PerplexityEstimate | None:
    """``Final estimate: PPL = X +/- Y``: its presence is what success means for these tools."""
    match = _FINAL_PPL.search(text)
    return PerplexityEstimate(float(match.group(1)), float(match.group(2))) if match else None


@dataclass(frozen=True)
class TooFewTokens:
    """The tool refused the text: it needs ``needed`` tokens and the text gave ``found``."""

    needed: int
    found: int | None


def parse_too_few_tokens(text: str) -> TooFewTokens | None:
    needed = _TOO_FEW_TOKENS.search(text)
    if needed is None:
        return None
    found = _TOKENIZES_TO.search(text)
    return TooFewTokens(int(needed.group(1)), int(found.group(1)) if found else None)


# --- KL divergence ---------------------------------------------------------------------------

_STAT = r"\s*:?\s*(-?[\d.]+|nan|-?inf)(?:\s*±\s*(-?[\d.]+|nan|-?inf))?"
_KLD_LINES: dict[str, re.Pattern[str]] = {
    "ppl": re.compile(r"^Mean PPL\(Q\)\s*:" + _STAT),
    "ppl_base": re.compile(r"^Mean PPL\(base\)\s*:" + _STAT),
    "ln_ppl_ratio": re.compile(r"^Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:" + _STAT),
    "kld_mean": re.compile(r"^Mean\s+KLD:" + _STAT),
    "kld_max": re.compile(r"^Maximum KLD:" + _STAT),
    "kld_p999": re.compile(r"^99\.9%\s+KLD:" + _STAT),
    "kld_p99": re.compile(r"^99\.0%\s+KLD:" + _STAT),
    "kld_median": re.compile(r"^Median\s+KLD:" + _STAT),
    "kld_min": re.compile(r"^Minimum KLD:" + _STAT),
    "delta_p_rms": re.compile(r"^RMS Δp\s*:" + _STAT),
    "same_top_p": re.compile(r"^Same top p:" + _STAT),
}
_KLD_CHUNK_ROW = re.compile(r"^\s*(\d+)\s+[\d.]+\s+±")


@dataclass(frozen=True)
class KLDivergenceStats:
    """The summary blocks of ``llama-perplexity --kl-divergence``; percentages as printed."""

    ppl: float | None = None
    ppl_error: float | None = None
    ppl_base: float | None = None
    ln_ppl_ratio: float | None = None
    kld_mean: float | None = None
    kld_mean_error: float | None = None
    kld_max: float | None = None
    kld_p999: float | None = None
    kld_p99: float | None = None
    kld_median: float | None = None
    kld_min: float | None = None
    delta_p_rms: float | None = None
    same_top_p: float | None = None  # percent
    same_top_p_error: float | None = None

    @property
    def complete(self) -> bool:
        """Every block was printed. ``Same top p`` is the tool's last line, and with fewer
        than 100 scored tokens none of the blocks is printed, so a log with the mean but not
        that line lost its tail (llama.cpp issue 22142)."""
        return self.kld_mean is not None and self.same_top_p is not None


_KLD_RUNNING = re.compile(r"^\s*(\d+)\s+([-\d.naif]+)\s+±\s+[-\d.naif]+\s+[-\d.naif]+\s+±\s+"
                          r"[-\d.naif]+\s+([-\d.naif]+)\s+±\s+([-\d.naif]+)")


def parse_kld_running(line: str) -> tuple[int, float, float, float] | None:
    """(chunk, running PPL, running mean KLD, its error) from a per-chunk row of the KL
    divergence table (5 decimals: the closing statistics have 6)."""
    match = _KLD_RUNNING.match(line)
    if not match:
        return None
    try:
        return (int(match.group(1)), float(match.group(2)), float(match.group(3)),
                float(match.group(4)))
    except ValueError:
        return None


def parse_kld_chunk_row(line: str) -> int | None:
    """The chunk number of a per-chunk row of the KL divergence table."""
    match = _KLD_CHUNK_ROW.match(line)
    return int(match.group(1)) if match else None


def parse_kl_divergence(text: str) -> KLDivergenceStats:
    """Every statistic found in a whole ``--kl-divergence`` log (missing ones stay None)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        for key, pattern in _KLD_LINES.items():
            match = pattern.match(line)
            if match and key not in values:
                values[key] = float(match.group(1))
                if match.group(2) is not None and key in ("ppl", "kld_mean", "same_top_p"):
                    values[key + "_error"] = float(match.group(2))
                break
    return KLDivergenceStats(**values)


# --- HellaSwag, Winogrande, multiple choice -------------------------------------------------

_HELLASWAG_ROW = re.compile(
    r"^(\d+)\t([\d.]+)%\t\[([\d.]+)%,\s*([\d.]+)%\]")
_WINOGRANDE_ROW = re.compile(r"^(\d+)\t([\d.]+)\t")
_WINOGRANDE_FINAL = re.compile(r"Final Winogrande score\((\d+) tasks\): ([\d.]+) \+/- ([\d.]+)")
_MC_ROW = re.compile(r"^(\d+)\t([\d.]+)$")
_MC_FINAL = re.compile(r"Final result: ([\d.]+) \+/- ([\d.]+)")
_MC_RANDOM = re.compile(r"Random chance: ([\d.]+) \+/- ([\d.]+)")
_TASK_TOTAL = re.compile(
    r"(?:selecting (\d+) (?:randomized|the first) tasks|calculating TruthfulQA score over "
    r"(\d+) tasks|loaded (\d+) tasks from prompt)")


@dataclass(frozen=True)
class TaskScore:
    """A benchmark accuracy in percent with its uncertainty, over ``tasks`` tasks."""

    accuracy: float
    error: float | None
    tasks: int
    ci_low: float | None = None  # 95% interval (HellaSwag prints Wilson bounds)
    ci_high: float | None = None
    random_chance: float | None = None


def parse_task_total(line: str) -> int | None:
    """How many tasks a HellaSwag / Winogrande / multiple-choice run will score."""
    match = _TASK_TOTAL.search(line)
    if match is None:
        return None
    return int(next(g for g in match.groups() if g is not None))


def parse_task_row(line: str) -> int | None:
    """The task number of a running-accuracy row (any of the three benchmarks)."""
    for pattern in (_HELLASWAG_ROW, _WINOGRANDE_ROW, _MC_ROW):
        match = pattern.match(line)
        if match:
            return int(match.group(1))
    return None


def parse_hellaswag(text: str) -> TaskScore | None:
    """The last ``task\\tacc_norm\\t[lo%, hi%]`` row is the result."""
    last = None
    for line in text.splitlines():
        match = _HELLASWAG_ROW.match(line)
        if match:
            last = match
    if last is None:
        return None
    low, high = float(last.group(3)), float(last.group(4))
    return TaskScore(float(last.group(2)), (high - low) / 2, int(last.group(1)), low, high)


def parse_winogrande(text: str) -> TaskScore | None:
    """``Final Winogrande score(N tasks): v +/- e`` (printed only for 100 tasks or more)."""
    match = _WINOGRANDE_FINAL.search(text)
    if match is None:
        return None
    return TaskScore(float(match.group(2)), float(match.group(3)), int(match.group(1)))


def parse_multiple_choice(text: str) -> TaskScore | None:
    """``Final result: v +/- e`` of ``--multiple-choice`` (MMLU, ARC, TruthfulQA files)."""
    match = _MC_FINAL.search(text)
    if match is None:
        return None
    rows = [int(m.group(1)) for m in (_MC_ROW.match(line) for line in text.splitlines()) if m]
    chance = _MC_RANDOM.search(text)
    return TaskScore(float(match.group(1)), float(match.group(2)), rows[-1] if rows else 0,
                     random_chance=float(chance.group(1)) if chance else None)


# --- llama-bench -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchResult:
    """One llama-bench test (``pp512`` or ``tg128``): tokens per second."""

    test: str
    tokens_per_second: float
    stddev: float
    n_prompt: int
    n_gen: int
    model_size: int
    model_n_params: int
    backends: str
    n_gpu_layers: int
    build: str


def parse_bench_line(line: str) -> BenchResult | None:
    """A line of ``llama-bench -o jsonl`` (other lines, e.g. merged stderr, give None)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or "avg_ts" not in row:
        return None
    n_prompt, n_gen = int(row.get("n_prompt", 0)), int(row.get("n_gen", 0))
    if n_prompt and n_gen:
        test = f"pp{n_prompt}+tg{n_gen}"
    elif n_prompt:
        test = f"pp{n_prompt}"
    else:
        test = f"tg{n_gen}"
    build = f"{row.get('build_number', '?')} ({row.get('build_commit', 'unknown')})"
    return BenchResult(test, float(row["avg_ts"]), float(row.get("stddev_ts", math.nan)),
                       n_prompt, n_gen, int(row.get("model_size", 0)),
                       int(row.get("model_n_params", 0)), str(row.get("backends", "")),
                       int(row.get("n_gpu_layers", 0)), build)


def parse_bench(text: str) -> list[BenchResult]:
    return [r for r in (parse_bench_line(line) for line in text.splitlines()) if r is not None]


# --- backend loading (portable builds) --------------------------------------------------------

_CPU_VARIANT = re.compile(r"loaded CPU backend from \S*?libggml-cpu-([A-Za-z0-9_.]+)\.(?:so|dll|dylib)")
_SYSTEM_INFO_FLAG = re.compile(r"\b([A-Z][A-Z0-9_]*) = 1\b")


def parse_loaded_cpu_variant(text: str) -> str | None:
    """The CPU backend variant a portable build loaded (``sapphirerapids``), or None.

    ggml prints ``load_backend: loaded CPU backend from .../libggml-cpu-haswell.so`` once
    at start-up; a single-variant (native) build prints no such line.
    """
    match = _CPU_VARIANT.search(text)
    return match.group(1) if match else None


def parse_system_info_flags(text: str) -> frozenset[str]:
    """Instruction-set features on the ``system_info`` line (``AVX512``, ``AMX_INT8``...)."""
    for line in text.splitlines():
        if "system_info" in line or "CPU :" in line:
            found = _SYSTEM_INFO_FLAG.findall(line)
            if found:
                return frozenset(found)
    return frozenset()


_NUM = r"([0-9]+(?:\.[0-9]+)?)"
_MODEL_BUF = re.compile(r"load_tensors:\s+(\S+) model buffer size\s*=\s*" + _NUM + r" MiB")
_KV_BUF = re.compile(r"llama_kv_cache:\s+(\S+) KV buffer size\s*=\s*" + _NUM + r" MiB")
_KV_SIZE = re.compile(
    r"llama_kv_cache: size =\s*" + _NUM + r" MiB \(\s*(\d+) cells,\s*(\d+) layers,\s*(\d+)/(\d+) "
    r"seqs\), K \((\w+)\):\s*" + _NUM + r" MiB, V \((\w+)\):\s*" + _NUM + r" MiB")
_RS_BUF = re.compile(r"llama_memory_recurrent:\s+(\S+) RS buffer size\s*=\s*" + _NUM + r" MiB")
_COMPUTE_BUF = re.compile(r"(?:sched_reserve|llama_context):\s+(\S+) compute buffer size\s*=\s*"
                          + _NUM + r" MiB")
_OUTPUT_BUF = re.compile(r"llama_context:\s+(\S+)\s+output buffer size\s*=\s*" + _NUM + r" MiB")
_N_CTX = re.compile(r"llama_context: n_ctx\s*=\s*(\d+)")


@dataclass
class LoadLogMemory:
    """The memory figures llama.cpp prints while loading a model (MiB per buffer name).

    A log may hold more than one load (``--fit`` probes first with no allocation and prints
    zero-sized buffers); every figure is the last non-zero one seen, so the real load wins.
    """

    model_mib: dict[str, float] = field(default_factory=dict)
    kv_buffer_mib: dict[str, float] = field(default_factory=dict)
    recurrent_mib: dict[str, float] = field(default_factory=dict)
    compute_mib: dict[str, float] = field(default_factory=dict)
    output_mib: dict[str, float] = field(default_factory=dict)
    kv_size_mib: float | None = None
    kv_cells: int | None = None
    kv_layers: int | None = None
    type_k: str | None = None
    type_v: str | None = None
    n_ctx: int | None = None

    @property
    def kv_mib(self) -> float:
        """Total KV cache (the ``llama_kv_cache: size =`` line, else the buffers' sum)."""
        if self.kv_size_mib is not None:
            return self.kv_size_mib
        return sum(self.kv_buffer_mib.values())

    @property
    def total_mib(self) -> float:
        return (sum(self.model_mib.values()) + sum(self.kv_buffer_mib.values())
                + sum(self.recurrent_mib.values()) + sum(self.compute_mib.values())
                + sum(self.output_mib.values()))


def _set(table: dict[str, float], key: str, value: str) -> None:
    number = float(value)
    if number > 0 or key not in table:
        table[key] = number


def parse_load_log(lines: Iterable[str]) -> LoadLogMemory:
    """Read the buffer sizes out of a llama.cpp load log (llama-completion, -server, -cli)."""
    found = LoadLogMemory()
    for line in lines:
        if match := _MODEL_BUF.search(line):
            _set(found.model_mib, match.group(1), match.group(2))
        elif match := _KV_SIZE.search(line):
            if float(match.group(1)) > 0 or found.kv_size_mib is None:
                found.kv_size_mib = float(match.group(1))
                found.kv_cells = int(match.group(2))
                found.kv_layers = int(match.group(3))
                found.type_k, found.type_v = match.group(6), match.group(8)
        elif match := _KV_BUF.search(line):
            _set(found.kv_buffer_mib, match.group(1), match.group(2))
        elif match := _RS_BUF.search(line):
            _set(found.recurrent_mib, match.group(1), match.group(2))
        elif match := _COMPUTE_BUF.search(line):
            _set(found.compute_mib, match.group(1), match.group(2))
        elif match := _OUTPUT_BUF.search(line):
            _set(found.output_mib, match.group(1), match.group(2))
        elif match := _N_CTX.search(line):
            found.n_ctx = int(match.group(1))
    return found


_FIT_PRINT = re.compile(r"^\s*(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")


def parse_fit_print(lines: Iterable[str]) -> dict[str, tuple[int, int, int]]:
    """``llama-fit-params --fit-print on`` stdout: device -> (model, context, compute) MiB."""
    table: dict[str, tuple[int, int, int]] = {}
    for line in lines:
        if match := _FIT_PRINT.match(line):
            table[match.group(1)] = (int(match.group(2)), int(match.group(3)),
                                     int(match.group(4)))
    return table


#: RPC protocol of the llama.cpp build the project pins (ggml-rpc.h); a worker must speak
#: the same major version and no newer minor one.
RPC_PROTOCOL = (7, 0, 0)


RPC_CONNECT_FAILED = re.compile(r"Failed to connect to (\S+)")
RPC_RESOLVE_FAILED = re.compile(r"Cannot resolve host '([^']*)'")
RPC_VERSION_MISMATCH = re.compile(r"RPC server version mismatch: (\d+\.\d+\.\d+)")
RPC_HANDSHAKE_FAILED = re.compile(r"RPC handshake failed for (\S+)")
RPC_LOST = "Remote RPC server crashed or returned malformed response"
RPC_UNSUPPORTED = "RPC not supported in this build"
_SIGPIPE = 13  # the POSIX number (signal.SIGPIPE does not exist on Windows)


def rpc_protocol_text() -> str:
    return ".".join(map(str, RPC_PROTOCOL))


def rpc_failure_message(log: str, workers: Sequence[str],
                        signal_number: int | None = None) -> str | None:
    """Why a run across ``workers`` failed, when the log or the signal shows a worker was
    the cause.

    A worker that goes away mid-run usually kills the tool with SIGPIPE (ggml-rpc writes to
    the closed socket without MSG_NOSIGNAL, so nothing is printed); a failed read aborts
    with "Remote RPC server crashed or returned malformed response".
    """
    if not workers:
        return None
    listed = ", ".join(workers)
    if match := RPC_CONNECT_FAILED.search(log):
        return (f"RPC worker {match.group(1)} could not be reached (connection refused); "
                "start rpc-server there (or remove it from the worker list) and run again; "
                "no output was kept")
    if match := RPC_VERSION_MISMATCH.search(log):
        return (f"an RPC worker speaks protocol {match.group(1)}, these tools "
                f"{rpc_protocol_text()}: run the same llama.cpp version on every worker "
                f"({listed}); no output was kept")
    if match := RPC_RESOLVE_FAILED.search(log):
        return (f"RPC worker host {match.group(1)!r} does not resolve; fix the worker list "
                f"({listed}); no output was kept")
    if RPC_LOST in log or (signal_number is not None and signal_number == _SIGPIPE):
        return (f"an RPC worker stopped answering mid-run (one of {listed}): it crashed, was "
                "stopped or lost the network; check the workers (Hardware & tiers, or "
                "`apex-studio hardware --rpc ...`), restart the one that is down and run "
                "again; no output was kept")
    return None
