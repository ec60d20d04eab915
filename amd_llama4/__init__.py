"""amd-llama4: Llama 4 (Scout, Maverick) inference for AMD Instinct GPUs, ROCm first."""
from amd_llama4.config import Llama4Config, QuantConfig, preset
from amd_llama4.engine.llm import LLM
from amd_llama4.engine.sampling_params import SamplingParams
from amd_llama4.model import CheckpointError, Llama4ForCausalLM, Llama4ForConditionalGeneration, load_model

__version__ = "0.1.0"
__all__ = ["Llama4Config", "QuantConfig", "preset", "Llama4ForCausalLM", "Llama4ForConditionalGeneration", "load_model", "CheckpointError",
           "LLM", "SamplingParams", "__version__"]
