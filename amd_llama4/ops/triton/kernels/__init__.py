"""Triton kernel sources (one file per family). Launchers live one level up.

Triton decides at decoration time (for its own tl.* library too) whether @triton.jit yields a compiled
or an interpreted function, from TRITON_INTERPRET as it is when triton is first imported. A process
therefore either interprets or compiles; amd_llama4.tools.isa compiles in a child process when this
one interprets.
"""
from __future__ import annotations


def interpreted() -> bool:
    """True when triton was imported in interpreter mode (kernels cannot be compiled here)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.cdiv, InterpretedFunction)
