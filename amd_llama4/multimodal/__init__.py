"""Llama 4 multimodal inputs: image preprocessing (image_processor) and prompt expansion (prompt)."""
from amd_llama4.multimodal.image_processor import (ImageProcessorConfig, Llama4ImageProcessor,
                                                   ProcessedImages, best_grid, resized_size, tile_grids)
from amd_llama4.multimodal.prompt import (IMAGE, IMAGE_TOKENS, PATCH, ImageTokenIds, expand_prompt,
                                          expand_token_ids, image_text, image_token_ids, max_image_tokens,
                                          tokens_per_tile)

__all__ = ["ImageProcessorConfig", "Llama4ImageProcessor", "ProcessedImages", "best_grid", "resized_size",
           "tile_grids", "IMAGE", "IMAGE_TOKENS", "PATCH", "ImageTokenIds", "expand_prompt", "expand_token_ids",
           "image_text", "image_token_ids", "max_image_tokens", "tokens_per_tile"]
