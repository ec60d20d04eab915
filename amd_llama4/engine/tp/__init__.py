"""Tensor/expert-parallel execution: Ray worker actors (one GPU each), the executor that drives
them, the per-step wire format and the rank -> device mapping. The sharding rules themselves are
`amd_llama4.parallel` (below both the model and the engine)."""
