"""transformers as the test-time reference: build an HF Llama 4 text model from our config and
save it with save_pretrained, so our loader reads exactly what users download."""
from __future__ import annotations

import torch

from amd_llama4.config import Llama4Config


def hf_model(cfg: Llama4Config, seed: int = 0):
    transformers = __import__("pytest").importorskip("transformers")
    hf_cfg = transformers.Llama4TextConfig(**{k: v for k, v in cfg.to_hf_dict().items()
                                               if k not in ("model_type", "architectures")})
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.Llama4ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # non-trivial norms and experts so every weight matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "experts" in name:
                p.copy_(0.05 * torch.randn_like(p))
    return model


def save_hf(cfg: Llama4Config, folder, seed: int = 0, **save_kwargs):
    model = hf_model(cfg, seed)
    model.save_pretrained(folder, **save_kwargs)
    return model
