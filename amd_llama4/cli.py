"""`amd-llama4` console script. Each subcommand lives in `amd_llama4/commands/<name>.py`, which
defines `register(subparsers)`; the parser it adds sets `func` (args -> exit code)."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from amd_llama4 import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amd-llama4", description="Llama 4 on AMD Instinct GPUs (ROCm first).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"amd_llama4.commands.{mod.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
