"""`--engine-factory tests.clients.random_engine:random_weights`: the served engine with the preset's
random weights (seed 0) instead of the shipped trained ones, for the acceptance checks that must hold
"even from a weak model" (a forced tool_choice's arguments, json_schema outputs)."""
from __future__ import annotations


def random_weights(**engine_args):
    from amd_llama4.engine.async_engine import AsyncEngine
    from amd_llama4.engine.llm_engine import EngineArgs, LLMEngine
    from amd_llama4.model.loader import load_model

    name = engine_args.pop("served_model_name", None)
    args = EngineArgs(**engine_args)
    model = load_model(args.model, seed=0, device="cpu", progress=False)
    return AsyncEngine(LLMEngine(args, model=model), name)
