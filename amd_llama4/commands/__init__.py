"""Subcommands of `amd-llama4`, one module each (see amd_llama4/cli.py)."""
