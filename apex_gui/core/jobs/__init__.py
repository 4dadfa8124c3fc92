"""Jobs: specs with argv, progress readers, evaluations, pipeline assembly, parsers, runner, run store, tools."""
