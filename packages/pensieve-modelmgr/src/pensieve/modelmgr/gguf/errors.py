"""The one error of the GGUF subpackage, at the bottom of its imports so every module can raise it."""

from __future__ import annotations

from pensieve.utils import ModelLoadError


class GGUFError(ModelLoadError):
    """A GGUF file cannot be used; the message says why and what to do instead.

    Being a ModelLoadError, it reaches the user as written (CLI, API error body) instead of as
    MLX's terse C++ message.
    """
