"""The one typer app every command module registers on, and the helpers they share.

It lives apart from cli/main.py so that command modules never import main.py: importing it back
from a module that main.py itself imports made `python -m cifarlab.cli.main` (main as __main__)
build a second app that listed only main's own commands.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Define, train, evaluate and compare image classifiers.")


def trust_code_option(what: str = "a checkpoint whose model"):
    """--trust-code, for each command that rebuilds a model a checkpoint or run names (train.checkpoint)."""
    return typer.Option(False, "--trust-code", help=f"{what} is package.module:callable imports and runs that code: "
                                                    "allow it (only for files from someone you trust)")


def emit_json(obj: Any) -> None:
    """The last line on stdout: one JSON object (machine-readable result)."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _say(as_json: bool):
    """Human lines go to stdout, or to stderr when stdout is reserved for --json."""
    stream = sys.stderr if as_json else sys.stdout
    return lambda line: print(line, file=stream, flush=True)
