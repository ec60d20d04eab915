"""GGUF in and out (llama.cpp's Llama 4 files): names.py maps names, reader.py loads (config from
the metadata, weights dequantised tensor by tensor), tokenizer.py builds our Tokenizer from the
metadata, writer.py exports a model to GGUF. Needs the `gguf` package (imported lazily)."""
from amd_llama4.gguf.reader import GGUFError, GGUFSource, is_gguf, read_config

__all__ = ["GGUFError", "GGUFSource", "is_gguf", "read_config"]
