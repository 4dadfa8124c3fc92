"""How a job's llama.cpp tool is started on this machine: the one home of those flags.

A job says what it asks of its tool (model, text, context); :class:`RunOptions` says how
every tool is run here: threads, keeping weights as stored (``--no-repack``), CPU variants
to avoid, RPC workers. They are decided in one place (:meth:`RunOptions.for_settings`,
plus the stored tools-check finding through :meth:`RunOptions.with_findings`), carried by
:class:`~apex_gui.core.jobs.tools.LlamaTools` as the options every run starts with, and
merged into each job when it starts (:func:`~apex_gui.core.jobs.runner.prepare_run`), so the
command line, the window's queue, the sensitivity probes and Try this quant pass the same
flags. A job's own options (a crash retry's ``--no-repack``, a run across RPC workers)
win over those standing options (:meth:`RunOptions.over`).

Adding an option: a field with a default that means "not chosen", its line in ``over``,
and its flags in ``tool_args``; callers that build options from settings or merge them need
no change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from apex_gui.core.jobs.device_placement import CPU_ONLY, PLACEMENT_TOOLS, DevicePlacement
from apex_gui.core.jobs.tools_findings import ToolLocator, known_check

#: How each tool that multiplies matrices is told to keep weights as stored instead of
#: repacking them into the CPU's fastest layout. On AMX / AVX-512 Xeons the repacked (AMX)
#: path of this llama.cpp build crashes on quantized models (SIGSEGV or SIGILL right after
#: "llama threadpool init"); without repacking the same run computes the same numbers.
NO_REPACK_ARGS: dict[str, tuple[str, ...]] = {
    "imatrix": ("--no-repack",),
    "perplexity": ("--no-repack",),
    "completion": ("--no-repack",),
    "bench": ("--repack", "0"),
}
#: Tools that take ``--rpc`` workers (they evaluate a model; llama-quantize does not).
RPC_TOOLS = frozenset({"imatrix", "perplexity", "bench"})
#: Tools that take their thread count as ``-t N`` (llama-quantize takes it as its last
#: positional argument; the job builds that itself from ``options.threads``).
THREAD_FLAG_TOOLS = frozenset({"imatrix", "perplexity", "bench", "completion"})


def rpc_args(endpoints: Sequence[str]) -> list[str]:
    """``["--rpc", "a:1,b:2"]``, or nothing for no workers: the one place ``--rpc`` is built
    (jobs, the worker probe and the llama-server command line all call it)."""
    return ["--rpc", ",".join(endpoints)] if endpoints else []


@dataclass(frozen=True)
class RunOptions:
    """The flags every job's tool shares on this machine; each default means "not chosen"."""

    #: CPU threads (0: the tool's own default).
    threads: int = 0
    #: Keep weights as stored (NO_REPACK_ARGS): set by the user, by the stored tools-check
    #: finding, or by the crash retry.
    no_repack: bool = False
    #: CPU backend variants (``sapphirerapids``...) the tool must not load: set when one
    #: crashed, so the tool runs on the next best variant of a portable build.
    skip_cpu_variants: tuple[str, ...] = ()
    #: llama.cpp RPC workers (``host:port``) whose devices the tool splits layers across;
    #: only tools in RPC_TOOLS take them, the others run locally.
    rpc_workers: tuple[str, ...] = ()
    #: Run on the CPU whatever GPU backends and devices the tools have (the "CPU only"
    #: setting, ``--cpu-only``).
    cpu_only: bool = False
    #: Where the model goes on the devices (``-ngl``, ``--n-cpu-moe``, ``-ts``,
    #: ``--device``): decided for each job when it starts by the tools' placer, the
    #: recommendation's memory model (:mod:`apex_gui.core.fit.job_placement`).
    placement: DevicePlacement | None = None

    @classmethod
    def for_settings(cls, settings: object, *, threads: int | None = None,
                     no_repack: bool = False, cpu_only: bool = False,
                     rpc_workers: Sequence[str] = ()) -> RunOptions:
        """What the user set up: the settings, with command-line flags over them.

        ``threads``: a ``-t`` given on the command line (None or 0: the setting, whose 0
        means the physical cores). The stored tools-check finding is added where the tools
        are known (:meth:`with_findings`, called by ``LlamaTools.run_options``).
        """
        chosen = threads if threads else _setting_threads(settings)
        return cls(threads=chosen,
                   no_repack=no_repack or getattr(settings, "llama_no_repack", False) is True,
                   cpu_only=cpu_only or getattr(settings, "cpu_only", False) is True,
                   rpc_workers=tuple(rpc_workers))

    def with_findings(self, tools: ToolLocator) -> RunOptions:
        """These options plus what the stored tools check found for this build on this CPU
        (read from the disk now: a check that ended a moment ago counts)."""
        if self.no_repack:
            return self
        report = known_check(tools)
        return replace(self, no_repack=True) if report is not None and report.repack_broken \
            else self

    def over(self, standing: RunOptions) -> RunOptions:
        """These options, with what they leave unchosen taken from ``standing``."""
        skipped = self.skip_cpu_variants + tuple(v for v in standing.skip_cpu_variants
                                                 if v not in self.skip_cpu_variants)
        return RunOptions(threads=self.threads or standing.threads,
                          no_repack=self.no_repack or standing.no_repack,
                          skip_cpu_variants=skipped,
                          rpc_workers=self.rpc_workers or standing.rpc_workers,
                          cpu_only=self.cpu_only or standing.cpu_only,
                          placement=self.placement or standing.placement)

    def for_tool(self, tool: str) -> RunOptions:
        """These options as far as ``tool`` takes them (RPC workers only for RPC_TOOLS), so
        a job's stored description says what it really ran with."""
        return self if tool in RPC_TOOLS or not self.rpc_workers else replace(self, rpc_workers=())

    def tool_args(self, tool: str) -> list[str]:
        """The flags these options add to ``tool``'s command line (short tool name)."""
        args: list[str] = []
        if self.threads > 0 and tool in THREAD_FLAG_TOOLS:
            args += ["-t", str(self.threads)]
        if self.no_repack:
            args += NO_REPACK_ARGS.get(tool, ())
        if tool in RPC_TOOLS:
            args += rpc_args(self.rpc_workers)
        if self.placement is not None:
            args += self.placement.tool_args(tool)
        elif self.cpu_only and tool in PLACEMENT_TOOLS:
            args += CPU_ONLY.tool_args(tool)
        return args

    def crash_fallback(self, tool: str, crashed_variant: str | None
                       ) -> tuple[RunOptions, str] | None:
        """Options avoiding the code path that just crashed, and how they differ.

        First without repacking (the AMX / repacked kernels); then, for a portable build,
        without the CPU variant that was loaded. None when nothing is left to avoid.
        """
        if tool in NO_REPACK_ARGS and not self.no_repack:
            return replace(self, no_repack=True), "without repacking the weights (--no-repack)"
        if crashed_variant and crashed_variant not in self.skip_cpu_variants:
            return (replace(self, skip_cpu_variants=(*self.skip_cpu_variants, crashed_variant)),
                    f"on the next CPU variant below {crashed_variant}")
        return None

    def to_fields(self) -> dict[str, Any]:
        """Field name -> value, JSON-ready (a job's stored description holds them flat)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.placement is not None:
            values["placement"] = self.placement.to_dict()
        return values

    @classmethod
    def from_fields(cls, values: Mapping[str, Any]) -> RunOptions:
        """Options from :meth:`to_fields` output (lists from JSON become tuples; other keys
        are ignored)."""
        chosen = {}
        for f in fields(cls):
            if f.name == "placement":
                chosen[f.name] = DevicePlacement.from_dict(values.get(f.name))
            elif f.name in values and values[f.name] is not None:
                value = values[f.name]
                chosen[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**chosen)


def option_names() -> frozenset[str]:
    """The names of RunOptions' fields (keys of a stored job description that belong to it)."""
    return frozenset(f.name for f in fields(RunOptions))


def _setting_threads(settings: object) -> int:
    effective = getattr(settings, "effective_threads", None)
    if effective is None:
        return 0
    try:
        return max(0, int(effective()))
    except (TypeError, ValueError):  # a hand-edited settings file with a wrong type
        return 0
