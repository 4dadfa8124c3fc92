"""Headless sub-commands of ``apex-studio``; each module registers its own parsers.

A module here defines ``register(subparsers)`` and sets ``func`` on each parser it adds;
the function takes the parsed arguments and returns the exit code.
"""

from __future__ import annotations

COMMAND_MODULES = (
    "apex_gui.commands.inspect",
    "apex_gui.commands.tools",
    "apex_gui.commands.synth",
    "apex_gui.commands.plan",
    "apex_gui.commands.recommend",
    "apex_gui.commands.pipeline",
    "apex_gui.commands.types",
    "apex_gui.commands.card",
    "apex_gui.commands.rpc",
    "apex_gui.commands.quality",
    "apex_gui.commands.convert",
)
