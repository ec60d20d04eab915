"""Exceptions shared across sub-packages (kept here so format readers need not import the loader)."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and tensor at fault."""
