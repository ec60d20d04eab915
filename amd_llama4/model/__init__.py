from amd_llama4.model.llama4 import Llama4ForCausalLM
from amd_llama4.model.loader import build_model, load_checkpoint, load_model
from amd_llama4.model.multimodal import Llama4ForConditionalGeneration
from amd_llama4.model.safetensors_io import CheckpointError

__all__ = ["Llama4ForCausalLM", "Llama4ForConditionalGeneration", "build_model", "load_checkpoint", "load_model", "CheckpointError"]
