"""GGUF files (llama.cpp's format) of llama, Qwen2 and Phi-3 models, loaded as mlx-lm models.

Imports inside the subpackage point one way: ``errors`` at the bottom, ``header``, ``arch`` and
``tokenizer`` above it, ``load`` on top; this module only re-exports.
"""

from pensieve.modelmgr.gguf.errors import GGUFError
from pensieve.modelmgr.gguf.header import GGUFHeader, TensorInfo, read_gguf_header
from pensieve.modelmgr.gguf.load import gguf_model_config, load_gguf, read_gguf, save_mlx_folder
from pensieve.modelmgr.gguf.tokenizer import tokenizer_from_gguf, tokenizer_wrapper_from_gguf

__all__ = [
    "GGUFError",
    "GGUFHeader",
    "TensorInfo",
    "gguf_model_config",
    "load_gguf",
    "read_gguf",
    "read_gguf_header",
    "save_mlx_folder",
    "tokenizer_from_gguf",
    "tokenizer_wrapper_from_gguf",
]
